"""Exact kNN (kernels/ops/knn.py) through every provider against float64 dense scores + stable argsort: ragged sizes,
database blocks, the own row excluded, float16 inputs, fewer candidates than k, exact ties (the lower row wins for
torch/triton; FAISS returns the same scores), and drift's kNN overlap through the dispatch."""
import numpy as np
import pytest

from embedx import kernels as K
from tests.kernels.conftest import requires_interpreter

PROVIDERS = ["faiss", "torch", pytest.param("triton", marks=requires_interpreter)]


def _scores(q, g, ids):
    """float64 scores of the returned rows (-inf for padding)."""
    s = np.asarray(q, np.float64) @ np.asarray(g, np.float64).T
    return np.where(ids >= 0, np.take_along_axis(s, np.maximum(ids, 0), 1), -np.inf)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_knn_matches_dense_stable_sort(rng, provider, dtype):
    nq, ng, d = int(rng.integers(1, 60)), int(rng.integers(2, 300)), int(rng.integers(1, 40))
    g = rng.standard_normal((ng, d)).astype(dtype)
    own = rng.choice(ng, nq, replace=nq > ng)
    q = g[own].copy()                                   # queries are database rows ...
    own[::3] = -1                                       # ... but some are outside it
    q[::3] = rng.standard_normal(q[::3].shape).astype(dtype)
    k = int(rng.integers(1, 15))
    got = K.knn(q, g, k, provider=provider, exclude=own, block_rows=int(rng.integers(1, 80)))
    ref = K.knn_reference(q.astype(np.float32), g.astype(np.float32), k, exclude=own)
    assert got.shape == ref.shape == (nq, k) and got.dtype == np.int64
    assert not ((got == own[:, None]) & (own[:, None] >= 0)).any()  # the own row never comes back
    np.testing.assert_allclose(_scores(q, g, got), _scores(q, g, ref), atol=1e-4)
    s = _scores(q, g, K.knn_reference(q, g, k + 1, exclude=own))
    clear = (np.abs(np.diff(s, axis=1)) > 1e-4).all(1)  # no near-tie among the k+1 best
    np.testing.assert_array_equal(got[clear], ref[clear])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fewer_candidates_than_k_pad_with_minus_one(rng, provider):
    g = rng.standard_normal((4, 6)).astype(np.float32)
    got = K.knn(g, g, 6, provider=provider, exclude=np.arange(4), block_rows=3)
    ref = K.knn_reference(g, g, 6, exclude=np.arange(4))
    np.testing.assert_array_equal(got, ref)
    assert (got[:, 3:] == -1).all() and (got[:, :3] >= 0).all()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_exact_ties(rng, provider):
    """Integer rows: scores exact in float32, ties everywhere. torch/triton keep the lower row among equal scores,
    across block borders too; FAISS returns the same k scores (which tied rows it keeps is its heap's choice)."""
    nq, ng, d, k = 40, 200, 4, 9
    g = rng.integers(-2, 3, (ng, d)).astype(np.float32)
    g[150:] = g[:50]                                    # exact duplicates in a later block
    own = rng.choice(ng, nq, replace=False)
    q = g[own]
    got = K.knn(q, g, k, provider=provider, exclude=own, block_rows=64)
    ref = K.knn_reference(q, g, k, exclude=own)
    np.testing.assert_array_equal(_scores(q, g, got), _scores(q, g, ref))
    if provider != "faiss":
        np.testing.assert_array_equal(got, ref)


def test_auto_is_faiss_on_cpu_and_bad_providers_are_named(monkeypatch):
    monkeypatch.delenv("EMBEDX_KERNEL", raising=False)
    assert K.knn_reference(np.eye(2), np.eye(2), 1).tolist() == [[0], [1]]
    from embedx.kernels.ops.knn import resolve_provider

    assert resolve_provider("auto", on_cpu=True) == "faiss"
    assert resolve_provider("auto", on_cpu=False) == "triton" if K.triton is not None else "torch"
    with pytest.raises(ValueError, match="knn provider must be one of auto, faiss, torch, triton, not 'annoy'"):
        K.knn(np.eye(2), np.eye(2), 1, provider="annoy")


def test_drift_knn_overlap_is_the_same_through_every_provider(tmp_path, rng):
    from embedx.drift_analysis.drift_pass import drift_pass
    from embedx.formats.arrays import import_arrays
    from embedx.store import Store

    n, d = 300, 12
    x = rng.standard_normal((n, d)).astype(np.float32)
    stores = []
    for name, rows in (("a", x), ("b", x + 0.5 * rng.standard_normal((n, d)).astype(np.float32))):
        np.save(tmp_path / f"{name}.npy", rows)
        import_arrays(str(tmp_path / f"{name}.zarr"), images=str(tmp_path / f"{name}.npy"),
                      texts=str(tmp_path / f"{name}.npy"), paired=True, chunk_rows=64)
        stores.append(Store(str(tmp_path / f"{name}.zarr")))
    rows = np.sort(rng.choice(n, 80, replace=False))
    res = {p: drift_pass(*stores, knn_k=7, knn_rows=rows, block_rows=64, knn_provider=p)
           for p in ("auto", "faiss", "torch")}
    assert res["auto"].knn_overlap == res["faiss"].knn_overlap == res["torch"].knn_overlap
    # the reference reads what drift reads: the stored (float16) rows, normalized in float64
    xa, xb = (s.images().astype(np.float64) for s in stores)
    xa, xb = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (xa, xb))
    na, nb = (K.knn_reference(v[rows], v, 7, exclude=rows) for v in (xa, xb))
    want = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(na, nb)])
    # float32 scores in drift: a neighbour within round-off of the 7th may fall either way
    near = sum((np.abs(np.diff(_scores(v[rows], v, K.knn_reference(v[rows], v, 8, exclude=rows))[:, 5:], axis=1))
                < 1e-5).sum() for v in (xa, xb))
    assert abs(res["faiss"].knn_overlap - want) <= near / (7 * len(rows)) + 1e-12


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_knn_on_cuda_tensors_takes_the_topk_dispatch(rng, dtype, monkeypatch):
    """Queries on a CUDA device: ``auto`` runs kernels.topk's backend there (Triton when installed, on float32
    copies), same rows as the reference wherever scores are not within round-off."""
    import torch

    from embedx.kernels.ops.knn import TopkKnn, knn_stream

    monkeypatch.delenv("EMBEDX_KERNEL", raising=False)
    nq, ng, d, k = 300, 5000, 64, 10
    g = rng.standard_normal((ng, d)).astype(dtype)
    own = rng.choice(ng, nq, replace=False)
    tq, tg = torch.from_numpy(g[own]).cuda(), torch.from_numpy(g).cuda()
    assert isinstance(knn_stream(tq, k, own), TopkKnn)
    got = K.knn(tq, tg, k, exclude=own, block_rows=1777)
    ref = K.knn_reference(g[own], g, k, exclude=own)
    np.testing.assert_allclose(_scores(g[own], g, got), _scores(g[own], g, ref), atol=1e-3)
    s = _scores(g[own], g, K.knn_reference(g[own], g, k + 1, exclude=own))
    clear = (np.abs(np.diff(s, axis=1)) > 1e-3).all(1)
    np.testing.assert_array_equal(got[clear], ref[clear])
