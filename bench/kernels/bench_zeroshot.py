"""Benchmark kernels.zeroshot_hits: top-1/top-5 hits per class of N rows against C class texts, reference
(float64 numpy) / torch (the dispatch). There is no Triton kernel for this op (it is bound by the matmul)."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402


def setup(impl, p, rng, device):
    x = rng.standard_normal((p.n, p.d)).astype(p.dtype)
    t = rng.standard_normal((p.c, p.d)).astype(np.float32)
    y = rng.integers(0, p.c, p.n)
    if impl == "reference":
        return lambda: K.zeroshot_hits_reference(x, y, t)
    tx, tt, ty = torch.from_numpy(x).to(device).float(), torch.from_numpy(t).to(device), torch.from_numpy(y).to(device)
    top1, top5 = (torch.zeros(p.c, dtype=torch.long, device=device) for _ in range(2))
    hit = torch.empty(min(K.ZS_ROWS, p.n), p.c, device=device)
    return lambda: K.zeroshot_hits(tx, ty, tt, top1, top5, hit)


if __name__ == "__main__":
    harness.main("zeroshot", ["reference", "torch"], setup, classes=True,
                 note="no Triton kernel for this op (bound by the matmul)")
