"""Benchmark kernels.stream_stats: one fused pass over N rows (norms, dots with 2 vectors, per-class sums of the
normalized rows over C classes), reference (float64 numpy) / torch / numba. There is no Triton kernel for this
op (it is bound by reading the rows once on the CPU)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402


def setup(impl, p, rng, device):
    x = rng.standard_normal((p.n, p.d)).astype(p.dtype)
    y = rng.integers(0, p.c, p.n)
    vs = rng.standard_normal((2, p.d))
    if impl == "reference":
        return lambda: K.stream_stats_reference(x, y, vs, p.c)
    acc = np.zeros((p.c + 1, p.d), np.float32)
    return lambda: K.stream_stats(x, y, vs, p.c, acc, impl=impl)


if __name__ == "__main__":
    harness.main("stream_stats", ["reference", "torch", "numba"], setup, classes=True,
                 note="no Triton kernel for this op (numba is its fast path)")
