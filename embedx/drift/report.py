"""The drift report: one self-contained HTML file (plots as base64 PNG from matplotlib's Agg backend).

No external URL is referenced and nothing needs JavaScript; one inline script only records, on <body>, whether
every plot decoded (``data-images-ok``), for automated checks in a headless browser.
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

PER_CLASS_BARS = 40  # classes shown in the per-class chart: the largest drops and gains

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
.pos{color:#1a7f37}.neg{color:#c62828}.muted{color:#777;font-size:.85em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
code{background:#f4f4f4;padding:0 .3em}
"""

_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = imgs.length > 0;
  for (var i = 0; i < imgs.length; i++) { if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) ok = false; }
  document.body.setAttribute("data-images-ok", ok ? String(imgs.length) : "no");
});
</script>"""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _fmt(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _delta_cell(v) -> str:
    cls = "" if v is None or v == 0 else (' class="pos"' if v > 0 else ' class="neg"')
    return f"<td{cls}>{_fmt(v, signed=True)}</td>"


def _table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    return f"<table><tr>{h}</tr>{''.join(rows)}</table>"


def displacement_plot(disp: np.ndarray, s: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(disp, bins=min(80, max(10, int(np.sqrt(len(disp))))), color="#4c72b0")
    for key, style in (("displacement_mean", "-"), ("displacement_p50", "--"), ("displacement_p95", ":")):
        ax.axvline(s[key], color="#c44e52", ls=style, label=f"{key.split('_')[1]} {s[key]:.4f}")
    ax.set_xlabel("|x_after - x_before|  (L2-normalized image rows)")
    ax.set_ylabel("images")
    ax.legend(frameon=False)
    return _img(fig, "displacement histogram")


def measures_plot(before: dict, after: dict, keys) -> str:
    plt = _plt()
    keys = [k for k in keys if all(isinstance(d.get(k), float) and math.isfinite(d[k]) for d in (before, after))]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(keys) + 2), 3.6))
    pos = np.arange(len(keys))
    ax.bar(pos - 0.2, [before[k] for k in keys], 0.4, label="before", color="#8da0cb")
    ax.bar(pos + 0.2, [after[k] for k in keys], 0.4, label="after", color="#fc8d62")
    ax.set_xticks(pos, keys, rotation=45, ha="right")
    ax.axhline(0, color="#999", lw=0.8)
    ax.legend(frameon=False)
    return _img(fig, "measures before and after")


def projection_plot(p: dict) -> str:
    plt = _plt()
    pts = [np.pad(v, ((0, 0), (0, max(0, 2 - v.shape[1])))) for v in p.values()]
    allp = np.vstack(pts)
    lo, hi = allp.min(0), allp.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    pts = dict(zip(p, pts))
    for ax, side in zip(axes, ("before", "after")):
        im, tx = pts[f"images_{side}"], pts[f"texts_{side}"]
        ax.scatter(im[:, 0], im[:, 1], s=5, alpha=0.5, color="#4c72b0", label=f"images ({len(im)})")
        ax.scatter(tx[:, 0], tx[:, 1], s=30, alpha=0.8, marker="x", color="#dd8452", label=f"texts ({len(tx)})",
                   zorder=3)
        ax.set_title(side)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel("PC1 (fitted on before)")
        ax.legend(frameon=False, loc="best")
    axes[0].set_ylabel("PC2")
    return _img(fig, "2-D projection before and after")


def per_class_plot(per_class: dict) -> str:
    plt = _plt()
    rows = sorted(((v["delta"], k) for k, v in per_class.items() if v["delta"] is not None))
    if len(rows) > PER_CLASS_BARS:
        rows = rows[: PER_CLASS_BARS // 2] + rows[-PER_CLASS_BARS // 2:]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(rows) + 1)))
    vals = [r[0] for r in rows]
    ax.barh(range(len(rows)), vals, color=["#55a868" if v >= 0 else "#c44e52" for v in vals])
    ax.set_yticks(range(len(rows)), [r[1][:30] for r in rows], fontsize=8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("zero-shot top-1 accuracy change (after - before)")
    return _img(fig, "per-class accuracy change")


def forgetting_plot(forg: dict) -> str:
    plt = _plt()
    names = list(forg["tasks"])
    vals = [forg["tasks"][n]["delta"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3))
    ax.bar(range(len(names)), vals, color=["#55a868" if v >= 0 else "#c44e52" for v in vals])
    ax.set_xticks(range(len(names)), [n[:25] for n in names], rotation=30, ha="right")
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_ylabel("zero-shot top-1 change")
    return _img(fig, "forgetting per task")


def render(drift) -> str:
    """The HTML document of a :class:`embedx.drift.Drift`."""
    s = drift.summary
    b, a, d = s["before"], s["after"], s["delta"]
    k = s["knn_k"]
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>embedx drift report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>embedx drift report</h1>",
             f"<p><b>before</b> <code>{esc(b['path'])}</code><br><b>after</b> <code>{esc(a['path'])}</code><br>"
             f"{s['n_images']} images, d = {s['dim']}, {esc(s['mode'])} store</p>",
             "<h2>Summary</h2>",
             _table(["statistic", "value"], [
                 f"<tr><td>{esc(n)}</td><td>{_fmt(v)}</td></tr>" for n, v in (
                     ("displacement mean = W1 upper bound", s["displacement_mean"]),
                     ("displacement p50", s["displacement_p50"]), ("displacement p95", s["displacement_p95"]),
                     ("linear CKA", s["cka_linear"]),
                     (f"kNN overlap@{k} ({s['knn_sample_size']} queries)", s[f"knn_overlap@{k}"]))]),
             "<p class=\"muted\">Displacement is |x_after &minus; x_before| per image (rows L2-normalized); its mean "
             "bounds the 1-Wasserstein distance between the two embedding distributions (pairing each image with "
             "itself is a coupling). CKA: linear centered kernel alignment of the image embeddings. kNN overlap: "
             f"share of each image's {k} nearest cosine neighbours kept.</p>",
             "<h2>Displacement</h2>", displacement_plot(drift.displacement, s),
             "<h2>Measures</h2>", measures_plot(b, a, list(d)),
             _table(["measure", "before", "after", "delta"], [
                 f"<tr><td>{esc(m)}</td><td>{_fmt(b[m])}</td><td>{_fmt(a[m])}</td>{_delta_cell(d[m])}</tr>"
                 for m in d]),
             "<h2>2-D projection</h2>",
             f"<p class=\"muted\">PCA fitted on the before images (a sample of {s['plot_sample_size']}) and texts; "
             "both stores projected on the same axes.</p>",
             projection_plot(drift.projection)]
    if s.get("per_class"):
        pc = s["per_class"]
        parts += ["<h2>Per-class zero-shot accuracy</h2>", per_class_plot(pc),
                  _table(["class", "images", "before", "after", "delta"], [
                      f"<tr><td>{esc(n)}</td><td>{v['n_images']}</td><td>{_fmt(v['acc_before'])}</td>"
                      f"<td>{_fmt(v['acc_after'])}</td>{_delta_cell(v['delta'])}</tr>"
                      for n, v in sorted(pc.items(), key=lambda kv: (kv[1]["delta"] is None, kv[1]["delta"] or 0))])]
    if s.get("forgetting"):
        f = s["forgetting"]
        parts += ["<h2>Forgetting on other tasks</h2>", forgetting_plot(f),
                  _table(["task", "before store", "after store", "top-1 before", "top-1 after", "delta"], [
                      f"<tr><td>{esc(n)}</td><td>{esc(t['before'])}</td><td>{esc(t['after'])}</td>"
                      f"<td>{_fmt(t['zeroshot_top1_before'])}</td><td>{_fmt(t['zeroshot_top1_after'])}</td>"
                      f"{_delta_cell(t['delta'])}</tr>" for n, t in f["tasks"].items()]
                      + ["<tr><td><b>mean</b></td>" + "<td></td>" * 4 + f"{_delta_cell(f['mean_delta'])}</tr>"])]
    parts += [_CHECK, "</body></html>"]
    return "\n".join(parts)


def write(drift, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(drift))
