"""Blocked similarity top-k (kernels/ops/topk.py): torch and Triton against float64 dense similarity + stable argsort."""
import numpy as np
import pytest
import torch

from embedx import kernels as K
from tests.kernels.conftest import IMPLS


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_blocked_topk_matches_dense_stable_sort(rng, impl, dtype):
    nq, ng, d = int(rng.integers(1, 120)), int(rng.integers(1, 200)), int(rng.integers(1, 40))
    q = rng.standard_normal((nq, d)).astype(dtype)
    g = rng.standard_normal((ng, d)).astype(dtype)
    if ng > 3:
        g[ng // 2] = g[1]  # exact ties go to the lower index
    k = int(rng.integers(1, 17))
    tq, tg = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    got = (K.topk_torch(tq, tg, k, block=int(rng.integers(2, 50))) if impl == "torch" else K.topk_triton(tq, tg, k)).numpy()
    ref = K.topk_reference(q.astype(np.float32), g.astype(np.float32), k)
    sim = q.astype(np.float64) @ g.astype(np.float64).T
    rows = np.arange(nq)[:, None]
    assert got.shape == ref.shape and all(len(set(r)) == len(r) for r in got)
    # the k best similarities, in order (ties may be broken either way at float32 round-off) ...
    np.testing.assert_allclose(sim[rows, got], sim[rows, ref], atol=1e-4)
    # ... and exactly the reference indices wherever the similarities are not tied
    gaps = np.diff(np.sort(sim, 1)[:, ::-1][:, : k + 1], axis=1)
    clear = (np.abs(gaps) > 1e-4).all(1) if gaps.size else np.ones(nq, bool)
    np.testing.assert_array_equal(got[clear], ref[clear])


@pytest.mark.parametrize("impl", IMPLS)
def test_exact_ties_go_to_the_lower_index(rng, impl):
    """Integer rows: scores exact in float32, many tied with the k-th; both paths equal the stable sort exactly,
    across gallery blocks (torch) and tiles (Triton)."""
    nq, ng, d = int(rng.integers(1, 60)), int(rng.integers(20, 300)), 3
    q = rng.integers(-1, 2, (nq, d)).astype(np.float32)
    g = rng.integers(-1, 2, (ng, d)).astype(np.float32)
    q[0] = 0                                           # a query tied with every gallery row
    k = int(rng.integers(1, 17))
    tq, tg = torch.from_numpy(q), torch.from_numpy(g)
    got = K.topk_torch(tq, tg, k, block=int(rng.integers(2, 50))) if impl == "torch" else K.topk_triton(tq, tg, k)
    np.testing.assert_array_equal(got.numpy(), K.topk_reference(q, g, k))
