"""A store's life on disk: creation and overwrite are atomic at every kill point (deterministic crash injection
through EMBEDX_CRASH_AT), leftovers of killed writers are repaired by the next run, one writer at a time, and a
reader never mixes two stores."""
import os
import signal

import numpy as np
import pytest
from PIL import Image

from embedx import measures
from embedx.errors import StoreError
from embedx.formats.arrays import import_arrays
from embedx.store import Store
from embedx.store.placement import writer_lock
from tests.conftest import assert_one_line_error, invoke, run_embedx

KILLED = -signal.SIGKILL


def _folder(root, rng):
    """8 readable images in two classes and one broken file (skipped, so finalize trims the arrays)."""
    for c in ("cat", "dog"):
        os.makedirs(root / c)
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (12 + k, 11, 3), dtype=np.uint8)).save(root / c / f"{k}.png")
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    return root


def _leftovers(folder):
    return sorted(p for p in os.listdir(folder) if ".tmp-" in p or ".old-" in p)


def _embed(root, out, *extra, env=None):
    """In a child process when it is to be killed (``env``), else in this one (fast)."""
    args = ("embed", "-m", "embedx-tiny", "--data", f"folder:{root}", "--out", out, "--batch-size", 3, *extra)
    if env:
        return run_embedx(*args, env=env)
    r = invoke(*args)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def reference(tmp_path_factory, rng):
    base = tmp_path_factory.mktemp("ref")
    root = _folder(base / "imgs", rng)
    rc, _, err = _embed(root, base / "ref.zarr")
    assert rc == 0, err
    return root, Store(str(base / "ref.zarr"))


@pytest.mark.parametrize("point", ["create:arrays", "create:staged", "place:start", "commit:data",
                                   "finalize:resize"])
def test_a_killed_embed_is_finished_by_the_same_command(tmp_path, reference, point):
    root, ref = reference
    out = tmp_path / "s.zarr"
    rc, _, err = _embed(root, out, env={"EMBEDX_CRASH_AT": point})
    assert rc == KILLED, (point, err)
    rc, _, err = _embed(root, out)
    assert rc == 0, err
    s = Store(str(out))
    np.testing.assert_array_equal(s.images(), ref.images())
    np.testing.assert_array_equal(s.labels(), ref.labels())
    assert s.meta["n_skipped"] == 1 and _leftovers(tmp_path) == []


@pytest.mark.parametrize("point,exchange", [("create:arrays", True), ("place:start", True),
                                            ("place:exchanged", True), ("place:between", False)])
def test_a_killed_embed_overwrite_leaves_a_store_the_same_command_replaces(tmp_path, reference, point, exchange):
    root, ref = reference
    out = tmp_path / "s.zarr"
    assert _embed(root, out, "--seed", "7")[0] == 0  # an old, complete store with other weights
    env = {"EMBEDX_CRASH_AT": point} | ({} if exchange else {"EMBEDX_NO_RENAME_EXCHANGE": "1"})
    rc, _, err = _embed(root, out, "--overwrite", env=env)
    assert rc == KILLED, err
    rc, _, err = _embed(root, out, "--overwrite")
    assert rc == 0, err
    np.testing.assert_array_equal(Store(str(out)).images(), ref.images())
    assert _leftovers(tmp_path) == []


def _arrays(tmp_path, rng, name, n=40, c=3, d=8):
    x, t = rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((c, d)).astype(np.float32)
    paths = {}
    for k, arr in (("x", x), ("t", t), ("y", rng.integers(0, c, n))):
        paths[k] = str(tmp_path / f"{name}-{k}.npy")
        np.save(paths[k], arr)
    return paths, x


@pytest.mark.parametrize("point,exchange", [("create:arrays", True), ("create:staged", True), ("place:start", True),
                                            ("place:exchanged", True), ("place:between", False)])
def test_import_overwrite_always_leaves_the_old_or_the_new_store(tmp_path, rng, point, exchange):
    old, x_old = _arrays(tmp_path, rng, "old")
    new, x_new = _arrays(tmp_path, rng, "new")
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=old["x"], texts=old["t"], labels=old["y"], dtype="float32")

    def cli(paths, env=None):
        args = ("import", "--images", paths["x"], "--texts", paths["t"], "--labels", paths["y"], "--dtype", "float32",
                "--overwrite", "--out", out)
        if env:
            return run_embedx(*args, env=env)
        r = invoke(*args)
        return r.exit_code, r.stdout, r.stderr

    for _ in range(2):  # several killed imports: their leftovers pile up until the next run
        env = {"EMBEDX_CRASH_AT": point} | ({} if exchange else {"EMBEDX_NO_RENAME_EXCHANGE": "1"})
        rc, _, err = cli(new, env)
        assert rc == KILLED, err
        if exchange:  # the target is always one whole store, old or new
            held = Store(out).images()
            assert np.array_equal(held, x_old) or np.array_equal(held, x_new)
    rc, _, err = cli(new)
    assert rc == 0, err
    np.testing.assert_array_equal(Store(out).images(), x_new)
    assert _leftovers(tmp_path) == []
    assert "removed" in err or "restored" in err or point == "place:exchanged" and exchange  # said what it repaired


def test_a_second_writer_is_refused_in_one_line(tmp_path, rng, reference):
    root, _ = reference
    paths, _ = _arrays(tmp_path, rng, "a")
    out = tmp_path / "s.zarr"
    with writer_lock(str(out)):  # as an embed in progress holds it
        rc, _, err = _embed(root, out, "--overwrite")
        assert_one_line_error(rc, err, "being written by another embedx process", f"pid {os.getpid()}")
        rc, _, err = run_embedx("import", "--images", paths["x"], "--texts", paths["t"], "--labels", paths["y"],
                                "--out", out)
        assert_one_line_error(rc, err, "being written by another embedx process")
    assert not out.exists()
    assert _embed(root, out)[0] == 0  # the lock went with its holder


def test_a_reader_never_mixes_two_stores(tmp_path, rng):
    from embedx import transferability as transfer

    a, _ = _arrays(tmp_path, rng, "a", n=60)
    b, _ = _arrays(tmp_path, rng, "b", n=60)
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=a["x"], texts=a["t"], labels=a["y"])
    reader = Store(out)
    measures.compute(reader, ["acs"])  # fine while it is the same store
    import_arrays(out, images=b["x"], texts=b["t"], labels=b["y"], overwrite=True)  # replaced under the reader
    with pytest.raises(StoreError, match="replaced while it was being read"):
        measures.compute(reader, ["acs", "iimm"])
    with pytest.raises(StoreError, match="replaced while it was being read"):
        transfer.compute(reader, ["hscore"])
    assert measures.compute(Store(out), ["acs"])["acs"] == pytest.approx(measures.compute(Store(out), ["acs"])["acs"])


def _limited(max_bytes):
    """preexec_fn: files may grow to ``max_bytes``; past that a write fails with EFBIG (as a full disk would)."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def test_io_failures_are_one_line_errors_naming_the_path_and_lose_nothing(tmp_path, rng):
    import subprocess
    import sys

    paths, x = _arrays(tmp_path, rng, "big", n=4000, d=64)
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=paths["x"], texts=paths["t"], labels=paths["y"], dtype="float32")
    cmd = [sys.executable, "-m", "embedx.cli.main", "import", "--images", paths["x"], "--texts", paths["t"],
           "--labels", paths["y"], "--dtype", "float32", "--chunk-rows", "4000", "--overwrite", "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limited(256 << 10))  # a 1 MB chunk fails
    assert_one_line_error(p.returncode, p.stderr, out, "file too large")
    assert p.returncode == 2 and "internal" not in p.stderr
    np.testing.assert_array_equal(Store(out).images(), x)  # the old store is untouched
    assert _leftovers(tmp_path) == []


def test_damaged_metadata_and_truncated_chunks_name_the_store(tmp_path, rng):
    paths, _ = _arrays(tmp_path, rng, "a", n=300)
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=paths["x"], texts=paths["t"], labels=paths["y"], chunk_rows=64, codec="zstd1")
    chunk = out / "images" / "embeddings" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated (compressed: zarr decodes it, and fails)
    r = invoke("measure", out)
    assert_one_line_error(r.exit_code, r.stderr, str(out), "images/embeddings", "damaged")
    (out / "texts" / "embeddings" / "zarr.json").write_text("{ not json")
    r = invoke("measure", out)
    assert_one_line_error(r.exit_code, r.stderr, str(out), "broken array metadata")
    assert "internal" not in r.stderr


@pytest.mark.parametrize("damage", ["labels chunk deleted", "embeddings chunk deleted", "ids chunk deleted",
                                    "rows_committed edited larger", "array shape edited shorter"])
def test_a_damaged_store_is_refused_not_read_as_fill_values(tmp_path, rng, damage):
    """zarr reads a missing chunk as its fill value: labels would silently become -1 (unlabelled) and rows zeros."""
    import json

    paths, _ = _arrays(tmp_path, rng, "a", n=300)
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=paths["x"], texts=paths["t"], labels=paths["y"], chunk_rows=64)
    if damage.endswith("chunk deleted"):
        name = {"labels": "labels", "embeddings": "embeddings", "ids": "ids"}[damage.split()[0]]
        os.remove(out / "images" / name / "c" / ("2/0" if name == "embeddings" else "2"))
        what = f"images/{name} chunk 2 (rows 128..191) is missing"
    elif damage == "rows_committed edited larger":
        meta = json.loads((out / "zarr.json").read_text())
        meta["attributes"]["embedx"]["rows_committed"] = 400
        (out / "zarr.json").write_text(json.dumps(meta))
        what = "records 400 committed rows"
    else:
        meta = json.loads((out / "images" / "labels" / "zarr.json").read_text())
        meta["shape"] = [250]
        (out / "images" / "labels" / "zarr.json").write_text(json.dumps(meta))
        what = "images/labels has 250 rows"
    for cmd in (["measure", out], ["measure", out, "--metrics", "zeroshot_top1"], ["transfer", out], ["info", out]):
        r = invoke(*cmd)
        assert_one_line_error(r.exit_code, r.stderr, what, "damaged")


@pytest.mark.parametrize("damage,codec", [("delete", "zstd1"), ("truncate", "zstd1"), ("garbage", "zstd1"),
                                          ("garbage", "none"), ("swap", "zstd1"), ("swap", "none"),
                                          ("shape", "zstd1"), ("rows_committed", "zstd1"), ("inventory", "zstd1"),
                                          ("content inventory", "none")])
def test_every_kind_of_damage_is_named_by_verify_measure_and_info(tmp_path, rng, damage, codec):
    """The corruption matrix: each case is named by `embedx verify` (exit 2), and `measure` and `info` refuse the
    store (exit 2, one line): a chunk of the right size with other bytes, or two chunks swapped, is caught by the
    content checksums that every read checks. An intact store verifies ok."""
    import json

    paths, _ = _arrays(tmp_path, rng, "a", n=300)
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=paths["x"], texts=paths["t"], labels=paths["y"], chunk_rows=64, codec=codec)
    r = invoke("verify", out)
    assert r.exit_code == 0 and r.stdout.startswith("ok:") and "checked" in r.stdout, r.stdout + r.stderr
    r = invoke("info", out)
    assert r.exit_code == 0 and "ok, checked now" in r.stdout, r.stdout + r.stderr
    emb = out / "images" / "embeddings" / "c"
    want = {"delete": "chunk 2 (rows 128..191) is missing", "truncate": "chunk 2 (rows 128..191): checksum mismatch",
            "garbage": "chunk 2 (rows 128..191): checksum mismatch", "swap": "chunk 1 (rows 64..127): checksum mismatch",
            "shape": "images/labels has 250 rows", "rows_committed": "400 committed rows",
            "inventory": "inventory of chunk checksums is missing",
            "content inventory": "images/embeddings: the inventory lists 4 chunk contents, the array has 5"}[damage]
    # what a reading command says (the first damage it meets)
    read_want = {"garbage": "chunk 2 (rows 128..191): content checksum mismatch" if codec == "none" else
                 "cannot read images/embeddings rows 128..191",
                 "truncate": "cannot read images/embeddings rows 128..191",
                 "swap": "chunk 1 (rows 64..127): content checksum mismatch"}.get(damage, want)
    if damage == "delete":
        os.remove(emb / "2" / "0")
    elif damage == "truncate":
        data = (emb / "2" / "0").read_bytes()
        (emb / "2" / "0").write_bytes(data[: len(data) // 2])
    elif damage == "garbage":  # the right size, other bytes
        size = (emb / "2" / "0").stat().st_size
        (emb / "2" / "0").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    elif damage == "swap":
        a, b = (emb / "1" / "0").read_bytes(), (emb / "2" / "0").read_bytes()
        (emb / "1" / "0").write_bytes(b)
        (emb / "2" / "0").write_bytes(a)
    elif damage == "shape":
        meta = json.loads((out / "images" / "labels" / "zarr.json").read_text())
        meta["shape"] = [250]
        (out / "images" / "labels" / "zarr.json").write_text(json.dumps(meta))
    else:
        meta = json.loads((out / "zarr.json").read_text())
        if damage == "rows_committed":
            meta["attributes"]["embedx"]["rows_committed"] = 400
        elif damage == "inventory":
            del meta["attributes"]["embedx"]["integrity"]
        else:
            meta["attributes"]["embedx"]["integrity"]["content"]["arrays"]["images/embeddings"].pop()
        (out / "zarr.json").write_text(json.dumps(meta))
    r = invoke("verify", out)
    assert r.exit_code == 2, r.stdout + r.stderr
    assert any(want in line and line.startswith("damaged:") for line in r.stdout.splitlines()), r.stdout
    assert_one_line_error(r.exit_code, r.stderr, "damaged")
    r = invoke("verify", out, "--json")
    assert json.loads(r.stdout)["ok"] is False
    if damage == "inventory":  # nothing left to check content against: reads go on (verify names it)
        return
    for cmd in (["measure", out], ["info", out]):
        r = invoke(*cmd)
        assert r.exit_code == 2, (cmd, r.stdout, r.stderr)
        assert read_want in r.stdout + r.stderr, (cmd, r.stdout, r.stderr)
        assert "damaged" in r.stderr and "internal" not in r.stderr and "Traceback" not in r.stderr


def test_info_shows_the_inventory(tmp_path, rng):
    paths, _ = _arrays(tmp_path, rng, "a", n=100)
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=paths["x"], texts=paths["t"], labels=paths["y"], chunk_rows=64)
    r = invoke("info", out)
    assert "crc32c of 8 chunk files, nh2-1k of 5 chunk contents (every read)" in r.stdout  # 3 image arrays x 2, 2 text x 1


def test_chunks_equal_to_the_fill_value_are_written_and_older_stores_still_open(tmp_path, rng):
    """A chunk of labels all -1 equals zarr's fill value: it is written anyway (so a missing chunk can mean damage);
    a store from before (no 'inventory' feature) may lack such chunks and still reads them as the fill value."""
    import json

    paths, x = _arrays(tmp_path, rng, "a", n=11, c=2, d=2)
    y = np.full(11, -1)
    y[:2] = [0, 1]
    np.save(paths["y"], y)
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=paths["x"], texts=paths["t"], labels=paths["y"], chunk_rows=2)
    assert sorted(os.listdir(out / "images" / "labels" / "c")) == [str(k) for k in range(6)]
    os.remove(out / "images" / "labels" / "c" / "3")
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["embedx"]["features"] = []
    del meta["attributes"]["embedx"]["integrity"]
    (out / "zarr.json").write_text(json.dumps(meta))  # as an older embedx wrote it
    np.testing.assert_array_equal(Store(str(out)).labels(), y)
    r = invoke("verify", out)
    assert r.exit_code == 0 and "no checksums recorded" in r.stdout
