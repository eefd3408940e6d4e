"""study.html: one self-contained page (figures as inline PNG from matplotlib's Agg backend, tables as HTML).

Figures: (1) IIMM of the zero-shot train store vs gain, one panel per method, with the OLS fit line
(``embedx.predict.fit``), points coloured by the task's domain; (2) forgetting per method (mean bar, one dot per
row); (3) every measure and transfer score ranked by |Kendall tau| against gain over all rows. Tables: the results,
paper A's, paper B's (over all rows, per method, and within each domain of >= 3 tasks). A small script marks
``data-images-ok`` on the body once every figure has decoded (what the headless-browser check reads).
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from embedx.drift_analysis.report import _CHECK  # the same image-decode check as the drift report
from embedx.store.atomic import atomic_write_bytes

FIGURES = ("fig-iimm-gain", "fig-forgetting", "fig-ranking")
WITHIN_PREDICTORS = ("iimm", "acs", "silhouette_euclidean", "gap")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def fig_iimm_gain(df) -> str:
    from embedx.predict.fit import fit

    plt = _plt()
    methods = list(dict.fromkeys(df["method"]))
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    domains = list(dict.fromkeys(df["domain"])) if "domain" in df else [""]
    colour = {d: f"C{i % 10}" for i, d in enumerate(domains)}
    for i, (ax, m) in enumerate(zip(axes.flat, methods)):
        g = df[df["method"] == m]
        x, y = g["iimm"].to_numpy(float), g["gain"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        dom = g["domain"].to_numpy() if "domain" in g else np.full(len(g), "")
        for d in domains:
            sel = ok & (dom == d)
            if sel.any():
                ax.scatter(x[sel], y[sel], s=18, color=colour[d], label=(d or None) if i == 0 else None)
        for xi, yi, t in zip(x[ok], y[ok], g["task"][ok]):
            ax.annotate(str(t), (xi, yi), fontsize=7, alpha=0.7)
        f = fit(x[ok], y[ok])
        if not f["error"]:
            xs = np.linspace(f["x_min"], f["x_max"], 20)
            ax.plot(xs, f["intercept"] + f["slope"] * xs, color="tab:red",
                    label=f"all: R²={f['r2']:.2f}, τ={f['kendall_tau']:.2f}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(m)
        ax.set_xlabel("IIMM (zero-shot, train)")
        ax.set_ylabel("gain (top-1)")
    return _png(fig)


def fig_forgetting(df) -> str:
    plt = _plt()
    methods = list(dict.fromkeys(df["method"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.2))
    for i, m in enumerate(methods):
        v = df.loc[df["method"] == m, "forgetting"].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v):
            ax.bar(i, v.mean(), color="tab:orange", alpha=0.6)
            ax.scatter(np.full(len(v), i), v, s=12, color="k")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("change on other tasks\n(mean top-1; < 0: forgotten)")
    return _png(fig)


def fig_ranking(fits) -> str:
    plt = _plt()
    g = fits[(fits["group"] == "all") & (fits["outcome"] == "gain")].copy()
    g["abs_tau"] = g["kendall_tau"].abs()
    g = g.sort_values("abs_tau", na_position="first")
    fig, ax = plt.subplots(figsize=(5, 0.25 * len(g) + 1))
    vals = g["abs_tau"].fillna(0).to_numpy(float)
    ax.barh(range(len(g)), vals, color=["tab:red" if p == "iimm" else "tab:blue" for p in g["predictor"]])
    ax.set_yticks(range(len(g)), list(g["predictor"]))
    ax.set_xlabel("|Kendall τ| with gain (all rows)")
    return _png(fig)


def _table(df, digits: int = 4) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}g}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _n(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _within(fits) -> str:
    """Paper B's fits of a few measures vs gain and forgetting within each domain (groups ``domain=...``)."""
    w = fits[fits["group"].str.startswith("domain=") & fits["predictor"].isin(WITHIN_PREDICTORS)
             & fits["outcome"].isin(["gain", "forgetting"])]
    if not len(w):
        return "<p>No domain holds 3 or more tasks (give tasks a <code>domain</code> in STUDY.toml).</p>"
    return _table(w[["group", "outcome", "predictor", "n", "r2", "kendall_tau", "kendall_p", "slope", "error"]])


def write(df, paths: dict, out: str, spec) -> str:
    """Render the report of results ``df`` and the tables in ``paths["frames"]`` to ``out`` -> ``out``."""
    from embedx.version import __version__

    frames = paths["frames"]
    figs = {"fig-iimm-gain": ("IIMM vs gain per method, with the OLS fit", fig_iimm_gain(df)),
            "fig-forgetting": ("Forgetting per method: the top-1 change on the other tasks", fig_forgetting(df)),
            "fig-ranking": ("Measures and transfer scores ranked by |Kendall τ| with gain", fig_ranking(
                frames["paperB_fits"]))}
    fits = frames["paperB_fits"]
    best = fits[fits["outcome"].isin(["gain", "forgetting"])].copy()
    show = ["model", "task", "domain", "method", "seed", "zs_acc", "ft_acc", "gain", "norm_gain", "forgetting",
            "iimm",
            "silhouette_euclidean", "acs", "trainable_params"]
    parts = [f"<h1>Study {html.escape(spec.name)}</h1>",
             f"<p>embedx {html.escape(__version__)}, study file sha256 {spec.sha256[:16]}, {len(df)} rows "
             f"({_n(spec.models, 'model')} x {_n(spec.tasks, 'task')} x {_n(spec.methods, 'method')} x "
             f"{_n(spec.seeds, 'seed')}).</p>"]
    for fid, (title, png) in figs.items():
        parts.append(f'<h2>{html.escape(title)}</h2><img id="{fid}" alt="{html.escape(title)}" '
                     f'src="data:image/png;base64,{png}">')
    parts += ["<h2>Results</h2>", _table(df[show]),
              "<h2>Paper A: measures vs task difficulty (1 - zero-shot top-1), across tasks</h2>",
              _table(frames["paperA_difficulty"]),
              "<h2>Paper A: gain and forgetting per method</h2>", _table(frames["paperA_methods"]),
              "<h2>Paper B: R² and Kendall τ of every predictor vs gain and forgetting</h2>",
              _table(best[["group", "outcome", "predictor", "n", "r2", "kendall_tau", "kendall_p", "slope",
                           "error"]]),
              "<h2>Within one image domain: fits over the tasks of each domain (>= 3 tasks)</h2>",
              _within(fits),
              "<h2>Paper B: leave-one-task-out prediction of gain from IIMM (95% intervals)</h2>",
              _table(frames["paperB_loto_summary"]), _table(frames["paperB_loto"])]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>embedx study</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>"
            + "\n".join(parts) + _CHECK + "</body></html>")
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
