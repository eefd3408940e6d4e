"""Plain in-memory float64 NumPy references of the transfer scores, for tests and benchmarks.

Written straight from the definitions on the full N x d arrays, mirroring the authors' code (explicit loops over
classes, ``np.cov``-style covariances, ``np.linalg.pinv``, ``scipy.linalg.eigh(Sb, Sw)``, an explicit
(alpha I + beta F^T F)^-1 for LogME, explicit P(y, z) matrices for LEEP/NCE). Rows are L2-normalized with
``sklearn.preprocessing.normalize`` (as the authors do) and rows labelled -1 are left out. They hold every row
in memory and never call the streamed code of ``embedx.transfer``.

Sources mirrored:
  hscore        Bao et al. 2019, code YaojieBao/An-Information-theoretic-Metric-of-Transferability (H_Score)
  gbc*          Pandy et al. 2022, google-research stable_transfer/transferability/gbc.py, with the paper's
                d-dimensional determinant in the spherical case (see ``embedx.transferability.gbc``)
  transrate     Huang et al. 2022 (coding_rate / Transrate), K = number of present classes
  logme         You et al. 2021, thuml/LogME ``each_evidence`` (ICML version), iterated to convergence
  sfda          Shao et al. 2022, TencentARC/SFDA and OpenGVLab/Multitask-Model-Selector ``SFDA_Score``
  leep, nce     Nguyen et al. 2020, Tran et al. 2019, with the zero-shot classifier as the source model
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn.preprocessing import normalize

GBC_FLOOR = 1e-4
TRANSRATE_EPS = 1e-4
LOGME_EPS = 1e-5
LOGME_TOL = 1e-10
LOGME_MAX_ITER = 1000


def _prepare(x, y):
    """float64 L2-normalized rows with a label >= 0, and those labels."""
    x = normalize(np.asarray(x, dtype=np.float64))
    y = np.asarray(y).astype(np.int64)
    keep = y >= 0
    return x[keep], y[keep]


# -- H-score -----------------------------------------------------------------------------------------------
def _get_cov(x):
    xm = x - np.mean(x, axis=0, keepdims=True)
    return np.divide(np.dot(xm.T, xm), len(x) - 1)


def hscore(x, y) -> float:
    """tr(pinv(Cov(X)) Cov(g)), g_i = mean feature of x_i's class (H_Score of the authors' code)."""
    x, y = _prepare(x, y)
    cov_x = _get_cov(x)
    g = np.zeros_like(x)
    for c in set(y.tolist()):
        g[y == c] = np.mean(x[y == c, :], axis=0)
    cov_g = _get_cov(g)
    return float(np.trace(np.dot(np.linalg.pinv(cov_x, rcond=1e-15), cov_g)))


# -- GBC ---------------------------------------------------------------------------------------------------
def _bhattacharyya(mu1, mu2, var1, var2):
    """Bhattacharyya distance of Gaussians with diagonal covariances var1, var2 (length-d vectors)."""
    avg = (var1 + var2) / 2
    first = np.sum((mu1 - mu2) ** 2 / avg) / 8
    second = np.sum(np.log(avg)) - 0.5 * np.sum(np.log(var1)) - 0.5 * np.sum(np.log(var2))
    return first + 0.5 * second


def gbc(x, y, gaussian_type: str = "spherical") -> float:
    """-sum_{c1 != c2} exp(-D_B(c1, c2)); per class mean and max(var, 1e-4) (ddof 0); spherical: sigma^2 I with
    sigma^2 the mean of that diagonal, written out over all d dimensions (the paper's determinant)."""
    assert gaussian_type in ("spherical", "diagonal")
    x, y = _prepare(x, y)
    d = x.shape[1]
    stats = {}
    for c in np.unique(y):
        xc = x[y == c]
        var = np.maximum(np.var(xc, axis=0), GBC_FLOOR)
        if gaussian_type == "spherical":
            var = np.full(d, np.mean(var))
        stats[int(c)] = (np.mean(xc, axis=0), var)
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 != c2:
                total += np.exp(-_bhattacharyya(stats[c1][0], stats[c2][0], stats[c1][1], stats[c2][1]))
    return float(-total)


# -- TransRate ---------------------------------------------------------------------------------------------
def _coding_rate(z, eps=TRANSRATE_EPS):
    n, d = z.shape
    _, rate = np.linalg.slogdet(np.eye(d) + 1 / (n * eps) * z.transpose() @ z)
    return 0.5 * rate


def transrate(x, y) -> float:
    """R(Z) - (1/K) sum_k R(Z_k), Z = X - mean(X), R(Z) = 1/2 logdet(I + Z^T Z / (n eps)), K present classes."""
    x, y = _prepare(x, y)
    z = x - np.mean(x, axis=0, keepdims=True)
    rz = _coding_rate(z)
    classes = np.unique(y)
    rzy = sum(_coding_rate(z[y == c]) for c in classes)
    return float(rz - rzy / len(classes))


# -- LogME -------------------------------------------------------------------------------------------------
def _each_evidence(f, y_, eps=LOGME_EPS, tol=LOGME_TOL, max_iter=LOGME_MAX_ITER):
    """Maximum log evidence / N of Bayesian linear regression y_ ~ N(f m, 1/beta), m ~ N(0, 1/alpha)."""
    n, d = f.shape
    ftf = f.T @ f
    fty = f.T @ y_
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    for _ in range(max_iter):
        a_inv = np.linalg.inv(alpha * np.eye(d) + beta * ftf)
        gamma = d - alpha * np.trace(a_inv)  # sum_i beta s_i / (alpha + beta s_i)
        m = beta * a_inv @ fty
        alpha_de = float(m @ m)
        beta_de = float(np.sum((y_ - f @ m) ** 2))
        alpha = gamma / (alpha_de + eps)
        beta = (n - gamma) / (beta_de + eps)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < tol:
            break
        lam = new_lam
    _, logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)  # sum_i log(alpha + beta s_i)
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * logdet
                - beta / 2.0 * (beta_de + eps) - alpha / 2.0 * (alpha_de + eps) - n / 2.0 * np.log(2 * np.pi))
    return evidence / n


def logme(x, y) -> float:
    """Mean over present classes of the LogME evidence of the one-hot target of that class, F = X."""
    x, y = _prepare(x, y)
    return float(np.mean([_each_evidence(x, (y == c).astype(np.float64)) for c in np.unique(y)]))


# -- SFDA --------------------------------------------------------------------------------------------------
def iterative_A(A, max_iterations=3):  # noqa: N802 (the authors' name)
    """Largest eigenvalue of A, the authors' three power-iteration steps."""
    x = A.sum(axis=1)
    for _ in range(max_iterations):
        temp = np.dot(A, x)
        y = temp / np.linalg.norm(temp, 2)
        temp = np.dot(A, y)
        x = temp / np.linalg.norm(temp, 2)
    return np.dot(np.dot(x.T, A), y)


def _cov(x, shrinkage=-1):
    emp_cov = np.cov(np.asarray(x).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    n_features = emp_cov.shape[0]
    mu = np.trace(emp_cov) / n_features
    shrunk_cov = (1.0 - shrinkage) * emp_cov
    shrunk_cov.flat[:: n_features + 1] += shrinkage * mu
    return shrunk_cov


def _softmax(x):
    x = np.copy(x)
    x -= np.max(x, axis=1).reshape((-1, 1))
    np.exp(x, x)
    x /= np.sum(x, axis=1).reshape((-1, 1))
    return x


class _SFDA:
    """The authors' regularized Fisher discriminant (class SFDA of SFDA_Score)."""

    def __init__(self, shrinkage=None):
        self.shrinkage = shrinkage

    def fit(self, x, y):
        classes, y = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(y) / float(len(y))
        cnt = np.bincount(y)
        means = np.zeros(shape=(len(classes), x.shape[1]))
        np.add.at(means, y, x)
        means /= cnt[:, None]
        self.means_ = means
        cov = np.zeros(shape=(x.shape[1], x.shape[1]))
        for idx, group in enumerate(range(len(classes))):
            xg = x[y == group, :]
            cov += self.priors_[idx] * np.atleast_2d(_cov(xg))
        sw = cov  # within scatter
        if self.shrinkage is None:
            self.shrinkage = max(np.exp(-5 * iterative_A(sw, max_iterations=3)), 1e-10)
        st = _cov(x, shrinkage=self.shrinkage)  # total scatter, shrunk the same way
        n_features = sw.shape[0]
        mu = np.trace(sw) / n_features
        shrunk_sw = (1.0 - self.shrinkage) * sw
        shrunk_sw.flat[:: n_features + 1] += self.shrinkage * mu
        sb = st - shrunk_sw  # between scatter
        evals, evecs = linalg.eigh(sb, shrunk_sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = np.dot(self.means_, evecs).dot(evecs.T)
        self.intercept_ = -0.5 * np.diag(np.dot(self.means_, self.coef_.T)) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _softmax(np.dot(x, self.coef_.T) + self.intercept_)


def sfda(x, y) -> float:
    """SFDA_Score: FDA probabilities, softened again by a softmax, ConfMix towards the other classes' mean,
    a second FDA with the same shrinkage; the mean probability of the true class."""
    x, y = _prepare(x, y)
    _, y = np.unique(y, return_inverse=True)  # present classes -> 0..K-1
    n = len(y)
    num_classes = int(y.max()) + 1
    first = _SFDA()
    prob = first.fit(x, y).predict_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)  # "soften" (the authors' second softmax)
    means = np.zeros((num_classes, x.shape[1]))
    for c in range(num_classes):
        means[c] = x[y == c].mean(axis=0)
    means_ = np.zeros_like(means)
    for c in range(num_classes):
        means_[c] = (np.sum(means, axis=0) - means[c]) / (num_classes - 1)
    x = x.copy()
    for c in range(num_classes):
        idx = np.where(y == c)[0]
        p = prob[idx, c].reshape(-1, 1)
        x[idx] = p * x[idx] + (1 - p) * means_[c]
    second = _SFDA(shrinkage=first.shrinkage)
    prob = second.fit(x, y).predict_proba(x)
    return float(np.sum(prob[np.arange(n), y]) / n)


# -- LEEP / NCE --------------------------------------------------------------------------------------------
def zero_shot_probs(x, texts, logit_scale=100.0):
    """theta(x_i) = softmax_c(logit_scale x^_i . t^_c) over all class prompts (N x C)."""
    return _softmax(logit_scale * (x @ normalize(np.asarray(texts, dtype=np.float64)).T))


def leep(x, y, texts, logit_scale=100.0) -> float:
    """(1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z, P(y, z) = (1/N) sum_i theta(x_i)_z [y_i = y]."""
    x, y = _prepare(x, y)
    n = len(y)
    prob = zero_shot_probs(x, texts, logit_scale)
    n_y = int(y.max()) + 1
    pyz = np.zeros((n_y, prob.shape[1]))
    for y_ in range(n_y):
        pyz[y_] = np.sum(prob[y == y_], axis=0) / n
    pz = np.sum(pyz, axis=0)
    py_z = pyz / pz
    py_x = np.dot(prob, py_z.T)
    return float(np.mean(np.log(py_x[np.arange(n), y])))


def nce(x, y, texts, logit_scale=100.0) -> float:
    """sum_{y,z} P(y, z) log P(y | z) = -H(Y | Z), z_i = argmax theta(x_i) (ties: the lowest index)."""
    x, y = _prepare(x, y)
    n = len(y)
    z = np.argmax(zero_shot_probs(x, texts, logit_scale), axis=1)
    joint = np.zeros((int(y.max()) + 1, len(texts)))
    for yi, zi in zip(y, z):
        joint[yi, zi] += 1
    joint /= n
    pz = joint.sum(axis=0)
    total = 0.0
    for a in range(joint.shape[0]):
        for b in range(joint.shape[1]):
            if joint[a, b] > 0:
                total += joint[a, b] * np.log(joint[a, b] / pz[b])
    return float(total)


FUNCTIONS = {
    "hscore": hscore,
    "gbc": lambda x, y: gbc(x, y, "spherical"),
    "gbc_diagonal": lambda x, y: gbc(x, y, "diagonal"),
    "transrate": transrate,
    "logme": logme,
    "sfda": sfda,
}


def compute(x, y, texts=None, scores=None, logit_scale=100.0) -> dict[str, float]:
    """{score: value} of the references (every score by default; leep/nce need ``texts``)."""
    names = scores or list(FUNCTIONS) + (["leep", "nce"] if texts is not None else [])
    out = {}
    for s in names:
        if s in ("leep", "nce"):
            out[s] = (leep if s == "leep" else nce)(x, y, texts, logit_scale)
        else:
            out[s] = FUNCTIONS[s](x, y)
    return out
