"""Ordinary least squares of one outcome on one predictor, its rank agreement and its predictions.

For the n rows where both x (predictor) and y (outcome) are present, with x̄, ȳ the means:

  Sxx = Σ(x_i - x̄)²,  Syy = Σ(y_i - ȳ)²,  Sxy = Σ(x_i - x̄)(y_i - ȳ)
  slope b = Sxy / Sxx,  intercept a = ȳ - b x̄,  r = Sxy / sqrt(Sxx Syy),  r2 = r²
  residuals e_i = y_i - (a + b x_i),  SSE = Σ e_i²,  residual_std s = sqrt(SSE / (n - 2))
  stderr (of b) = s / sqrt(Sxx),  intercept_stderr = stderr · sqrt(Σx_i² / n)
  p_value: two-sided test of b = 0, t = r sqrt((n - 2) / (1 - r²)) ~ Student t with n - 2 degrees of freedom
           (all as ``scipy.stats.linregress``)
  kendall_tau, kendall_p: Kendall's tau-b and its two-sided p-value (``scipy.stats.kendalltau`` defaults)
  leave-one-out: refit without row i and predict it; in closed form the error is e_i / (1 - h_ii) with
           leverage h_ii = 1/n + (x_i - x̄)² / Sxx. loo_rmse = sqrt(mean of their squares), loo_mae = mean |.|
           (undefined when dropping one row leaves a constant predictor, i.e. h_ii = 1)
  prediction at x0: ŷ = a + b x0, 95% prediction interval for a new observation
           ŷ ± t_{0.975, n-2} · s · sqrt(1 + 1/n + (x0 - x̄)² / Sxx)

A fit needs n ≥ 3 and a predictor and outcome that vary; otherwise it carries an ``error`` string and null
numbers instead of raising. Below ``MIN_RUNS`` rows a fit is made but is fragile: a predictor unrelated to the
outcome reaches R² ≥ ``chance_r2(n)`` = t²/(t² + n - 2), t = t_{0.975, n-2}, one time in 20 (the R² at which the
slope's p-value is 0.05: 0.90 for n = 4, 0.40 for n = 10), and ranking many predictors favours such flukes.

``clip`` bounds a prediction and its interval to the range the outcome can take (``embedx.predict.engine``
says which): a prediction interval is a statement about a new value, and no value lies outside that range.
"""
from __future__ import annotations

import math

import numpy as np

MIN_ROWS = 3
MIN_RUNS = 10  # below: a warning (chance_r2)
LEVEL = 0.95
NUMBERS = ("slope", "intercept", "r", "r2", "p_value", "stderr", "intercept_stderr", "kendall_tau", "kendall_p",
           "loo_rmse", "loo_mae", "residual_std", "x_mean", "x_sxx", "x_min", "x_max")


def failed(n: int, reason: str) -> dict:
    """A fit that could not be made: the numbers are None and ``error`` says why."""
    return {"n": n, **{k: None for k in NUMBERS}, "error": reason}


def _f(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def fit(x, y) -> dict:
    """OLS fit of y on x (arrays of equal length, no missing values) -> dict of the numbers in the module doc."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < MIN_ROWS:
        return failed(n, f"needs at least {MIN_ROWS} rows with both values, got {n}")
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx <= 0.0 or np.ptp(x) == 0.0:
        return failed(n, f"the predictor is constant ({x[0]:.6g}) over the {n} rows")
    if syy <= 0.0 or np.ptp(y) == 0.0:
        return failed(n, f"the outcome is constant ({y[0]:.6g}) over the {n} rows")
    slope = sxy / sxx
    intercept = ym - slope * xm
    r = min(1.0, max(-1.0, sxy / math.sqrt(sxx * syy)))
    df = n - 2
    resid = y - (intercept + slope * x)
    sse = float(resid @ resid)
    s = math.sqrt(sse / df)
    stderr = s / math.sqrt(sxx)
    if abs(r) >= 1.0:
        p = 0.0
    else:
        t = r * math.sqrt(df / ((1.0 - r) * (1.0 + r)))
        p = float(2.0 * stats.t.sf(abs(t), df))
    tau = stats.kendalltau(x, y)
    h = 1.0 / n + dx * dx / sxx
    keep = 1.0 - h  # = Sxx without row i / Sxx · (n-1)/n: zero when the other rows share one x
    if np.all(keep > 1e-12):
        loo = resid / keep
        loo_rmse, loo_mae = math.sqrt(float(np.mean(loo * loo))), float(np.mean(np.abs(loo)))
    else:
        loo_rmse = loo_mae = None
    return {"n": n, "slope": slope, "intercept": intercept, "r": r, "r2": r * r, "p_value": p,
            "stderr": stderr, "intercept_stderr": stderr * math.sqrt(float(x @ x) / n),
            "kendall_tau": _f(tau.statistic), "kendall_p": _f(tau.pvalue),
            "loo_rmse": loo_rmse, "loo_mae": loo_mae, "residual_std": s,
            "x_mean": float(xm), "x_sxx": sxx, "x_min": float(x.min()), "x_max": float(x.max()), "error": None}


def interval(f: dict, x0, level: float = LEVEL):
    """(ŷ, lo, hi) at x0 (scalar or array): the fitted value and its prediction interval (module doc)."""
    from scipy import stats

    x0 = np.asarray(x0, dtype=np.float64)
    n = f["n"]
    yhat = f["intercept"] + f["slope"] * x0
    q = stats.t.ppf(0.5 + level / 2, n - 2)
    half = q * f["residual_std"] * np.sqrt(1.0 + 1.0 / n + (x0 - f["x_mean"]) ** 2 / f["x_sxx"])
    return yhat, yhat - half, yhat + half


def predict(f: dict, x0: float | None) -> dict | None:
    """{"value", "lo", "hi", "extrapolated"} at x0 (extrapolated: x0 outside the fitted x range); None when
    the fit failed or x0 is missing."""
    if f.get("error") or x0 is None or not math.isfinite(x0):
        return None
    yhat, lo, hi = interval(f, x0)
    return {"value": float(yhat), "lo": float(lo), "hi": float(hi),
            "extrapolated": bool(x0 < f["x_min"] or x0 > f["x_max"])}


def chance_r2(n: int, level: float = LEVEL) -> float | None:
    """The R² a predictor unrelated to the outcome reaches with probability 1 - ``level`` on n rows (module doc);
    None below 3 rows."""
    from scipy import stats

    if n < MIN_ROWS:
        return None
    t = float(stats.t.ppf(0.5 + level / 2, n - 2))
    return t * t / (t * t + n - 2)


def clip(p: dict | None, lo: float | None, hi: float | None) -> dict | None:
    """``p`` (:func:`predict`) with value, lo and hi clipped to [lo, hi] (None: unbounded on that side):
    ``range`` [lo, hi], ``clipped`` (whether anything moved) and, when it did, ``unclipped`` (the OLS numbers)."""
    if p is None:
        return None
    a = -math.inf if lo is None else lo
    b = math.inf if hi is None else hi
    out = {**p, **{k: float(min(max(p[k], a), b)) for k in ("value", "lo", "hi")}, "range": [lo, hi]}
    out["clipped"] = any(out[k] != p[k] for k in ("value", "lo", "hi"))
    if out["clipped"]:
        out["unclipped"] = {k: p[k] for k in ("value", "lo", "hi")}
    return out
