"""A keyed 64-bit hash of the bytes of a block of rows, fast enough to check every chunk a streaming pass reads.

NH (Black, Halevi, Krawczyk, Krovetz, Rogaway: "UMAC: fast and secure message authentication", CRYPTO 1999),
in two levels. The bytes, zero-padded to whole blocks of 1 KiB, are read as little-endian uint32 words; block b
(words w_0 .. w_255) hashes to

    h_b = sum_{j < 128} ((w_j + K_j) mod 2^32) * ((w_{j+128} + K_{j+128}) mod 2^32)      mod 2^64

and the blocks to

    H = sum_b ((lo32(h_b) + L_{2b}) mod 2^32) * ((hi32(h_b) + L_{2b+1}) mod 2^32)           mod 2^64

with fixed keys K_j = low 32 bits of splitmix64(j) and L_i = low 32 bits of splitmix64(2^32 + i). NH is
2^-32-almost-universal for inputs of one length, so two different chunk contents of the same size collide with
probability about 2^-31 (as likely as a crc32c collision). It guards against accidental damage (garbage,
swapped or stale chunks, bit flips), not against an adversary who knows the keys.

Its inner loop is one 32 x 32 -> 64-bit multiply per two words (``vpmuludq``): about 20 GB/s a core, 3-4x
google-crc32c here (bench/results/integrity.md), which is what lets every read verify what it reads.

  * ``content_hash_reference``: numpy, whole arrays (the definition).
  * ``content_hash``: the same hash, exactly (integer arithmetic): numpy (uint32 lanes widened once, about
    3.5 GB/s) until this process has hashed ``NUMBA_AFTER_BYTES`` or loaded the numba kernels, then the numba
    kernel (``content_hash_numba``: serial, GIL-free, readers call it from their own threads). A command that
    reads a few MiB (``info``, ``verify`` or ``measure`` of a small store) never pays numba's start-up (about
    0.3 s to import, 0.5 s more for a first call even from its cache).
"""
from __future__ import annotations

import numpy as np

ALGORITHM = "nh2-1k"   # the name stores record with the hashes
BLOCK_WORDS = 256      # 1 KiB blocks
HALF = BLOCK_WORDS // 2
MASK32 = np.uint64(0xFFFFFFFF)


def splitmix64(i: np.ndarray) -> np.ndarray:
    """splitmix64 of the uint64 values ``i`` (Steele, Lea, Flood 2014): the keys' generator."""
    z = (np.asarray(i, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


BLOCK_KEYS = (splitmix64(np.arange(BLOCK_WORDS, dtype=np.uint64)) & MASK32).astype(np.uint32)
L_OFFSET = np.uint64(1 << 32)


def _words(data) -> np.ndarray:
    """The bytes of ``data`` (any C-contiguous array or bytes) as uint32 words, zero-padded to whole blocks."""
    raw = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), np.uint8)
    pad = (-len(raw)) % (4 * BLOCK_WORDS)
    if pad or len(raw) == 0:
        raw = np.concatenate([raw, np.zeros(pad or 4 * BLOCK_WORDS, np.uint8)])
    return raw.view("<u4")


def content_hash_reference(data) -> int:
    """The definition above in numpy (uint64 arithmetic wraps mod 2^64). Empty data hash as one zero block."""
    w = _words(data).reshape(-1, BLOCK_WORDS).astype(np.uint64)
    k = BLOCK_KEYS.astype(np.uint64)
    with np.errstate(over="ignore"):
        a = (w[:, :HALF] + k[:HALF]) & MASK32
        b = (w[:, HALF:] + k[HALF:]) & MASK32
        h = (a * b).sum(axis=1, dtype=np.uint64)
        i = np.arange(len(h), dtype=np.uint64)
        l0 = splitmix64(L_OFFSET + 2 * i) & MASK32
        l1 = splitmix64(L_OFFSET + 2 * i + np.uint64(1)) & MASK32
        return int(((((h & MASK32) + l0) & MASK32) * (((h >> np.uint64(32)) + l1) & MASK32)).sum(dtype=np.uint64))


NUMBA_AFTER_BYTES = 256 << 20  # bytes hashed in numpy (about 75 ms) before the numba kernel takes over
_hashed = 0        # bytes this process has hashed in numpy
_numba = None      # the numba kernel, once loaded
_L_KEYS = (np.empty(0, np.uint64), np.empty(0, np.uint64))  # L_{2b}, L_{2b+1} for the blocks seen so far


def _block_keys(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(L_{2b}, L_{2b+1}) for b < n, kept and grown (a read of one chunk size needs the same keys every time)."""
    global _L_KEYS
    keys = _L_KEYS  # this thread's view: another thread may swap in a longer (or, racing, shorter) pair
    if len(keys[0]) < n:
        i = np.arange(max(n, 2 * len(keys[0])), dtype=np.uint64)
        keys = _L_KEYS = (splitmix64(L_OFFSET + 2 * i) & MASK32, splitmix64(L_OFFSET + 2 * i + np.uint64(1)) & MASK32)
    return keys[0][:n], keys[1][:n]


def content_hash_numpy(data) -> int:
    """NH2 in numpy, with the reference's arithmetic: the uint32 sums (w_j + K_j) wrap mod 2^32 in place, and
    only their products are taken in uint64."""
    w = _words(data).reshape(-1, BLOCK_WORDS)
    a = (w[:, :HALF] + BLOCK_KEYS[:HALF]).astype(np.uint64)
    a *= (w[:, HALF:] + BLOCK_KEYS[HALF:])
    h = a.sum(axis=1, dtype=np.uint64)
    l0, l1 = _block_keys(len(h))
    with np.errstate(over="ignore"):
        return int(((((h & MASK32) + l0) & MASK32) * (((h >> np.uint64(32)) + l1) & MASK32)).sum(dtype=np.uint64))


def numba_kernel():
    """The numba kernel (``content_hash_numba.nh2``), loaded now: later calls of :func:`content_hash` use it."""
    global _numba
    if _numba is None:
        from embedx.kernels.ops import content_hash_numba

        assert content_hash_numba.BLOCK_WORDS == BLOCK_WORDS
        _numba = content_hash_numba.nh2
    return _numba


def content_hash(data) -> int:
    """NH2 of the bytes of ``data`` (a C-contiguous array of any dtype, or bytes): see the module docstring."""
    global _hashed
    if _numba is None and _hashed < NUMBA_AFTER_BYTES:
        h = content_hash_numpy(data)
        _hashed += np.asarray(data).nbytes if not isinstance(data, (bytes, bytearray, memoryview)) else len(data)
        return h
    raw = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), np.uint8)
    full = len(raw) // (4 * BLOCK_WORDS)
    if len(raw) == 0 or full * 4 * BLOCK_WORDS < len(raw):
        tail = _words(raw[full * 4 * BLOCK_WORDS:])
    else:
        tail = np.empty(0, np.uint32)
    body = raw[: full * 4 * BLOCK_WORDS].view("<u4")
    return int(numba_kernel()(body, BLOCK_KEYS, full, tail))
