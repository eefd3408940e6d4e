"""The drift statistics, registered (``embedx.engine.registry``, family "drift"): each a function of the one
drift pass over both stores (``embedx.drift_analysis.drift_pass.drift_pass``: the ``drift_pass`` need). x_i, y_i: the
L2-normalized image rows of BEFORE and AFTER, delta_i = |y_i - x_i|."""
from __future__ import annotations

import numpy as np

from embedx.engine.registry import register

PASS = ("drift_pass",)


def _disp(ctx) -> np.ndarray:
    return ctx["drift_pass"].displacement.astype(np.float64)


@register("displacement_mean", "drift", needs=PASS, summary="mean_i |y_i - x_i|", citation="-")
def displacement_mean(ctx) -> float:
    """mean_i delta_i, every image (exact)."""
    return float(_disp(ctx).mean())


@register("displacement_p50", "drift", needs=PASS, summary="median of |y_i - x_i|", citation="-")
def displacement_p50(ctx) -> float:
    """The median of delta_i (all N kept: exact, numpy's linear interpolation)."""
    return float(np.percentile(_disp(ctx), 50))


@register("displacement_p95", "drift", needs=PASS, summary="95th percentile of |y_i - x_i|", citation="-")
def displacement_p95(ctx) -> float:
    """The 95th percentile of delta_i."""
    return float(np.percentile(_disp(ctx), 95))


@register("w1_upper_bound", "drift", needs=PASS, summary="mean_i |y_i - x_i| >= W1(before, after)",
          citation="the coupling i <-> i bounds the 1-Wasserstein distance")
def w1_upper_bound(ctx) -> float:
    """1/N sum_i |y_i - x_i| >= W1(mu, nu), mu and nu the empirical distributions coupled by i <-> i."""
    return float(_disp(ctx).mean())


@register("cka_linear", "drift", needs=PASS, summary="|Xc'Yc|_F^2 / (|Xc'Xc|_F |Yc'Yc|_F)",
          citation="Kornblith et al., ICML 2019")
def cka_linear(ctx) -> float:
    """Linear CKA of the normalized image rows from streamed float64 sums: Xc'Yc = X'Y - Sx Sy'/N."""
    return ctx["drift_pass"].cka


@register("knn_overlap", "drift", needs=PASS, summary="mean_q |N_k^X(q) & N_k^Y(q)| / k (k: knn_k beside it)",
          citation="-")
def knn_overlap(ctx) -> float:
    """mean over queries q of |N_k^X(q) & N_k^Y(q)| / k, N_k the k rows of highest cosine to q (q excluded)."""
    return ctx["drift_pass"].knn_overlap


def summary_key(score, knn_k: int | None = None) -> str:
    """The key of a drift statistic in the drift summary: its name, whatever the options (``knn_overlap``, with
    ``knn_k`` beside it; a key never changes with an option)."""
    return score.name
