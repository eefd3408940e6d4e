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
    if impl == "torch":
        return K.cluster_distance_sums_torch(tx, ty, tl, k, rid, col_offset,
                                             block=int(rng.integers(5, 40))).numpy()
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
