"""Benchmark kernels.cluster_distance_sums: S[p, k] = sum over the points q of cluster k of ||x_p - x_q|| (all N
points against all N, C clusters), reference (float64 numpy) / torch / triton, and torch-pair: the same sums from
the symmetric block-pair op (kernels.cluster_distance_pair_sums_torch on the diagonal block: each distance once)."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402


def setup(impl, p, rng, device):
    x = rng.standard_normal((p.n, p.d)).astype(p.dtype)
    lab = np.sort(rng.integers(0, p.c, p.n))
    if impl == "reference":
        x64 = x.astype(np.float64)
        return lambda: K.cluster_distance_sums_reference(x64, x64, lab, p.c)
    tx, tl = torch.from_numpy(x).to(device), torch.from_numpy(lab).to(device)
    if impl == "torch-pair":
        return lambda: K.cluster_distance_pair_sums_torch(tx, None, tl, None, p.c)[0]
    fn = K.cluster_distance_sums_torch if impl == "torch" else K.cluster_distance_sums_triton
    return lambda: fn(tx, tx, tl, p.c)


if __name__ == "__main__":
    harness.main("cluster_distance", ["reference", "torch", "torch-pair", "triton"], setup, classes=True,
                 max_n={"reference": 4096})
