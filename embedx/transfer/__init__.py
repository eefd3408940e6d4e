"""Transferability scores of a store's image embeddings and class labels, streamed (DESIGN.md, "Prediction").

Rows are L2-normalized first (as the authors do with sklearn.preprocessing.normalize) and computed on in float64;
rows labelled -1 are left out; "classes" are the labels with at least one row (K of them, K >= 2). X: N x d
features, y: labels, mu_c / n_c: class means / sizes, T: the class prompts' text embeddings. Higher is better for
every score (the features separate the target classes more; expected to transfer better).

  hscore        tr(pinv(Cov X) Cov g), g_i = mu_{y_i}, both covariances 1/(N-1)
                Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019
  gbc           -sum_{c1 != c2} exp(-D_B(c1, c2)), Bhattacharyya distance of per-class spherical Gaussians
                (variance max(var, 1e-4), d-dimensional determinant as in the paper)
  gbc_diagonal  the same with diagonal Gaussians
                Pandy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022
  transrate     R(Z) - (1/K) sum_k R(Z_k), Z = X - mean X, R(Z) = 1/2 logdet(I + Z^T Z / (n 1e-4))
                Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022
  logme         mean_c of the maximum log evidence / N of Bayesian linear regression of the one-hot target of c on X
                You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021
  sfda          mean_i p(y_i | x'_i) of a regularized FDA refitted on ConfMix-challenged features x'
                Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging
                Fisher Space", ECCV 2022
  leep          (1/N) sum_i ln sum_z P(y_i | z) theta(x_i)_z, theta = softmax(logit_scale x^ T^^T), the zero-shot
                classifier as the source model
                Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020
  nce           sum_{y,z} P(y, z) ln P(y | z) = -H(Y | Z), z_i = argmax theta(x_i)
                Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019

Each module (``hscore``, ``gbc``, ``transrate``, ``logme``, ``sfda``, ``leep``) states its formula and how it
streams; ``moments`` holds the block sources and the shared sums; ``reference`` the plain in-memory float64
implementations the tests and benchmark hold these against. Memory is bounded by the block size (about 32 MiB of
float64 rows) plus d x d matrices (and K d^2 for TransRate, in groups beyond ``transrate.BUDGET_BYTES``), whatever
N is. Passes over the rows: one shared pass for every score, a second for leep and sfda, a third for sfda.
"""
from __future__ import annotations

import math
import time

import numpy as np

from embedx.errors import EmbedxError
from embedx.transfer import gbc as _gbc
from embedx.transfer import hscore as _hscore
from embedx.transfer import leep as _leep
from embedx.transfer import logme as _logme
from embedx.transfer import sfda as _sfda
from embedx.transfer import transrate as _transrate
from embedx.transfer.moments import ArraySource, Moments, Source, StoreSource, sweep, unit_rows

SCORES = ("hscore", "gbc", "gbc_diagonal", "transrate", "logme", "sfda", "leep", "nce")
DEFAULT = tuple(s for s in SCORES if s != "gbc_diagonal")
NEED_TEXTS = ("leep", "nce")
SHARED = "shared"  # key of Result.seconds: reading, preparing, and sums several scores use


class Result(dict):
    """``{score: float}``. ``seconds``: per score the time of its own work (its sums, its extra passes, its
    final algebra), and under ``"shared"`` the reading and preparing of blocks and the sums several scores use."""

    def __init__(self, values: dict, seconds: dict):
        super().__init__(values)
        self.seconds = seconds


def _names(scores, has_texts: bool) -> list[str]:
    if scores is None:
        return [s for s in DEFAULT if has_texts or s not in NEED_TEXTS]
    if isinstance(scores, str):
        scores = scores.split(",")
    want = list(dict.fromkeys(s.strip() for s in scores if s and s.strip()))
    if not want:
        raise EmbedxError(f"no transfer score asked for; choose from {', '.join(SCORES)}")
    for s in want:
        if s not in SCORES:
            raise EmbedxError(f"unknown transfer score {s!r}; choose from {', '.join(SCORES)}")
    if not has_texts and any(s in NEED_TEXTS for s in want):
        raise EmbedxError("leep and nce need the class text embeddings (texts=...) for the zero-shot classifier")
    return want


def compute(store_or_path, scores=None, *, logit_scale: float | None = None, progress: bool = False) -> Result:
    """Transfer scores of a class store (a path or an ``embedx.store.Store``), streamed block by block.

    ``scores``: names (a list or a comma-separated string), default ``DEFAULT`` (all but gbc_diagonal).
    ``logit_scale`` scales the zero-shot logits of leep/nce; None = the model's own, recorded by ``embed`` in
    the store (``meta["logit_scale"]``), else 100 (CLIP's trained value). Returns a :class:`Result`
    ({score: float}, with ``.seconds``)."""
    from embedx.store import Store

    store = store_or_path if isinstance(store_or_path, Store) else Store(str(store_or_path))
    if logit_scale is None:
        logit_scale = store_logit_scale(store)
    result = _run(StoreSource(store), scores, logit_scale, progress)
    store.ensure_unchanged()  # every score came from the store that was opened
    return result


def store_logit_scale(store) -> float:
    """The zero-shot logit scale of the model that embedded ``store`` (recorded by embed), else 100."""
    v = store.meta.get("logit_scale")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else _leep.LOGIT_SCALE


def compute_arrays(x, y, texts=None, scores=None, logit_scale: float = _leep.LOGIT_SCALE) -> Result:
    """The same scores of in-memory arrays: ``x`` (N, d) features, ``y`` (N,) labels (-1 = none), ``texts``
    (C, d) class prompts (only leep/nce need them; without them the default leaves leep/nce out). The arrays
    are read in blocks through the same streaming code as a store."""
    return _run(ArraySource(x, y, texts), scores, logit_scale, False)


class _Clock:
    def __init__(self, names):
        self.seconds = {s: 0.0 for s in names}
        self.seconds[SHARED] = 0.0

    def charge(self, owners, t: float) -> None:
        owners = list(owners)
        self.seconds[owners[0] if len(owners) == 1 else SHARED] += t


def _run(src: Source, scores, logit_scale: float, progress: bool) -> Result:
    want = _names(scores, src.texts is not None)
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        raise EmbedxError(f"logit_scale must be a positive number, got {logit_scale!r}")
    clock = _Clock(want)
    t0 = time.perf_counter()
    counts = src.label_counts()
    k = int((counts > 0).sum())
    if k < 2:
        raise EmbedxError(f"transfer scores need at least 2 classes with labelled rows, found {k}")
    texts = unit_rows(src.texts, "texts") if any(s in NEED_TEXTS for s in want) else None
    clock.seconds[SHARED] += time.perf_counter() - t0
    d, n_labels = src.dim, src.n_labels

    # -- pass 1: every score's sums ---------------------------------------------------------------------
    moment_users = [s for s in want if s not in NEED_TEXTS]
    scatter_users = [s for s in want if s in ("hscore", "transrate", "logme", "sfda")]
    mom = Moments(n_labels, d, scatter=bool(scatter_users), sumsq=any(s.startswith("gbc") for s in want))
    owners = {id(mom): moment_users or want}
    accs = [mom]
    tr_groups = tr_first = None
    if "transrate" in want:
        tr_groups = _transrate.groups(np.flatnonzero(counts), d)
        tr_first = _transrate.ClassScatter(tr_groups[0], mom, n_labels, d)
        accs.append(tr_first)
        owners[id(tr_first)] = ["transrate"]
    zs = None
    if texts is not None:
        zs = _leep.ZeroShot(texts, n_labels, logit_scale, soft="leep" in want, hard="nce" in want)
        accs.append(zs)
        owners[id(zs)] = [s for s in want if s in NEED_TEXTS]
    clock.charge(want, sweep(src, accs, validate=True, progress=progress, desc="transfer pass 1"))
    for acc in accs:
        clock.charge(owners[id(acc)], acc.seconds)

    values: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        values[name] = fn()
        clock.seconds[name] += time.perf_counter() - t

    if "hscore" in want:
        timed("hscore", lambda: _hscore.score(mom))
    if "gbc" in want:
        timed("gbc", lambda: _gbc.score(mom, diagonal=False))
    if "gbc_diagonal" in want:
        timed("gbc_diagonal", lambda: _gbc.score(mom, diagonal=True))
    if "logme" in want:
        timed("logme", lambda: _logme.score(mom))
    if "nce" in want:
        timed("nce", lambda: _leep.nce(zs))
    if "transrate" in want:
        def _tr():
            rates = _transrate.class_rates(tr_first, mom)
            for group in tr_groups[1:]:  # classes beyond the memory budget: one more pass per group
                acc = _transrate.ClassScatter(group, mom, n_labels, d)
                clock.seconds["transrate"] += sweep(src, [acc], progress=progress, desc="transrate group") + acc.seconds
                rates += _transrate.class_rates(acc, mom)
            return _transrate.score(mom, rates)
        timed("transrate", _tr)

    # -- pass 2: leep's likelihood, sfda's ConfMix sums; pass 3: sfda's second FDA ------------------------
    accs2, fda1, mix = [], None, None
    if "leep" in want:
        t = time.perf_counter()
        ll = _leep.LeepLikelihood(zs)
        clock.seconds["leep"] += time.perf_counter() - t
        accs2.append(ll)
    if "sfda" in want:
        t = time.perf_counter()
        fda1 = _sfda.first_fda(mom)
        if fda1 is not None:
            mix = _sfda.ConfMix(fda1, mom)
            accs2.append(mix)
        else:
            values["sfda"] = math.nan
        clock.seconds["sfda"] += time.perf_counter() - t
    if accs2:
        users = (["leep"] if "leep" in want else []) + (["sfda"] if mix is not None else [])
        clock.charge(users, sweep(src, accs2, progress=progress, desc="transfer pass 2"))
        for acc in accs2:
            clock.charge(["sfda"] if acc is mix else ["leep"], acc.seconds)
    if "leep" in want:
        values["leep"] = accs2[0].total / mom.N if mom.N else math.nan
    if mix is not None:
        t = time.perf_counter()
        fda2 = _sfda.fit(mix.mixed_moments, shrinkage=fda1.shrinkage)
        tc = _sfda.TrueClassProbability(mix, fda2)
        clock.seconds["sfda"] += time.perf_counter() - t
        clock.seconds["sfda"] += sweep(src, [tc], progress=progress, desc="transfer pass 3") + tc.seconds
        values["sfda"] = tc.total / mom.N
    return Result({s: float(values[s]) for s in want}, clock.seconds)
