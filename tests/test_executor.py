"""One executor interface: serial, threaded and Dask executors run the same task functions over the same items and
merge them in the same fixed tree, so their float64 results are the same bits; map yields in item order with a
bounded window; the earliest failure in item order is the one raised."""
import threading
import time

import numpy as np
import pytest

import embedx
from embedx.engine.executor import MergeTree, SerialExecutor, ThreadedExecutor, tree_reduce


def reference_tree(results, merge, s):
    """The fixed tree by its definition: level by level, groups of ``s`` consecutive entries fold left to right."""
    level = list(results)
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), s):
            out = level[i]
            for p in level[i + 1:i + s]:
                out = merge(out, p)
            nxt.append(out)
        level = nxt
    return level[0]


def show(a, b):
    return f"({a} {b})"


@pytest.mark.parametrize("s", [2, 3, 8])
def test_streamed_tree_is_the_fixed_tree(s):
    for n in range(1, 3 * s ** 3 + 2):
        items = [str(i) for i in range(n)]
        assert tree_reduce(items, show, s) == reference_tree(items, show, s), n
        for k in (1, 2):  # a subtree of s**k aligned items computed apart (one Dask task) feeds level k
            g = s ** k
            tree = MergeTree(show, s)
            for i in range(0, n, g):
                tree.push(tree_reduce(items[i:i + g], show, s), level=k)
            assert tree.result() == reference_tree(items, show, s), (n, k)


def _spread(n=300, seed=5):
    """float64 vectors over 24 orders of magnitude: any two addition orders differ in the last bits."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(64) * 10.0 ** rng.integers(-12, 12) for _ in range(n)]


def _value(i, vals):
    return vals[i]


def _add(a, b):
    return a + b


def test_serial_and_threaded_sums_are_the_same_bits():
    vals = _spread()
    want = reference_tree(vals, _add, 8)
    assert not np.array_equal(want, sum(vals[1:], vals[0]))  # the order shows in the bits
    for ex in (SerialExecutor(), ThreadedExecutor(2), ThreadedExecutor(5)):
        for parallel in (True, False):
            got = ex.map_reduce(_value, range(len(vals)), _add, vals, parallel=parallel)
            assert np.array_equal(got, want), (ex.describe(), parallel)


def test_dask_sums_are_the_same_bits_whatever_the_task_size(dask_client):
    from embedx.engine.dask import DaskExecutor

    vals = _spread(n=150)
    want = reference_tree(vals, _add, 8)
    for task_items in (1, 7, 8, 64, 1000):  # one subtree of 1, 1, 8, 64, 64 items a task
        ex = DaskExecutor(dask_client, task_bytes=task_items * 100)
        got = ex.map_reduce(_value, range(len(vals)), _add, vals, item_bytes=100)
        assert np.array_equal(got, want), task_items
    got = list(DaskExecutor(dask_client, task_bytes=300).map(_value, range(len(vals)), vals, item_bytes=100))
    assert all(np.array_equal(a, b) for a, b in zip(got, vals)) and len(got) == len(vals)


def test_map_yields_in_order_and_holds_a_bounded_window():
    started = []
    lock = threading.Lock()

    def task(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))
        return i

    ex = ThreadedExecutor(3)
    out = []
    for r in ex.map(task, range(40), result_bytes=100 << 20):  # 256 MiB of results: a window of 3 tasks
        with lock:
            assert len(started) <= r + 1 + 3  # never more than the window ahead of the consumer
        out.append(r)
    assert out == list(range(40))


def test_the_earliest_failure_in_item_order_is_raised():
    def task(i):
        if i == 9:
            raise ValueError("nine")
        if i == 2:
            time.sleep(0.3)  # fails after nine has
            raise ValueError("two")
        return i

    for ex in (SerialExecutor(), ThreadedExecutor(4)):
        with pytest.raises(ValueError, match="two"):
            list(ex.map(task, range(20)))
        with pytest.raises(ValueError, match="two"):
            ex.map_reduce(task, range(20), _add)


def _class_store(tmp_path, rng, n=3000, d=16, c=7):
    centers = rng.standard_normal((c, d))
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.1] = -1
    x = centers[np.maximum(y, 0)] + 0.7 * rng.standard_normal((n, d))
    t = centers + 0.3 * rng.standard_normal((c, d))
    embedx.import_arrays(str(tmp_path / "c.zarr"), x.astype(np.float16), t.astype(np.float32), y, chunk_rows=64)
    return embedx.open(str(tmp_path / "c.zarr"))


def test_measures_transfer_and_drift_are_the_same_bits_on_every_executor(tmp_path, rng, dask_executor,
                                                                          monkeypatch):
    """The passes of every family, serial, threaded and on a 2-worker Dask cluster: equal values, not close."""
    from embedx.transferability import moments

    monkeypatch.setattr(moments, "BLOCK_BYTES", 64 * 16 * 8)  # transfer blocks of one chunk, runs of 2 blocks:
    monkeypatch.setattr(moments, "RUN_BYTES", 2 * 64 * 16 * 2)  # many items
    store = _class_store(tmp_path, rng)
    measures = ["acs", "iimm", "gap", "silhouette_cosine", "zeroshot_top1"]
    scores = list(embedx.registry.names("transfer"))
    runs = {}
    for name, ex in (("serial", SerialExecutor()), ("threaded", ThreadedExecutor(3)), ("dask", dask_executor)):
        m = embedx.measure(store, measures, executor=ex)
        t = embedx.transfer(store, scores, executor=ex)
        runs[name] = ({k: m[k] for k in measures}, dict(t))
    assert all(np.isfinite(v) for v in runs["serial"][0].values())
    assert runs["threaded"] == runs["serial"]
    assert runs["dask"] == runs["serial"]


def test_drift_pass_is_the_same_bits_on_every_executor(tmp_path, rng, dask_executor):
    from embedx.drift_analysis.drift_pass import drift_pass

    n, d = 2500, 16
    x = rng.standard_normal((n, d))
    y = rng.integers(0, 5, n)
    t = rng.standard_normal((5, d))
    for name, rows in (("a", x), ("b", x + 0.3 * rng.standard_normal((n, d)))):
        embedx.import_arrays(str(tmp_path / f"{name}.zarr"), rows.astype(np.float16), t.astype(np.float32), y,
                             chunk_rows=64)
    a, b = (embedx.open(str(tmp_path / f"{k}.zarr")) for k in "ab")
    res = {name: drift_pass(a, b, knn_k=5, knn_rows=np.arange(0, n, 7), block_rows=128, executor=ex)
           for name, ex in (("serial", SerialExecutor()), ("threaded", ThreadedExecutor(3)),
                            ("dask", dask_executor))}
    for name in ("threaded", "dask"):
        assert res[name].cka == res["serial"].cka, name
        assert np.array_equal(res[name].displacement, res["serial"].displacement), name
        assert all(np.array_equal(p, q) for p, q in zip(res[name].class_hits, res["serial"].class_hits)), name
