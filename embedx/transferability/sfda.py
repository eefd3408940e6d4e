"""SFDA (Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging Fisher
Space", ECCV 2022), as the official ``SFDA_Score`` (TencentARC/SFDA, OpenGVLab/Multitask-Model-Selector)::

    (1) regularized FDA: priors p_c = n_c/N, class means mu_c,
        S_w = sum_c p_c Cov_c (biased, 1/n_c)                       within scatter
        lambda = max(exp(-5 lambda_max(S_w)), 1e-10)                lambda_max by the authors' iterative_A
        S_w' = (1 - lambda) S_w + lambda (tr S_w / D) I             (the code's shrinkage towards tr/D)
        W = eigenvectors of eigh(S_b, S_w'), S_b = S_t' - S_w' (S_t' the total covariance shrunk the same way)
        coef = mu W W^T,  intercept_c = -1/2 mu_c . coef_c + ln p_c,  P = softmax(X coef^T + intercept)
    (2) soften: p = softmax(P) (the official code applies a second softmax to the probabilities);
        ConfMix: x' = p_{i,y} x + (1 - p_{i,y}) mbar_y,  mbar_y = (sum_c mu_c - mu_y) / (K - 1)
    (3) a second FDA on X' with the same lambda; sfda = mean_i softmax(x'_i coef'^T + intercept')_{y_i}

scipy's eigh(S_b, S_w') returns S_w'-orthonormal eigenvectors (W^T S_w' W = I) and the code uses them as they
are, over all D components, so W W^T = S_w'^-1 whatever S_b is: coef = mu S_w'^-1, which we solve by Cholesky.
(Unlike sklearn's LinearDiscriminantAnalysis the code does not rescale the eigenvector columns to unit norm, and
its shrinkage target is (tr S_w / D) I, not I; we follow the code. Its class loop assumes labels 0..K-1; here the
classes are the present labels, in order.)
Streamed in three passes: (1) counts, class sums, total scatter (shared first pass); (2) P per block, the class
sums and total scatter of x'; (3) x' again and the second FDA's probability of the true class.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from embedx.transferability.moments import Block, Mergeable, Moments

log = logging.getLogger("embedx")


def iterative_A(A, max_iterations=3):  # noqa: N802 (the authors' name)
    """The authors' estimate of the largest eigenvalue of A (three double power-iteration steps)."""
    x = A.sum(axis=1)
    for _ in range(max_iterations):
        temp = np.dot(A, x)
        y = temp / np.linalg.norm(temp, 2)
        temp = np.dot(A, y)
        x = temp / np.linalg.norm(temp, 2)
    return np.dot(np.dot(x.T, A), y)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass
class FDA:
    coef: np.ndarray  # K x D
    intercept: np.ndarray  # K
    shrinkage: float

    def proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(x @ self.coef.T + self.intercept)


def fit(m: Moments, shrinkage: float | None = None) -> FDA:
    """The regularized FDA of step (1) from the sums of ``m`` (present classes, in label order)."""
    n = m.n
    n_all = n.sum()
    means = m.class_means
    sw = m.within_scatter() / n_all
    if shrinkage is None:
        shrinkage = max(float(np.exp(-5 * iterative_A(sw, max_iterations=3))), 1e-10)
    d = sw.shape[0]
    shrunk = (1.0 - shrinkage) * sw
    shrunk.flat[:: d + 1] += shrinkage * np.trace(sw) / d
    coef = linalg.cho_solve(linalg.cho_factor(shrunk), means.T).T
    intercept = -0.5 * np.einsum("kd,kd->k", means, coef) + np.log(n / n_all)
    return FDA(coef, intercept, shrinkage)


class ConfMix(Mergeable):
    """Pass (2): accumulates the sums of the mixed rows x' (a Moments with the first pass's shift)."""

    ADDITIVE = ("mixed_moments",)

    def __init__(self, fda: FDA, m: Moments):
        self.fda = fda
        means = m.class_means
        k = len(means)
        self.other_means = (means.sum(axis=0) - means) / (k - 1)
        self.index = np.full(len(m.counts), -1, dtype=np.int64)
        self.index[m.present] = np.arange(k)
        self.mixed_moments = Moments(len(m.counts), means.shape[1], scatter=True)
        self.mixed_moments.shift = m.shift
        self.seconds = 0.0

    def mixed(self, b: Block) -> tuple[np.ndarray, np.ndarray]:
        """(x', class index) of the block's rows."""
        k = self.index[b.y]
        p = softmax(self.fda.proba(b.x))  # soften: the official code's second softmax
        pt = p[np.arange(len(k)), k][:, None]
        out = np.empty_like(b.x)
        for j, lab in enumerate(b.labels):  # rows are sorted by class: one segment per class
            s0, s1 = b.bounds[j], b.bounds[j + 1]
            w = pt[s0:s1]
            np.multiply(b.x[s0:s1], w, out=out[s0:s1])
            out[s0:s1] += (1 - w) * self.other_means[self.index[lab]]
        return out, k

    def update(self, b: Block) -> None:
        self.mixed_moments.update(b.with_rows(self.mixed(b)[0]))

    def without_sums(self) -> "ConfMix":
        """A copy that only mixes rows (what pass (3) tasks need: no d x d sums)."""
        out = copy.copy(self)
        out.mixed_moments = None
        return out


class TrueClassProbability(Mergeable):
    """Pass (3): sum over rows of the second FDA's probability of the true class."""

    ADDITIVE = ("total",)

    def light(self):
        out = copy.copy(self)
        out.mix = self.mix.without_sums()
        return out

    def __init__(self, mix: ConfMix, fda: FDA):
        self.mix, self.fda = mix, fda
        self.total = 0.0
        self.seconds = 0.0

    def update(self, b: Block) -> None:
        xm, k = self.mix.mixed(b)
        self.total += float(self.fda.proba(xm)[np.arange(len(k)), k].sum())


def first_fda(m: Moments) -> FDA | None:
    """Step (1), or None (sfda undefined, NaN) when the within-class scatter is zero: every class has one row."""
    if (m.n <= 1).all():
        log.warning("sfda is undefined when every class has a single row (zero within-class scatter)")
        return None
    try:
        return fit(m)
    except (linalg.LinAlgError, ValueError):
        log.warning("sfda is undefined here: the within-class scatter is singular")
        return None
