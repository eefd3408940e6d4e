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
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.buffer.cpu import NDBuffer

from embedx.chunkio import direct_reader
from embedx.errors import StorageError, StoreError
from embedx.storelayout import (  # noqa: F401  (re-exported: the store's public names)
    ARRAYS,
    MAX_CHUNK_FILES,
    SCHEMA,
    check_reachable,
    chunk_files,
    committed_rows,
    creation_interrupted,
    finish_hint,
    is_url,
    layout_problems,
    missing_files,
    open_group,
    read_meta,
    rows_per_file,
    units,
    url_fs,
    writes_every_chunk,
)
from embedx.storepath import crash_point, place, staging_path
from embedx.urlfs import storage_fault, storage_faults

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
# Embedding chunks are never all fill value; skipping zarr's per-chunk emptiness scan makes writes ~7x faster.
_WRITE_ALL = {"write_empty_chunks": True}
TARGET_CHUNK_BYTES = 4 << 20  # whole rows, about 4 MiB per chunk
SUM_SLICE = 4096  # rows per float64 slice of normalized_sum
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


def exists(path: str) -> bool:
    """True if a zarr group (complete or not) lives at ``path``."""
    try:
        open_group(path, mode="r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError, OSError):
        return False


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
                raise StoreError(f"{path} already holds a complete store; pass --overwrite to replace it")
            hint = " (an interrupted import: imports do not resume)" if meta.get("written_by") == "import" else ""
            raise StoreError(f"{path} already holds an unfinished store{hint}; pass --overwrite to replace it")
        return True
    if is_url(path):
        check_reachable(path)
        fs, p = url_fs(path)
        fs.invalidate_cache(p)
        taken = fs.exists(p)
    else:
        taken = os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path))
    if taken:
        raise StoreError(f"{path} exists and is not an embedx store; refusing to write over it (choose another path)")
    return False


def _remove(path: str) -> None:
    if is_url(path):
        fs, p = url_fs(path)
        fs.invalidate_cache(p)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sync(path: str) -> None:
    """Make the data written so far durable before the commit marker is (local stores only)."""
    if not is_url(path) and hasattr(os, "sync"):
        os.sync()


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
        local = not is_url(path)
        if check_target(path, overwrite) and not local:
            _remove(path)  # remote: in place; local stores are staged and swapped in whole (embedx.storepath)
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
        build = staging_path(path) if local else str(path)
        try:
            cls._build(build, n_rows, dim, meta, n_texts, dtype, codec, compressors, chunk_rows, paired)
            if local:
                crash_point("create:staged")
                place(build, path)
        except BaseException as e:
            if local and os.path.isdir(build):
                shutil.rmtree(build, ignore_errors=True)
            if isinstance(e, OSError):
                raise StoreError(f"{path}: cannot create the store ({e.strerror or e})") from None
            raise
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
            raise StoreError(f"{path} is already complete; pass --overwrite to replace it")
        for key in FINGERPRINT_KEYS:
            if key in meta and old.get(key) != meta[key]:
                raise StoreError(
                    f"refusing to resume {path}: it was started with {key}={_short(old.get(key))}, "
                    f"this run asks for {key}={_short(meta[key])} (use --overwrite to start over)")
        _clean_partials(path)
        return cls(path, open_group(path, mode="r+"), background=background)

    # -- writing ------------------------------------------------------------------------------------------
    def write_texts(self, emb: np.ndarray, names: Sequence[str]) -> None:
        """Class-text rows, written once before any image row."""
        if self.paired:
            raise StoreError("paired stores take their text rows with append()")
        arr = self._arrays["texts/embeddings"]
        if emb.shape != arr.shape:
            raise StoreError(f"text embeddings have shape {emb.shape}, the store expects {arr.shape}")
        stored = emb.astype(self.dtype)
        arr[:] = stored
        self._arrays["texts/names"][:] = np.asarray(list(names), dtype=str)
        self._sums["texts"] = normalized_sum(stored)
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
            fault = storage_fault(e, self.path) if is_url(self.path) else None
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
            emb = _joined(p.emb)
            g["images/embeddings"][r0:r1] = emb
            self._sums["images"] = _add(self._sums["images"], normalized_sum(emb))
            g["images/labels"][r0:r1] = (np.arange(r0, r1, dtype=np.int32) if self.paired
                                         else _joined(p.labels))
            g["images/ids"][r0:r1] = _joined(p.ids)
            if self.paired:
                temb = _joined(p.text_emb)
                g["texts/embeddings"][r0:r1] = temb
                self._sums["texts"] = _add(self._sums["texts"], normalized_sum(temb))
                g["texts/names"][r0:r1] = _joined(p.text_names)
            if self.durable_commits:
                _sync(self.path)
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
        ``sums``: the committed rows' sums as the caller computed them ({"images", "texts"}; embedx.embedplan
        folds them chunk by chunk, so they do not depend on when commits happened). ``known``: checksums the
        caller took of the bytes it wrote ({name: {"crc32c": [...], "content": [...]}}, embedx.chunkwrite);
        those arrays are not read back."""
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
        # crc32c of every chunk file (embedx.integrity; `embedx verify` checks them), behind a URL too (URL stores
        # from before it may lack chunks of fill values: none for them)
        if not is_url(self.path) or writes_every_chunk(self.meta):
            from embedx.checksums import inventory  # kernels (and torch) only when a store is finalized

            meta = dict(self.meta, rows_committed=n)
            reader = Store(self.path, allow_partial=True, verify_content=False)
            self.meta["integrity"] = inventory(self.path, self.group, meta, ARRAYS, reader, known=known)
        self.meta["complete"] = True
        self.meta["finished"] = _now()
        _sync(self.path)
        self._write_meta()
        _sync(self.path)
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


def normalized_sum(rows: np.ndarray) -> np.ndarray | None:
    """float64 sum of the L2-normalized rows (zero rows contribute nothing). Stores keep these sums of the
    committed rows in attrs["embedx"]["sums"], so measures needing sum_i x_i up front run in one pass.

    sum_i x_i / |x_i| in float64 slices of SUM_SLICE rows: per slice the norms, then one weighted row sum, both
    numpy einsum loops (single-threaded, so the same bits on any machine; no full-size temporaries: ~30x the
    speed of normalizing a float64 copy of every row)."""
    x = np.asarray(rows)
    out = np.zeros(x.shape[1])
    for a in range(0, len(x), SUM_SLICE):
        s = x[a:a + SUM_SLICE].astype(np.float64)
        n = np.sqrt(np.einsum("ij,ij->i", s, s))
        out += np.einsum("i,ij->j", np.divide(1.0, n, out=np.zeros_like(n), where=n > 0), s)
    return out


def _joined(parts: list) -> np.ndarray:
    """The buffered pieces as one array (the piece itself when there is one: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _add(a, b):
    return b if a is None else a + b


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _version() -> str:
    from embedx.version import __version__

    return __version__


def _clean_partials(path: str) -> None:
    """Remove temporary files a killed atomic write left behind (local stores)."""
    if is_url(path):
        return
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.remove(os.path.join(root, f))


@dataclass(frozen=True)
class StoreRef:
    """A store as a task on another process opens it: path, the generation id it must still have, and how it was
    opened. :func:`open_ref` opens it once per process."""

    path: str
    generation: str | None
    allow_partial: bool = False
    verify_content: bool = True


_OPENED: dict = {}
_OPENED_MAX = 8
_OPENED_LOCK = threading.Lock()


def open_ref(ref: "StoreRef") -> "Store":
    """The store ``ref`` names, opened once per process (tasks of one pass share it); a store replaced since the
    driver opened it (another generation) is an error, never a mix of two stores."""
    key = (ref.path, ref.generation, ref.allow_partial, ref.verify_content)
    with _OPENED_LOCK:
        s = _OPENED.get(key)
    if s is None:
        s = Store(ref.path, allow_partial=ref.allow_partial, verify_content=ref.verify_content)
        if s.generation != ref.generation:
            raise StoreError(f"{ref.path} was replaced while it was being read (another process wrote a new store "
                             f"there), so these numbers could mix two stores; rerun")
        with _OPENED_LOCK:
            if len(_OPENED) >= _OPENED_MAX:
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[key] = s
    return s


def opened_verified(ref: "StoreRef", reset: bool = False) -> dict:
    """{array: chunk indices} this process's reads of ``ref`` matched to their checksums (``reset``: and forget
    them): how a cluster run reports what its workers checked."""
    key = (ref.path, ref.generation, ref.allow_partial, ref.verify_content)
    with _OPENED_LOCK:
        s = _OPENED.get(key)
    if s is None:
        return {}
    out = s.chunks_verified()
    if reset:
        with s._verified_lock:
            for v in s._verified.values():
                v.clear()
    return out


class Store:
    """Read access to a store. By default only complete stores open (``allow_partial`` to inspect others).

    Iteration is in row blocks of whole chunks, so memory is bounded by the block size whatever N is.
    """

    def __init__(self, path: str, allow_partial: bool = False, verify_content: bool = True):
        self.path = str(path)
        self.meta = read_meta(self.path)
        if not self.meta.get("complete") and not allow_partial:
            raise StoreError(
                f"{path} is unfinished ({self.meta.get('rows_committed', 0)} of at most "
                f"{self.meta.get('n_rows_max', '?')} rows committed); {finish_hint(self.meta)}")
        self.generation = self.meta.get("generation")  # a new id each time a store is created at a path
        with storage_faults(self.path):
            self.group = open_group(self.path, mode="r")
            for _, problem in layout_problems(self.path, self.meta, self.group):  # a stat per chunk: 8 ms at 1M rows
                self._still_there()  # removed between the metadata and the arrays: not damage
                raise StoreError(f"{self.path}: {problem}; the store is damaged")
            # each array looked up once: a store removed under its reader then fails on its data, which says so
            self._nodes = {name: self.group[name] for name in ARRAYS}
        self._emb = self._nodes["images/embeddings"]
        self._direct = {}  # array name -> DirectRows | None (plain chunk files read without zarr)
        self._content = self._content_inventory() if verify_content else {}
        self._verified = {name: set() for name in self._content}  # chunks a read has matched to their checksum
        self._verified_lock = threading.Lock()
        self._opened = (allow_partial, verify_content)

    def ref(self) -> StoreRef:
        """This store as tasks in other processes open it (``open_ref``)."""
        return StoreRef(self.path, self.generation, *self._opened)

    # -- shape --------------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def n_images(self) -> int:
        return int(self.meta["rows_committed"]) if not self.complete else int(self._emb.shape[0])

    @property
    def n_texts(self) -> int:
        if self.meta["mode"] == "paired":
            return self.n_images
        return int(self._nodes["texts/embeddings"].shape[0]) if self.meta.get("texts_written") else 0

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self._emb.dtype

    @property
    def chunk_rows(self) -> int:
        return int(self._emb.chunks[0])

    @property
    def paired(self) -> bool:
        return self.meta["mode"] == "paired"

    def _check_chunks(self, name: str, start: int, stop: int, per_read: bool = False) -> None:
        """Every chunk file holding rows ``start:stop`` of ``name`` still exists (checked on open; again before
        zarr's fallback, which would read a chunk deleted since as its fill value: a silently wrong number).
        Behind a URL the check is a listing, so row reads (``per_read``) skip it: opening checked the listing,
        and a chunk deleted since reads as its fill value, which the content checksums refuse."""
        if not writes_every_chunk(self.meta) or (per_read and is_url(self.path)):
            return
        chunks = chunk_files(self.path, self._nodes[name], name, start, stop)
        with storage_faults(self.path):
            gone = missing_files(self.path, name, [f for _, f, _, _ in chunks])
        for k, f, r0, r1 in chunks:
            if f in gone:
                self._still_there()
                raise StoreError(f"{self.path}: {name} chunk {k} (rows {r0}..{r1}) is missing; the store is damaged")

    def committed(self, name: str) -> int:
        """Rows of array ``name`` that the commit marker vouches for."""
        return committed_rows(self.meta, self.group, name)

    def _content_inventory(self) -> dict:
        """{array: [int NH2 of chunk k]} recorded at finalize (embedx.integrity), checked by every read of a whole
        chunk; a list whose length disagrees with the array is damage."""
        from embedx.kernels.ops.content_hash import ALGORITHM

        rec = (self.meta.get("integrity") or {}).get("content") or {}
        if rec.get("algorithm") != ALGORITHM:
            return {}
        out = {}
        for name, hashes in (rec.get("arrays") or {}).items():
            arr = self._nodes[name]
            n = self.committed(name)
            n_units = len(units(arr, n))
            if not isinstance(hashes, list) or len(hashes) != n_units:
                raise StoreError(f"{self.path}: {name}: the inventory lists {len(hashes)} chunk contents, the array "
                                 f"has {n_units}; the store is damaged")
            out[name] = (rows_per_file(arr), n, [int(h, 16) for h in hashes])  # looked up once: a zarr array lookup costs 0.5 ms
        return out

    def chunks_verified(self) -> dict:
        """{array: sorted chunk indices whose decoded rows matched their recorded checksum in reads so far}."""
        with self._verified_lock:
            return {name: sorted(ks) for name, ks in self._verified.items()}

    def content_chunks(self) -> dict:
        """{array: number of chunks with a recorded content checksum} (empty: nothing to check reads against)."""
        return {name: len(h) for name, (_, _, h) in self._content.items()}

    def _verify_read(self, name: str, start: int, out: np.ndarray) -> None:
        """Check every whole chunk inside rows ``start:start+len(out)`` (just read into ``out``) against its
        recorded content checksum; a mismatch is damage, never a number. Reads covering part of a chunk (random
        access) are not checked: streaming readers read whole chunks."""
        from embedx.kernels.ops.content_hash import content_hash

        per, n, want = self._content[name]
        stop = start + len(out)
        k = -(-start // per)
        while k * per < min(stop, n):
            r0, r1 = k * per, min((k + 1) * per, n)
            if r1 > stop:
                break
            if content_hash(out[r0 - start:r1 - start]) != want[k]:
                self._mismatch(name, k, r0, r1)
            with self._verified_lock:
                self._verified[name].add(k)
            k += 1

    def ensure_unchanged(self) -> None:
        """Refuse numbers read across a replacement or a removal: the store at ``path`` must still be the one
        opened (same generation id). Readers call it when they finish, and every read that finds data missing; a
        store swapped in meanwhile, or gone, is an error, not a mix or a number from fill values."""
        try:
            now = read_meta(self.path).get("generation")
        except StorageError:
            raise
        except StoreError:
            if not exists(self.path):
                raise StoreError(f"the store at {self.path} vanished while it was being read (removed or moved by "
                                 f"another process); nothing was computed from it") from None
            now = "(none)"
        if now != self.generation:
            raise StoreError(f"{self.path} was replaced while it was being read (another process wrote a new store "
                             f"there), so these numbers could mix two stores; rerun")

    def _still_there(self) -> None:
        """A read found data missing: a StoreError when the whole store vanished or was replaced meanwhile (not
        damage); nothing when it is still the store opened (the caller reports the damage)."""
        self.ensure_unchanged()

    # -- data ---------------------------------------------------------------------------------------------
    def block_rows(self, target_bytes: int = 64 << 20) -> int:
        """Rows per block: whole chunks, about ``target_bytes`` of stored data."""
        per_chunk = self.chunk_rows * self.dim * self.dtype.itemsize
        return self.chunk_rows * max(1, target_bytes // per_chunk)

    def read_rows_into(self, name: str, start: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:start+len(out)`` of array ``name`` (e.g. "images/embeddings") decoded into ``out``
        (C-contiguous, the array's dtype). Plain local chunk files are read directly (embedx.chunkio), anything
        else through zarr. Thread-safe."""
        if name not in self._direct:
            self._direct[name] = direct_reader(self._nodes[name])
        d = self._direct[name]
        try:
            direct = d is not None and d.read_rows(start, out)
        except FileNotFoundError:  # a chunk file gone: the whole store, or damage
            self._still_there()
            raise
        if not direct:
            self._check_chunks(name, start, start + len(out), per_read=True)
            self._zarr_read(name, start, out)
        if name in self._content:
            self._verify_read(name, start, out)
        return out

    def _mismatch(self, name: str, k: int, r0: int, r1: int) -> None:
        self.ensure_unchanged()  # a store swapped in under this reader is not damage: say so
        raise StoreError(f"{self.path}: {name} chunk {k} (rows {r0}..{r1 - 1}): content checksum mismatch "
                         f"(overwritten, swapped or from another store); the store is damaged (embedx verify "
                         f"lists every damaged chunk)")

    def _zarr_read(self, name: str, start: int, out: np.ndarray) -> None:
        arr = self._nodes[name]
        try:
            arr.get_basic_selection(slice(start, start + len(out)), out=NDBuffer.from_numpy_array(out))
            return
        except Exception as e:  # a truncated or garbled chunk: the store is damaged, say which
            fault = storage_fault(e, self.path) if is_url(self.path) else None
            if fault is not None:  # the endpoint went away or stopped answering: not damage
                raise fault from None
            if isinstance(e, OSError):
                raise
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        for k, _, r0, r1 in chunk_files(self.path, arr, name, start, start + len(out)):
            a, b = max(r0, start), min(r1 + 1, start + len(out))
            try:
                arr.get_basic_selection(slice(a, b), out=NDBuffer.from_numpy_array(out[a - start:b - start]))
            except OSError:
                raise
            except Exception as e:
                self._still_there()
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
                raise StoreError(f"{self.path}: cannot read {name} rows {a}..{b - 1} ({why}); the store is "
                                 f"damaged") from None
        self._still_there()
        raise StoreError(f"{self.path}: cannot read {name} rows {start}..{start + len(out) - 1} ({why}); the store "
                         f"is damaged")

    def read_images_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Image rows ``start:start+len(out)`` decoded into ``out`` (no allocation; thread-safe)."""
        return self.read_rows_into("images/embeddings", start, out)

    def iter_images(self, block_rows: int | None = None, dtype=None, with_labels: bool = False,
                    reuse: bool = False, prefetch: bool = True) -> Iterator[tuple]:
        """Yield ``(start, block)`` (or ``(start, block, labels)``) over the committed image rows.

        ``reuse=True`` decodes into two preallocated buffers, reading block k+1 in a background thread while
        block k is being used (no page faults, I/O overlapped with compute): each yielded array is then only
        valid until the next iteration, so copy what you keep. ``prefetch=False`` reads in the caller's thread
        (for compute-bound consumers that need every core).
        """
        block_rows = block_rows or self.block_rows()
        labels = self.labels
        starts = list(range(0, self.n_images, block_rows))
        if not reuse:
            for start in starts:
                stop = min(start + block_rows, self.n_images)
                block = self.read_images_into(start, np.empty((stop - start, self.dim), self.dtype))
                if dtype is not None:
                    block = block.astype(dtype, copy=False)
                yield (start, block, labels(start, stop)) if with_labels else (start, block)
            return
        rows = min(block_rows, self.n_images)
        bufs = [np.empty((rows, self.dim), dtype=self.dtype) for _ in range(2)]
        conv = np.empty((rows, self.dim), dtype=dtype) if dtype is not None and np.dtype(dtype) != self.dtype else None

        def read(k: int):
            start = starts[k]
            stop = min(start + block_rows, self.n_images)
            buf = self.read_images_into(start, bufs[k % 2][: stop - start])
            return buf, (labels(start, stop) if with_labels else None)

        with ThreadPoolExecutor(1, thread_name_prefix="embedx-reader") as pool:
            nxt = pool.submit(read, 0) if starts and prefetch else None
            for k, start in enumerate(starts):
                block, lab = nxt.result() if prefetch else read(k)
                nxt = pool.submit(read, k + 1) if prefetch and k + 1 < len(starts) else None
                if conv is not None:
                    out = conv[: len(block)]
                    np.copyto(out, block)
                    block = out
                yield (start, block, lab) if with_labels else (start, block)

    def images(self, rows=None, dtype=None) -> np.ndarray:
        """Image rows by index (random access) or, with ``rows=None``, all committed rows."""
        if rows is None:
            out = self.read_images_into(0, np.empty((self.n_images, self.dim), self.dtype))
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size and (rows.min() < -self.n_images or rows.max() >= self.n_images):
                raise StoreError(f"row index out of range for a store of {self.n_images} images")
            rows = np.where(rows < 0, rows + self.n_images, rows)
            out = self._emb.get_orthogonal_selection((rows, slice(None)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """int32 class index of image rows ``start:stop`` (default all committed rows); -1 = none."""
        stop = self.n_images if stop is None else min(stop, self.n_images)
        return self.read_rows_into("images/labels", start, np.empty(max(stop - start, 0), np.int32))

    def ids(self) -> np.ndarray:
        self._check_chunks("images/ids", 0, self.n_images)
        with storage_faults(self.path):
            return self._nodes["images/ids"][: self.n_images]

    def texts(self, dtype=None) -> np.ndarray:
        arr = self._nodes["texts/embeddings"]
        out = self.read_rows_into("texts/embeddings", 0, np.empty((self.n_texts,) + arr.shape[1:], arr.dtype))
        return out if dtype is None else out.astype(dtype, copy=False)

    def read_texts(self, start: int, stop: int) -> np.ndarray:
        """Text rows ``start:stop`` (clipped to the texts) in the stored dtype, through the checked read path."""
        arr = self._nodes["texts/embeddings"]
        stop = min(stop, self.n_texts)
        return self.read_rows_into("texts/embeddings", start, np.empty((max(stop - start, 0),) + arr.shape[1:], arr.dtype))

    def text_rows(self, rows) -> np.ndarray:
        """Text rows by index (random access; like ``images(rows)``, not checked against the chunk checksums)."""
        rows = np.asarray(rows, dtype=np.int64)
        self._check_chunks("texts/embeddings", 0, self.n_texts)
        with storage_faults(self.path):
            return self._nodes["texts/embeddings"].get_orthogonal_selection((rows, slice(None)))

    def whole_chunks(self, target_rows: int) -> int:
        """About ``target_rows`` rows, rounded to whole chunks (so streamed reads check every chunk they read)."""
        return self.chunk_rows * max(1, int(target_rows) // self.chunk_rows)

    def text_names(self) -> np.ndarray:
        self._check_chunks("texts/names", 0, self.n_texts)
        with storage_faults(self.path):
            return self._nodes["texts/names"][: self.n_texts]

    # -- description --------------------------------------------------------------------------------------
    def info(self) -> dict:
        m = self.meta
        return {
            "path": self.path, "schema": m["schema"], "complete": self.complete,
            "rows_committed": int(m["rows_committed"]), "n_images": self.n_images, "n_texts": self.n_texts,
            "dim": self.dim, "dtype": str(self.dtype), "mode": m["mode"],
            "chunk_rows": self.chunk_rows, "codec": m.get("codec"), "size_bytes": _size_on_disk(self.path),
            "model": m.get("model"), "pretrained": m.get("pretrained"), "seed": m.get("seed"),
            "checkpoint_sha256": m.get("checkpoint_sha256"), "checkpoint": m.get("checkpoint"),
            "dataset": m.get("dataset"),
            "split": m.get("split"), "prompts": m.get("prompts"), "normalized": m.get("normalized"),
            "n_skipped": int(m.get("n_skipped", 0)), "created": m.get("created"),
            "finished": m.get("finished"), "embedx_version": m.get("embedx_version"),
            "source": m.get("source"),
            "integrity": _describe_inventory(m.get("integrity")),
            "to_finish": None if self.complete else finish_hint(m),
        }


def _describe_inventory(inv: dict | None) -> str | None:
    if not inv:
        return None
    line = f"{inv['algorithm']} of {sum(map(len, inv['arrays'].values()))} chunk files"
    content = (inv.get("content") or {}).get("arrays")
    if content:
        line += f", {inv['content']['algorithm']} of {sum(map(len, content.values()))} chunk contents (every read)"
    return line


def _size_on_disk(path: str) -> int:
    if is_url(path):
        fs, p = url_fs(path)
        fs.invalidate_cache(p)
        return int(sum(fs.du(p, total=False).values())) if fs.exists(p) else 0
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
