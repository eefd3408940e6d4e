"""The embed workflow: a data source and an open_clip encoder streamed into a store, resumable.

Loading and preprocessing run in DataLoader workers, the forward pass in the main thread, and commits
(zarr writes + commit marker) in a background thread, so the three overlap. Commits happen after whole
batches, so a resumed run sees exactly the batches an uninterrupted run would and writes identical rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from embedx import store as st
from embedx.constraints import (PROGRESS, SEED, Bool, Client, Cluster, Device, Int, OneOf, Optional, Path, Text,
                                TextList, constraints)
from embedx.embedding.options import ClusterOptions, EncodeOptions, SourceOptions, WriteOptions, split
from embedx.embedding.plan import Items, accept_rows, collate
from embedx.models.encoder import Encoder, split_preprocess
from embedx.errors import EmbedxError, one_line
from embedx.models.factory import resolve_model
from embedx.sources.prompts import resolve_templates
from embedx.sources.catalog import Source, default_workers, parse_source
from embedx.store.placement import writer_lock
from embedx.texts import note

log = logging.getLogger("embedx")


@dataclass
class EmbedResult:
    meta: dict
    resumed_from: int
    rows_written: int
    tasks: tuple[int, int] | None = None  # distributed: (tasks done before this run, tasks in all)


def model_logit_scale(model) -> float | None:
    """exp(logit_scale) of an open_clip model (or the one a tuned model wraps): the zero-shot softmax scale."""
    scale = getattr(model, "logit_scale", None)
    if scale is None and hasattr(model, "clip"):
        scale = getattr(model.clip, "logit_scale", None)
    return float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else None


def plan_meta(source: Source, model: str, pretrained: str, seed: int, dtype: str, templates: list[str],
              checkpoint_sha256: str | None, checkpoint: dict | None = None) -> dict:
    """The store metadata that identifies a run (a resume must match it). ``checkpoint``: the finetune run
    (path, method, sha256 of its params file) whose tuned model embeds, or None."""
    captions = getattr(source, "caption_field", None) or "csv column 'caption'"  # wds:, parquet: say theirs
    prompts = {"captions": captions} if source.paired else \
        {"templates": templates, "classnames": list(source.classnames)}
    described = {"source": source.info} if getattr(source, "info", None) else {}  # wds:, parquet: (format, counts)
    note(described, source.texts_truncated)  # captions or class names cut to texts.MAX_TEXT_CHARS
    return {"model": model, "pretrained": pretrained, "seed": int(seed), "checkpoint_sha256": checkpoint_sha256,
            "checkpoint": checkpoint, "dataset": source.spec, "dataset_sha256": source.fingerprint(),
            "prompts": prompts, "mode": "paired" if source.paired else "classes", "dtype": dtype,
            "n_source_items": len(source), **described}


def _check_checkpoint(out: str, meta: dict) -> None:
    """Refuse to resume a store begun with another finetune checkpoint (compared by the params' sha256)."""
    old = st.read_meta(out)
    was, now = (c or {} for c in (old.get("checkpoint"), meta["checkpoint"]))
    if not old.get("complete") and was.get("sha256") != now.get("sha256"):
        raise st.StoreError(f"refusing to resume {out}: it was started with checkpoint={was.get('path')}, this "
                            f"run asks for checkpoint={now.get('path')} (use overwrite=True to start over)")


def embed_to_store(out: str, data: str, model: str | None, pretrained: str | None = "none", *, seed: int = 0,
                   checkpoint: str | None = None, source: SourceOptions | None = None,
                   encode: EncodeOptions | None = None, write: WriteOptions | None = None,
                   cluster: ClusterOptions | None = None, encoder: Encoder | None = None,
                   progress: bool = True) -> EmbedResult:
    """Embed ``data`` with ``model`` into the store ``out``; rerunning the same call resumes.

    ``checkpoint``: a finished ``embedx finetune`` run folder; its base model (model, pretrained, seed) with
    the trained parameters applied embeds, and the run is recorded in the store's ``checkpoint`` attribute.
    ``source``, ``encode``, ``write``, ``cluster``: the run's options (``embedx.embedding.options``; None: the
    defaults). On a cluster, tasks of whole chunks run on the Dask workers (``embedx.embedding.cluster``) and the
    store equals the serial one byte for byte; rerunning resumes at the unfinished tasks. ``encoder``: an encoder
    already loaded (it must be ``model``'s: tests and benchmarks).
    """
    source_opts, encode, write = source or SourceOptions(), encode or EncodeOptions(), write or WriteOptions()
    cluster = cluster or ClusterOptions()
    batch_size, dtype, limit = encode.batch_size, write.dtype, source_opts.limit
    if batch_size < 1:
        raise EmbedxError(f"batch_size must be positive, got {batch_size}", param="batch_size")
    if dtype not in st.DTYPES:
        raise EmbedxError(f"dtype must be float16 or float32, got {dtype!r}", param="dtype")
    source = parse_source(data, **source_opts.kind_options())
    if source_opts.classnames is not None:
        source = source.renamed(source_opts.classnames)
    if source_opts.per_class is not None:
        if source_opts.per_class < 1:
            raise EmbedxError(f"per_class must be positive, got {source_opts.per_class}", param="per_class")
        source = source.per_class(source_opts.per_class)
    if limit is not None:
        if limit < 1:
            raise EmbedxError(f"limit must be positive, got {limit}", param="limit")
        source = source.head(limit)
    tmpl = [] if source.paired else resolve_templates(encode.templates, source)
    spec = resolve_model(model, pretrained, checkpoint=checkpoint, seed=seed)  # loads no weights yet
    meta = plan_meta(source, spec.model, spec.pretrained, spec.seed, dtype, tmpl, spec.pretrained_sha256,
                     spec.checkpoint)

    distributed = cluster.on_cluster
    if cluster.cluster is not None:
        from embedx.engine.cluster import parse_cluster

        parse_cluster(cluster.cluster)  # a bad spec is refused before any store or model
    with writer_lock(out):  # one writer at a time; what killed writers left beside ``out`` is repaired first
        writer = None
        if st.exists(out) and not write.overwrite:
            _check_checkpoint(out, meta)
            writer = st.StoreWriter.resume(out, meta)  # refuses complete stores and other inputs, before any model load
            _check_mode(out, writer.meta, distributed)
        else:
            st.check_target(out, write.overwrite)  # refuses paths that hold something else, before any model load
        enc = encoder or spec.load(encode.device)
        if writer is None:
            writer = st.StoreWriter.create(out, n_rows=len(source), dim=enc.dim, meta=meta, dtype=dtype,
                                           n_texts=None if source.paired else len(source.classnames),
                                           codec=write.codec, chunk_rows=write.chunk_rows, overwrite=write.overwrite)
        start = writer.source_pos
        known = {item["id"] for item in writer.skipped}
        left_out = [e for e in source.excluded if e["id"] not in known]  # non-regular files, undecodable names
        extra = {"device": str(enc.device), "logit_scale": model_logit_scale(enc.model)}
        try:
            if not writer.meta.get("texts_written"):
                texts = accept_rows(enc.encode_classes(source.classnames, tmpl), source.classnames, "texts",
                                    "class", dtype, 0)
                writer.write_texts(texts, source.classnames)
            if distributed:
                from embedx.embedding import cluster as dist_embed
                from embedx.engine.cluster import connect

                job_args = {"model": model, "pretrained": pretrained, "checkpoint": checkpoint, "seed": seed,
                            "device": encode.device, "workers": encode.workers, "strict": encode.strict,
                            "normalize_on_device": encode.normalize_on_device}
                with connect(cluster.cluster, cluster.client, task_bytes=cluster.task_bytes,
                             rerun="rerun to resume") as executor:
                    final, before, n_tasks = dist_embed.run(executor, writer, source, meta, job_args,
                                                            batch_size=batch_size, progress=progress,
                                                            left_out=left_out, extra=extra)
                report_skipped(out, final, len(source))
                return EmbedResult(final, 0, final["rows_committed"], (before, n_tasks))
            if left_out:
                writer.skip(left_out)
            if start:
                log.info("resuming %s at item %d of %d (%d rows committed)", out, start, len(source),
                         writer.rows_committed)
            rows0 = writer.rows_committed
            on_device = encode.normalize_on_device
            on_device = enc.device.type == "cuda" if on_device is None else on_device
            _stream(writer, enc, source, start, encode, write.commit_every_s, progress, on_device)
            writer.wait()
            if "progress" in writer.group:  # flags a cluster run left after its commit (embedx.embedding.cluster)
                del writer.group["progress"]
            final = writer.finalize(extra)  # the sums and checksums its sink took as it wrote
        except BaseException:
            writer.close()
            raise
        report_skipped(out, final, len(source))
        return EmbedResult(final, start, final["rows_committed"] - rows0)


def skipped_summary(meta: dict, n_items: int, first: int = 3) -> str:
    """``K of N images (P%) could not be read and were skipped: ID (why), ... and M more`` for a store's metadata
    (its ``skipped`` list), or "" when none was."""
    skipped = meta.get("skipped") or []
    if not skipped:
        return ""
    shown = ", ".join(f"{s['id']} ({one_line(s['error'], 80)})" for s in skipped[:first])
    more = f" and {len(skipped) - first} more" if len(skipped) > first else ""
    n = max(n_items, len(skipped))
    return f"{len(skipped)} of {n} images ({len(skipped) / n:.0%}) could not be read and were skipped: {shown}{more}"


def report_skipped(out: str, meta: dict, n_items: int) -> None:
    """One warning when an embed skipped unreadable images: how many of how many, the first few, and that
    ``strict=True`` fails on the first instead. The store lists them all (``meta["skipped"]``)."""
    text = skipped_summary(meta, n_items)
    if text:
        log.warning(f"{text}; the store {out} lists them all; pass strict=True to fail on the first unreadable "
                    f"image instead")


def _check_mode(out: str, meta: dict, distributed: bool) -> None:
    """A store begun on a cluster resumes on a cluster, one begun in-process resumes in-process."""
    if distributed:
        from embedx.embedding.cluster import check_resumable

        check_resumable(out, meta)
    elif meta.get("plan") is not None:
        raise st.StoreError(f"refusing to resume {out} in-process: a distributed embed began it (rerun with "
                            f"cluster to resume it, or pass overwrite=True)", param="cluster")


def _stream(writer: st.StoreWriter, enc: Encoder, source: Source, start: int, encode: EncodeOptions,
            commit_every_s: float, progress: bool, normalize_on_device: bool = False) -> None:
    """The source's items from ``start`` on, encoded in ``encode.batch_size`` batches and appended; whole batches
    committed every ``commit_every_s`` (and at the end)."""
    from tqdm.auto import tqdm

    workers = default_workers() if encode.workers is None else encode.workers
    preprocess, norm = split_preprocess(enc.preprocess) if normalize_on_device else (enc.preprocess, None)
    loader = DataLoader(Items(source, preprocess, start, len(source)), batch_size=encode.batch_size,
                        shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=enc.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    labels = source.labels
    bar = tqdm(total=len(source), initial=start, unit="img", desc="embed", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    pos, row = start, writer.rows_committed  # row: the store row of the next image (nothing is buffered yet)
    dtype = writer.meta["dtype"]
    try:
        for batch in loader:
            idx, good, pixels, bad = batch.items, batch.good, batch.pixels, batch.bad
            if bad:
                if encode.strict:
                    i, why = bad[0]
                    raise EmbedxError(f"cannot read image {source.ids[i]!r} ({why}); drop strict=True to skip "
                                      f"unreadable images")
                writer.skip([{"id": source.ids[i], "error": why} for i, why in bad])
                bar.set_postfix(skipped=len(writer.skipped) + len(bad), refresh=False)
            if good:
                ids = [source.ids[i] for i in good]
                emb = accept_rows(enc.encode_images(pixels, norm), ids, "images", "image", dtype, row)
                if source.paired:
                    caps = [source.captions[i] for i in good]
                    temb = accept_rows(enc.encode_texts(caps), caps, "texts", "caption", dtype, row)
                    writer.append(emb, None, ids, text_emb=temb, text_names=caps)
                else:
                    writer.append(emb, labels[good], ids)
                row += len(good)
            pos = idx[-1] + 1
            bar.update(len(idx))
            if writer.should_commit(writer.meta["chunk_rows"], commit_every_s):
                writer.commit(pos)
    finally:
        bar.close()
    writer.commit(pos)


@constraints(out=Path(), data=Text(), model=Optional(Text()), pretrained=Optional(Text()),
             checkpoint=Optional(Path(exists="dir")), seed=SEED, device=Device(), batch_size=Int(min=1),
             dtype=OneOf("float16", "float32"), progress=PROGRESS,
             templates=Optional(TextList(one=True)), codec=OneOf(of="embedx.store.writer:CODECS"),
             chunk_rows=Optional(Int(min=1)), limit=Optional(Int(min=1)), per_class=Optional(Int(min=1)),
             classnames=Optional(TextList()), workers=Optional(Int(min=0)),
             overwrite=Bool(), strict=Bool(), classes=Optional(Path()), image_col=Optional(Text()),
             caption_col=Optional(Text()), label_col=Optional(Text()), cluster=Optional(Cluster()),
             client=Optional(Client()), task_bytes=Optional(Int(min=1)))
def embed(out, data: str, model: str, pretrained: str | None = None, *, checkpoint: str | None = None,
          seed: int = 0, device: str = "auto", batch_size: int = 64, dtype: str = "float16", progress=None,
          templates=None, codec: str = st.DEFAULT_CODEC, chunk_rows: int | None = None,
          limit: int | None = None, per_class: int | None = None, classnames=None, workers: int | None = None,
          overwrite: bool = False,
          strict: bool = False, classes: str | None = None,
          image_col: str | None = None, caption_col: str | None = None, label_col: str | None = None,
          cluster: str | None = None, client=None, task_bytes: int | None = None):
    """Embed ``data`` (a source spec: "folder:DIR", "csv:FILE", "wds:SHARDS", "parquet:FILE", "digits",
    "synthetic:N", ..., or a bare path one kind recognises; ``embedx.engine.kinds``) with an open_clip ``model``
    into a store at ``out`` (resumable: rerun the same call after a crash) -> ``embedx.Result`` (no scores;
    ``.info``: the store's path, counts, model; ``.provenance``: its generation id; ``to_dict()``: the finished
    store's metadata).

    The options are ``embedx embed``'s by their Python names: ``templates`` (class prompts, default the source's),
    ``codec``, ``chunk_rows``, ``limit`` (the first N items), ``per_class`` (at
    most N items of every class, applied before ``limit``), ``classnames`` (replace the source's class
    names, one per class), ``workers``, ``overwrite``, ``strict`` (fail on an
    unreadable image), ``classes`` (a class-names file for ``folder:``, ``wds:``, ``parquet:``),
    ``image_col``/``caption_col``/``label_col`` (how ``wds:``/``parquet:`` data is read), and ``cluster``
    ("local[:N]" | "tcp://HOST:PORT") or ``client`` (a ``distributed.Client``) to embed on a
    Dask cluster in tasks of ``task_bytes`` (the same store, byte for byte)."""
    opts = split(batch_size=batch_size, workers=workers, device=device, templates=templates, strict=strict,
                 dtype=dtype, codec=codec, chunk_rows=chunk_rows, overwrite=overwrite, limit=limit, per_class=per_class,
                 classnames=classnames, classes=classes,
                 image_col=image_col, caption_col=caption_col, label_col=label_col, cluster=cluster, client=client,
                 task_bytes=task_bytes)
    res = embed_to_store(str(out), data, model, pretrained, seed=seed, checkpoint=checkpoint,
                         progress=bool(progress), **opts)
    from embedx.engine.result import store_result

    return store_result(str(out), res.meta, "embed", options={"seed": seed, "dtype": dtype})
