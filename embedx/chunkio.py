"""Direct reads and writes of whole rows in the chunk files of a local, uncompressed, unsharded Zarr v3 array.

Such a chunk file is the chunk's raw little-endian bytes, rows in order (edge chunks are stored at full chunk
size), so rows ``r0:r1`` of chunk ``k`` are one ``preadv`` at byte offset ``(r0 - k*chunk_rows) * row_bytes``
straight into the caller's buffer: no zarr event loop, no intermediate copy, and safe to call from several
threads at once (it releases the GIL). Reading the 1,000,000 x 512 float16 benchmark store this way is about
3.5x faster than zarr's per-chunk path (bench/results/store_read.md).

:class:`DirectChunks` is the writing side: one whole chunk's bytes straight into its chunk file (an edge chunk is
padded with zeros, the arrays' fill value, to full size as zarr stores it). Only for stores being built in a
staging folder, which are synced before they are placed (``embedx.storepath``).

:func:`direct_reader` (and :func:`direct_writer`) return None whenever the array does not qualify (remote store, a compressor or
sharding, big-endian bytes, chunks that split rows); a short or missing chunk file makes ``read_rows`` return
False. Callers then use zarr, which stays the reference for the format.
"""
from __future__ import annotations

import os
import sys

import numpy as np


class DirectRows:
    """Row reader for one qualifying array (see the module docstring)."""

    def __init__(self, arr, root: str):
        self.arr = arr
        self.dir = os.path.join(root, *arr.path.split("/"))
        self.chunk_rows = int(arr.chunks[0])
        self.row_shape = tuple(arr.shape[1:])
        self.dtype = arr.dtype
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.ndim = arr.ndim

    def _chunk_file(self, k: int) -> str:
        key = self.arr.metadata.encode_chunk_key((k,) + (0,) * (self.ndim - 1))
        return os.path.join(self.dir, *key.split("/"))

    def read_rows(self, start: int, out: np.ndarray) -> bool:
        """Rows ``start:start+len(out)`` into ``out`` (C-contiguous, the array's dtype); False if a chunk file is
        missing or short (``out`` is then partly written; the caller rereads through zarr)."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, stop = start, start + len(out)
        while pos < stop:
            k = pos // self.chunk_rows
            end = min(stop, (k + 1) * self.chunk_rows)
            want = (end - pos) * self.row_bytes
            dst = view[(pos - start) * self.row_bytes:(end - start) * self.row_bytes]
            try:
                fd = os.open(self._chunk_file(k), os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                got = os.preadv(fd, [dst], (pos - k * self.chunk_rows) * self.row_bytes)
            finally:
                os.close(fd)
            if got != want:
                return False
            pos = end
        return True


class DirectChunks(DirectRows):
    """Whole-chunk writer for one qualifying array (see the module docstring)."""

    def write_chunk(self, k: int, data: bytes) -> None:
        """Chunk ``k``'s rows as ``data`` (C-order bytes of whole rows; fewer rows than a chunk only for the last
        one, then padded with zeros)."""
        full = self.chunk_rows * self.row_bytes
        if len(data) % self.row_bytes or len(data) > full:
            raise ValueError(f"chunk {k}: {len(data)} bytes is not whole rows of one chunk ({self.row_bytes} a row)")
        path = self._chunk_file(k)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if len(data) < full:
                f.write(bytes(full - len(data)))


def direct_writer(arr) -> DirectChunks | None:
    """A :class:`DirectChunks` for ``arr`` under the same conditions as :func:`direct_reader` and a zero fill
    value, else None."""
    root = _plain_rows_root(arr)
    if root is None or arr.metadata.fill_value != 0:
        return None
    return DirectChunks(arr, root)


def direct_reader(arr) -> DirectRows | None:
    """A :class:`DirectRows` for ``arr`` if its chunk files hold plain row bytes on a local disk, else None."""
    root = _plain_rows_root(arr)
    return None if root is None else DirectRows(arr, root)


def _plain_rows_root(arr) -> str | None:
    """The local store root of ``arr`` if its chunk files hold plain little-endian row bytes, else None."""
    try:
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr 3 is a dependency
        return None
    meta = arr.metadata
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(arr.store, LocalStore):
        return None
    codecs = tuple(meta.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if arr.dtype.itemsize > 1 and (endian != "little" or sys.byteorder != "little"):
        return None
    if arr.dtype.kind not in "fiub" or arr.ndim < 1 or tuple(arr.chunks[1:]) != tuple(arr.shape[1:]):
        return None
    if getattr(arr, "shards", None) is not None:
        return None
    return str(arr.store.root)
