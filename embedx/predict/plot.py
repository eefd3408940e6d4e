"""Scatter plots of a prediction result: one panel per (predictor, outcome), matplotlib's Agg backend.

Each panel shows the history rows (coloured by fine-tuning method), the OLS line, its 95% prediction band,
R², Kendall τ and the slope's p-value in the title, and each target store as a star with its 95% prediction
interval. With many predictors only the best ``max_predictors`` (by their best R² over the outcomes) are drawn,
and the title says so. The PNG is written atomically (temporary file, fsync, rename).
"""
from __future__ import annotations

import io
import os

import numpy as np

import embedx.predict.fit as F
from embedx.plottext import literal
from embedx.predict.history import atomic_write_bytes

MAX_PREDICTORS = 8


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _best_r2(fits: dict) -> float:
    return max((f["r2"] for f in fits.values() if not f.get("error")), default=-1.0)


def shown_predictors(result: dict, max_predictors: int = MAX_PREDICTORS) -> list[str]:
    """The predictors drawn, best first (by their best R² over the outcomes), at most ``max_predictors``."""
    return sorted(result["predictors"], key=lambda m: -_best_r2(result["fits"][m]))[:max_predictors]


def _label(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


def plot(result: dict, path: str, max_predictors: int = MAX_PREDICTORS, dpi: int = 100) -> str:
    """Draw ``result`` (the dict of ``embedx.predict.predict``) into a PNG at ``path``; returns ``path``."""
    plt = _plt()
    outcomes = result["outcomes"]
    preds = shown_predictors(result, max_predictors)
    nr, nc = max(len(preds), 1), max(len(outcomes), 1)
    fig, axes = plt.subplots(nr, nc, figsize=(4.6 * nc, 3.4 * nr + 0.8), squeeze=False, layout="constrained")
    methods = sorted({r["method"] for r in result["rows"]})
    cmap = plt.get_cmap("tab10")
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    tcolours = plt.get_cmap("Dark2")
    for i, m in enumerate(preds):
        for j, o in enumerate(outcomes):
            ax = axes[i][j]
            f = result["fits"][m][o]
            pts = [(r[m], r[o], r["method"]) for r in result["rows"] if r.get(m) is not None and r.get(o) is not None]
            for meth in methods:
                xs = [p[0] for p in pts if p[2] == meth]
                ys = [p[1] for p in pts if p[2] == meth]
                if xs:
                    ax.scatter(xs, ys, s=22, color=colour[meth], label=literal(meth) or "(no method)", zorder=3)
            tx = [(t, e["measures"].get(m), (e["predictions"].get(m) or {}).get(o))
                  for t, e in result["targets"].items()]
            tx = [(t, x0, p) for t, x0, p in tx if x0 is not None and p is not None]
            if f.get("error"):
                ax.set_title(literal(f"{m} -> {o}\nno fit: {f['error']}"), fontsize=8)
            else:
                xs = [p[0] for p in pts] + [x0 for _, x0, _ in tx]
                lo, hi = min(xs), max(xs)
                pad = 0.05 * (hi - lo or 1.0)
                grid = np.linspace(lo - pad, hi + pad, 200)
                yhat, blo, bhi = F.interval(f, grid)
                ax.fill_between(grid, blo, bhi, color="0.5", alpha=0.18, lw=0, label="95% prediction band")
                ax.plot(grid, yhat, color="0.2", lw=1.3, label="OLS fit")
                tau = f["kendall_tau"]
                taus = "n/a" if tau is None else f"{tau:+.2f}"
                ax.set_title(f"{literal(m)} -> {literal(o)}  (n={f['n']})\nR² {f['r2']:.3f}   τ {taus}   p {f['p_value']:.2g}",
                             fontsize=9)
            for k, (t, x0, p) in enumerate(tx):
                c = tcolours(k % 8)
                ax.errorbar([x0], [p["value"]], yerr=[[p["value"] - p["lo"]], [p["hi"] - p["value"]]], fmt="none",
                            ecolor=c, elinewidth=1.2, capsize=4, zorder=4)
                ax.scatter([x0], [p["value"]], marker="*", s=160, color=c, edgecolor="k", lw=0.5, zorder=5,
                           label=f"target {literal(_label(t))}")
            ax.set_xlabel(literal(m), fontsize=8)
            ax.set_ylabel(literal(o), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.25)
    if not preds or not outcomes:
        axes[0][0].text(0.5, 0.5, "nothing to plot", ha="center", va="center")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncol=min(len(labels), 5),
                   fontsize=8, frameon=False)
    n_all = len(result["predictors"])
    capped = f"; the best {len(preds)} of {n_all} predictors by R²" if len(preds) < n_all else ""
    where = result.get("where") or {}
    wh = (" where " + " and ".join(f"{c}={'|'.join(v)}" for c, v in where.items())) if where else ""
    fig.suptitle(literal(f"{_label(result['history'])}: {result['n_rows']} rows{wh}{capped}"), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
