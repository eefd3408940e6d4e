"""Benchmark kernels.rank_count: per row and per column, how many of the N x N scores a_i . b_j beat its
threshold (the positive pair masked), reference (float64 numpy) / torch / triton."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402


def setup(impl, p, rng, device):
    a, b = (rng.standard_normal((p.n, p.d)) for _ in range(2))
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
    a, b = a.astype(p.dtype), b.astype(p.dtype)
    thr_a, thr_b = rng.uniform(-0.1, 0.1, p.n), rng.uniform(-0.1, 0.1, p.n)
    pos = np.arange(p.n)
    if impl == "reference":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        return lambda: K.rank_count_reference(a64, b64, thr_a, thr_b, pos)
    args = [torch.from_numpy(v).to(device) for v in (a, b, thr_a, thr_b, pos)]
    fn = K.rank_count_torch if impl == "torch" else K.rank_count_triton
    return lambda: fn(*args)


if __name__ == "__main__":
    harness.main("rank_count", ["reference", "torch", "triton"], setup, classes=False, max_n={"reference": 4096})
