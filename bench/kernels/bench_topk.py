"""Benchmark kernels.topk: the k = 10 most similar of N gallery rows for each of N queries, reference (float64
dense + stable argsort) / torch (blocked) / triton."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx import kernels as K  # noqa: E402

TOP = 10


def setup(impl, p, rng, device):
    q, g = (rng.standard_normal((p.n, p.d)).astype(p.dtype) for _ in range(2))
    if impl == "reference":
        return lambda: K.topk_reference(q, g, TOP)
    tq, tg = torch.from_numpy(q).to(device), torch.from_numpy(g).to(device)
    if impl == "torch":
        tq, tg = tq.float(), tg.float()
        return lambda: K.topk_torch(tq, tg, TOP)
    return lambda: K.topk_triton(tq, tg, TOP)


if __name__ == "__main__":
    harness.main("topk", ["reference", "torch", "triton"], setup, classes=False, max_n={"reference": 4096})
