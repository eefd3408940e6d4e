"""Embedding stores, schema 1: a Zarr v3 group on a local path or any fsspec URL.

Layout (DESIGN.md)::

    STORE/                      attrs["embedx"] = metadata + commit marker (rows_committed, complete)
      images/embeddings [N, d]  float16 | float32, chunked by whole rows
      images/labels     [N]     int32, index into texts, -1 = none
      images/ids        [N]     source id (path or index)
      texts/embeddings  [C, d]  one row per class, or per caption (paired stores: C = N, label i = i)
      texts/names       [C]     class names or captions

Writes are crash-safe: rows are committed in whole batches, data first and the commit marker
(``rows_committed``, ``source_pos``) last; every key is replaced atomically (zarr's LocalStore writes to a
temporary file and renames), so a SIGKILL loses at most the uncommitted buffer and a rerun continues from
``source_pos``. Readers never look past ``rows_committed``.

Rows reach the chunk files through the store's :class:`embedx.store.sink.ChunkSink`: whole chunks, with their
crc32c, content hashes and sums taken as they are written, so :meth:`StoreWriter.finalize` reads nothing back.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from embedx.errors import StoreError
from embedx.store.layout import (
    exists,
    ARRAYS,
    MAX_CHUNK_FILES,
    SCHEMA,
    check_reachable,
    creation_interrupted,
    open_group,
    read_meta,
    writes_every_chunk,
)
from embedx.store.placement import crash_point, staged
from embedx.store.sink import WRITE_ALL as _WRITE_ALL
from embedx.store.sink import ChunkSink, normalized_sum  # noqa: F401  (normalized_sum: embedx.store's export)
from embedx.fs.locations import location
from embedx.fs.url import storage_faults

DTYPES = ("float16", "float32")
# Chosen from bench/results/codec.md: embeddings barely compress, so the default favours read speed.
DEFAULT_CODEC = "none"
CODECS = {
    "none": lambda: None,
    "zstd1": lambda: ZstdCodec(level=1),
    "zstd3": lambda: ZstdCodec(level=3),
    "blosc-lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-zstd": lambda: BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
}
TARGET_CHUNK_BYTES = 4 << 20  # whole rows, about 4 MiB per chunk
# Metadata keys whose values must match for a resume to be accepted.
FINGERPRINT_KEYS = ("model", "pretrained", "checkpoint_sha256", "seed", "dataset", "dataset_sha256",
                    "prompts", "mode", "dtype", "dim")


def default_chunk_rows(dim: int, dtype: str, n_rows: int) -> int:
    itemsize = np.dtype(dtype).itemsize
    rows = max(1, TARGET_CHUNK_BYTES // (dim * itemsize))
    return int(max(1, min(rows, n_rows)))


def _compressors(codec: str):
    if codec not in CODECS:
        raise StoreError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    c = CODECS[codec]()
    return None if c is None else [c]


def check_target(path: str, overwrite: bool) -> bool:
    """May a new store be written at ``path``? True if an old store is there (to be replaced).

    Refuses to replace a store without ``overwrite``, and anything that is not an embedx store at all."""
    with storage_faults(path):
        return _check_target(path, overwrite)


def _check_target(path: str, overwrite: bool) -> bool:
    if exists(path):
        if overwrite and creation_interrupted(path):  # a creation killed before its metadata: nothing to lose
            return True
        meta = read_meta(path)
        if not overwrite:
            if meta.get("complete"):
                raise StoreError(f"{path} already holds a complete store; pass overwrite=True to replace it")
            hint = " (an interrupted import: imports do not resume)" if meta.get("written_by") == "import" else ""
            raise StoreError(f"{path} already holds an unfinished store{hint}; pass overwrite=True to replace it")
        return True
    check_reachable(path)  # behind a URL: credentials and endpoint first (nothing for a local path)
    if location(path).holds_anything():
        raise StoreError(f"{path} exists and is not an embedx store; refusing to write over it (choose another path)")
    return False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sync_tree(path: str) -> None:
    """Make the data written so far durable before the commit marker is (local stores only)."""
    location(path).sync()


@dataclass
class _Pending:
    emb: list
    labels: list
    ids: list
    text_emb: list
    text_names: list

    @classmethod
    def empty(cls) -> "_Pending":
        return cls([], [], [], [], [])

    def __len__(self) -> int:
        return sum(len(e) for e in self.emb)


class StoreWriter:
    """Streams rows into a store. Use :meth:`create` or :meth:`resume`, then ``append``/``commit``/``finalize``.

    ``paired=True`` stores one text row per image row (captions); otherwise texts are written once with
    :meth:`write_texts` (one row per class).
    """

    def __init__(self, path: str, group: zarr.Group, background: bool = True):
        self.path = str(path)
        self.group = group
        self.meta = dict(group.attrs["embedx"])
        self.paired = self.meta["mode"] == "paired"
        self.dtype = np.dtype(self.meta["dtype"])
        self.rows_committed = int(self.meta["rows_committed"])
        self.source_pos = int(self.meta["source_pos"])
        self.skipped = list(self.meta.get("skipped", []))
        sums = self.meta.get("sums") or {}
        self._sums = {k: np.asarray(sums[k], dtype=np.float64) if sums.get(k) is not None else None
                      for k in ("images", "texts")}
        self._pending = _Pending.empty()
        self._pending_skipped: list = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="embedx-writer") if background else None
        # write_empty_chunks is a runtime setting, not stored: without it zarr skips (and deletes) a chunk that
        # equals the fill value, e.g. labels all -1, which readers would then take for a missing, damaged chunk
        self._arrays = {k: group[k].with_config(_WRITE_ALL) for k in ARRAYS}
        # every row goes through the sink: whole chunks, checksummed and summed as they are written
        self.sink = ChunkSink(group, self.path, ARRAYS,
                              summed=("images/embeddings", "texts/embeddings") if self.paired else ("images/embeddings",))
        # At most one commit is in flight; the caller's thread touches meta/rows only after wait().
        self._inflight: Future | None = None
        self._last_commit = time.monotonic()
        # False for a staged store (invisible until finalize, which syncs everything before it is placed): a
        # commit then need not wait for the disk
        self.durable_commits = True

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, *, n_rows: int, dim: int, meta: dict, n_texts: int | None = None,
               dtype: str = "float16", codec: str = DEFAULT_CODEC, chunk_rows: int | None = None,
               overwrite: bool = False, background: bool = True) -> "StoreWriter":
        """Create an empty store with room for ``n_rows`` image rows (trimmed by ``finalize``)."""
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if n_rows < 1:
            raise StoreError("nothing to write: the input has no rows")
        if dim < 1:
            raise StoreError(f"embedding dimension must be positive, got {dim}")
        replace = check_target(path, overwrite)
        paired = meta.get("mode") == "paired"
        if not paired and n_texts is None:
            raise StoreError("n_texts is required for stores with class texts")
        if chunk_rows is not None and chunk_rows < 1:
            raise StoreError(f"chunk_rows must be at least 1, got {chunk_rows}")
        chunk_rows = min(chunk_rows, max(1, n_rows)) if chunk_rows else default_chunk_rows(dim, dtype, n_rows)
        rows = max(n_rows, 0 if paired else n_texts)
        if -(-rows // chunk_rows) > MAX_CHUNK_FILES:  # the count every reader accepts (storelayout)
            least = -(-rows // MAX_CHUNK_FILES)
            raise StoreError(f"chunk_rows {chunk_rows} makes {-(-rows // chunk_rows):,} chunk files of {rows:,} "
                             f"rows, above the limit of {MAX_CHUNK_FILES:,} per array: chunks of at least {least:,} "
                             f"rows are needed", param="chunk_rows")
        compressors = _compressors(codec)
        try:  # local: staged and swapped in whole; behind a URL in place, an old store removed first
            with staged(str(path), overwrite=replace) as build:
                cls._build(build, n_rows, dim, meta, n_texts, dtype, codec, compressors, chunk_rows, paired)
                if build != str(path):
                    crash_point("create:staged")
        except OSError as e:
            raise StoreError(f"{path}: cannot create the store ({e.strerror or e})") from None
        return cls(path, open_group(path, mode="r+"), background=background)

    @staticmethod
    def _build(path, n_rows, dim, meta, n_texts, dtype, codec, compressors, chunk_rows, paired) -> None:
        """An empty store at ``path``: its arrays, then its metadata (a fresh generation id)."""
        g = open_group(path, mode="w")
        text_rows = n_rows if paired else n_texts
        text_chunks = chunk_rows if paired else max(1, min(text_rows, chunk_rows))
        # dimension_names (zarr v3): "image" rows in images/, "text" rows in texts/, "dim" columns, so xarray
        # (open_datatree / open_zarr with group=) and other v3 readers see labelled dimensions
        for name, rows, chunks in (("images", n_rows, chunk_rows), ("texts", text_rows, text_chunks)):
            g.create_array(f"{name}/embeddings", shape=(rows, dim), chunks=(chunks, dim), dtype=dtype,
                           compressors=compressors, fill_value=0, config=_WRITE_ALL,
                           dimension_names=(name[:-1], "dim"))
        # labels stay uncompressed (4 bytes a row; readers then take them straight from the chunk files)
        g.create_array("images/labels", shape=(n_rows,), chunks=(chunk_rows,), dtype="int32", fill_value=-1,
                       compressors=None, config=_WRITE_ALL, dimension_names=("image",))
        g.create_array("images/ids", shape=(n_rows,), chunks=(chunk_rows,), dtype=str, config=_WRITE_ALL,
                       dimension_names=("image",))
        g.create_array("texts/names", shape=(text_rows,), chunks=(text_chunks,), dtype=str, config=_WRITE_ALL,
                       dimension_names=("text",))
        crash_point("create:arrays")
        full = {"schema": SCHEMA, "normalized": True, "created": _now(), "embedx_version": _version(),
                "generation": uuid.uuid4().hex,
                "split": None, "prompts": None, "checkpoint_sha256": None, **meta,
                "dtype": dtype, "dim": int(dim), "codec": codec, "chunk_rows": int(chunk_rows),
                "n_rows_max": int(n_rows), "texts_written": paired,
                "rows_committed": 0, "source_pos": 0, "skipped": [], "complete": False,
                "features": ["inventory"]}
        g.attrs["embedx"] = full

    @classmethod
    def resume(cls, path: str, meta: dict, background: bool = True) -> "StoreWriter":
        """Reopen an unfinished store, refusing when it was started with other inputs."""
        old = read_meta(path)
        if old.get("complete"):
            raise StoreError(f"{path} is already complete; pass overwrite=True to replace it")
        for key in FINGERPRINT_KEYS:
            if key in meta and old.get(key) != meta[key]:
                raise StoreError(
                    f"refusing to resume {path}: it was started with {key}={_short(old.get(key))}, "
                    f"this run asks for {key}={_short(meta[key])} (use overwrite=True to start over)")
        _clean_partials(path)
        w = cls(path, open_group(path, mode="r+"), background=background)
        w._resume_sink()
        return w

    def _resume_sink(self) -> None:
        """The sink continues after the committed rows: they (and written class texts) are read back once, here,
        so that finalize need not."""
        rows = ARRAYS if self.paired else ARRAYS[:3]
        self.sink.resume(rows, self.rows_committed)
        if not self.paired and self.meta.get("texts_written"):
            self.sink.resume(ARRAYS[3:], int(self.group["texts/embeddings"].shape[0]), complete=True)

    # -- writing ------------------------------------------------------------------------------------------
    def write_texts(self, emb: np.ndarray, names: Sequence[str]) -> None:
        """Class-text rows, written once before any image row."""
        if self.paired:
            raise StoreError("paired stores take their text rows with append()")
        arr = self._arrays["texts/embeddings"]
        if emb.shape != arr.shape:
            raise StoreError(f"text embeddings have shape {emb.shape}, the store expects {arr.shape}")
        stored = np.ascontiguousarray(emb.astype(self.dtype))
        self.sink.write_all("texts/embeddings", stored)
        self.sink.write_all("texts/names", np.asarray(list(names), dtype=str))
        self._sums["texts"] = normalized_sum(stored)  # of all class texts at once
        self.meta["texts_written"] = True
        self._write_meta()

    def append(self, emb: np.ndarray, labels: np.ndarray | None, ids: Sequence[str],
               text_emb: np.ndarray | None = None, text_names: Sequence[str] | None = None) -> None:
        """Buffer rows; nothing is durable until :meth:`commit`. Paired stores ignore ``labels``: row i's
        label is i (image i pairs with text i)."""
        if len(emb) == 0:
            return
        if self.paired and (text_emb is None or text_names is None or len(text_emb) != len(emb)):
            raise StoreError("paired stores need one text row per image row")
        p = self._pending
        p.emb.append(np.asarray(emb, dtype=self.dtype))
        if not self.paired:
            p.labels.append(np.asarray(labels, dtype=np.int32))
        p.ids.append(np.asarray(list(ids), dtype=str))
        if self.paired:
            p.text_emb.append(np.asarray(text_emb, dtype=self.dtype))
            p.text_names.append(np.asarray(list(text_names), dtype=str))

    def skip(self, items: Sequence[dict]) -> None:
        """Record source items that could not be read (listed in attrs, never dropped silently)."""
        self._pending_skipped.extend(items)

    def should_commit(self, every_rows: int, every_s: float) -> bool:
        return len(self._pending) >= every_rows or (time.monotonic() - self._last_commit) >= every_s

    def commit(self, source_pos: int) -> None:
        """Make all buffered rows durable; ``source_pos`` is the next source item to read on resume."""
        pending, self._pending = self._pending, _Pending.empty()
        skipped, self._pending_skipped = self._pending_skipped, []
        self._last_commit = time.monotonic()
        self.wait()
        if self._pool is None:
            self._commit(pending, skipped, source_pos)
        else:
            self._inflight = self._pool.submit(self._commit, pending, skipped, source_pos)

    def wait(self) -> None:
        """Block until the commit in flight (if any) is durable; re-raise its error."""
        if self._inflight is not None:
            f, self._inflight = self._inflight, None
            f.result()

    def _commit(self, p: _Pending, skipped: list, source_pos: int) -> None:
        try:
            self._commit_rows(p, skipped, source_pos)
        except Exception as e:
            fault = location(self.path).fault(e)
            if fault is not None:  # the endpoint went away or stopped answering mid-write
                raise fault from None
            if not isinstance(e, OSError):
                raise
            # disk full, I/O error: the committed rows stay as they were
            raise StoreError(f"{self.path}: cannot write ({e.strerror or e}); the rows committed before are "
                             f"kept: free space and rerun to resume") from None

    def _commit_rows(self, p: _Pending, skipped: list, source_pos: int) -> None:
        n = len(p)
        r0, r1 = self.rows_committed, self.rows_committed + n
        g = self._arrays
        if r1 > g["images/embeddings"].shape[0]:
            raise StoreError(f"more rows than the store was created for ({r1} > {g['images/embeddings'].shape[0]})")
        if n:
            sink = self.sink
            sink.append("images/embeddings", _joined(p.emb))
            sink.append("images/labels", np.arange(r0, r1, dtype=np.int32) if self.paired else _joined(p.labels))
            sink.append("images/ids", _joined(p.ids))
            if self.paired:
                sink.append("texts/embeddings", _joined(p.text_emb))
                sink.append("texts/names", _joined(p.text_names))
            sink.flush()  # the partly filled last chunk too: committed rows are durable
            self._sums["images"] = sink.sum("images/embeddings")
            if self.paired:
                self._sums["texts"] = sink.sum("texts/embeddings")
            if self.durable_commits:
                sync_tree(self.path)
            crash_point("commit:data")
        self.rows_committed, self.source_pos = r1, int(source_pos)
        self.skipped.extend(skipped)
        self._write_meta()

    def record(self, **fields) -> None:
        """Commit what other processes wrote (a distributed embed's driver is the only metadata writer):
        ``rows_committed``, ``source_pos``, ``skipped``, ``sums`` ({"images", "texts"} float64 vectors) and any
        other metadata fields (None removes one), in one metadata write."""
        self.wait()
        if "rows_committed" in fields:
            self.rows_committed = int(fields.pop("rows_committed"))
        if "source_pos" in fields:
            self.source_pos = int(fields.pop("source_pos"))
        if "skipped" in fields:
            self.skipped = list(fields.pop("skipped"))
        self._set_sums(fields.pop("sums", None))
        for k, v in fields.items():
            if v is None:
                self.meta.pop(k, None)
            else:
                self.meta[k] = v
        self._write_meta()

    def _set_sums(self, sums: dict | None) -> None:
        for k, v in (sums or {}).items():
            self._sums[k] = None if v is None else np.asarray(v, dtype=np.float64)

    def finalize(self, extra: dict | None = None, sums: dict | None = None, known: dict | None = None) -> dict:
        """Trim unused rows (skipped inputs) and mark the store complete. Every row must be committed.
        ``sums``: the committed rows' sums when others wrote them ({"images", "texts"}: a cluster's tasks, the
        import's thread pool); else the writer's own, folded chunk by chunk by its sink. ``known``: the checksums
        of the chunks others wrote ({name: {"crc32c": [...], "content": [...]}}, as ``ChunkSink.known`` gives
        them); the writer's sink knows the rest. Nothing is read back (only an array none of them knows: a store
        begun by an embedx before the sink)."""
        self.wait()
        self._set_sums(sums)
        if len(self._pending) or self._pending_skipped:
            raise StoreError("finalize() with uncommitted rows: call commit(source_pos) first")
        if not self.meta.get("texts_written"):
            raise StoreError("cannot finalize: the class texts were never written")
        n = self.rows_committed
        if n == 0:
            raise StoreError("no rows were written (every input was skipped?)")
        keys = ARRAYS if self.paired else ARRAYS[:3]
        for key in keys:  # one by one, so a finalize killed half-way is completed by the next one
            if self._arrays[key].shape[0] != n:
                self._arrays[key].resize((n,) + self._arrays[key].shape[1:])
                crash_point("finalize:resize")
        self.meta.update(extra or {})
        # crc32c of every chunk file (embedx.store.integrity; `embedx verify` checks them), behind a URL too (URL stores
        # from before it may lack chunks of fill values: none for them)
        if location(self.path).local or writes_every_chunk(self.meta):
            from embedx.store.checksums import inventory  # kernels (and torch) only when a store is finalized

            meta = dict(self.meta, rows_committed=n)
            known = {**self.sink.known(), **(known or {})}
            reader = None
            if any(name not in known for name in ARRAYS):
                from embedx.store.reader import Store

                reader = Store(self.path, allow_partial=True, verify_content=False)
            self.meta["integrity"] = inventory(self.path, self.group, meta, ARRAYS, reader, known=known)
        self.meta["complete"] = True
        self.meta["finished"] = _now()
        sync_tree(self.path)
        self._write_meta()
        sync_tree(self.path)
        if self._pool is not None:
            self._pool.shutdown()
        return self.meta

    def close(self) -> None:
        """Wait for the commit in flight; leave the store resumable."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()

    def _write_meta(self) -> None:
        self.meta.update(rows_committed=self.rows_committed, source_pos=self.source_pos,
                         skipped=self.skipped, n_skipped=len(self.skipped),
                         sums={k: None if v is None else v.tolist() for k, v in self._sums.items()})
        self.group.attrs["embedx"] = self.meta


def _joined(parts: list) -> np.ndarray:
    """The buffered pieces as one array (the piece itself when there is one: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _version() -> str:
    from embedx.version import __version__

    return __version__


def _clean_partials(path: str) -> None:
    """Remove temporary files a killed atomic write left behind (local stores)."""
    if not location(path).local:
        return
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.remove(os.path.join(root, f))
