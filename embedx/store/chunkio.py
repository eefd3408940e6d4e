"""Direct reads and writes of whole rows in the chunk files of a local, uncompressed, unsharded Zarr v3 array.

Such a chunk file is the chunk's raw little-endian bytes, rows in order (edge chunks are stored at full chunk
size), so rows ``r0:r1`` of chunk ``k`` are one ``preadv`` at byte offset ``(r0 - k*chunk_rows) * row_bytes``
straight into the caller's buffer: no zarr event loop, no intermediate copy, and safe to call from several
threads at once (it releases the GIL). Reading the 1,000,000 x 512 float16 benchmark store this way is about
3.5x faster than zarr's per-chunk path (bench/results/store_read.md).

:class:`DirectChunks` is the writing side: one whole chunk's bytes straight into its chunk file (an edge chunk is
padded with the array's fill value to full size, as zarr stores it). Only for stores being built in a
staging folder, which are synced before they are placed (``embedx.store.placement``).

:class:`StringChunks` writes a whole chunk of a string array (ids, captions: zarr's ``vlen-utf8`` codec, then
zstd as the store has it) from a pyarrow string array, encoded by numpy from arrow's offsets and bytes
(:func:`encode_vlen_utf8`; zarr's own path converts every item to a Python string first).

:func:`direct_reader` (and :func:`direct_writer`, :func:`string_writer`) return None whenever the array does not
qualify (remote store, a compressor or sharding, big-endian bytes, chunks that split rows); a short or missing
chunk file makes ``read_rows`` return False. Callers then use zarr, which stays the reference for the format.
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

    def write_chunk(self, k: int, data) -> bytes:
        """Chunk ``k``'s rows as ``data`` (C-order bytes of whole rows, or a C-contiguous array; fewer rows than a
        chunk only for the last one, then padded with the array's fill value, as zarr stores an edge chunk).
        Returns the padding written (the file is ``data + padding``: its checksum)."""
        view = memoryview(data).cast("B")
        full = self.chunk_rows * self.row_bytes
        if len(view) % self.row_bytes or len(view) > full:
            raise ValueError(f"chunk {k}: {len(view)} bytes is not whole rows of one chunk ({self.row_bytes} a row)")
        pad = b""
        if len(view) < full:
            fill = np.full(self.row_shape or (), self.arr.metadata.fill_value, dtype=self.dtype)
            pad = fill.tobytes() * ((full - len(view)) // self.row_bytes)
        path = self._chunk_file(k)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(view)
            f.write(pad)
        return pad


def encode_vlen_utf8(strings, n: int) -> bytes:
    """zarr's ``vlen-utf8`` bytes of ``strings`` (a pyarrow string array without nulls) padded with "" to ``n``
    items: the item count, then per item its UTF-8 byte length and bytes (uint32 little-endian)."""
    import pyarrow as pa

    strings = strings.cast(pa.string()) if strings.type != pa.string() else strings
    m = len(strings)
    _, offsets_buf, data_buf = strings.buffers()
    offs = np.frombuffer(offsets_buf, dtype="<i4")[strings.offset:strings.offset + m + 1].astype(np.int64)
    data = (np.frombuffer(data_buf, dtype=np.uint8)[offs[0]:offs[-1]] if data_buf is not None
            else np.zeros(0, np.uint8))
    lens = np.diff(offs)
    out = np.zeros(4 + 4 * n + len(data), np.uint8)  # the padding items: length 0, no bytes
    out[:4] = np.frombuffer(np.uint32(n).astype("<u4").tobytes(), np.uint8)
    heads = 4 + 4 * np.arange(m) + (offs[:-1] - offs[0])
    out[heads[:, None] + np.arange(4)] = lens.astype("<u4").view(np.uint8).reshape(m, 4)
    out[np.arange(len(data)) + 4 + 4 * (np.repeat(np.arange(m), lens) + 1)] = data
    return out.tobytes()


class StringChunks:
    """Whole-chunk writer for a local 1-D string array stored ``vlen-utf8`` (+ zstd)."""

    def __init__(self, arr, root: str, zstd):
        self.arr, self.zstd = arr, zstd
        self.dir = os.path.join(root, *arr.path.split("/"))
        self.chunk_rows = int(arr.chunks[0])

    def write_chunk(self, k: int, strings) -> bytes:
        """Chunk ``k`` from ``strings`` (pyarrow, up to a chunk of items; padded with ""); returns the file's
        bytes (for its checksum)."""
        if len(strings) > self.chunk_rows:
            raise ValueError(f"chunk {k}: {len(strings)} strings for a chunk of {self.chunk_rows}")
        data = encode_vlen_utf8(strings, self.chunk_rows)
        if self.zstd is not None:
            data = bytes(self.zstd.encode(data))
        key = self.arr.metadata.encode_chunk_key((k,))
        path = os.path.join(self.dir, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return data


def string_writer(arr) -> StringChunks | None:
    """A :class:`StringChunks` for ``arr`` if it is a local, unsharded 1-D string array whose codecs are
    ``vlen-utf8`` and at most zstd, else None."""
    try:
        from numcodecs import Zstd
        from zarr.codecs import VLenUTF8Codec, ZstdCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr 3 is a dependency
        return None
    meta = arr.metadata
    if (getattr(meta, "zarr_format", None) != 3 or not isinstance(arr.store, LocalStore) or arr.ndim != 1
            or getattr(arr, "shards", None) is not None or meta.fill_value not in ("", None)):
        return None
    codecs = tuple(meta.codecs)
    if not codecs or not isinstance(codecs[0], VLenUTF8Codec) or len(codecs) > 2:
        return None
    zstd = None
    if len(codecs) == 2:
        if not isinstance(codecs[1], ZstdCodec):
            return None
        zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
    return StringChunks(arr, str(arr.store.root), zstd)


def direct_writer(arr) -> DirectChunks | None:
    """A :class:`DirectChunks` for ``arr`` under the same conditions as :func:`direct_reader`, else None."""
    root = _plain_rows_root(arr)
    return None if root is None else DirectChunks(arr, root)


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
