"""The GPU lane's correctness suite (marker ``gpu``; ``make gpu-check`` runs it first with the real Triton
compiler on CUDA). Every Triton kernel is held against its float64 reference on fresh random ragged shapes in
float32, float16 and bfloat16 (16-bit inputs take the tensor-core path there), with per-row scales, one cluster,
an empty cluster, singletons and exact ties; then the measures on the device against the CPU result on the same
stores, through the library and through the CLI.

The device is ``EMBEDX_TEST_DEVICE`` or CUDA when torch sees one. Without a GPU the same tests run on the CPU
under ``TRITON_INTERPRET=1`` (as ``make test`` does, at smaller sizes), with the GPU's resident code paths
switched on, so none of this can rot between GPU runs.
"""
import json
import os

import numpy as np
import pytest
import torch

from embedx import kernels as K
from embedx.formats.arrays import import_arrays
from embedx.measures import compute, retrieval, silhouette
from embedx.store import Store
from tests.conftest import run_embedx

pytestmark = pytest.mark.gpu

DEVICE = torch.device(os.environ.get("EMBEDX_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
ON_GPU = DEVICE.type == "cuda"
if K.triton is None or (not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1"):
    pytest.skip("the GPU lane needs CUDA, or TRITON_INTERPRET=1 on CPU (make test sets it)", allow_module_level=True)
BIG = 8 if ON_GPU else 1  # shapes grow on the GPU so that the large tensor-core tiles wrap ragged edges
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _rows(rng, n, d, dtype, spread=1.0):
    """(device tensor in ``dtype``, the same values as float64 numpy)."""
    t = torch.from_numpy(rng.standard_normal((n, d)) * spread).to(DTYPES[dtype]).to(DEVICE)
    return t, t.double().cpu().numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["ragged", "self", "one_cluster", "empty_and_singleton", "many_clusters",
                                  "ties", "scaled"])
def test_cluster_distance_kernel_matches_float64(rng, dtype, case):
    m, d = int(rng.integers(2, 150 * BIG)), int(rng.integers(1, 70 * (2 if ON_GPU else 1)))
    k = {"one_cluster": 1, "many_clusters": 80}.get(case, int(rng.integers(2, 6)))
    y, y64 = _rows(rng, m, d, dtype)
    lab = np.sort(rng.integers(0, k, m))
    if case == "empty_and_singleton":
        k += 2
        lab[-1] = k - 1
        lab[lab == k - 2] = 0
    rid, col_offset, xs, ys = None, 0, None, None
    if case == "self":
        col_offset = int(rng.integers(0, 1000))
        pick = rng.choice(m, int(rng.integers(1, m + 1)), replace=False)
        rid = (pick + col_offset).astype(np.int64)
        rid[::3] = -1  # rows that are other points (near-duplicate precision is a separate contract)
        other, _ = _rows(rng, len(pick), d, dtype)
        x = torch.where(torch.from_numpy(rid < 0).to(DEVICE)[:, None], other, y[torch.from_numpy(pick).to(DEVICE)])
        x64 = x.double().cpu().numpy()
    else:
        x, x64 = _rows(rng, int(rng.integers(1, 90 * BIG)), d, dtype)
    if case == "ties" and m > 3:  # duplicate columns: exactly equal distances from every row
        y[m // 2] = y[1]
        y64[m // 2] = y64[1]
    if case == "scaled":  # unit points from raw rows and their inverse norms, as the resident silhouette
        xs = 1.0 / np.linalg.norm(x64, axis=1)
        ys = 1.0 / np.linalg.norm(y64, axis=1)
    ref = K.cluster_distance_sums_reference(x64, y64, lab, k, rid, col_offset, xs, ys)
    as_t = (lambda v: None if v is None else torch.from_numpy(v).to(DEVICE))
    got = K.cluster_distance_sums_triton(x, y, torch.from_numpy(lab).to(DEVICE), k, as_t(rid), col_offset,
                                         x_scale=as_t(xs), y_scale=as_t(ys)).cpu().numpy()
    assert got.dtype == np.float64 and got.shape == ref.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4 if case != "scaled" else 1e-5)
    if case == "empty_and_singleton":
        assert (got[:, k - 2] == 0).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["ragged", "offset", "ties", "scaled", "tie_groups"])
def test_rank_count_kernel_matches_float64(rng, dtype, case):
    m, n = int(rng.integers(2, 120 * BIG)), int(rng.integers(2, 200 * BIG))
    d = int(rng.integers(1, 70 * (2 if ON_GPU else 1)))
    spread = 1.0 if case == "scaled" else 1.0 / np.sqrt(d)
    a, a64 = _rows(rng, m, d, dtype, spread)
    b, b64 = _rows(rng, n, d, dtype, spread)
    if case == "ties" and n > 3:  # duplicate candidates score the same
        b[n // 2] = b[1]
        b64[n // 2] = b64[1]
    row_offset = int(rng.integers(1, 500)) if case == "offset" else 0
    pos = rng.integers(row_offset - 3, row_offset + m + 3, n)
    a_thr, b_thr = rng.uniform(-0.3, 0.3, m), rng.uniform(-0.3, 0.3, n)
    sa = sb = None
    if case == "scaled":
        sa, sb = 1.0 / np.linalg.norm(a64, axis=1), 1.0 / np.linalg.norm(b64, axis=1)
    ties = None
    if case == "tie_groups":  # group ids (-1: none) and skips (-2: none): candidates the caller ranks by index
        skip = (lambda k: np.where((v := rng.integers(-2, 3, k)) == -1, -2, v))
        ties = (rng.integers(-1, 3, m), skip(m), rng.integers(-1, 3, n), skip(n))
    as_t = (lambda v: None if v is None else torch.from_numpy(v).to(DEVICE))
    got = [g.cpu().numpy() for g in K.rank_count_triton(a, b, as_t(a_thr), as_t(b_thr), as_t(pos), row_offset,
                                                        a_scale=as_t(sa), b_scale=as_t(sb),
                                                        ties=None if ties is None else tuple(map(as_t, ties)))]
    # exact, but for a score within float32 round-off of its threshold (either way is right there)
    lo = K.rank_count_reference(a64, b64, a_thr + 1e-5, b_thr + 1e-5, pos, row_offset, sa, sb, ties)
    hi = K.rank_count_reference(a64, b64, a_thr - 1e-5, b_thr - 1e-5, pos, row_offset, sa, sb, ties)
    for g, low, high in zip(got, lo, hi):
        assert g.shape == low.shape and (low <= g).all() and (g <= high).all()
    # the band is narrow: few counts may differ across it (at most one row where there are under 20)
    assert all((low != high).sum() <= max(1, len(low) // 10) for low, high in zip(lo[:2], hi[:2]))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_topk_kernel_matches_stable_sort(rng, dtype):
    nq, ng, d = int(rng.integers(1, 120 * BIG)), int(rng.integers(1, 200 * BIG)), int(rng.integers(1, 40))
    q, q64 = _rows(rng, nq, d, dtype)
    g, g64 = _rows(rng, ng, d, dtype)
    if ng > 3:
        g[ng // 2] = g[1]
        g64[ng // 2] = g64[1]
    k = int(rng.integers(1, K.TRITON_MAX_K + 1))
    got = K.topk_triton(q, g, k).cpu().numpy()
    ref = K.topk_reference(q64, g64, k)
    sim = q64 @ g64.T
    rows = np.arange(nq)[:, None]
    assert got.shape == ref.shape and all(len(set(r)) == len(r) for r in got)
    np.testing.assert_allclose(sim[rows, got], sim[rows, ref], atol=1e-4 * max(1.0, np.abs(sim).max()))
    gaps = np.diff(np.sort(sim, 1)[:, ::-1][:, : k + 1], axis=1)
    clear = (np.abs(gaps) > 1e-4 * max(1.0, np.abs(sim).max())).all(1) if gaps.size else np.ones(nq, bool)
    np.testing.assert_array_equal(got[clear], ref[clear])


# --- the measures on the device against the CPU result on the same stores ----------------------------------
@pytest.fixture
def device_paths(monkeypatch):
    """On CPU, switch on what a GPU run takes: the Triton kernels and the resident silhouette/retrieval."""
    if not ON_GPU:
        monkeypatch.setenv("EMBEDX_KERNEL", "triton")
        monkeypatch.setattr(silhouette, "resident_budget", lambda dev: 1 << 40)
        monkeypatch.setattr(silhouette, "resident_rows", lambda dev: 97)
        monkeypatch.setattr(retrieval, "resident_budget", lambda dev: 1 << 40)
        monkeypatch.setattr(retrieval, "resident_rows", lambda dev: 97)


def _stores(tmp_path, rng):
    n, c, d = 300 * BIG, 13, 48
    centres = rng.standard_normal((c, d))
    y = rng.integers(-1, c, n)
    x = (centres[np.maximum(y, 0)] + rng.standard_normal((n, d))).astype(np.float16)
    x[5] = x[4]  # a duplicate image
    t = (centres + 0.5 * rng.standard_normal((c, d))).astype(np.float16)
    xp = x.copy()
    xp[5] += np.float16(0.5)  # paired: no exact ties (their rank convention is issue 11's, not the device's)
    pairs = np.stack([xp, (xp + rng.standard_normal((n, d))).astype(np.float16)])
    for k, arr in (("x", x), ("t", t), ("y", y), ("p", pairs)):
        np.save(tmp_path / f"{k}.npy", arr)
    import_arrays(str(tmp_path / "c.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), chunk_rows=64)
    import_arrays(str(tmp_path / "p.zarr"), paired_array=str(tmp_path / "p.npy"), chunk_rows=64)
    return str(tmp_path / "c.zarr"), str(tmp_path / "p.zarr")


def _cpu_result(path, **kw):
    old = os.environ.pop("EMBEDX_KERNEL", None)
    try:
        return compute(Store(path), device="cpu", **kw)
    finally:
        if old is not None:
            os.environ["EMBEDX_KERNEL"] = old


@pytest.mark.parametrize("labels", ["modality", "class"])
def test_measures_on_the_device_match_the_cpu(tmp_path, rng, device_paths, labels):
    for path in _stores(tmp_path, rng):
        if labels == "class" and path.endswith("p.zarr"):
            continue
        want = _cpu_result(path, silhouette_labels=labels)
        got = compute(Store(path), device=str(DEVICE), silhouette_labels=labels)
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=1e-6), key


def test_measure_cli_on_the_device_matches_the_cpu(tmp_path, rng):
    cls, paired = _stores(tmp_path, rng)
    env = {} if ON_GPU else {"EMBEDX_KERNEL": "triton"}
    for path in (cls, paired):
        outs = []
        for dev, extra in (("cpu", {"EMBEDX_KERNEL": "torch"}), (str(DEVICE), env)):
            rc, out, err = run_embedx("measure", path, "--json", "--device", dev, env=extra)
            assert rc == 0, err
            outs.append(json.loads(out))
        for key, value in outs[0].items():
            if isinstance(value, float):
                assert outs[1][key] == pytest.approx(value, abs=1e-6), key
