"""Transfer scores and drift on a Dask cluster of 2 worker processes equal the in-process ones (the same tasks and
merge tree: the same bits), run after run; a bad row is the same one-line error through the cluster."""
import json

import numpy as np
import pytest

import embedx
from embedx.errors import EmbedxError
from embedx.transferability import moments
from embedx.transferability import transrate as TR
from tests.conftest import invoke

SCORES = list(embedx.registry.names("transfer"))


@pytest.fixture
def small_blocks(monkeypatch, dask_executor):
    """Transfer blocks of 64 rows (one chunk at d = 16), runs (a pass's items) of 4 blocks, tasks of one run
    (float16 rows): a test store splits into many blocks, runs and tasks. Driver-side sizes: tasks receive their
    ranges and block size as arguments."""
    monkeypatch.setattr(moments, "BLOCK_BYTES", 64 * 16 * 8)
    monkeypatch.setattr(moments, "RUN_BYTES", 4 * 64 * 16 * 2)
    monkeypatch.setattr(dask_executor, "task_bytes", 4 * 64 * 16 * 2)


def _arrays(rng, n=3000, d=16, c=6):
    """Class clusters with ~10% unlabelled rows (-1) and class prompts near the class means."""
    centers = rng.standard_normal((c, d))
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.1] = -1
    y[:70] = -1  # the first block (64 rows) has no labelled row: the shift comes from the second
    x = 0.8 * centers[np.maximum(y, 0)] + rng.standard_normal((n, d))
    t = centers + 0.5 * rng.standard_normal((c, d))
    return x.astype(np.float32), y, t.astype(np.float32)


def _class_store(path, x, y, t):
    embedx.import_arrays(str(path), x, t, y, chunk_rows=64)
    return embedx.open(str(path))


def _close(local, dist):
    assert set(local) == set(dist)
    for k, v in local.items():
        assert dist[k] == v or (v != v and dist[k] != dist[k]), (k, dist[k], v)


def test_transfer_scores_on_cluster(tmp_path, rng, dask_client, dask_executor, small_blocks):
    from distributed import get_task_stream

    x, y, t = _arrays(rng)
    store = _class_store(tmp_path / "c.zarr", x, y, t)
    local = embedx.transfer(store, SCORES)
    with get_task_stream(dask_client) as ts:
        first = embedx.transfer(store, SCORES, executor=dask_executor)
    again = embedx.transfer(store, SCORES, executor=dask_executor)
    folds = [task for task in ts.data if task["key"].startswith("_leaf")]
    assert len(folds) >= 3 * 4  # three passes (sfda), each of several tasks of whole blocks
    assert all(np.isfinite(v) for v in local.values())
    _close(dict(local), dict(first))
    assert dict(first) == dict(again)  # the fixed merge tree: the same bits run after run


def test_transfer_arrays_on_cluster(rng, dask_executor, small_blocks):
    x, y, t = _arrays(rng, n=2000)
    src = embedx.ArrayRows(x.astype(np.float64), t, y, chunk_rows=64)
    local = embedx.transfer(src, SCORES)
    first = embedx.transfer(src, SCORES, executor=dask_executor)
    again = embedx.transfer(src, SCORES, executor=dask_executor)
    _close(dict(local), dict(first))
    assert dict(first) == dict(again)


def test_transrate_groups_on_cluster(tmp_path, rng, dask_executor, small_blocks, monkeypatch):
    """TransRate's further class groups (one more pass each) run as tasks too."""
    x, y, t = _arrays(rng, n=1500)
    store = _class_store(tmp_path / "g.zarr", x, y, t)
    local = embedx.transfer(store, ["transrate"])
    monkeypatch.setattr(TR, "BUDGET_BYTES", 2 * 16 * 16 * 8)  # two classes a group: three groups
    assert len(TR.groups(np.arange(6), 16)) == 3
    grouped = embedx.transfer(store, ["transrate"], executor=dask_executor)
    # three groups add their coding rates in another order than one group: equal to round-off, not bit for bit
    assert grouped["transrate"] == pytest.approx(local["transrate"], abs=1e-9)


def test_bad_row_on_cluster(rng, dask_executor, small_blocks):
    x, y, t = _arrays(rng, n=1500)
    z = embedx.ArrayRows(x, t, y, chunk_rows=64)
    for bad in (1234, 900):  # the lower of two bad rows (in different tasks) is named, as in-process
        z.x[bad, 3] = np.nan
    with pytest.raises(EmbedxError) as local:
        embedx.transfer(z, ["hscore"])
    with pytest.raises(EmbedxError) as dist:
        embedx.transfer(z, ["hscore"], executor=dask_executor)
    assert str(dist.value) == str(local.value)
    assert "images row 900 " in str(dist.value) and "\n" not in str(dist.value)


def _plain(v):
    """A summary as comparable values, arrays as lists; timings dropped, the result's creation time, and the
    measures' ``integrity`` (how many chunks this process read and verified: on a cluster the workers read
    them)."""
    if isinstance(v, dict):
        return {k: _plain(w) for k, w in v.items() if k not in ("timings_s", "integrity", "created")}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(w) for w in v]
    return v.item() if isinstance(v, np.generic) else v


def _same(local, dist, where="summary"):
    if isinstance(local, dict):
        assert set(local) == set(dist), where
        for k in local:
            _same(local[k], dist[k], f"{where}.{k}")
    elif isinstance(local, list):
        assert len(local) == len(dist), where
        for i, (a, b) in enumerate(zip(local, dist)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(local, float):
        assert dist == local or (local != local and dist != dist), (where, dist, local)
    else:
        assert dist == local, where


def test_drift_on_cluster(tmp_path, rng, dask_executor, small_blocks):
    """Every key of the drift summary (measures before/after/delta, displacement, CKA, kNN overlap, per class,
    forgetting) and the displacements themselves equal in-process."""
    from embedx.drift_analysis import compare

    x, y, t = _arrays(rng, n=1500)
    moved = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    before = _class_store(tmp_path / "before.zarr", x, y, t).path
    after = _class_store(tmp_path / "after.zarr", moved, y, t + 0.1).path
    other = f"o={before}:{after}"
    opts = dict(metrics=["acs", "iimm", "gap", "zeroshot_top1"], knn_sample=300, plot_sample=100, block_rows=128)
    local = compare(before, after, [other], **opts)
    dist = compare(before, after, [other], executor=dask_executor, **opts)
    assert local.summary["per_class"] and np.isfinite(local.summary["cka_linear"])
    _same(_plain(local.summary), _plain(dist.summary))
    assert np.array_equal(local.displacement, dist.displacement)
    for k, v in local.projection.items():
        assert np.array_equal(v, dist.projection[k]), k


def test_cli_transfer_cluster(tmp_path, rng):
    x, y, t = _arrays(rng, n=1500)
    path = _class_store(tmp_path / "cli.zarr", x, y, t).path
    local = invoke("transfer", path, "--json")
    dist = invoke("transfer", path, "--cluster", "local:2", "--json")
    assert local.exit_code == 0 and dist.exit_code == 0, dist.output
    head = {"schema", "embedx_version", "created", "stores", "options"}  # embedx.provenance
    a, b = ({k: v for k, v in json.loads(r.output).items() if k not in head} for r in (local, dist))
    assert set(a) == set(b) == set(embedx.registry.names("transfer", defaults_only=True))
    for k, v in a.items():
        assert b[k] == v, k


def test_drift_pass_paired_on_cluster(tmp_path, rng, dask_executor, small_blocks):
    """Paired stores (no classes): displacements, CKA and kNN overlap of the drift pass equal in-process."""
    from embedx.drift_analysis import drift_pass as stats

    x = rng.standard_normal((1200, 16)).astype(np.float32)
    t = x + rng.standard_normal(x.shape).astype(np.float32)
    stores = []
    for name, rows in (("pb", x), ("pa", x + 0.4 * rng.standard_normal(x.shape).astype(np.float32))):
        embedx.import_arrays(str(tmp_path / f"{name}.zarr"), rows, t, chunk_rows=64)
        stores.append(embedx.open(str(tmp_path / f"{name}.zarr")))
    opts = dict(knn_k=5, knn_rows=np.arange(0, 1200, 7), block_rows=128)
    local = stats.drift_pass(*stores, **opts)
    dist = stats.drift_pass(*stores, executor=dask_executor, **opts)
    assert local.class_hits is None and dist.class_hits is None
    assert np.array_equal(local.displacement, dist.displacement)
    assert dist.cka == local.cka and dist.knn_overlap == local.knn_overlap
