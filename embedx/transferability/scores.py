"""The transfer scores, registered (``embedx.engine.registry``): what each needs, and its final algebra.

Each finalize reads the accumulators its needs filled (``embedx.transferability.engine.NEEDS``); the formula is in the
module named, and the docstring here states it. Higher is better for every score.
"""
from __future__ import annotations

import math

from embedx.engine.registry import register
from embedx.transferability import gbc as _gbc
from embedx.transferability import hscore as _hscore
from embedx.transferability import leep as _leep
from embedx.transferability import logme as _logme
from embedx.transferability import transrate as _transrate

LABELS = ("labels",)
MOMENTS = dict(needs=("moments",), requires=LABELS)  # the scores that are functions of the first pass's sums


@register("hscore", "transfer", **MOMENTS, scatter=True, summary="tr(pinv(Cov X) Cov g), g_i = mu_{y_i}",
          citation="Bao et al., ICIP 2019")
def hscore(ctx) -> float:
    """tr(pinv(Cov X) Cov g), g_i = mu_{y_i}; both covariances 1/(N-1) (``embedx.transferability.hscore``)."""
    return _hscore.score(ctx["moments"])


@register("gbc", "transfer", **MOMENTS, sumsq=True, citation="Pandy et al., CVPR 2022",
          summary="-sum_{c!=c'} exp(-Bhattacharyya(c, c')), spherical Gaussians")
def gbc(ctx) -> float:
    """-sum_{c1 != c2} exp(-D_B(c1, c2)), per-class spherical Gaussians, variance max(var, 1e-4)."""
    return _gbc.score(ctx["moments"], diagonal=False)


@register("gbc_diagonal", "transfer", **MOMENTS, sumsq=True, default=False,
          summary="gbc with diagonal Gaussians", citation="Pandy et al., CVPR 2022")
def gbc_diagonal(ctx) -> float:
    """gbc with per-class diagonal Gaussians."""
    return _gbc.score(ctx["moments"], diagonal=True)


@register("transrate", "transfer", needs=("transrate_rates",), requires=LABELS, scatter=True,
          summary="R(Z) - mean_k R(Z_k), R = 1/2 logdet(I + Z^T Z/(n 1e-4))",
          citation="Huang et al., ICML 2022")
def transrate(ctx) -> float:
    """R(Z) - (1/K) sum_k R(Z_k), Z = X - mean X, R(Z) = 1/2 logdet(I + Z^T Z / (n 1e-4))."""
    return _transrate.score(ctx["moments"], ctx["transrate_rates"])


@register("logme", "transfer", **MOMENTS, scatter=True, citation="You et al., ICML 2021",
          summary="mean_c max log evidence / N, Bayesian regression of 1[y=c] on X")
def logme(ctx) -> float:
    """mean_c of the maximum log evidence / N of Bayesian linear regression of the one-hot target of c on X."""
    return _logme.score(ctx["moments"])


@register("sfda", "transfer", needs=("sfda_probability",), requires=LABELS, scatter=True,
          summary="mean p(y|x') of a shrinkage FDA refitted on ConfMix-ed x'",
          citation="Shao et al., ECCV 2022")
def sfda(ctx) -> float:
    """mean_i p(y_i | x'_i) of a regularized FDA refitted on ConfMix-challenged features x' (three passes)."""
    tc = ctx["sfda_probability"]
    return tc.total / ctx["moments"].N if tc is not None else math.nan


@register("leep", "transfer", needs=("leep_likelihood",), requires=LABELS + ("texts",),
          summary="mean_i ln sum_z P(y_i|z) theta(x_i)_z", citation="Nguyen et al., ICML 2020")
def leep(ctx) -> float:
    """(1/N) sum_i ln sum_z P(y_i | z) theta(x_i)_z, theta = softmax(logit_scale x^ T^^T) (two passes)."""
    n = ctx["moments"].N
    return ctx["leep_likelihood"].total / n if n else math.nan


@register("nce", "transfer", needs=("zeroshot",), requires=LABELS + ("texts",),
          summary="-H(Y|Z), z = argmax theta(x)", citation="Tran et al., ICCV 2019")
def nce(ctx) -> float:
    """sum_{y,z} P(y, z) ln P(y | z) = -H(Y | Z), z_i = argmax theta(x_i)."""
    return _leep.nce(ctx["zeroshot"])
