"""Distributed embed (issue 13): tasks of whole chunks on a real Dask cluster write a store equal, byte for byte, to
a serial `embed` of the same command; a killed worker is retried, a killed driver is resumed by rerunning, and
unreadable items are skipped and counted as in a serial run."""
import csv
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import zarr

from embedx.engine.cluster import environ_kept
from embedx.embedding.options import ClusterOptions, EncodeOptions, SourceOptions, WriteOptions
from embedx.embedding.serial import embed_to_store
from embedx.store import Store, read_meta
from tests.conftest import assert_one_line_error, embedx_cmd, invoke
from tests.test_embed import _image_folder

# 480 digits in chunks of 32 rows (64 B a row): tasks of one chunk (2 KiB) make 15 tasks
ARGS = ["-m", "embedx-tiny", "--seed", "1", "--data", "digits:train", "--limit", "480", "--batch-size", "16",
        "--chunk-rows", "32", "--workers", "0"]
KW = dict(data="digits:train", model="embedx-tiny", pretrained="none", seed=1, progress=False,
          source=SourceOptions(limit=480), encode=EncodeOptions(batch_size=16, workers=0),
          write=WriteOptions(chunk_rows=32))
TASK_BYTES = 2048
VOLATILE = ("created", "finished", "generation")


def assert_same_store(a: str, b: str) -> None:
    """Every file of the two stores holds the same bytes (the root metadata: the same fields but times and ids),
    and nothing else lies beside either (staging folders, flags, partial writes)."""
    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    fa, fb = files(a), files(b)
    assert fa == fb
    assert not any(f.startswith("progress") or f.endswith(".partial") for f in fb)
    for f in fa:
        if f == "zarr.json":
            continue
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            assert x.read() == y.read(), f
    ma, mb = read_meta(a), read_meta(b)
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    assert ma["complete"] and mb["complete"]
    siblings = [p for p in os.listdir(os.path.dirname(b)) if p.startswith(os.path.basename(b) + ".")]
    assert not siblings, siblings


def _flags(out: str) -> int:
    try:
        return int(np.asarray(zarr.open_group(out, mode="r")["progress/done"][:]).sum())
    except Exception:
        return 0


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("serial") / "s.zarr")
    embed_to_store(out, **KW)
    return out


def test_cluster_embed_equals_serial_byte_for_byte(tmp_path, serial, dask_client):
    out = str(tmp_path / "s.zarr")
    res = embed_to_store(out, cluster=ClusterOptions(client=dask_client, task_bytes=TASK_BYTES), **KW)
    assert res.tasks == (0, 15) and res.meta["rows_committed"] == 480
    assert_same_store(serial, out)
    s = Store(out)
    x = s.images(dtype=np.float64)
    np.testing.assert_allclose(s.meta["sums"]["images"], (x / np.linalg.norm(x, axis=1, keepdims=True)).sum(0),
                               rtol=1e-12, atol=1e-12)


def test_killed_worker_is_retried_and_the_store_is_the_same(tmp_path, serial, dask_client):
    out = str(tmp_path / "s.zarr")
    box = {}

    def drive():
        try:
            box["res"] = embed_to_store(out, cluster=ClusterOptions(client=dask_client, task_bytes=TASK_BYTES),
                                        **KW)
        except BaseException as e:  # reported below
            box["err"] = e

    th = threading.Thread(target=drive)
    th.start()
    deadline = time.time() + 120
    while _flags(out) == 0 and th.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    done = _flags(out)
    assert th.is_alive() and 0 < done < 15, "the run finished before a worker could be killed"
    pid = next(iter(dask_client.run(os.getpid).values()))
    with environ_kept():  # the nanny writes its worker environment into this process when it restarts the worker
        os.kill(pid, signal.SIGKILL)
        th.join(240)
        dask_client.wait_for_workers(2, timeout=120)
    assert not th.is_alive() and "err" not in box, box.get("err")
    assert_same_store(serial, out)


def test_killed_driver_is_resumed_by_rerunning_the_command(tmp_path, serial, monkeypatch):
    import psutil

    out = str(tmp_path / "s.zarr")
    cmd = embedx_cmd("embed", *ARGS, "--cluster", "local:2", "--out", out)
    env = dict(os.environ, EMBEDX_TASK_BYTES=str(TASK_BYTES))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 180
    while _flags(out) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    assert proc.poll() is None and 0 < _flags(out) < 15, "the run finished before its driver could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=30)  # the workers follow their driver
    for p in alive:
        p.kill()
    meta = read_meta(out)
    assert not meta["complete"] and meta["plan"]["n_tasks"] == 15

    r = invoke("embed", *ARGS, "--out", out)  # without --cluster: refused, the store untouched
    assert_one_line_error(r.exit_code, r.stderr, "refusing to resume", "--cluster")
    other = list(ARGS)
    other[other.index("--seed") + 1] = "2"
    r = invoke("embed", *other, "--cluster", "local:2", "--out", out)
    assert_one_line_error(r.exit_code, r.stderr, "refusing to resume", "seed")

    monkeypatch.setenv("EMBEDX_TASK_BYTES", str(TASK_BYTES))
    r = invoke("embed", *ARGS, "--cluster", "local:2", "--out", out)  # the same command again (in-process: faster)
    assert r.exit_code == 0, r.output
    assert "tasks were done)" in r.stdout
    assert_same_store(serial, out)


def test_unreadable_items_are_skipped_and_counted_as_in_serial(tmp_path, rng, dask_client):
    """A corrupt image in a class folder and in a caption CSV: the rows after it move up (compaction), and the
    store equals the serial one byte for byte, skipped list included."""
    folder = _image_folder(tmp_path / "imgs", rng)  # 7 images and dog/broken.png (sorted first among dog/)
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([[f"imgs/{p}", f"caption {k}"] for k, p in enumerate(
            ["cat/0.png", "dog/broken.png", "cat/1.png", "dog/0.png", "cat/2.png", "dog/1.png", "dog/2.png"])])
    for data in (f"folder:{folder}", f"csv:{tmp_path / 'caps.csv'}"):
        kw = dict(data=data, model="embedx-tiny", pretrained="none", seed=2, progress=False,
                  encode=EncodeOptions(batch_size=2, workers=0), write=WriteOptions(chunk_rows=2))
        tag = data.split(":")[0]
        a, b = str(tmp_path / f"{tag}-serial.zarr"), str(tmp_path / f"{tag}-dist.zarr")
        embed_to_store(a, **kw)
        res = embed_to_store(b, cluster=ClusterOptions(client=dask_client, task_bytes=1), **kw)
        assert res.tasks[1] >= 3 and res.meta["n_skipped"] == 1
        assert res.meta["skipped"][0]["id"].endswith("broken.png")
        assert_same_store(a, b)


def test_bad_cluster_is_one_line(tmp_path):
    r = invoke("embed", *ARGS, "--cluster", "local:x", "--out", str(tmp_path / "s.zarr"))
    assert_one_line_error(r.exit_code, r.stderr, "cluster")
    assert not os.path.exists(tmp_path / "s.zarr")


def test_task_plan_is_whole_chunks_on_batch_boundaries():
    from embedx.embedding.plan import fold, task_rows

    assert task_rows(32, 16, 64, 2048) == 32
    assert task_rows(32, 16, 64, 1) == 32
    assert task_rows(32, 48, 64, 1) == 96  # lcm: whole chunks that start on a batch boundary
    assert task_rows(4096, 64, 1024, 128 << 20) == 131072
    assert fold([]) is None and json.dumps(fold([[1.0], [2.0]]).tolist()) == "[3.0]"
