"""The measures' needs and their run through the planner (``embedx.engine.plan``); formulas: ``scores``.

Rows are L2-normalized first (float32 compute, float64 sums). One streaming pass computes every O(N d) measure
and zero-shot accuracy (``stream``); the cosine silhouette joins that pass when the store's recorded sum of image
rows checks out, else it takes a second pass. Euclidean silhouette and retrieval go through the kernels in
``embedx.kernels``. Needs not asked for do not run: ``--metrics silhouette_euclidean`` reads no stream pass.
The modules of the pairwise measures (and torch) load when a need runs them: ``--metrics iimm`` on a class store
imports neither torch nor numba (a small pass) and resolves no device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedx import validate
from embedx.engine import registry
from embedx.engine.executor import resolve
from embedx.engine.plan import Clock, Context, Need, Step, execute, needs_of, plan
from embedx.engine.progress import Bar, enabled
from embedx.engine.result import Result
from embedx.measures.stream import Partial, PassConfig, class_pass, normalized, normalized_numpy, paired_pass
from embedx.provenance import provenance
from embedx.rows import duplicate_groups

FAMILY = "measure"
CLASS_SILHOUETTE = "silhouette_class_euclidean"
TIES = ("lowest index wins (as argmax and stable sorting): among candidates scoring exactly the same, the lower "
        "index ranks first")
TIES_FAISS = ("FAISS's own order for retrieval (knn='faiss': IndexFlatIP top-k on float32 BLAS scores; among "
              "candidates scoring the same, FAISS's result heap decides, not the lower index); zero-shot: lowest "
              "index wins")
NOT_MEASURES = ("n_images", "n_texts", "dim", "timings_s", "estimates", "per_class", "ties",
                "integrity", "silhouette_method")  # other result keys


def kinds(source) -> set:
    return {"paired", "texts"} if source.paired else {"labels", "texts"}


def available(source) -> tuple[str, ...]:
    """The default measures of ``source``: every registered one it supports."""
    return registry.names(FAMILY, kinds(source), defaults_only=True)


def _check_metrics(source, metrics) -> list[str]:
    have = available(source)
    want = list(have) if not metrics else validate.names(metrics)  # "gap", "acs,gap" or a list
    if not want:
        raise validate.error("metrics", f"no metric asked for; choose from {', '.join(have)}")
    reg = registry.scores(FAMILY)
    for m in want:
        if m not in have and m != CLASS_SILHOUETTE:
            extra = " (retrieval recall needs a paired store)" if m in reg and "paired" in reg[m].requires else ""
            raise validate.error("metrics", f"unknown metric {m!r}{extra}; choose from {', '.join(have)}")
    return want


# --- needs ------------------------------------------------------------------------------------------------------
@dataclass
class Sums:
    """What the stream pass gives the measures: counts, S_x, S_t, the per-class sums and hits (``tot``)."""

    paired: bool
    n: int
    c: int
    tot: Partial
    sx: np.ndarray
    st: np.ndarray
    correct: float        # class stores: sum_c M_c.t_c
    text_cos: float       # paired stores: the texts' cosine-silhouette sum (with the recorded sums)
    cfg: PassConfig       # the pass's config; cfg.texts: class stores' normalized class texts (numpy), else None


def _texts(ctx):
    """Class stores: the normalized class texts, S_t, and the groups of bit-identical texts (ties by index)."""
    src = ctx.source
    if src.paired:
        return None
    t = normalized_numpy(src.texts(), "texts")
    return t, t.astype(np.float64).sum(0), tuple(duplicate_groups(t))


def _device(ctx):
    """The torch device of the run, resolved on first use ("auto" and "cpu" wait: a pass that runs nothing on a
    device never imports torch)."""
    if ctx.options["device"] is None:
        from embedx.device import resolve_device

        ctx.options["device"] = resolve_device(ctx.options["device_request"])
    return ctx.options["device"]


def _stream(ctx):
    """The one pass: class stores chunk by chunk on every core (``stream.class_pass``); paired stores over
    aligned image and text blocks."""
    src, texts = ctx.source, ctx.results.get("texts")
    hints = src.meta.get("sums") or {}
    sx_hint = np.array(hints["images"], dtype=np.float64) if hints.get("images") else None
    st_hint = np.array(hints["texts"], dtype=np.float64) if hints.get("texts") else None
    t, text_sum, groups = texts if texts is not None else (None, st_hint, ())
    zeroshot = not src.paired and any(s.name.startswith("zeroshot") for s in ctx.scores)
    cfg = PassConfig(texts=t, text_sum=text_sum, n_texts=src.n_texts, n_images=src.n_images,
                     sum_x_hint=sx_hint if ctx.wants("silhouette_cosine") and text_sum is not None else None,
                     zeroshot=zeroshot, device=_device(ctx) if zeroshot else None, text_groups=groups)
    cfg.device_request = ctx.options["device_request"]
    bar = Bar(src.n_images, "measures pass", enabled(ctx.progress))
    with bar:
        if not src.paired:
            return class_pass(src, cfg, executor=ctx.executor, bar=bar), 0.0, None, cfg, st_hint
        tot, text_cos, st_pass = paired_pass(src, cfg, ctx.executor, bar)
        return tot, text_cos, st_pass, cfg, st_hint


def _sums(ctx) -> Sums:
    src = ctx.source
    tot, text_cos, st_pass, cfg, _ = ctx["stream"]
    n, c = src.n_images, src.n_texts
    sx = tot.sum_x if tot.sum_x is not None else np.full(src.dim, np.nan)
    st = st_pass if src.paired else cfg.text_sum
    correct = float("nan")
    if not src.paired and tot.class_sum is not None:
        correct = float((tot.class_sum * cfg.texts.astype(np.float64)).sum())
    return Sums(src.paired, n, c, tot, sx, st, correct, text_cos, cfg)


def _cosine(ctx) -> float:
    from embedx.measures.cosine import cosine_silhouette

    s, st_hint = ctx["sums"], ctx["stream"][4]
    return cosine_silhouette(ctx.source, s.tot, s.sx, s.st, s.cfg, st_hint, s.text_cos, ctx.progress, ctx.executor)


def _silhouette(kind: str):
    def run(ctx):
        from embedx.measures import silhouette

        o = ctx.options
        fn = silhouette.modality_silhouette if kind == "modality" else silhouette.class_silhouette
        score, per_point = fn(ctx.source, o["silhouette_mode"], o["sample_size"], o["seed"], _device(ctx),
                              progress=ctx.progress, executor=ctx.executor, device_request=o["device_request"])
        if score is None:  # undefined (sklearn's 2 <= clusters <= points - 1 fails): NaN, the rest still measured
            return float("nan")
        name = "silhouette_euclidean" if kind == "modality" else CLASS_SILHOUETTE
        method = ctx.results.setdefault("silhouette_method", {})
        if not isinstance(score, dict):  # exact (asked, or auto under its threshold)
            ctx.results[f"{name}:per_point"] = per_point
            method[name] = "exact"
            return score
        method[name] = "sampled"
        ctx.results.setdefault("estimates", {})[name] = score
        return score["estimate"]

    return run


def _rank_counts(ctx) -> dict:
    from embedx.measures import retrieval

    src, o = ctx.source, ctx.options
    if o["knn"] == "blocked":  # rank counts streamed from the store: memory bounded, not O(N d)
        return retrieval.recall_at_k_streamed(src, device=_device(ctx), progress=ctx.progress, executor=ctx.executor,
                                              device_request=o["device_request"])
    # faiss holds every normalized image and text row in memory
    return retrieval.recall_at_k(normalized(src.images(dtype=np.float32), "images"),
                                 normalized(src.texts(dtype=np.float32), "texts"),
                                 retrieval.groups_from_ids(src.ids()), knn=o["knn"])


NEEDS = {n.name: n for n in (
    Need("texts", "local", run=_texts, timing="texts"),
    Need("stream", "pass", run=_stream, after=("texts",), timing="stream_pass"),
    Need("sums", "local", run=_sums, after=("stream",), timing=""),
    Need("cosine", "local", run=_cosine, after=("sums",), timing="silhouette_cosine"),
    Need("silhouette_modality", "pairwise", run=_silhouette("modality"), timing="silhouette_euclidean"),
    Need("silhouette_class", "pairwise", run=_silhouette("class"), timing="silhouette_euclidean"),
    Need("rank_counts", "pairwise", run=_rank_counts, timing="retrieval"),
)}


@dataclass(frozen=True)
class _PerClass:
    """The per-class table as a pseudo-score: it needs the stream sums."""

    name: str = "per_class"
    needs: tuple = ("sums",)
    options: dict = None


SILHOUETTE_MODES = ("auto", "exact", "sample")  # embedx.measures.silhouette.MODES (that module imports torch)
LAST = ("rank_counts", "silhouette_modality", "silhouette_class")  # the O(N^2) needs, in this order, after the rest


def _ordered(steps: list[Step]) -> list[Step]:
    """The plan's steps, one need per work step, with the pairwise O(N^2) needs last (retrieval, then the
    silhouettes; no need comes after them): the streaming measures finish, and are reported, within seconds."""
    head, tail = [], []
    for step in steps:
        if step.kind == "pass":
            head.append(step)
            continue
        for need in step.needs:
            (tail if need.name in LAST else head).append(Step(step.depth, "work", [need]))
    return head + sorted(tail, key=lambda st: LAST.index(st.needs[0].name))


def run(source, metrics=None, *, silhouette_mode: str = "auto", sample_size: int = 2000, seed: int = 0,
        knn: str = "blocked", per_class: bool = False, silhouette_labels: str = "modality", device="auto",
        progress=None, executor=None, on_value=None) -> Result:
    """Requested measures of ``source`` (a ``RowSource``) -> :class:`Result`; see ``embedx.measures.compute``.
    ``on_value(name, value, estimate)``: called for each measure as soon as its needs are done (estimate: the
    sampled silhouette's dict, else None)."""
    want = _check_metrics(source, metrics)
    validate.choice(silhouette_labels, "silhouette_labels", ("modality", "class"))
    validate.choice(silhouette_mode, "silhouette_mode", SILHOUETTE_MODES)
    validate.choice(knn, "knn", ("blocked", "faiss"))
    if silhouette_labels == "class":
        if source.paired:
            raise validate.error("silhouette_labels", "silhouette_labels='class' needs class labels (this store "
                                                      "is paired)")
        want.append(CLASS_SILHOUETTE)
    if per_class and source.paired:
        raise validate.error("per_class", "per_class needs a store with class labels (this store is paired)")
    if source.n_texts == 0:
        raise validate.error("texts", f"{source.path} has no text rows")
    want = list(dict.fromkeys(want))
    specs = [registry.get(FAMILY, m) for m in want]
    if device in ("auto", "cpu"):  # resolved when a need uses it (``_device``): nothing to check
        dev = None
    else:
        from embedx.device import resolve_device

        dev = resolve_device(device)  # a bad name or a missing GPU fails here, before any pass
    opts = dict(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed, knn=knn, device=dev,
                device_request=str(device))
    ctx = Context(source, specs, opts, resolve(executor), progress)
    if source.content_chunks():
        ctx.executor.chunks_verified(source, reset=True)  # reads made elsewhere: count this run's only
    clock = Clock(shared=False)
    extra = [_PerClass()] if per_class else []
    values = {}
    for step in _ordered(plan(specs + extra, NEEDS, source.paired)):
        execute([step], ctx, None, {}, clock)
        for s in specs:
            if s.name not in values and all(n in ctx.results for n in needs_of(s, source.paired)):
                values[s.name] = float(s.finalize(ctx))
                if on_value is not None:
                    on_value(s.name, values[s.name], ctx.results.get("estimates", {}).get(s.name))
    values = {s.name: values[s.name] for s in specs}  # the asked order
    source.ensure_unchanged()  # every number above came from the store that was opened
    info = dict(n_images=source.n_images, n_texts=source.n_texts, dim=source.dim)
    if ctx.results.get("silhouette_method"):
        info["silhouette_method"] = ctx.results["silhouette_method"]  # name -> "exact" | "sampled"
    retrieval_asked = any("paired" in registry.get(FAMILY, m).requires for m in want)
    if retrieval_asked or any(m.startswith("zeroshot") for m in want):
        info["ties"] = TIES_FAISS if knn == "faiss" and retrieval_asked else TIES  # what the chosen path did
    recorded = source.content_chunks()
    if recorded:  # what the reads checked against the chunk checksums recorded at finalize (arrays read)
        seen = {k: set(v) for k, v in source.chunks_verified().items()}
        for k, v in ctx.executor.chunks_verified(source).items():  # the reads of tasks in other processes
            seen.setdefault(k, set()).update(v)
        seen = {k: v for k, v in seen.items() if v}
        info["integrity"] = {"chunks_verified": sum(len(v) for v in seen.values()),
                             "chunks_recorded": sum(recorded[k] for k in seen)}
    table = _per_class(source, ctx["sums"], ctx.results.get("silhouette_euclidean:per_point")) if per_class else None
    timings = {k: v for k, v in clock.seconds.items() if k}
    info["store"] = str(source.path)
    prov = provenance("measure", {"store": source}, options={
        "metrics": list(metrics) if metrics else None, "silhouette": silhouette_mode,
        "sample_size": sample_size if silhouette_mode != "exact" else None,
        "seed": seed if silhouette_mode != "exact" else None, "silhouette_labels": silhouette_labels, "knn": knn})
    return Result(values, timings, ctx.results.get("estimates", {}), table, info, provenance=prov, kind="measure")


def _per_class(source, s: Sums, per_point) -> dict:
    """Per class: images, acs, zero-shot recall and mean modality silhouette (Euclidean) of its images."""
    tot = s.tot
    names = [str(v) for v in source.text_names()]
    y = source.labels()
    out = {}
    tn = s.cfg.texts.astype(np.float64)
    for k, name in enumerate(names):
        cnt = int(tot.class_count[k])
        row = {"n_images": cnt, "acs": float(tot.class_sum[k] @ tn[k] / cnt) if cnt else None,
               "zeroshot_recall": float(tot.top1[k] / cnt) if cnt and tot.top1 is not None else None}
        if per_point is not None:
            row["silhouette_euclidean"] = float(per_point[: source.n_images][y == k].mean()) if cnt else None
        out[name] = row
    return out
