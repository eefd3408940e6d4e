"""Measures on a Dask cluster of 2 worker processes equal the in-process ones (the same tasks over the same items,
merged in the same fixed tree: the same bits), run after run."""
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


def same(a, b) -> bool:
    """Equal floats, NaN equal to NaN."""
    return a == b or (a != a and b != b)


def _close(a, b):
    for k in a:
        assert same(b[k], a[k]), (k, b[k], a[k])


def test_class_stream_measures_on_cluster(tmp_path, rng, dask_executor):
    store = embedx.open(_class_store(tmp_path / "c.zarr", rng))
    names = [m for m in STREAM_CLASS if m in embedx.registry.names("measure")]
    local = compute(store, names)
    first = compute(store, names, executor=dask_executor)
    again = compute(store, names, executor=dask_executor)
    _close(local, first)
    assert dict(first) == dict(again)  # the fixed merge tree: the same bits run after run
    # every chunk the pass read was checked against its recorded checksum, on the workers as in-process
    assert again.info["integrity"] == local.info["integrity"]
    assert local.info["integrity"]["chunks_verified"] == local.info["integrity"]["chunks_recorded"]


def test_paired_stream_measures_on_cluster(tmp_path, rng, dask_executor):
    store = embedx.open(_paired_store(tmp_path / "p.zarr", rng))
    names = ["acs", "iimm", "gap", "silhouette_cosine"]
    _close(compute(store, names), compute(store, names, executor=dask_executor))


def test_cosine_second_pass_on_cluster_with_in_memory_rows(rng, dask_executor):
    """Rows without recorded sums (ArrayRows) take the cosine silhouette's second pass: as tasks, on the scattered
    rows, equal to in-process."""
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    t = rng.normal(size=(5, 16)).astype(np.float32)
    y = rng.integers(0, 5, 1500)
    src = embedx.ArrayRows(x, t, y, chunk_rows=64)
    names = ["silhouette_cosine", "acs", "iimm"]
    _close(compute(src, names), compute(src, names, executor=dask_executor))


def test_a_worker_killed_mid_measure_gives_the_same_answer(tmp_path, rng, small_tasks):
    """SIGKILL one of 2 worker processes (by its pid) while the pass runs: Dask recomputes its tasks elsewhere and
    the result is bit-identical to an uninterrupted cluster run (fixed merge tree) and to in-process."""
    import os
    import signal
    import threading
    import time

    from distributed import Client

    from embedx.engine.cluster import local_cluster
    from embedx.engine.dask import DaskExecutor

    store = embedx.open(_class_store(tmp_path / "big.zarr", rng, n=60000, d=32, c=8))
    names = ["acs", "iimm", "gap", "zeroshot_top1"]
    local = compute(store, names)
    with local_cluster(2) as cluster, Client(cluster) as client:
        ex = DaskExecutor(client, task_bytes=16 << 10)
        clean = compute(store, names, executor=ex)
        pids = list(client.run(os.getpid).values())
        out = {}
        run = threading.Thread(target=lambda: out.setdefault("r", compute(store, names, executor=ex)))
        run.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(client.processing().values()):
            time.sleep(0.005)
        os.kill(pids[0], signal.SIGKILL)
        run.join(120)
        assert "r" in out, "the pass did not finish after a worker was killed"
        assert dict(out["r"]) == dict(clean)
        _close(local, out["r"])


def test_cli_measure_on_a_local_cluster_equals_in_process(tmp_path, rng):
    import json

    from tests.conftest import run_embedx

    path = _paired_store(tmp_path / "p.zarr", rng, n=800)
    rc, out, err = run_embedx("measure", path, "--metrics", "acs,iimm,gap,i2t_recall@1", "--json")
    assert rc == 0, err
    rc2, out2, err2 = run_embedx("measure", path, "--metrics", "acs,iimm,gap,i2t_recall@1", "--json",
                                 "--cluster", "local:2")
    assert rc2 == 0, err2
    a, b = json.loads(out), json.loads(out2)
    for k in ("acs", "iimm", "gap", "i2t_recall@1"):
        assert b[k] == a[k], k


@pytest.mark.parametrize("spec, fragment", [("locale:2", "unknown --cluster"), ("local:0", "N >= 1"),
                                            ("tcp://127.0.0.1:9", "cannot reach the dask scheduler")])
def test_bad_cluster_is_a_one_line_error(tmp_path, rng, spec, fragment):
    from tests.conftest import assert_one_line_error, run_embedx

    path = _paired_store(tmp_path / "p.zarr", rng, n=100)
    rc, out, err = run_embedx("measure", path, "--cluster", spec, env={"EMBEDX_CONNECT_TIMEOUT_S": "2"})
    assert_one_line_error(rc, err, "--cluster", fragment)


@pytest.mark.parametrize("paired", [False, True])
def test_every_default_measure_on_cluster(tmp_path, rng, dask_executor, monkeypatch, paired):
    """The full default set (stream measures, cosine and exact Euclidean silhouettes, zero-shot or retrieval
    recall, class silhouette for class stores) through 2 worker processes equals in-process (the same bits)."""
    from embedx.measures import silhouette

    monkeypatch.setattr(silhouette, "PAIR_ROWS", 256)  # several block pairs
    path = (_paired_store(tmp_path / "p.zarr", rng, n=700) if paired
            else _class_store(tmp_path / "c.zarr", rng, n=900))
    store = embedx.open(path)
    opts = {} if paired else {"silhouette_labels": "class"}
    local = compute(store, **opts)
    cluster = compute(store, executor=dask_executor, **opts)
    assert set(cluster) == set(local) and len(local) >= (10 if paired else 12)
    _close(local, cluster)


def test_api_cluster_local_equals_in_process_and_leaves_the_environment(tmp_path, rng):
    """``embedx.measure(path, cluster="local:1")`` starts and tears down its own cluster; distributed's nanny
    writes its worker environment (OMP_NUM_THREADS=1, ...) into the caller's os.environ, which embedx puts back
    (later subprocesses of the caller would otherwise run single-threaded)."""
    import os

    path = _class_store(tmp_path / "c.zarr", rng, n=600)
    before = dict(os.environ)
    got = embedx.measure(path, metrics=["acs", "iimm", "zeroshot_top1"], cluster="local:1")
    assert dict(os.environ) == before
    _close(embedx.measure(path, metrics=["acs", "iimm", "zeroshot_top1"]), got)
