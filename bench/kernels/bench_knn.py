"""Benchmark kernels.knn: the k = 10 nearest (inner product) of N database rows for each of N queries, its own
row excluded, the database streamed in blocks of 4096 rows: reference (float64 dense) / faiss / torch / triton."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402

TOP, BLOCK = 10, 4096


def setup(impl, p, rng, device):
    g = rng.standard_normal((p.n, p.d)).astype(p.dtype)
    own = np.arange(p.n)
    if impl == "reference":
        return lambda: K.knn_reference(g, g, TOP, exclude=own)
    data = g if impl == "faiss" else torch.from_numpy(g).to(device)
    return lambda: K.knn(data, data, TOP, provider=impl, exclude=own, block_rows=BLOCK)


if __name__ == "__main__":
    harness.main("knn", ["reference", "faiss", "torch", "triton"], setup, classes=False, max_n={"reference": 4096})
