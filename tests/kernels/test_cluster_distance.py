"""cluster_distance_sums (kernels/ops/cluster_distance.py): torch and Triton (TRITON_INTERPRET=1 on CPU) against the
float64 reference on fresh random ragged inputs: fp16 and fp32, one cluster, an empty cluster, singletons, self-pairs;
the dispatch; the exact silhouette through the Triton kernel against scikit-learn."""
import numpy as np
import pytest
import torch

from embedx import kernels as K
from tests.kernels.conftest import IMPLS, requires_interpreter


def _run(rng, impl, x, y, lab, k, rid, col_offset=0):
    tx, ty, tl = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lab)
    rid = None if rid is None else torch.from_numpy(rid)
    if impl in ("torch", "gemm"):  # gemm: the CPU sgemm tiles + fused numba pass, rows split between threads
        return K.cluster_distance_sums_torch(tx, ty, tl, k, rid, col_offset, block=int(rng.integers(5, 40)),
                                             impl="tiles" if impl == "torch" else "gemm").numpy()
    return K.cluster_distance_sums_triton(tx, ty, tl, k, rid, col_offset).numpy()


@pytest.mark.parametrize("impl", IMPLS + ["gemm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "self", "one_cluster", "empty_and_singleton", "many_clusters",
                                  "unsorted"])
def test_cluster_distance_sums_match_reference(rng, monkeypatch, impl, dtype, case):
    from embedx.kernels.ops import pair_gemm

    monkeypatch.setattr(pair_gemm, "PART_ROWS", 3)
    monkeypatch.setattr(pair_gemm, "REDUCE_THREADS", 3)
    m, d = int(rng.integers(2, 150)), int(rng.integers(1, 70))
    k = {"one_cluster": 1, "many_clusters": 80}.get(case, int(rng.integers(2, 6)))
    y = rng.standard_normal((m, d)).astype(dtype)
    lab = np.sort(rng.integers(0, k, m))
    if case == "unsorted":  # columns in any label order (the gemm path sorts them; self-pairs follow)
        lab = rng.permutation(lab)
    if case == "empty_and_singleton":
        k += 2                       # two clusters with no member
        lab[-1] = k - 1              # ... make the last one a singleton
        lab = np.sort(lab)
        lab[lab == k - 2] = 0
    rid, col_offset = None, 0
    if case in ("self", "unsorted"):  # rows are a random sample of the columns, which are a block at col_offset
        col_offset = int(rng.integers(0, 1000))
        pick = rng.choice(m, int(rng.integers(1, m + 1)), replace=False)
        x = y[pick].copy()
        rid = (pick + col_offset).astype(np.int64)
        rid[::3] = -1  # some rows are not among the columns: other points
        x[::3] += rng.standard_normal(x[::3].shape).astype(dtype)
    else:
        x = rng.standard_normal((int(rng.integers(1, 90)), d)).astype(dtype)
    ref = K.cluster_distance_sums_reference(x.astype(np.float64), y.astype(np.float64), lab, k, rid, col_offset)
    got = _run(rng, impl, x, y, lab, k, rid, col_offset)
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


@pytest.mark.parametrize("impl", ["tiles", "gemm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "diagonal", "one_cluster", "singletons", "many_clusters", "tight",
                                  "tight_diagonal"])
def test_cluster_distance_pair_sums_match_two_one_sided_references(rng, monkeypatch, impl, dtype, case):
    """The symmetric block-pair op (one tile, reduced both ways) against two float64 one-sided brute forces; the
    gemm path (sgemm + fused numba pass) with its tile rows split between up to three threads."""
    from embedx.kernels.ops import pair_gemm

    monkeypatch.setattr(pair_gemm, "PART_ROWS", int(rng.integers(1, 8)))
    monkeypatch.setattr(pair_gemm, "REDUCE_THREADS", 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _pair_case(rng, impl, dtype, case)
    finally:
        torch.set_num_threads(threads)


def _pair_case(rng, impl, dtype, case):
    d = int(rng.integers(1, 40))
    m, n = int(rng.integers(1, 120)), int(rng.integers(1, 120))
    k = {"one_cluster": 1, "many_clusters": 80}.get(case, int(rng.integers(2, 6)))
    x = rng.standard_normal((m, d))
    y = rng.standard_normal((n, d))
    if case.startswith("tight"):  # all points within 1e-3 of one direction: the centring and NEAR recompute matter
        x, y = 5.0 + 1e-3 * x, 5.0 + 1e-3 * y
        x[: m // 3] = y[: m // 3] if m // 3 <= n else x[: m // 3]  # exact duplicates across the blocks
    x, y = x.astype(dtype), y.astype(dtype)
    xl, yl = rng.integers(0, k, m), rng.integers(0, k, n)
    if case == "singletons":  # the clusters k-1, k-2 have one member each (one in I, one in J), k-3 none
        k += 3
        xl[0], yl[-1] = k - 1, k - 2
    if case == "tight_diagonal":  # exact duplicates inside the diagonal block, across its tiles
        x[m // 2:] = x[: m - m // 2]
    block = int(rng.integers(3, 50))
    if case in ("diagonal", "tight_diagonal"):
        ref_x, ref_y = K.cluster_distance_pair_sums_reference(x.astype(np.float64), None, xl, None, k)
        got_x, got_y = K.cluster_distance_pair_sums_torch(torch.from_numpy(x), None, torch.from_numpy(xl), None, k,
                                                          block=block, impl=impl)
        assert ref_y is None and got_y is None
        # the diagonal block equals the one-sided sums with every row its own column (self-pairs 0)
        one = K.cluster_distance_sums_reference(x.astype(np.float64), x.astype(np.float64), xl, k,
                                                np.arange(m), 0)
        np.testing.assert_allclose(ref_x, one, rtol=0, atol=0)
    else:
        ref_x, ref_y = K.cluster_distance_pair_sums_reference(x.astype(np.float64), y.astype(np.float64), xl, yl, k)
        got_x, got_y = K.cluster_distance_pair_sums_torch(torch.from_numpy(x), torch.from_numpy(y),
                                                          torch.from_numpy(xl), torch.from_numpy(yl), k,
                                                          block=block, impl=impl)
        assert got_y.dtype == torch.float64 and got_y.shape == (n, k)
        np.testing.assert_allclose(got_y.numpy(), ref_y, rtol=1e-5, atol=1e-4 if case != "tight" else 1e-6)
        # independent check of the reference itself: the transposed brute-force distance matrix
        dm = np.sqrt(((x.astype(np.float64)[:, None] - y.astype(np.float64)[None]) ** 2).sum(-1))
        np.testing.assert_allclose(ref_y, np.stack([dm[xl == c].sum(0) for c in range(k)], 1), rtol=1e-12)
    assert got_x.dtype == torch.float64 and got_x.shape == (m, k)
    np.testing.assert_allclose(got_x.numpy(), ref_x, rtol=1e-5, atol=1e-4 if not case.startswith("tight") else 1e-6)
    if case == "singletons":
        assert (got_x.numpy()[:, k - 3] == 0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pair_sums_add_up_to_the_one_sided_sums(rng, monkeypatch, backend):
    """Blocks I <= J of one point set: adding each pair's two sides per block gives every row's sums over all
    points, as one call of the one-sided op with the self-pairs (float64 reference) does; through the dispatch on
    either backend (Triton: the fused one-sided kernel twice, under the interpreter on the CPU)."""
    monkeypatch.setenv("EMBEDX_KERNEL", backend)
    n, d, k = int(rng.integers(40, 160)), int(rng.integers(2, 20)), int(rng.integers(2, 5))
    p = rng.standard_normal((n, d)).astype(np.float32)
    lab = rng.integers(0, k, n)
    cuts = np.r_[0, np.sort(rng.choice(np.arange(1, n), 3, replace=False)), n]
    blocks = list(zip(cuts[:-1], cuts[1:]))
    acc = np.zeros((n, k))
    for i, (a0, a1) in enumerate(blocks):
        for b0, b1 in blocks[i:]:
            diag = a0 == b0
            sx, sy = K.cluster_distance_pair_sums(torch.from_numpy(p[a0:a1]), None if diag else torch.from_numpy(p[b0:b1]),
                                                  torch.from_numpy(lab[a0:a1]), None if diag else torch.from_numpy(lab[b0:b1]), k)
            acc[a0:a1] += sx.numpy()
            if not diag:
                acc[b0:b1] += sy.numpy()
    ref = K.cluster_distance_sums_reference(p.astype(np.float64), p.astype(np.float64), lab, k, np.arange(n), 0)
    np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-4)


@requires_interpreter
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "one_cluster", "empty_and_singleton", "unsorted", "scaled", "tight"])
def test_symmetric_triton_kernel_matches_reference(rng, precision, dtype, case):
    """The symmetric Triton kernel (tiles I <= J, each reduced both ways with float64 atomics), plain float32 and
    3xTF32 split precision, against the float64 one-sided brute force of every point over every point."""
    n, d = int(rng.integers(2, 140)), int(rng.integers(1, 50))
    k = 1 if case == "one_cluster" else int(rng.integers(2, 6))
    x = rng.standard_normal((n, d))
    if case == "tight":  # all within 1e-3 of one point, duplicates: the near-pair recompute carries it
        x = 3.0 + 1e-3 * x
        x[n // 2:] = x[: n - n // 2]
    x = x.astype(dtype)
    lab = np.sort(rng.integers(0, k, n))
    if case == "empty_and_singleton":
        k += 2
        lab[-1] = k - 1
    if case == "unsorted":
        lab = rng.permutation(lab)
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32) if case == "scaled" else None
    xs = x.astype(np.float64) * (1.0 if scale is None else scale.astype(np.float64)[:, None])
    ref = K.cluster_distance_sums_reference(xs, xs, lab, k, np.arange(n), 0)
    got = K.cluster_distance_sums_sym_triton(torch.from_numpy(x), torch.from_numpy(lab), k, x_scale=scale,
                                             precision=precision).numpy()
    assert got.dtype == np.float64 and got.shape == (n, k)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 if case == "tight" else 1e-4)
    # in row-tile chunks added into one output: the same sums
    nt = -(-n // 32)
    out = torch.zeros(n, k, dtype=torch.float64)
    for t0 in range(0, nt, 2):
        K.cluster_distance_sums_sym_triton(torch.from_numpy(x), torch.from_numpy(lab), k, x_scale=scale,
                                           precision=precision, tiles=(t0, min(t0 + 2, nt)), out=out)
    np.testing.assert_allclose(out.numpy(), got, rtol=1e-12, atol=1e-9)


@requires_interpreter
def test_3xtf32_split_is_far_closer_than_one_tf32_product(rng):
    """The split product keeps float32 accuracy where one TF32 product (10-bit mantissas) would not: the dot
    products of unit rows through the kernel's tile against float64, next to a 1xTF32 emulation."""
    n, d = 64, 256
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.zeros(n, np.int64)
    ref = K.cluster_distance_sums_reference(x.astype(np.float64), x.astype(np.float64), lab, 1, np.arange(n), 0)
    got = K.cluster_distance_sums_sym_triton(torch.from_numpy(x), torch.from_numpy(lab), 1,
                                             precision="tf32x3").numpy()
    t = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32).astype(np.float64)  # 1xTF32 operands
    g1 = t @ t.T
    d1 = np.sqrt(np.maximum(2.0 - 2.0 * g1, 0.0))
    np.fill_diagonal(d1, 0.0)
    err_split = np.abs(got - ref).max() / n
    err_one = np.abs(d1.sum(1, keepdims=True) - ref).max() / n
    assert err_split < 1e-6 < err_one, (err_split, err_one)
    assert K.split_precision(torch.zeros(2, 2), "auto") is False  # CPU: plain IEEE unless asked
    with pytest.raises(ValueError, match="precision"):
        K.split_precision(torch.zeros(2, 2), "bf16x3")


def test_gemm_path_in_concurrent_threads_restores_torch_threads(rng, monkeypatch):
    """The gemm path sets torch to one thread while its own threads split a tile (``_SerialBlas``): calls from
    several threads at once each equal the float64 reference, and the thread count found before is restored
    once the last call ends (a naive save/restore in each call left the process single-threaded)."""
    from concurrent.futures import ThreadPoolExecutor

    from embedx.kernels.ops import pair_gemm

    monkeypatch.setattr(pair_gemm, "PART_ROWS", 8)
    monkeypatch.setattr(pair_gemm, "REDUCE_THREADS", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cases = []
        for _ in range(6):
            m, n, d, k = int(rng.integers(20, 90)), int(rng.integers(20, 90)), int(rng.integers(3, 30)), 3
            x, y = rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)
            xl, yl = rng.integers(0, k, m), rng.integers(0, k, n)
            cases.append((x, y, xl, yl, k))

        def one(c):
            x, y, xl, yl, k = c
            return K.cluster_distance_pair_sums_torch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xl),
                                                      torch.from_numpy(yl), k, block=16, impl="gemm")

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(one, cases))
        assert torch.get_num_threads() == 2
        for (x, y, xl, yl, k), (gx, gy) in zip(cases, got):
            rx, ry = K.cluster_distance_pair_sums_reference(x.astype(np.float64), y.astype(np.float64), xl, yl, k)
            np.testing.assert_allclose(gx.numpy(), rx, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(gy.numpy(), ry, rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)
