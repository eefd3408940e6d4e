"""Distributed ``embed`` (the shape of clip-retrieval and img2dataset: one writer of the metadata, workers
writing disjoint chunks).

  * **Staging.** The driver creates the full-size store exactly as a serial run does (staged beside the target and
    moved into place, ``complete: false``); tasks then write into it in place. Readers never open it before it is
    complete; the driver holds the writer lock throughout.
  * **Plan and flags.** ``meta["plan"]`` = {task_rows, n_tasks}: tasks of whole chunks on batch boundaries
    (``embedx.embedding.plan.task_rows``). ``progress/done`` (int8, one chunk per task) is a task's flag and
    ``progress/result`` (a JSON string, one chunk per task) its result: skipped items, per-chunk sums, device.
  * **Task** (:func:`embed_task`, on a worker). The encoder is loaded once per worker process (``_ENCODERS``); the
    task encodes its range in the serial run's batches, writes only its own chunks (rows by source position),
    then its result and, last, its flag. A rerun of a task rewrites the same chunks with the same bytes.
  * **Commit** (driver only). Once every flag is set it reads the results in task order: rows_committed,
    source_pos, skipped and the sums (chunk sums folded in order) go in one metadata write, the progress arrays
    are dropped and the store is finalized (integrity inventory) as a serial run finalizes it.
  * **Resume.** Rerunning the command skips tasks whose flag is set (a fingerprint mismatch is refused as for a
    serial resume); a worker that dies has its task rerun elsewhere by Dask.
  * **Skipped items** take no row in a serial store. When a task skipped any, the driver compacts: it copies the
    readable rows, in order, into a new store staged beside the target, finalizes it there and swaps it into place
    (the positional store, all flags set, stays until the swap, so a killed driver redoes only the copy).
"""
from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from dataclasses import dataclass

import numpy as np

from embedx import store as st
from embedx.embedding.plan import Items, accept_rows, collate, fold, task_rows
from embedx.engine.dask import graph_data, worker_path
from embedx.errors import EmbedxError, StoreError
from embedx.fs.url import open_group
from embedx.store.sink import ChunkSink

PROGRESS = "progress"
RETRIES = 2
COPY_BYTES = 64 << 20
_WRITE_ALL = {"write_empty_chunks": True}
_ENCODERS: dict = {}
_ENCODERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class EmbedJob:
    """What every task of one distributed embed needs (small: the source travels once, as a task of the graph)."""

    out: str
    generation: str
    n_rows: int
    task_rows: int
    chunk_rows: int
    dtype: str
    paired: bool
    model: str | None
    pretrained: str | None
    checkpoint: str | None
    seed: int
    device: str
    batch_size: int
    workers: int | None
    strict: bool
    normalize_on_device: bool | None

    @property
    def n_tasks(self) -> int:
        return -(-self.n_rows // self.task_rows)

    def range(self, t: int) -> tuple[int, int]:
        return t * self.task_rows, min((t + 1) * self.task_rows, self.n_rows)


def _encoder(job: EmbedJob):
    """The job's encoder, loaded once per worker process (the last one is kept: one model in device memory)."""
    from embedx.models.factory import resolve_model

    key = (job.model, job.pretrained, job.checkpoint, job.seed, job.device)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS.clear()
            spec = resolve_model(job.model, job.pretrained, checkpoint=job.checkpoint, seed=job.seed)
            _ENCODERS[key] = spec.load(job.device)
        return _ENCODERS[key]


def embed_task(job: EmbedJob, source, t: int) -> dict:
    """Task ``t``: encode its rows, write its chunks, its result and (last) its done flag. Runs on a worker."""
    from torch.utils.data import DataLoader

    from embedx.models.encoder import split_preprocess
    from embedx.sources.catalog import default_workers

    start, stop = job.range(t)
    g = open_group(job.out, mode="r+")
    if g.attrs["embedx"].get("generation") != job.generation:
        raise StoreError(f"{job.out} was replaced while it was being embedded (another store was written there); "
                         f"rerun")
    enc = _encoder(job)
    names = st.ARRAYS if job.paired else st.ARRAYS[:3]
    sink = ChunkSink(g, job.out, names, summed=("images/embeddings", "texts/embeddings"),
                     first_chunk=start // job.chunk_rows)
    dtype, n, per = np.dtype(job.dtype), stop - start, job.chunk_rows
    emb = np.zeros((n, g["images/embeddings"].shape[1]), dtype)
    labels = np.arange(start, stop, dtype=np.int32) if job.paired else np.full(n, -1, np.int32)
    ids = [""] * n
    temb = np.zeros_like(emb) if job.paired else None
    captions = [""] * n if job.paired else None
    on_device = enc.device.type == "cuda" if job.normalize_on_device is None else job.normalize_on_device
    preprocess, norm = split_preprocess(enc.preprocess) if on_device else (enc.preprocess, None)
    workers = default_workers() if job.workers is None else job.workers
    if multiprocessing.current_process().daemon:
        workers = 0  # Dask's worker processes are daemons, which may not start DataLoader processes
    loader = DataLoader(Items(source, preprocess, start, stop), batch_size=job.batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate, pin_memory=enc.device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    skipped, sums, text_sums = [], [], []
    flushed = start

    def flush(upto: int) -> None:  # whole chunks (the task's last one may be short) as soon as they are encoded
        nonlocal flushed
        for r in range(flushed, upto, per):  # through the sink: written whole, checksummed and summed
            k, a, b = r // per, r - start, min(r + per, upto) - start
            sums.append(sink.put("images/embeddings", k, emb[a:b]).sum)
            sink.put("images/labels", k, labels[a:b])
            sink.put("images/ids", k, np.asarray(ids[a:b], dtype=str))
            if job.paired:
                text_sums.append(sink.put("texts/embeddings", k, temb[a:b]).sum)
                sink.put("texts/names", k, np.asarray(captions[a:b], dtype=str))
        flushed = upto

    for idx, good, pixels, bad in loader:  # the serial run's batches: the same forward passes, the same rows
        for i, why in bad:
            if job.strict:
                raise EmbedxError(f"cannot read image {source.ids[i]!r} ({why}); drop strict=True to skip "
                                  f"unreadable images")
            skipped.append({"index": int(i), "id": source.ids[i], "error": why})
        if good:
            rel = np.asarray(good) - start
            emb[rel] = accept_rows(enc.encode_images(pixels, norm), [source.ids[i] for i in good], "images",
                                   "image", job.dtype, good[0])
            for i in good:
                ids[i - start] = source.ids[i]
            if job.paired:
                caps = [source.captions[i] for i in good]
                temb[rel] = accept_rows(enc.encode_texts(caps), caps, "texts", "caption", job.dtype, good[0])
                for i, c in zip(good, caps):
                    captions[i - start] = c
            else:
                labels[rel] = source.labels[good]
        upto = start + (idx[-1] + 1 - start) // per * per
        if upto > flushed:
            flush(upto)
    if stop > flushed:
        flush(stop)
    result = {"skipped": skipped, "device": str(enc.device),
              "sums": [s.tolist() for s in sums], "text_sums": [s.tolist() for s in text_sums],
              "chunks": sink.known()}  # each chunk's checksums, for the driver's inventory
    g[f"{PROGRESS}/result"][t] = json.dumps(result)
    st.sync_tree(job.out)  # the rows and the result are durable before the flag says so
    g[f"{PROGRESS}/done"][t] = 1
    return {"task": t, "rows": n, "skipped": len(skipped)}


# -- driver ---------------------------------------------------------------------------------------------------
def check_resumable(path: str, meta: dict) -> None:
    """An unfinished store that a serial run has begun is resumed by a serial run (its rows are compacted)."""
    if meta.get("plan") is None and (meta.get("rows_committed") or meta.get("skipped")) \
            and int(meta.get("source_pos") or 0) < int(meta.get("n_rows_max") or 0):
        raise StoreError(f"refusing to resume {path} with cluster: an in-process embed began it (rerun without it "
                         f"to resume, or pass overwrite=True)", param="cluster")


def _plan(writer: st.StoreWriter, batch_size: int, task_bytes: int) -> dict:
    """The store's plan, made (with its empty flags) when the store has none yet."""
    plan = writer.meta.get("plan")
    if plan is not None:
        return plan
    m = writer.meta
    row_bytes = m["dim"] * np.dtype(m["dtype"]).itemsize * (2 if writer.paired else 1)
    rows = task_rows(m["chunk_rows"], batch_size, row_bytes, task_bytes)
    n_tasks = -(-int(m["n_rows_max"]) // rows)
    for name, dtype, fill in (("done", "int8", 0), ("result", str, "")):
        writer.group.create_array(f"{PROGRESS}/{name}", shape=(n_tasks,), chunks=(1,), dtype=dtype,
                                  fill_value=fill, compressors=None, overwrite=True, config=_WRITE_ALL)
    plan = {"task_rows": rows, "n_tasks": n_tasks}
    writer.record(plan=plan)
    return plan


def drop_progress(group) -> None:
    """Remove the flags (a finished store holds only its arrays, as a serial one)."""
    if PROGRESS in group:
        del group[PROGRESS]


def _flags(group, n_tasks: int) -> np.ndarray:
    return np.asarray(group[f"{PROGRESS}/done"][:n_tasks]) if PROGRESS in group else np.zeros(n_tasks, np.int8)


def run_tasks(executor, job: EmbedJob, source, todo: list[int], progress: bool) -> None:
    """Every task in ``todo`` on the cluster; the first failing task (in task order) raises its error."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    client = executor.client
    tag = uuid.uuid4().hex[:8]
    src = graph_data(client, source, f"embedx-source-{tag}")
    futures = [client.submit(embed_task, job, src, t, pure=False, retries=RETRIES, key=f"embedx-embed-{tag}-{t}")
               for t in todo]
    with tqdm(total=job.n_rows, initial=job.n_rows - sum(map(lambda t: len(range(*job.range(t))), todo)),
              unit="img", desc="embed", disable=not progress, dynamic_ncols=True) as bar:
        for f in as_completed(futures):
            if f.status == "finished":
                bar.update(f.result()["rows"])
    for f in futures:
        f.result()


def run(executor, writer: st.StoreWriter, source, meta: dict, job_args: dict, *, batch_size: int, progress: bool,
        left_out: list[dict], extra: dict) -> tuple[dict, int, int]:
    """The distributed embed of ``source`` into the store ``writer`` holds (its texts written) ->
    (final metadata, tasks done before this run, tasks in all)."""
    out = writer.path
    if writer.meta.get("plan") is None and writer.source_pos >= int(writer.meta["n_rows_max"]):
        drop_progress(writer.group)  # a driver killed after its commit, before finalize: only finalize is left
        return writer.finalize(extra), 0, 0
    plan = _plan(writer, batch_size, executor.task_bytes)
    m = writer.meta
    job = EmbedJob(out=worker_path(out), generation=m["generation"], n_rows=int(m["n_rows_max"]),
                   task_rows=plan["task_rows"], chunk_rows=int(m["chunk_rows"]), dtype=m["dtype"],
                   paired=writer.paired, batch_size=batch_size, **job_args)
    done = _flags(writer.group, job.n_tasks)
    before = int(done.sum())
    todo = [t for t in range(job.n_tasks) if not done[t]]
    if todo:
        run_tasks(executor, job, source, todo, progress)
        if not _flags(writer.group, job.n_tasks).all():
            raise StoreError(f"{out}: tasks finished without setting their done flags; rerun to resume")
    results = [json.loads(r) for r in writer.group[f"{PROGRESS}/result"][:job.n_tasks]]
    known = {item["id"] for item in writer.skipped}
    skipped = writer.skipped + [e for e in left_out if e["id"] not in known]
    bad = [s for r in results for s in r["skipped"]]
    skipped += [{"id": s["id"], "error": s["error"]} for s in bad]
    devices = sorted({r["device"] for r in results})
    extra = dict(extra, device=",".join(devices))
    if bad:
        return _compact(writer, job, meta, {s["index"] for s in bad}, skipped, extra), before, job.n_tasks
    sums = {"images": fold(p for r in results for p in r["sums"])}
    if writer.paired:
        sums["texts"] = fold(p for r in results for p in r["text_sums"])
    writer.record(rows_committed=job.n_rows, source_pos=job.n_rows, skipped=skipped, sums=sums, plan=None)
    drop_progress(writer.group)
    return writer.finalize(extra, known=_known(results)), before, job.n_tasks


def _known(results: list[dict]) -> dict | None:
    """The checksums of every chunk the tasks wrote, in task (so chunk) order: {array: {"crc32c", "content"}}
    (None when a task's result has none: one written by an embedx before the sink, whose chunks finalize reads)."""
    if any("chunks" not in r for r in results):
        return None
    out: dict = {}
    for r in results:
        for name, got in r["chunks"].items():
            o = out.setdefault(name, {k: [] for k in got})
            for k, v in got.items():
                o[k].extend(v)
    return out


def _compact(writer: st.StoreWriter, job: EmbedJob, meta: dict, bad: set, skipped: list, extra: dict) -> dict:
    """The readable rows, in order, copied into a store staged beside the target, finalized there and swapped in
    (what a serial run writes: skipped items take no row)."""
    from embedx.fs.locations import RENAME, location
    from embedx.store.placement import staged

    out, m = writer.path, writer.meta
    if not location(out).can(RENAME):
        raise StoreError(f"{out}: {len(bad)} unreadable items were skipped; a distributed embed cannot compact a "
                         f"store behind a URL yet (rerun without cluster)", param="cluster")
    src = st.Store(out, allow_partial=True, verify_content=False)
    with staged(out) as stage:  # placed over the positional store once finalized; removed if anything fails
        w = st.StoreWriter.create(stage, n_rows=job.n_rows, dim=int(m["dim"]), meta=meta, dtype=m["dtype"],
                                  n_texts=None if writer.paired else int(src.group["texts/embeddings"].shape[0]),
                                  codec=m["codec"], chunk_rows=job.chunk_rows, background=False)
        try:
            if not writer.paired:
                w.write_texts(src.texts(), list(src.text_names()))
            w.skip(skipped)
            block = src.whole_chunks(max(1, COPY_BYTES // (int(m["dim"]) * np.dtype(m["dtype"]).itemsize)))
            g = src.group
            for a in range(0, job.n_rows, block):
                b = min(a + block, job.n_rows)
                keep = np.asarray([i not in bad for i in range(a, b)])
                if not keep.any():
                    continue
                emb = src.read_rows_into("images/embeddings", a, np.empty((b - a, int(m["dim"])), m["dtype"]))[keep]
                ids = g["images/ids"][a:b][keep]
                if writer.paired:
                    temb = src.read_rows_into("texts/embeddings", a,
                                              np.empty((b - a, int(m["dim"])), m["dtype"]))[keep]
                    w.append(emb, None, ids, text_emb=temb, text_names=g["texts/names"][a:b][keep])
                else:
                    w.append(emb, g["images/labels"][a:b][keep], ids)
                w.commit(b)
            w.commit(job.n_rows)
            final = w.finalize(extra)  # sums and checksums from its sink: the stage is not read back
            writer.close()
        except BaseException:
            w.close()
            raise
    return final
