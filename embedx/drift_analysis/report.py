"""The drift report: one self-contained HTML file answering "what did fine-tuning do?".

Sections, top to bottom: the run (model, method, its settings, trainable parameters, data); the headline (task
gain, the change on other tasks, per-class spread, how far images and class prompts moved); image side next to
text side; every measure before -> after, one chart per group of measures (``embedx.drift_analysis.glossary``:
accuracies, cosines and silhouettes, distances) on one scale shared by the group, each measure defined in one
line; per-class accuracy beside each class prompt's move; 2-D projections coloured by class with the class texts
named, both panels on the same ranges; the accuracy change on each other task; the stores and options, in words.

Colours mean better / worse only where the direction is known, and agree with the sign of the change shown:
accuracies and recalls, and the change on other tasks (after - before: above 0 better, below 0 forgotten), are
green when they rise and red when they fall; every other change is drawn neutral grey. Axes never stretch a small
change: a change axis spans at least +-``MIN_HALF_SPAN`` (accuracy units), a group's shared axis at least
2 * ``MIN_HALF_SPAN``, so a -0.003 change looks small and a -0.05 change looks a tenth of a -0.5 one.

Paths are shown as the report's reader can use them: relative to the report's folder when below it, as given
when relative, else by their last component (``.../run``): no absolute path of the machine that wrote it.

Plots are base64 PNG from matplotlib's Agg backend; no external URL is referenced and nothing needs JavaScript;
one inline script only records, on <body>, whether every plot decoded (``data-images-ok``), for automated checks
in a headless browser.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os

import numpy as np

from embedx.drift_analysis import glossary
from embedx.store.atomic import atomic_write_bytes
from embedx.plottext import literal

PER_CLASS_BARS = 40  # classes shown in the per-class chart: the largest drops and gains
LABELLED_CLASSES = 40  # class texts named in the projection (beyond: coloured, not named)
MIN_HALF_SPAN = 0.05  # accuracy-change axes span at least +-0.05
BETTER, WORSE, NEUTRAL, BEFORE = "#1a7f37", "#c62828", "#6e7781", "#9aa4ae"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1180px;
color:#222;padding:0 1em}
h1{font-size:1.45em;margin-bottom:.2em}h2{font-size:1.12em;margin-top:1.8em;border-bottom:1px solid #ddd;
padding-bottom:.2em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}
td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:right;vertical-align:middle}
td:first-child,th:first-child{text-align:left}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}.neutral{color:#555}
.muted{color:#777;font-size:.85em}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
td img{margin:0}tr.measure-row td{padding-top:.05em;padding-bottom:.05em}summary{cursor:pointer;font-size:.9em;color:#444}
code{background:#f4f4f4;padding:0 .3em}
.run{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:.6em 1em;font-size:.9em;line-height:1.5}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:.8em 0}
.card{flex:1 1 220px;border:1px solid #e1e4e8;border-radius:6px;padding:.6em .9em}
.card .label{font-size:.8em;color:#666;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:1.7em;font-weight:600;margin:.1em 0}
.card .sub{font-size:.85em;color:#555}
.legend{display:flex;flex-wrap:wrap;gap:.3em 1em;font-size:.85em;margin:.3em 0}
.legend span.sw{display:inline-block;width:.9em;height:.9em;border-radius:50%;margin-right:.3em;
vertical-align:-.1em}
.two{display:flex;gap:1.5em;flex-wrap:wrap}.two>div{flex:1 1 480px}
h3.group{font-size:1em;margin:1.2em 0 .2em}td.def{text-align:left;color:#444;font-size:.95em;max-width:34em}
table.measures th:nth-child(2){text-align:left}
"""

_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = imgs.length > 0;
  for (var i = 0; i < imgs.length; i++) { if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) ok = false; }
  document.body.setAttribute("data-images-ok", ok ? String(imgs.length) : "no");
});
</script>"""


# -- direction and formatting -----------------------------------------------------------------------------------
direction = glossary.direction  # +1: larger is better (accuracies, recalls); 0: not known


def verdict(delta, sign: int) -> str:
    """CSS class of a change: better / worse when the direction is known and the change is not zero."""
    if sign == 0 or not _ok(delta) or delta == 0:
        return "neutral"
    return "better" if delta * sign > 0 else "worse"


def _colour(delta, sign: int) -> str:
    return {"better": BETTER, "worse": WORSE, "neutral": NEUTRAL}[verdict(delta, sign)]


def _ok(v) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _e(v) -> str:
    """Any value as HTML text (quotes escaped too, so it is also safe inside an attribute)."""
    return html.escape(str(v), quote=True)


def _items(d) -> list:
    return list(d.items()) if isinstance(d, dict) else []


def _fmt(v, signed: bool = False, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return _e(v)  # not a number: shown as text, escaped
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _delta_cell(v, sign: int = 0) -> str:
    return f'<td class="{verdict(v, sign)}">{_fmt(v, signed=True)}</td>'


def _table(head, rows, cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><tr>{h}</tr>{''.join(rows)}</table>"


def change_span(values, min_half: float = MIN_HALF_SPAN, cap: float | None = 1.0) -> float:
    """Half-width of a symmetric change axis: at least ``min_half``, else 10% beyond the largest |change|,
    at most ``cap`` (accuracy changes lie in [-1, 1])."""
    big = max([abs(v) for v in values if _ok(v)] + [0.0])
    half = max(min_half, 1.1 * big)
    return min(half, cap) if cap else half


def group_window(values) -> tuple[float, float]:
    """The x-range shared by a group of measures: every before and after value, 8% of the span beyond each end,
    at least 2 * ``MIN_HALF_SPAN`` wide (centred on the values when they span less)."""
    vals = [float(v) for v in values if _ok(v)] or [0.0]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < 2 * MIN_HALF_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_HALF_SPAN, mid + MIN_HALF_SPAN
    return lo, hi


def measure_groups(s: dict) -> dict:
    """The measures of a summary by group (``glossary.GROUPS`` order): {group: {"measures": [names], "window":
    (lo, hi) shared by them (:func:`group_window` of their defined before / after values)}}."""
    out = {}
    for m in s["delta"]:
        out.setdefault(glossary.group(m), []).append(m)
    return {g: {"measures": out[g], "window": group_window([s[side].get(m) for m in out[g]
                                                            for side in ("before", "after")])}
            for g in glossary.GROUPS if g in out}


def shown_path(path, base: str | None = None) -> str:
    """``path`` as the report shows it (module docstring): a URL or a relative path as given, an absolute path
    relative to ``base`` (the report's folder) when below it, else ``.../`` and its last component."""
    from embedx.fs.locations import location

    p = str(path)
    if not location(p).local or not os.path.isabs(p):
        return p
    if base:
        rel = os.path.relpath(p, base)
        if rel != ".." and not rel.startswith(".." + os.sep):
            return rel
    return ".../" + (os.path.basename(p.rstrip("/")) or p)


def plain(v) -> str:
    """An option value in words: None -> "default", True/False -> "yes"/"no", a list or tuple -> "a, b"."""
    if v is None:
        return "default"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(plain(x) for x in v) or "none"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


OPTION_WORDS = {"metrics": "measures", "silhouette_mode": "silhouette", "sample_size": "silhouette sample size",
                "knn": "retrieval recall", "knn_k": "kNN overlap k", "knn_sample": "kNN queries (at most)",
                "plot_sample": "images plotted"}


def option_text(options) -> str:
    """The options of a summary as plain text: ``measures: all the stores support · silhouette: exact · ...``."""
    out = []
    for k, v in _items(options):
        if k == "metrics" and v is None:
            out.append("measures: all the stores support")
        elif k == "knn_sample" and v is None:
            out.append("kNN queries: every image")
        else:
            out.append(f"{OPTION_WORDS.get(k, str(k).replace('_', ' '))}: {plain(v)}")
    return " \u00b7 ".join(out)


# -- plots -------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str, cls: str = "", dpi: int = 100) -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig, dpi)}">'


def group_chart(title: str, measures: list, s: dict, window: tuple) -> str:
    """:func:`group_figure` as an <img>."""
    return _img(group_figure(title, measures, s, window), f"{title}: before and after on one scale", "measure-chart")


def group_figure(title: str, measures: list, s: dict, window: tuple):
    """The measures of one group on one shared axis ``window``: per row, before (grey dot) -> after (arrow head,
    coloured better / worse / neutral), so equal changes have equal lengths."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    rows = [m for m in measures if _ok(s["before"].get(m)) and _ok(s["after"].get(m))]
    fig, ax = plt.subplots(figsize=(7.2, 0.34 * len(rows) + 0.75))
    for i, m in enumerate(rows):
        b, a = float(s["before"][m]), float(s["after"][m])
        col = _colour(a - b, direction(m))
        ax.plot([b, a], [i, i], color=col, lw=2.2, solid_capstyle="butt", zorder=1)
        ax.scatter([b], [i], s=28, color=BEFORE, zorder=2)
        ax.scatter([a], [i], s=55, color=col, marker=">" if a > b else "<" if a < b else "o", zorder=3)
    ax.set_yticks(range(len(rows)), [literal(m) for m in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(*window)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", color="#e5e5e5", lw=0.8, zorder=0)
    ax.set_axisbelow(True)
    for sp in ("left", "right", "top"):
        ax.spines[sp].set_visible(False)
    ax.set_xlabel(f"{title}: before (grey dot) \u2192 after (arrow head), one scale for the group", fontsize=9)
    fig.tight_layout()
    return fig


def movement_plot(disp: np.ndarray, s: dict) -> str:
    """Image displacement histogram beside the text rows' displacements, on one shared x axis."""
    plt = _plt()
    t = s.get("text_drift")
    per = (t or {}).get("per_class") or {}
    top = max([float(np.max(disp)) if len(disp) else 0.0, (t or {}).get("displacement_max") or 0.0, 0.1])
    fig, axes = plt.subplots(1, 2, figsize=(11, 2.8), gridspec_kw={"width_ratios": [1.25, 1]})
    ax = axes[0]
    ax.hist(disp, bins=min(60, max(10, int(np.sqrt(len(disp))))), range=(0, top * 1.05), color="#4c72b0")
    ax.axvline(s["displacement_mean"], color="#222", ls="-", lw=1, label=f"mean {s['displacement_mean']:.4f}")
    ax.axvline(s["displacement_p95"], color="#222", ls=":", lw=1, label=f"p95 {s['displacement_p95']:.4f}")
    ax.set_xlim(0, top * 1.05)
    ax.set_title("images: |x_after - x_before|", fontsize=10)
    ax.set_xlabel("displacement of the L2-normalized row")
    ax.set_ylabel("images")
    ax.legend(frameon=False, fontsize=8)
    ax = axes[1]
    if per:
        rows = sorted(per.items(), key=lambda kv: kv[1]["displacement"])[-PER_CLASS_BARS:]
        ax.barh(range(len(rows)), [v["displacement"] for _, v in rows], color="#dd8452")
        ax.set_yticks(range(len(rows)), [literal(k[:24]) for k, _ in rows], fontsize=8 if len(rows) <= 20 else 6)
        ax.set_title("class prompts: |t_after - t_before| per class", fontsize=10)
    elif t:
        ax.text(0.5, 0.5, f"captions: mean {t['displacement_mean']:.4f}, p95 {t['displacement_p95']:.4f}",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        ax.text(0.5, 0.5, "no texts", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, top * 1.05)
    ax.set_xlabel("displacement of the L2-normalized row (same scale as images)")
    fig.tight_layout()
    return _img(fig, "image and text displacement")


def per_class_plot(per_class: dict) -> str:
    """Accuracy change per class (green up, red down, axis at least +-0.05) beside its prompt's displacement."""
    plt = _plt()
    rows = sorted(((v["delta"], k) for k, v in per_class.items() if v["delta"] is not None))
    if len(rows) > PER_CLASS_BARS:
        rows = rows[: PER_CLASS_BARS // 2] + rows[-PER_CLASS_BARS // 2:]
    has_prompt = any("prompt_displacement" in per_class[k] for _, k in rows)
    fig, axes = plt.subplots(1, 2 if has_prompt else 1, figsize=(10 if has_prompt else 7,
                                                                   max(2.2, 0.2 * len(rows) + 0.9)),
                             sharey=True, squeeze=False, gridspec_kw={"width_ratios": [1.6, 1][:2 if has_prompt
                                                                                                else 1]})
    ax = axes[0, 0]
    vals = [r[0] for r in rows]
    ax.barh(range(len(rows)), vals, color=[_colour(v, 1) for v in vals])
    ax.set_yticks(range(len(rows)), [literal(r[1][:30]) for r in rows], fontsize=8)
    half = change_span(vals)
    ax.set_xlim(-half, half)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("zero-shot top-1 change (after - before)")
    if has_prompt:
        ax2 = axes[0, 1]
        pv = [per_class[k].get("prompt_displacement") or 0.0 for _, k in rows]
        ax2.barh(range(len(rows)), pv, color="#dd8452")
        ax2.set_xlim(0, max(0.1, 1.1 * max(pv + [0.0])))
        ax2.set_xlabel("class prompt displacement |t_after - t_before|")
    fig.tight_layout()
    return _img(fig, "per-class accuracy change and class prompt displacement")


def class_colours(c: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if c <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(c)]


def projection_limits(p: dict) -> tuple:
    """((x0, x1), (y0, y1)) shared by the before and after panels: every plotted point of both, 6% beyond."""
    pts = [np.asarray(p[k], dtype=np.float64)[:, :2] for k in ("images_before", "texts_before", "images_after",
                                                              "texts_after") if len(p[k])]
    both = np.vstack(pts) if pts else np.zeros((1, 2))
    if both.shape[1] < 2:
        both = np.pad(both, ((0, 0), (0, 2 - both.shape[1])))
    lo, hi = both.min(0), both.max(0)
    pad = 0.06 * np.maximum(hi - lo, 1e-9)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def projection_plot(p: dict) -> str:
    """:func:`projection_figure` as an <img>."""
    return _img(projection_figure(p), "2-D projection before and after, coloured by class")


def projection_figure(p: dict):
    """Before | after on the same PCA axes and the same ranges (:func:`projection_limits`); class stores: images
    coloured by class, class texts as large outlined markers of the class colour, named."""
    plt = _plt()
    keys = ("images_before", "texts_before", "images_after", "texts_after")
    pts = {k: np.pad(p[k], ((0, 0), (0, max(0, 2 - p[k].shape[1])))) for k in keys}
    names = p.get("class_names")
    lims = projection_limits(pts)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3))
    for ax, side in zip(axes, ("before", "after")):
        im, tx = pts[f"images_{side}"], pts[f"texts_{side}"]
        if names is not None:
            cols = class_colours(len(names))
            lab = np.asarray(p["image_labels"])
            known = lab >= 0
            ax.scatter(im[~known, 0], im[~known, 1], s=5, alpha=0.4, color="#bbb")
            ax.scatter(im[known, 0], im[known, 1], s=7, alpha=0.55, c=[cols[i] for i in lab[known]],
                       linewidths=0)
            tl = np.asarray(p["text_labels"])
            ax.scatter(tx[:, 0], tx[:, 1], s=150, marker="*", c=[cols[i] for i in tl], edgecolors="black",
                       linewidths=0.8, zorder=3)
            if len(tl) <= LABELLED_CLASSES:
                for (x, y), i in zip(tx, tl):
                    ax.annotate(literal(names[i][:18]), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8,
                                weight="bold", zorder=4,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
        else:
            ax.scatter(im[:, 0], im[:, 1], s=5, alpha=0.5, color="#4c72b0", label=f"images ({len(im)})")
            ax.scatter(tx[:, 0], tx[:, 1], s=5, alpha=0.5, color="#dd8452", label=f"captions ({len(tx)})")
            ax.legend(frameon=False, loc="best", markerscale=3)
        ax.set_title(side)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_xlabel("PC1 (fitted on before)")
        ax.set_ylabel("PC2")
    fig.tight_layout()
    return fig


def projection_legend(p: dict) -> str:
    names = p.get("class_names")
    if names is None:
        return ('<div class="legend projection-legend"><span><span class="sw" style="background:#4c72b0"></span>'
                'images</span><span><span class="sw" style="background:#dd8452"></span>captions</span></div>')
    cols = class_colours(len(names))
    items = [f'<span><span class="sw" style="background:rgb({int(255 * c[0])},{int(255 * c[1])},'
             f'{int(255 * c[2])})"></span>{html.escape(n[:30])}</span>' for n, c in zip(names, cols)]
    more = "" if len(names) <= 100 else f"<span>&hellip; {len(names) - 100} more</span>"
    return (f'<div class="legend projection-legend">{"".join(items[:100])}{more}</div><p class="muted">dots: images, '
            'coloured by their class; stars: the class texts (prompt ensembles), named.</p>')


def forgetting_plot(forg: dict) -> str:
    plt = _plt()
    names = [n for n, t in forg["tasks"].items() if t["delta"] is not None]
    vals = [forg["tasks"][n]["delta"] for n in names]
    fig, ax = plt.subplots(figsize=(7, max(1.6, 0.4 * len(names) + 0.9)))
    ax.barh(range(len(names)), vals, color=[_colour(v, 1) for v in vals], height=0.6)
    ax.set_yticks(range(len(names)), [literal(n[:28]) for n in names], fontsize=9)
    half = change_span(vals)
    ax.set_xlim(-half, half)
    ax.axvline(0, color="#999", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("zero-shot top-1 change on the other task (after - before; below 0: forgotten)")
    fig.tight_layout()
    return _img(fig, "forgetting per task")


# -- sections ------------------------------------------------------------------------------------------------
def _run_block(s: dict, base: str | None = None) -> str:
    esc = html.escape
    h = s.get("headline") or {}
    run = h.get("run")
    st = s.get("stores", {})
    lines = []
    if run:
        opts = ", ".join(f"{str(k).replace('_', ' ')} {plain(v)}" for k, v in _items(run.get("options"))) \
            or "its defaults"
        tp, tot = run.get("trainable_params"), run.get("total_params")
        share = f" ({100 * tp / tot:.3g}% of {tot:,})" if _ok(tp) and _ok(tot) and tot else ""
        tp_text = _fmt(tp) if _ok(tp) else "&ndash;"
        sha = run.get("sha256")
        sha = f" (params sha256 {esc(sha[:12])})" if isinstance(sha, str) and sha else ""
        lines.append(f"<b>run</b> <code>{esc(shown_path(run.get('path'), base))}</code>{sha}: method <b>{esc(str(run.get('method')))}"
                     f"</b> ({esc(opts)}) on <b>{esc(str(run.get('model')))}</b> "
                     f"{'(' + esc(str(run['family'])) + ') ' if run.get('family') else ''}"
                     f"(pretrained {esc(str(run.get('pretrained')))}), trainable parameters <b>"
                     f"{tp_text}</b>{share}")
        if run.get("rule"):
            lines.append(f"<b>rule</b> ({esc(str(run.get('towers') or 'both'))} towers): {esc(str(run['rule']))}")
        if run.get("config_found"):
            acc = run.get("best_val_acc")
            lines.append(f"<b>trained on</b> <code>{_e(run.get('data'))}</code>: {_e(run.get('epochs'))} epochs, "
                         f"{_e(run.get('optimizer'))} lr {_e(run.get('lr'))}, batch {_e(run.get('batch_size'))}, "
                         f"weight decay {_e(run.get('weight_decay'))}; best epoch {_e(run.get('best_epoch'))} "
                         f"(hold-out acc {_fmt(acc, digits=3) if _ok(acc) else '&ndash;'})")
        else:
            lines.append('<span class="muted">the run folder (config.json) is no longer readable: settings beyond '
                         'the store\'s checkpoint record are unknown</span>')
    else:
        b = st.get("before", {})
        lines.append(f"<b>run</b>: AFTER records no finetune run (not embedded from a finetune checkpoint); "
                     f"model {esc(str(b.get('model')))}")
    for role in ("before", "after"):
        r = st.get(role, {})
        lines.append(f"<b>{role}</b> <code>{esc(shown_path(r.get('path'), base))}</code>: {esc(str(r.get('model')))}"
                     f"{' + ' + esc(str((r.get('checkpoint') or {}).get('method'))) if r.get('checkpoint') else ''}"
                     f" on <code>{esc(str(r.get('dataset')))}</code>, {_e(r.get('n_images'))} images, "
                     f"{_e(r.get('n_texts'))} texts, {esc(str(r.get('dtype')))}")
    lines.append(f"{s['n_images']:,} images, d = {_e(s['dim'])}, {esc(str(s['mode']))} mode &middot; embedx "
                 f"{esc(str(s.get('embedx_version')))} &middot; {esc(str(s.get('created')))}")
    for label, rb, ra in _role_pairs(st):  # the pairs that look swapped (``comparison.looks_swapped``)
        ck = rb.get("checkpoint")
        if isinstance(ck, dict) and not isinstance(ra.get("checkpoint"), dict):
            lines.append(f'<span class="worse">warning: {esc(label)}BEFORE <code>{esc(shown_path(rb.get("path"), base))}'
                         f'</code> was embedded with the finetune run <code>{esc(shown_path(ck.get("path"), base))}'
                         f'</code> ({esc(str(ck.get("method")))}) and AFTER <code>'
                         f'{esc(shown_path(ra.get("path"), base))}</code> with the base model: the two look swapped '
                         "(every change reads AFTER &minus; BEFORE)</span>")
    for f in s.get("forced") or []:
        lines.append(f'<span class="worse">compared with force, although the stores hold different samples: '
                     f"{esc(str(f))}</span>")
    return '<div class="run" id="provenance">' + "<br>".join(lines) + "</div>"


def _role_pairs(stores: dict) -> list:
    """(label, before record, after record) of the compared pair and of each other task, from ``stores``."""
    out = [("", stores.get("before") or {}, stores.get("after") or {})]
    for role, r in _items(stores):
        if role.startswith("others/") and role.endswith("/before"):
            name = role[len("others/"):-len("/before")]
            out.append((f"others {name}: ", r or {}, stores.get(f"others/{name}/after") or {}))
    return out


def _card(label: str, value: str, sub: str, cls: str = "neutral") -> str:
    return (f'<div class="card"><div class="label">{label}</div><div class="value {cls}">{value}</div>'
            f'<div class="sub">{sub}</div></div>')


def _headline(s: dict) -> str:
    esc = html.escape
    h = s.get("headline") or {}
    cards = []
    g = h.get("task_gain")
    cards.append(_card("task gain", _fmt(g, True, 3), (
        f"{esc(str(h.get('accuracy', 'accuracy')))} {_fmt(h.get('zeroshot_top1_before'), digits=3)} &rarr; "
        f"{_fmt(h.get('zeroshot_top1_after'), digits=3)} on <code>{esc(str(h.get('task')))}</code>"
        if g is not None else f"undefined on <code>{esc(str(h.get('task')))}</code>: no labelled images"),
        verdict(g, 1)))
    f = h.get("forgetting")
    if h.get("n_other_tasks"):
        cards.append(_card("change on other tasks", _fmt(f, True, 3),
                           f"mean zero-shot top-1 after &minus; before on {_e(h['n_other_tasks'])} other task"
                           f"{'s' if h['n_other_tasks'] != 1 else ''}: above 0 better, below 0 forgotten",
                           verdict(f, 1)))
    else:
        cards.append(_card("change on other tasks", "&ndash;", "not measured (forgetting): give other tasks "
                           "(<code>others</code>: NAME=BEFORE:AFTER)"))
    pc = h.get("per_class")
    if pc:
        cards.append(_card("per class", f"{_e(pc['gained'])}&uarr; {_e(pc['lost'])}&darr;",
                           f"of {_e(pc['classes'])} classes; best <b>{esc(pc['best']['class'][:20])}</b> "
                           f"<span class=\"{verdict(pc['best']['delta'], 1)}\">{_fmt(pc['best']['delta'], True, 2)}"
                           f"</span>, worst <b>{esc(pc['worst']['class'][:20])}</b> <span class=\""
                           f"{verdict(pc['worst']['delta'], 1)}\">{_fmt(pc['worst']['delta'], True, 2)}</span>"))
    t = s.get("text_drift")
    cards.append(_card("what moved (mean displacement)",
                       f"{_fmt(s.get('displacement_mean'), digits=3)} / {_fmt((t or {}).get('displacement_mean'), digits=3)}",
                       f"images / {esc(str((t or {}).get('rows', 'texts')))}; CKA {_fmt(s.get('cka_linear'), digits=3)} / "
                       f"{_fmt((t or {}).get('cka_linear'), digits=3)}"))
    return '<section id="headline"><div class="cards">' + "".join(cards) + "</div></section>"


def _sides(drift) -> str:
    s = drift.summary
    t = s.get("text_drift") or {}
    k = s["knn_k"]
    cols = [("displacement mean", "displacement_mean"), ("p50", "displacement_p50"), ("p95", "displacement_p95"),
            ("linear CKA", "cka_linear"), (f"kNN overlap (k={k})", "knn_overlap"), ("cosine mean", "cosine_mean"),
            ("cosine min", "cosine_min")]
    img = [s.get(key) if key in s else None for _, key in cols]
    txt = [t.get(key) if key != "knn_overlap" else None for _, key in cols]
    tab = _table(["embeddings"] + [c for c, _ in cols],
                 [f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{_fmt(v)}</td>' for v in vals)}</tr>"
                  for name, vals in ((f"images ({s['n_images']:,}; kNN on {s['knn_sample_size']:,} queries)", img),
                                     (f"{t.get('rows', 'texts')} ({t.get('n_texts', 0):,})", txt))])
    return ('<section id="text-drift"><h2>What moved: image side and text side</h2>' + tab +
            movement_plot(drift.displacement, s) +
            '<p class="muted">Displacement: |a &minus; b| of the L2-normalized embeddings of the same image (or the '
            'same class prompt / caption) before and after; 0 = did not move, &radic;2 = orthogonal. Its image mean '
            'bounds the 1-Wasserstein distance between the two image distributions. Linear CKA: centred kernel '
            'alignment of the two embeddings (1 = the same geometry up to rotation and scale). kNN overlap: share '
            "of each image's nearest cosine neighbours kept.</p></section>")


def _measures(s: dict) -> str:
    b, a, d = s["before"], s["after"], s["delta"]
    parts = []
    for g, info in measure_groups(s).items():
        title, scale = glossary.GROUPS[g]
        rows = []
        for m in info["measures"]:
            sign = direction(m)
            dirn = " &uarr; better" if sign > 0 else ""
            rows.append(f'<tr class="measure-row"><td>{html.escape(m)}<span class="muted">{dirn}</span></td>'
                        f'<td class="def">{html.escape(glossary.definition(m))}</td><td>{_fmt(b[m])}</td>'
                        f"<td>{_fmt(a[m])}</td>{_delta_cell(d[m], sign)}</tr>")
        drawn = any(_ok(b.get(m)) and _ok(a.get(m)) for m in info["measures"])
        chart = group_chart(title, info["measures"], s, info["window"]) if drawn else ""
        parts.append(f'<h3 class="group" id="group-{g}">{html.escape(title)} <span class="muted">'
                     f"({html.escape(scale)})</span></h3>{chart}"
                     + _table(["measure", "what it is", "before", "after", "change"], rows, "measures"))
    return ('<section id="measures"><h2>Every measure, one scale per group</h2>'
            '<p class="muted">Grey dot: before; arrow head: after (green better, red worse, grey where better or '
            'worse is not defined). The measures of a group share one axis, so equal changes have equal lengths; '
            'an axis spans at least 0.1, so small changes look small.</p>' + "".join(parts) + "</section>")


def _per_class(s: dict) -> str:
    pc = s.get("per_class")
    if not pc:
        return ""
    esc = html.escape
    rows = [f"<tr><td>{esc(n)}</td><td>{_e(v['n_images'])}</td><td>{_fmt(v['acc_before'])}</td>"
            f"<td>{_fmt(v['acc_after'])}</td>{_delta_cell(v['delta'], 1)}<td>{_fmt(v.get('prompt_cosine'))}</td>"
            f"<td>{_fmt(v.get('prompt_displacement'))}</td></tr>"
            for n, v in sorted(pc.items(), key=lambda kv: (kv[1]["delta"] is None, kv[1]["delta"] or 0))]
    return ('<section id="per-class"><h2>Per-class zero-shot accuracy and class prompt movement</h2>'
            + per_class_plot(pc) + f"<details><summary>every class ({len(pc)}): accuracy and prompt change</summary>"
            + _table(["class", "images", "top-1 before", "top-1 after", "change", "prompt cosine", "prompt displacement"],
                     rows) + "</details></section>")


def _projection(drift) -> str:
    s = drift.summary
    return ('<section id="projection"><h2>2-D projection</h2>'
            f"<p class=\"muted\">PCA fitted on the before images (a sample of {_e(s['plot_sample_size'])}); both stores "
            "projected on the same axes and drawn on the same ranges, so positions and spreads compare across the "
            "panels. Each side's texts are drawn shifted by that side's modality gap (mean image "
            f"&minus; mean text; its length {_fmt(drift.projection.get('gap_before'), digits=3)} before, "
            f"{_fmt(drift.projection.get('gap_after'), digits=3)} after), so each class text sits among the images "
            "it points at.</p>" + projection_legend(drift.projection)
            + projection_plot(drift.projection) + "</section>")


def _forgetting(s: dict) -> str:
    f = s.get("forgetting")
    if not f:
        return ""
    esc = html.escape
    rows = [f"<tr><td>{esc(n)}</td><td>{esc(str(t.get('dataset')))}</td><td>{_e(t.get('n_images'))}</td>"
            f"<td>{_fmt(t['zeroshot_top1_before'])}</td><td>{_fmt(t['zeroshot_top1_after'])}</td>"
            f"{_delta_cell(t['delta'], 1)}</tr>" for n, t in f["tasks"].items()]
    rows.append("<tr><td><b>mean</b></td>" + "<td></td>" * 4 + f"{_delta_cell(f['mean_delta'], 1)}</tr>")
    plot = forgetting_plot(f) if any(t["delta"] is not None for t in f["tasks"].values()) else ""
    return ('<section id="forgetting"><h2>Other tasks: accuracy change (forgetting below 0)</h2>'
            '<p class="muted">Zero-shot top-1 after &minus; before on each other task: above 0 (green) the tuned '
            'model does better there, below 0 (red) it forgot.</p>' + plot +
            _table(["task", "data", "images", "top-1 before", "top-1 after", "change"], rows) + "</section>")


def _stores(s: dict, base: str | None = None) -> str:
    esc = html.escape
    rows = [f"<tr><td>{esc(role)}</td><td><code>{esc(shown_path(r.get('path'), base))}</code></td><td>{esc(str(r.get('model')))}"
            f"</td><td>{esc(str((r.get('checkpoint') or {}).get('method') or '-'))}</td>"
            f"<td>{esc(str(r.get('dataset')))}</td><td>{esc(str(r.get('generation')))}</td></tr>"
            for role, r in (s.get("stores") or {}).items()]
    opts = option_text(s.get("options"))
    return ('<section id="stores"><h2>Stores and options</h2>'
            + _table(["role", "path", "model", "finetune", "data", "generation"], rows)
            + f'<p class="muted">options: {esc(opts)} &middot; schema {esc(str(s.get("schema")))}</p></section>')


def render(drift, base: str | None = None) -> str:
    """The HTML document of a :class:`embedx.drift.Drift`; ``base``: the folder the report is written to (paths
    are shown relative to it, :func:`shown_path`)."""
    s = drift.summary
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>embedx drift report</title>'
             f"<style>{_CSS}</style></head><body>",
             "<h1>What did fine-tuning do?</h1>", _run_block(s, base), _headline(s), _sides(drift), _measures(s),
             _per_class(s), _projection(drift), _forgetting(s), _stores(s, base), _CHECK, "</body></html>"]
    return "\n".join(p for p in parts if p)


def write(drift, path: str) -> None:
    """Render the whole report first, then replace ``path`` atomically: a failure leaves the old file intact."""
    atomic_write_bytes(path, render(drift, os.path.dirname(os.path.abspath(path))).encode("utf-8"))
