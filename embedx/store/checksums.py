"""The checksums of a store's inventory (``embedx.store.integrity`` describes them and verifies them):

  * ``crc32c`` of each chunk (or shard) file's bytes as stored;
  * NH2 (``kernels.content_hash``) of each chunk's decoded committed rows, for ``CONTENT_ARRAYS``, as 16 hex digits.

The layer under ``store``: reading rows goes through a ``reader`` passed in (a :class:`embedx.store.Store`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedx.kernels.ops.content_hash import ALGORITHM as CONTENT_ALGORITHM
from embedx.kernels.ops.content_hash import content_hash
from embedx.fs.locations import location
from embedx.store.layout import CONTENT_ARRAYS, chunk_files, committed_rows, units

ALGORITHM = "crc32c"


def _crc32c(path: str) -> int:
    """crc32c of the bytes of the file at ``path`` (a local path, or a URL: read through fsspec)."""
    import google_crc32c

    c = google_crc32c.Checksum()
    with location(path).open("rb", block_size=8 << 20) as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            c.update(block)
    return int.from_bytes(c.digest(), "big")


_CRC_LIB: list = []  # [ctypes function or None], filled on first use


def _crc_extend_fn():
    """libcrc32c's ``crc32c_extend(uint32, const uint8*, size_t)`` (the library google-crc32c's wheel bundles),
    or None where it cannot be found."""
    if not _CRC_LIB:
        fn = None
        try:
            import ctypes
            import ctypes.util
            import glob

            import google_crc32c

            pkg = os.path.dirname(os.path.dirname(os.path.abspath(google_crc32c.__file__)))
            paths = sorted(glob.glob(os.path.join(pkg, "google_crc32c.libs", "libcrc32c*.so*")))
            path = paths[0] if paths else ctypes.util.find_library("crc32c")
            if path:
                fn = ctypes.CDLL(path).crc32c_extend
                fn.argtypes = (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
                fn.restype = ctypes.c_uint32
        except (ImportError, OSError, AttributeError):
            fn = None
        _CRC_LIB.append(fn)
    return _CRC_LIB[0]


def crc32c_of(buf, crc: int = 0) -> int:
    """crc32c of a C-contiguous numpy array's bytes (or a ``bytes``), extending ``crc``, without copying the bytes
    (google-crc32c's Python API takes only ``bytes``; its C library is called directly, releasing the GIL). Falls
    back to a ``bytes`` copy where the library is not found."""
    import google_crc32c

    if isinstance(buf, bytes):
        return int(google_crc32c.extend(crc, buf))
    a = np.ascontiguousarray(buf)
    fn = _crc_extend_fn()
    if fn is None:
        return int(google_crc32c.extend(crc, a.tobytes()))
    return int(fn(crc, a.ctypes.data, a.nbytes))


def unit_hash(rows: np.ndarray) -> str:
    """The recorded form of a chunk's content checksum: 16 hex digits (JSON numbers lose bits above 2^53)."""
    return f"{content_hash(rows):016x}"


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _read_unit(store, name: str, arr, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of array ``name`` decoded (through the store's read path)."""
    return store.read_rows_into(name, r0, np.empty((r1 - r0,) + arr.shape[1:], arr.dtype))


def _content_hashes(store, name: str, threads: int) -> list[str]:
    arr = store.group[name]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda u: unit_hash(_read_unit(store, name, arr, u[1], u[2])),
                             units(arr, store.committed(name))))


def inventory(root: str, group, meta: dict, arrays, reader, known: dict | None = None) -> dict:
    """{"algorithm", "arrays": {name: [crc32c of chunk file k]}, "content": {"algorithm", "arrays": {name:
    [NH2 of the decoded rows of chunk k]}} of the committed rows (the store at ``root`` is being finalized;
    ``reader`` reads its rows unchecked). ``known``: {name: {"crc32c": [...], "content": [...]}} the writer took
    of the bytes it wrote itself (one entry per chunk file); those files are not read again."""
    known = known or {}
    files = {name: chunk_files(root, group[name], name, 0, committed_rows(meta, group, name)) for name in arrays}
    for name, got in known.items():
        if len(got["crc32c"]) != len(files[name]) or len(got.get("content", files[name])) != len(files[name]):
            raise ValueError(f"{name}: {len(got['crc32c'])} known checksums for {len(files[name])} chunk files")
    with ThreadPoolExecutor(_threads()) as pool:  # behind a URL each file is a request: several in flight
        crcs = {name: (list(known[name]["crc32c"]) if name in known else
                       list(pool.map(_crc32c, [f for _, f, _, _ in files[name]])))
                for name in arrays}
    content = {name: (list(known[name]["content"]) if name in known else _content_hashes(reader, name, _threads()))
               for name in CONTENT_ARRAYS if name in arrays}
    return {"algorithm": ALGORITHM, "arrays": crcs,
            "content": {"algorithm": CONTENT_ALGORITHM, "arrays": content}}
