"""Kernels held against their float64 references on fresh random ragged inputs (Triton under
TRITON_INTERPRET=1 on CPU): fp16 and fp32, one cluster, an empty cluster, singletons, self-pairs."""
import os

import numpy as np
import pytest
import torch

from embedx import kernels as K

requires_interpreter = pytest.mark.skipif(
    K.triton is None or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="Triton needs a GPU or TRITON_INTERPRET=1 (make test sets it)")

IMPLS = ["torch", pytest.param("triton", marks=requires_interpreter)]


def _run(impl, x, y, lab, k, rid, col_offset=0):
    tx, ty, tl = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lab)
    rid = None if rid is None else torch.from_numpy(rid)
    if impl == "torch":
        return K.cluster_distance_sums_torch(tx, ty, tl, k, rid, col_offset,
                                             block=int(np.random.default_rng().integers(5, 40))).numpy()
    return K.cluster_distance_sums_triton(tx, ty, tl, k, rid, col_offset).numpy()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "self", "one_cluster", "empty_and_singleton", "many_clusters"])
def test_cluster_distance_sums_match_reference(rng, impl, dtype, case):
    m, d = int(rng.integers(2, 150)), int(rng.integers(1, 70))
    k = {"one_cluster": 1, "many_clusters": 80}.get(case, int(rng.integers(2, 6)))
    y = rng.standard_normal((m, d)).astype(dtype)
    lab = np.sort(rng.integers(0, k, m))
    if case == "empty_and_singleton":
        k += 2                       # two clusters with no member
        lab[-1] = k - 1              # ... make the last one a singleton
        lab = np.sort(lab)
        lab[lab == k - 2] = 0
    rid, col_offset = None, 0
    if case == "self":  # rows are a random sample of the columns, which are a block at col_offset
        col_offset = int(rng.integers(0, 1000))
        pick = rng.choice(m, int(rng.integers(1, m + 1)), replace=False)
        x = y[pick].copy()
        rid = (pick + col_offset).astype(np.int64)
        rid[::3] = -1  # some rows are not among the columns: other points
        x[::3] += rng.standard_normal(x[::3].shape).astype(dtype)
    else:
        x = rng.standard_normal((int(rng.integers(1, 90)), d)).astype(dtype)
    ref = K.cluster_distance_sums_reference(x.astype(np.float64), y.astype(np.float64), lab, k, rid, col_offset)
    got = _run(impl, x, y, lab, k, rid, col_offset)
    assert got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    if case == "empty_and_singleton":
        assert (got[:, k - 2] == 0).all()


def test_dispatch_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("EMBEDX_KERNEL", raising=False)
    assert K.backend_for(torch.device("cpu")) == "torch"
    monkeypatch.setenv("EMBEDX_KERNEL", "triton")
    assert K.backend_for(torch.device("cpu")) == "triton"


@requires_interpreter
def test_silhouette_through_the_triton_kernel_matches_sklearn(rng, monkeypatch):
    from sklearn.metrics import silhouette_score

    from embedx.measures.silhouette import silhouette_exact

    monkeypatch.setenv("EMBEDX_KERNEL", "triton")
    x = rng.standard_normal((70, 9)).astype(np.float32)
    t = rng.standard_normal((4, 9)).astype(np.float32)
    got = silhouette_exact(torch.from_numpy(np.vstack([x, t])), np.r_[np.ones(70), np.zeros(4)])
    assert got == pytest.approx(silhouette_score(np.vstack([x, t]).astype(np.float64), [1] * 70 + [0] * 4), abs=1e-6)


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


@pytest.mark.parametrize("case", ["ragged", "one_class", "empty_classes_and_unlabelled", "no_vectors"])
def test_fused_stream_stats_match_reference(rng, case):
    n, d = int(rng.integers(1, 700)), int(rng.integers(1, 130))
    c = 1 if case == "one_class" else int(rng.integers(2, 40))
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 20, (n, 1))).astype(np.float16)
    x[np.abs(x).sum(1) == 0, 0] = 1  # no zero rows here (the caller rejects them)
    y = rng.integers(0, c, n)
    if case == "empty_classes_and_unlabelled":
        y[y == 0] = -1          # class 0 empty, its rows unlabelled
    vs = rng.standard_normal((0 if case == "no_vectors" else 2, d))
    got = K.stream_stats_numba(x, y, vs, c)
    assert got is not None, "numba is a dependency: the fused kernel must be available"
    ref = K.stream_stats_reference(x.astype(np.float64), y, vs, c)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
    np.testing.assert_allclose(got[2], ref[2], atol=1e-4)
    assert K.stream_stats_numba(x.astype(np.float32), y, vs, c) is None  # float32 blocks take the torch path


def test_fused_and_torch_stream_paths_agree(rng):
    from embedx.measures.stream import PassConfig, block_partial, normalized

    x = rng.standard_normal((3000, 48)).astype(np.float16)
    y = rng.integers(-1, 9, 3000)
    t = normalized(rng.standard_normal((9, 48)))
    hint = torch.from_numpy(rng.standard_normal(48))
    parts = []
    for fused in (True, False):
        cfg = PassConfig(texts=t, text_sum=t.double().sum(0), n_texts=9, n_images=3000, sum_x_hint=hint,
                         zeroshot=True, fused=fused)
        parts.append(block_partial(x, y, cfg, sub_rows=1000))
    a, b = parts
    np.testing.assert_allclose(a.class_sum, b.class_sum, atol=1e-4)
    np.testing.assert_allclose(a.sum_x, b.sum_x, atol=1e-4)
    assert a.cos_sum == pytest.approx(b.cos_sum, abs=1e-6)
    np.testing.assert_array_equal(a.top1, b.top1)
    np.testing.assert_array_equal(a.top5, b.top5)
    np.testing.assert_array_equal(a.class_count, b.class_count)
