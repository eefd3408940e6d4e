"""``compare``: the drift between two stores of the same samples (the package docstring lists every key)."""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np

import embedx.drift_analysis.drift_pass as stats
from embedx.drift_analysis import scores as drift_scores
from embedx.drift_analysis.headline import headline, task_accuracy
from embedx.drift_analysis.textside import text_drift
from embedx.engine import registry
from embedx.engine.progress import notice
from embedx.errors import EmbedxError
from embedx.measures import NOT_MEASURES, compute
from embedx.measures.stream import normalized
from embedx.provenance import provenance
from embedx.store import Store

PLOT_TEXTS_MAX = 2000
ZEROSHOT_KEYS = ("zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall")


@dataclass
class Drift:
    """``summary``: the JSON result; ``displacement`` (N) and ``projection`` feed the report's plots."""

    summary: dict
    displacement: np.ndarray
    projection: dict


def open_pair(before: str, after: str, force: bool = False) -> tuple[Store, Store]:
    """Open two complete stores and check that they hold the same samples (one-line error otherwise).

    Always refused (nothing to pair row by row): a different number of images, dimension or mode. Refused
    unless ``force`` (row i is then compared with row i anyway): different ids, labels or class names, and, as
    the store metadata records them, a different dataset spec or dataset fingerprint (both stores embedded from
    a source by ``embedx embed``) or split (:func:`sample_mismatch`)."""
    a, b = Store(before), Store(after)
    what = f"{before} and {after}"
    if a.n_images != b.n_images:
        raise EmbedxError(f"{what} hold different samples: {a.n_images} vs {b.n_images} images "
                          "(drift compares the same samples embedded twice)")
    if a.dim != b.dim:
        raise EmbedxError(f"{what} have different dimensions (d={a.dim} vs d={b.dim}); "
                          "drift compares embeddings of one dimension")
    if a.paired != b.paired:
        raise EmbedxError(f"{what} differ in mode ({a.meta['mode']} vs {b.meta['mode']})")
    why = sample_mismatch(a, b)
    if why and not force:
        raise EmbedxError(f"{what} hold different samples: {why} (drift compares the same samples embedded "
                          "twice; force=True compares row i with row i anyway)")
    return a, b


def sample_mismatch(a: Store, b: Store) -> str | None:
    """Why ``a`` and ``b`` (same N, d and mode) do not hold the same samples, or None. Checked in this order:
    the dataset spec (``digits:test`` vs ``digits:test:rotate=90``) and, the specs equal, the dataset fingerprint
    (sha256 of the source's ids, labels or captions and class names) when both stores were embedded from a
    source (imported stores name their dataset after a file: not compared); the split when both record one;
    the ids; for class stores the class names and the labels."""
    ma, mb = a.meta, b.meta
    if ma.get("dataset_sha256") and mb.get("dataset_sha256"):
        if ma.get("dataset") != mb.get("dataset"):
            return f"dataset {ma.get('dataset')!r} vs {mb.get('dataset')!r}"
        if ma["dataset_sha256"] != mb["dataset_sha256"]:
            return (f"the data behind {ma.get('dataset')!r} changed between the two embeds (dataset fingerprint "
                    f"{ma['dataset_sha256'][:12]} vs {mb['dataset_sha256'][:12]})")
    if ma.get("split") is not None and mb.get("split") is not None and ma["split"] != mb["split"]:
        return f"split {ma['split']!r} vs {mb['split']!r}"
    checks = [("ids", a.ids, b.ids)]
    if not a.paired:
        checks += [("class names", a.text_names, b.text_names), ("labels", a.labels, b.labels)]
    for name, x, y in checks:
        why = _differ(name, x(), y())
        if why:
            return why
    return None


def looks_swapped(a: Store, b: Store) -> str | None:
    """A warning when BEFORE was embedded with a finetune checkpoint and AFTER was not (the arguments look
    swapped: every change would read with the wrong sign), else None."""
    ck_a, ck_b = (s.meta.get("checkpoint") for s in (a, b))
    if isinstance(ck_a, dict) and not isinstance(ck_b, dict):
        return (f"BEFORE ({a.path}) was embedded with the finetune run {ck_a.get('path')} "
                f"({ck_a.get('method')}) and AFTER ({b.path}) with the base model: the two look swapped "
                "(every change reads AFTER - BEFORE)")
    return None


def _differ(name: str, x: np.ndarray, y: np.ndarray) -> str | None:
    if len(x) != len(y):
        return f"{name}: {len(x)} vs {len(y)}"
    diff = np.flatnonzero(np.asarray(x) != np.asarray(y))
    if len(diff):
        i = int(diff[0])
        return f"{name} differ at row {i} ({str(x[i])!r} vs {str(y[i])!r}; {len(diff)} rows differ)"
    return None


def parse_pair(spec: str) -> tuple[str, str, str]:
    """``[NAME=]BEFORE:AFTER`` -> (name, before, after); the name defaults to BEFORE's basename.

    The split is at the first ':' not followed by '//', so fsspec URLs (s3://...) work on either side."""
    name = None
    m = re.match(r"^([^=:/]+)=(.*)$", spec)
    if m:
        name, spec = m.group(1), m.group(2)
    parts = re.split(r":(?!//)", spec, maxsplit=1)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise EmbedxError(f"others takes [NAME=]BEFORE:AFTER, got {spec!r}", param="others")
    before, after = parts
    return name or os.path.basename(before.rstrip("/")) or before, before, after


def delta(before: dict, after: dict) -> dict:
    """after - before for every measure of both; None when either is undefined."""
    out = {}
    for k, v in before.items():
        if k in NOT_MEASURES or k not in after:
            continue
        w = after[k]
        ok = all(isinstance(z, (int, float)) and math.isfinite(z) for z in (v, w))
        out[k] = float(w - v) if ok else None
    return out


def open_others(others, force: bool = False) -> list[tuple[str, Store, Store]]:
    """``[NAME=]BEFORE:AFTER`` specs (or (name, before, after) tuples) -> checked pairs of open stores
    (:func:`open_pair`)."""
    pairs, seen = [], set()
    for spec in others:
        name, pb, pa = parse_pair(spec) if isinstance(spec, str) else spec
        if name in seen:
            raise EmbedxError(f"two others pairs are named {name!r}; name them NAME=BEFORE:AFTER", param="others")
        seen.add(name)
        pairs.append((name, *open_pair(pb, pa, force)))
    return pairs


def labelled(s: Store) -> int:
    """Images with a class label (paired stores: every image, its caption is its class)."""
    return s.n_images if s.paired else int((s.labels() >= 0).sum())


def defined(s: Store, m: dict) -> dict:
    """``m`` (the measures of ``s``) with the zero-shot accuracies null when undefined: a class store without a
    labelled image has no accuracy (never 0.0)."""
    if s.paired or labelled(s):
        return m
    return {k: (None if k in ZEROSHOT_KEYS and k in m else v) for k, v in m.items()}


def forgetting(pairs, **measure_opts) -> dict | None:
    """Zero-shot top-1 after - before on each other task (negative = forgotten), and the mean change over the
    tasks where it is defined (null when it is nowhere)."""
    if not pairs:
        return None
    tasks = {}
    for name, sb, sa in pairs:
        acc = [defined(s, compute(s, ["zeroshot_top1"], **measure_opts))["zeroshot_top1"] for s in (sb, sa)]
        ok = all(isinstance(v, float) and math.isfinite(v) for v in acc)
        tasks[name] = {"before": sb.path, "after": sa.path, "dataset": sb.meta.get("dataset"),
                       "n_images": int(sb.n_images), "zeroshot_top1_before": acc[0] if ok else None,
                       "zeroshot_top1_after": acc[1] if ok else None,
                       "delta": float(acc[1] - acc[0]) if ok else None}
    vals = [t["delta"] for t in tasks.values() if t["delta"] is not None]
    return {"tasks": tasks, "mean_delta": float(np.mean(vals)) if vals else None}


def _per_class(a: Store, hits) -> dict:
    hb, ha, counts = hits
    out = {}
    for k, name in enumerate(a.text_names()):
        cnt = int(counts[k])
        acc = (hb[k] / cnt, ha[k] / cnt) if cnt else (None, None)
        out[str(name)] = {"n_images": cnt, "acc_before": None if acc[0] is None else float(acc[0]),
                          "acc_after": None if acc[1] is None else float(acc[1]),
                          "delta": None if acc[0] is None else float(acc[1] - acc[0])}
    return out


def _projection(a: Store, b: Store, plot_rows: np.ndarray, pr: stats.PassResult, seed: int) -> dict:
    """2-D PCA fitted on BEFORE's sampled images; both stores' images projected on the same axes, and each side's
    texts moved by that side's modality gap (mean image - mean text) first, so that each class text lands among
    the images it points at rather than across the gap (the gap itself is the ``gap`` measure; its length on each
    side is ``gap_before`` / ``gap_after``). Class stores: ``image_labels`` (the class of each plotted image),
    ``text_labels`` (of each plotted text) and ``class_names`` colour and name the points."""
    if a.paired:
        trows = plot_rows
    else:
        trows = stats.sample_rows(a.n_texts, PLOT_TEXTS_MAX, seed)
    texts = [normalized(s.text_rows(trows), "texts").numpy().astype(np.float64) for s in (a, b)]
    xb, xa = pr.plot["images_before"], pr.plot["images_after"]
    gaps = [t.mean(0) - x.mean(0) if len(t) and len(x) else 0.0 for t, x in zip(texts, (xb, xa))]
    coords = stats.project_2d(xb, xb, texts[0] - gaps[0], xa, texts[1] - gaps[1])
    out = dict(zip(("images_before", "texts_before", "images_after", "texts_after"), coords))
    out.update(gap_before=float(np.linalg.norm(gaps[0])), gap_after=float(np.linalg.norm(gaps[1])))
    if not a.paired:
        out["image_labels"] = a.labels()[plot_rows] if len(plot_rows) else np.zeros(0, np.int32)
        out["text_labels"] = np.asarray(trows)
        out["class_names"] = [str(v) for v in a.text_names()]
    return out


def compare(before: str, after: str, others=(), *, metrics=None, silhouette_mode: str = "auto",
            sample_size: int = 2000, seed: int = 0, knn: str = "blocked", knn_k: int = 10,
            knn_sample: int | None = 20000, plot_sample: int = 2000, block_rows: int | None = None,
            progress=None, executor=None, force: bool = False) -> Drift:
    """Drift between two stores of the same samples; see the module docstring for every key. ``executor``
    (``embedx.engine.executor``; a Dask one from ``embedx.engine``) runs the measures of every store and the drift
    pass's sums. Stores that hold different samples are refused unless ``force`` (:func:`open_pair`); a pair
    that looks swapped (:func:`looks_swapped`) is compared with a warning, logged and kept in ``warnings``."""
    if knn_k < 1:
        raise EmbedxError(f"knn_k must be >= 1, got {knn_k}", param="knn_k")
    if knn_sample is not None and knn_sample < 1:
        raise EmbedxError(f"knn_sample must be >= 1, got {knn_sample}", param="knn_sample")
    a, b = open_pair(before, after, force)
    pairs = open_others(others, force)  # every input is checked before any work
    warnings = []
    for label, sb, sa in (("", a, b), *((f"others {n}: ", sb, sa) for n, sb, sa in pairs)):
        why = looks_swapped(sb, sa)
        if why:
            warnings.append(label + why)
            notice(label + why)
    forced = [f"{n}: {w}" for n, sb, sa in (("BEFORE/AFTER", a, b), *pairs)
              for w in [sample_mismatch(sb, sa)] if w] if force else []
    opts = dict(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed, knn=knn)
    timings = {}
    t0 = time.perf_counter()
    mb = defined(a, compute(a, metrics, progress=progress, executor=executor, **opts).to_dict(provenance=False))
    if silhouette_mode == "auto":  # AFTER takes the method auto chose for BEFORE: the deltas compare like with like
        opts["silhouette_mode"] = "sample" if "sampled" in (mb.get("silhouette_method") or {}).values() else "exact"
    ma = defined(b, compute(b, metrics, progress=progress, executor=executor, **opts).to_dict(provenance=False))
    # each store's measures with n_images, timings_s, ...: its JSON as measure writes it
    timings["measures"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    knn_rows = stats.sample_rows(a.n_images, knn_sample, seed)
    plot_rows = stats.sample_rows(a.n_images, plot_sample, seed + 1)
    pr = stats.drift_pass(a, b, knn_k=knn_k, knn_rows=knn_rows, plot_rows=plot_rows, block_rows=block_rows,
                          progress=progress, executor=executor)
    timings["drift_pass"] = time.perf_counter() - t0

    per_class = _per_class(a, pr.class_hits) if pr.class_hits is not None else None
    t0 = time.perf_counter()
    texts = text_drift(a, b)
    timings["text_drift"] = time.perf_counter() - t0
    if texts and texts["per_class"] and per_class:
        for name, row in per_class.items():  # each class: its accuracy change beside its prompt's move
            row.update({f"prompt_{k}": v for k, v in texts["per_class"][name].items()})
    images = {drift_scores.summary_key(s): s.finalize({"drift_pass": pr})
              for s in registry.scores("drift").values()}  # the drift statistics of the registry
    images = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in images.items()}
    summary = {
        "before": dict(mb, path=before), "after": dict(ma, path=after), "delta": delta(mb, ma),
        "n_images": a.n_images, "dim": a.dim, "mode": a.meta["mode"],
        **images, "knn_k": pr.knn_k, "knn_sample_size": pr.knn_queries,
        "text_drift": texts, "per_class": per_class,
    }
    t0 = time.perf_counter()
    summary["forgetting"] = forgetting(pairs, executor=executor, **opts)
    timings["forgetting"] = time.perf_counter() - t0
    summary["headline"] = headline(a, b, task_accuracy(pr.class_hits, mb, ma), per_class, summary["forgetting"])
    t0 = time.perf_counter()
    proj = _projection(a, b, plot_rows, pr, seed)
    timings["projection"] = time.perf_counter() - t0
    for st in (a, b, *(s for p in pairs for s in p[1:])):  # every number came from the stores that were opened
        st.ensure_unchanged()
    summary["warnings"] = warnings
    summary["forced"] = forced  # force=True: the sample checks it overrode (empty: there was nothing to force)
    summary["plot_sample_size"] = len(plot_rows)
    summary["timings_s"] = timings
    roles = {"before": a, "after": b}
    for n, sb, sa in pairs:
        roles.update({f"others/{n}/before": sb, f"others/{n}/after": sa})
    prov = provenance("drift", roles,
                      options={"metrics": list(metrics) if metrics else None, **opts, "knn_k": knn_k,
                               "knn_sample": knn_sample, "plot_sample": plot_sample})
    summary = {**prov, **summary}
    return Drift(summary=summary, displacement=pr.displacement, projection=proj)

