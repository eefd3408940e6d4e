"""The numba kernel of NH2 (``content_hash``: the definition, and when it is used): serial, GIL-free, about
20 GB/s a core. Compiled once per installation (``jit.njit_cached``)."""
from __future__ import annotations

import numpy as np

from embedx.kernels.ops.jit import njit_cached

BLOCK_WORDS = 256  # content_hash.BLOCK_WORDS (this module does not import it: content_hash loads this one)


@njit_cached(nogil=True)
def _splitmix64(i):  # pragma: no cover - compiled
    z = i + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit_cached(nogil=True, fastmath=True)
def nh2(w, keys, n_full, tail):  # pragma: no cover - compiled
    """NH2 of the words ``w``: ``n_full`` whole blocks read in place, then the zero-padded ``tail`` block(s)."""
    t = np.empty(BLOCK_WORDS, np.uint32)
    t64 = t.view(np.uint64)
    q = BLOCK_WORDS // 4
    m = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    total = np.uint64(0)
    n_tail = tail.shape[0] // BLOCK_WORDS
    for b in range(n_full + n_tail):
        src = w[b * BLOCK_WORDS:(b + 1) * BLOCK_WORDS] if b < n_full else \
            tail[(b - n_full) * BLOCK_WORDS:(b - n_full + 1) * BLOCK_WORDS]
        for j in range(BLOCK_WORDS):  # (w_j + K_j) mod 2^32, as 32-bit lanes
            t[j] = src[j] + keys[j]
        h = np.uint64(0)
        for j in range(q):  # word pairs (2j, 2j+128) and (2j+1, 2j+129): the low and high halves of two qwords
            a = t64[j]
            c = t64[j + q]
            h += (a & m) * (c & m) + (a >> s32) * (c >> s32)
        l0 = _splitmix64(np.uint64(1 << 32) + np.uint64(2 * b)) & m
        l1 = _splitmix64(np.uint64(1 << 32) + np.uint64(2 * b + 1)) & m
        total += (((h & m) + l0) & m) * (((h >> s32) + l1) & m)
    return total
