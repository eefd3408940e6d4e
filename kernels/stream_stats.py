"""One fused sweep over a block of embedding rows (CPU): per row its norm and its dots with a few vectors
(divided by the norm); per class the sum of the normalized rows (label -1: an extra "unlabelled" row).

    norms[i]   = |x_i|
    dots[i, q] = x_i . v_q / |x_i|
    sums[c]    = sum_{i: y_i = c} x_i / |x_i|            (c = n_classes: the rows with y_i = -1)

torch needs four passes over an upcast copy of the block for this (copy, norm, matmul, sparse matmul); the
numba kernel reads each float16 row once (a 65,536-entry table upcasts it; float16 is the store default), keeps it in registers/L1 and
does all three, so the streaming measures keep pace with the store read. Float32 accumulation per block,
float64 across blocks (in the caller).

  * ``stream_stats_reference``: float64 numpy (the definition).
  * ``stream_stats_numba``: the fused kernel (numba, parallel over row ranges); None when numba is absent.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; the torch path covers its absence
    numba = None

F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def stream_stats_reference(x, labels, vs, n_classes: int):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    xn = x / norms[:, None]
    dots = xn @ np.asarray(vs, dtype=np.float64).T
    sums = np.zeros((n_classes + 1, x.shape[1]))
    lab = np.where(np.asarray(labels) < 0, n_classes, labels)
    np.add.at(sums, lab, xn)
    return norms, dots, sums


if numba is not None:

    @njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def _sweep(x, labels, table, vs, n_classes, n_parts):  # pragma: no cover - compiled
        n, d = x.shape
        k = vs.shape[0]
        dots = np.empty((n, k), np.float32)
        norms = np.empty(n, np.float32)
        sums = np.zeros((n_parts, n_classes + 1, d), np.float32)
        step = (n + n_parts - 1) // n_parts
        for t in prange(n_parts):
            row = np.empty(d, np.float32)
            for i in range(t * step, min(n, (t + 1) * step)):
                s = np.float32(0.0)
                for j in range(d):
                    v = table[x[i, j]]
                    row[j] = v
                    s += v * v
                nr = np.sqrt(s)
                norms[i] = nr
                inv = np.float32(1.0) / nr
                for q in range(k):
                    acc = np.float32(0.0)
                    for j in range(d):
                        acc += row[j] * vs[q, j]
                    dots[i, q] = acc * inv
                c = labels[i]
                if c < 0:
                    c = n_classes
                for j in range(d):
                    sums[t, c, j] += row[j] * inv
        total = np.zeros((n_classes + 1, d), np.float64)
        for t in range(n_parts):
            for c in range(n_classes + 1):
                for j in range(d):
                    total[c, j] += sums[t, c, j]
        return norms, dots, total


def stream_stats_numba(x: np.ndarray, labels: np.ndarray, vs: np.ndarray, n_classes: int):
    """(norms float32 [n], dots float32 [n, k], sums float64 [n_classes + 1, d]) of a float16 block; None
    without numba or for other dtypes (the caller's torch path covers those). A non-finite or zero row shows as
    a non-finite or zero norm (the caller reports it)."""
    if numba is None or np.asarray(x).dtype != np.float16:
        return None
    xin = np.ascontiguousarray(x).view(np.uint16)
    vs = np.ascontiguousarray(np.asarray(vs, dtype=np.float32).reshape(-1, x.shape[1]))
    parts = max(1, min(numba.get_num_threads(), len(x)))
    norms, dots, sums = _sweep(xin, np.ascontiguousarray(labels, dtype=np.int32), F16_TABLE, vs, int(n_classes),
                               parts)
    return norms, dots, sums
