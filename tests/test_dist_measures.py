"""Measures on a Dask cluster of 2 worker processes equal the in-process ones (to 1e-9), run after run."""
import numpy as np
import pytest

import embedx
from embedx.measures import compute


def _class_store(path, rng, n=3000, d=24, c=6):
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = rng.normal(size=(c, d)).astype(np.float32)
    y = rng.integers(-1, c, n)
    embedx.import_arrays(str(path), x, t, y, chunk_rows=64)
    return str(path)


def _paired_store(path, rng, n=2000, d=24):
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = x + rng.normal(size=(n, d)).astype(np.float32)
    embedx.import_arrays(str(path), x, t, chunk_rows=64)
    return str(path)


STREAM_CLASS = ["acs", "iimm", "iimm_inter", "iimm_intra", "text_intra", "gap", "silhouette_cosine",
                "zeroshot_top1", "zeroshot_top5", "zeroshot_mean_recall"]


def _close(a, b):
    for k in a.values:
        assert b.values[k] == pytest.approx(a.values[k], abs=1e-9, nan_ok=True), k


def test_class_stream_measures_on_cluster(tmp_path, rng, dask_executor):
    store = embedx.open(_class_store(tmp_path / "c.zarr", rng))
    names = [m for m in STREAM_CLASS if m in embedx.registry.names("measure")]
    local = compute(store, names)
    first = compute(store, names, executor=dask_executor)
    again = compute(store, names, executor=dask_executor)
    _close(local, first)
    assert first.values == again.values  # the fixed merge tree: the same bits run after run


def test_paired_stream_measures_on_cluster(tmp_path, rng, dask_executor):
    store = embedx.open(_paired_store(tmp_path / "p.zarr", rng))
    names = ["acs", "iimm", "gap", "silhouette_cosine"]
    _close(compute(store, names), compute(store, names, executor=dask_executor))
