"""Reading a store: :class:`Store` (whole-chunk reads checked against their checksums, rows never past the
commit marker) and :class:`StoreRef` / :func:`open_ref`, a store as a task in another process opens it."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from zarr.core.buffer.cpu import NDBuffer

from embedx.store.chunkio import direct_reader
from embedx.errors import StorageError, StoreError
from embedx.store.layout import (
    ARRAYS,
    chunk_files,
    committed_rows,
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
from embedx.fs.url import storage_fault, storage_faults
from embedx.store.layout import exists


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
        """{array: [int NH2 of chunk k]} recorded at finalize (embedx.store.integrity), checked by every read of a whole
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
        (C-contiguous, the array's dtype). Plain local chunk files are read directly (embedx.store.chunkio), anything
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
