"""``wds:`` (WebDataset tar shards, issue 14): real shards written with ``tarfile`` embed into the same store as the
same images from a folder or a CSV; a killed embed resumes to the same store; corrupt members, truncated shards and
bad class files are skipped and listed or refused in one line, never misaligned; the cluster path works."""
import csv
import io
import os
import signal
import subprocess
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from embedx.embedding.options import ClusterOptions, EncodeOptions, SourceOptions, WriteOptions
from embedx.embedding.serial import embed_to_store
from embedx.errors import EmbedxError
from embedx.sources.catalog import parse_source
from embedx.store import Store, read_meta
from tests.conftest import assert_one_line_error, embedx_cmd, invoke, run_embedx

KW = dict(model="embedx-tiny", pretrained="none", seed=1, encode=EncodeOptions(batch_size=4, workers=0),
          write=WriteOptions(chunk_rows=4), progress=False)


def _png(rng, h=20, w=17) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(root, samples, per_shard, name="{:05d}.tar"):
    """``samples``: [(key, {ext: bytes})] written as consecutive members, ``per_shard`` samples a shard -> paths."""
    os.makedirs(root, exist_ok=True)
    paths = []
    for k in range(0, len(samples), per_shard):
        path = os.path.join(root, name.format(len(paths)))
        with tarfile.open(path, "w") as tf:
            for key, members in samples[k:k + per_shard]:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def class_dataset(tmp_path, rng, per_class=(3, 4)):
    """The same images as a class folder (cat/, dog/) and as 3 shards with cls members, plus a classes file."""
    folder, samples = tmp_path / "imgs", []
    for c, (name, n) in enumerate(zip(("cat", "dog"), per_class)):
        os.makedirs(folder / name)
        for k in range(n):
            data = _png(rng, 20 + k)
            (folder / name / f"{k}.png").write_bytes(data)
            samples.append((f"{name}/{k}", {"png": data, "cls": str(c).encode()}))
    write_shards(tmp_path / "shards", samples, 3)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    return folder, str(tmp_path / "shards" / "{00000..00002}.tar"), str(tmp_path / "names.txt")


def paired_samples(rng, n):
    return [(f"{k:06d}", {"jpg": _png(rng, 16 + k % 5), "txt": f"picture number {k}".encode()}) for k in range(n)]


def assert_same_rows(a: Store, b: Store, ids_a=None):
    np.testing.assert_array_equal(a.images(), b.images())
    np.testing.assert_array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.texts(), b.texts())
    np.testing.assert_array_equal(a.text_names(), b.text_names())
    np.testing.assert_array_equal(a.ids() if ids_a is None else ids_a, b.ids())


def _strip_shard(ids):
    return np.asarray([i.split("/", 1)[1] for i in ids])


def test_wds_class_store_equals_the_folder(tmp_path, rng):
    folder, pattern, names = class_dataset(tmp_path, rng)
    src = parse_source(f"wds:{pattern}", classes=names)
    assert src.classnames == ["cat", "dog"] and list(src.labels) == [0, 0, 0, 1, 1, 1, 1]
    assert src.ids[:4] == ["00000.tar/cat/0.png", "00000.tar/cat/1.png", "00000.tar/cat/2.png", "00001.tar/dog/0.png"]
    a, b = str(tmp_path / "folder.zarr"), str(tmp_path / "wds.zarr")
    embed_to_store(a, f"folder:{folder}", **KW)
    embed_to_store(b, f"wds:{pattern}", source=SourceOptions(classes=names), **KW)
    sa, sb = Store(a), Store(b)
    assert sb.n_images == 7
    assert_same_rows(sa, sb, ids_a=sb.ids())  # ids differ only by the shard prefix
    np.testing.assert_array_equal(sa.ids(), _strip_shard(sb.ids()))
    meta = read_meta(b)
    assert meta["source"] == {"format": "wds", "shards": 3, "samples": 7, "usable": 7, "left_out": 0,
                              "truncated_shards": 0}
    r = invoke("info", b, "--quick")
    assert r.exit_code == 0 and "wds: shards 3, samples 7, usable 7" in r.stdout


def test_wds_paired_store_equals_the_csv(tmp_path, rng):
    samples = paired_samples(rng, 10)
    os.makedirs(tmp_path / "imgs")
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for key, m in samples:
            (tmp_path / "imgs" / f"{key}.jpg").write_bytes(m["jpg"])
            w.writerow([f"imgs/{key}.jpg", m["txt"].decode()])
    write_shards(tmp_path / "shards", samples, 4)  # 4 + 4 + 2
    a, b = str(tmp_path / "csv.zarr"), str(tmp_path / "wds.zarr")
    embed_to_store(a, f"csv:{tmp_path / 'caps.csv'}", **KW)
    embed_to_store(b, f"wds:{tmp_path / 'shards'}/{{00000..00002}}.tar", **KW)
    sa, sb = Store(a), Store(b)
    assert sb.n_images == 10 and read_meta(b)["mode"] == "paired"
    assert read_meta(b)["prompts"] == {"captions": "txt caption"}
    assert_same_rows(sa, sb, ids_a=sb.ids())
    np.testing.assert_array_equal(np.char.add("imgs/", _strip_shard(sb.ids())), sa.ids())
    # the same shards by folder, glob and a list of patterns: the same samples
    for spec in (f"wds:{tmp_path / 'shards'}", f"wds:{tmp_path / 'shards'}/*.tar",
                 f"wds:{tmp_path / 'shards'}/00000.tar::{tmp_path / 'shards'}/{{00001,00002}}.tar"):
        assert parse_source(spec).ids == parse_source(f"wds:{tmp_path / 'shards'}/{{00000..00002}}.tar").ids


def test_wds_through_an_fsspec_url(tmp_path, rng):
    """Shards behind a URL (fsspec's memory filesystem): indexed by a sequential read, images read by range."""
    import fsspec

    samples = paired_samples(rng, 6)
    local = write_shards(tmp_path / "shards", samples, 3)
    fs = fsspec.filesystem("memory")
    for p in local:
        fs.pipe(f"/wds-test/{os.path.basename(p)}", open(p, "rb").read())
    try:
        url, path = parse_source("wds:memory://wds-test/{00000..00001}.tar"), parse_source(f"wds:{tmp_path}/shards")
        assert url.ids == path.ids and url.captions == path.captions
        for i in (0, 4):
            assert np.array_equal(np.asarray(url.load(i)), np.asarray(path.load(i)))
    finally:
        fs.rm("/wds-test", recursive=True)


N_KILL = 240


def test_killed_wds_embed_resumes_to_the_same_store(tmp_path, rng):
    samples = paired_samples(rng, N_KILL)
    write_shards(tmp_path / "shards", samples, N_KILL // 3)
    data = f"wds:{tmp_path / 'shards'}/{{00000..00002}}.tar"
    args = ["embed", "-m", "embedx-tiny", "--seed", "1", "--batch-size", "4", "--chunk-rows", "4", "--workers", "0",
            "--data", data]
    ref = str(tmp_path / "ref.zarr")
    embed_to_store(ref, data, **KW)
    out = str(tmp_path / "s.zarr")
    proc = subprocess.Popen(embedx_cmd(*args, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def committed():
        try:
            return read_meta(out)["rows_committed"]
        except Exception:
            return 0

    deadline = time.time() + 120
    while committed() == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < committed() < N_KILL
    rc, stdout, err = run_embedx(*args, "--out", out)
    assert rc == 0, err
    assert "resumed at item" in stdout
    assert_same_rows(Store(ref), Store(out))


def test_corrupt_member_and_missing_parts_are_skipped_and_listed(tmp_path, rng):
    samples = paired_samples(rng, 8)
    samples[2][1]["jpg"] = b"not an image at all"         # decodes to nothing: skipped by the embed
    del samples[4][1]["txt"]                               # no caption: left out when listing
    samples[5] = (samples[5][0], {"txt": b"no image"})     # no image member
    samples.insert(7, (samples[6][0], {"jpg": _png(rng)}))  # a second jpg with key 000006 right after: duplicate
    write_shards(tmp_path / "shards", samples, 3)
    out = str(tmp_path / "s.zarr")
    res = embed_to_store(out, f"wds:{tmp_path / 'shards'}", **KW)
    s = Store(out)
    skipped = {e["id"]: e["error"] for e in res.meta["skipped"]}
    assert set(skipped) == {"00000.tar/000002.jpg", "00001.tar/000004.jpg", "00001.tar/000005",
                            "00002.tar/000006.jpg"}
    assert "duplicate" in skipped["00002.tar/000006.jpg"]
    assert "no caption" in skipped["00001.tar/000004.jpg"] and "no image member" in skipped["00001.tar/000005"]
    assert "cannot identify image" in skipped["00000.tar/000002.jpg"]
    ids = list(s.ids())
    assert ids == ["00000.tar/000000.jpg", "00000.tar/000001.jpg", "00001.tar/000003.jpg", "00002.tar/000007.jpg"]
    # every row pairs its image with its own caption
    assert [str(t) for t in s.text_names()] == [f"picture number {int(i[10:16])}" for i in ids]
    assert res.meta["n_skipped"] == len(skipped) == 4


def test_truncated_shard_keeps_what_precedes_the_cut(tmp_path, rng):
    samples = paired_samples(rng, 9)
    paths = write_shards(tmp_path / "shards", samples, 3)
    full = open(paths[1], "rb").read()
    with tarfile.open(paths[1]) as tf:
        cut = tf.getmember("000004.jpg").offset_data + 10  # inside sample 4's image
    open(paths[1], "wb").write(full[:cut])
    src = parse_source(f"wds:{tmp_path / 'shards'}")
    assert src.ids == ["00000.tar/000000.jpg", "00000.tar/000001.jpg", "00000.tar/000002.jpg",
                       "00001.tar/000003.jpg", "00002.tar/000006.jpg", "00002.tar/000007.jpg", "00002.tar/000008.jpg"]
    assert src.captions == [f"picture number {k}" for k in (0, 1, 2, 3, 6, 7, 8)]
    why = {e["id"]: e["error"] for e in src.excluded}
    assert "cut off" in why["00001.tar/000004.jpg"] and "truncated" in why["00001.tar"]
    assert src.info["truncated_shards"] == 1
    # cut inside a header instead: the samples before it, the shard listed
    with tarfile.open(paths[2]) as tf:
        cut = tf.getmember("000007.jpg").offset + 100
    full = open(paths[2], "rb").read()
    open(paths[2], "wb").write(full[:cut])
    src = parse_source(f"wds:{tmp_path / 'shards'}")
    assert src.ids[-1] == "00002.tar/000006.jpg" and "invalid tar header" in src.excluded[-1]["error"]
    assert all(src.captions[i] == f"picture number {int(src.ids[i][10:16])}" for i in range(len(src)))
    out = str(tmp_path / "s.zarr")
    embed_to_store(out, f"wds:{tmp_path / 'shards'}", **KW)
    s = Store(out)
    assert [str(t) for t in s.text_names()] == [f"picture number {int(i[10:16])}" for i in s.ids()]


def test_bad_inputs_are_one_line_errors(tmp_path, rng):
    folder, pattern, names = class_dataset(tmp_path, rng)
    base = ["embed", "-m", "embedx-tiny", "--workers", "0", "--out"]
    (tmp_path / "dup.txt").write_text("cat\ncat\n")
    (tmp_path / "blank.txt").write_text("cat\n\ndog\n")
    (tmp_path / "one.txt").write_text("cat\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00cat")
    (tmp_path / "cats.txt").write_text("cat\n")
    cases = [
        (["--data", f"wds:{pattern}", "--classes", str(tmp_path / "nope.txt")], "classes file not found"),
        (["--data", f"wds:{pattern}", "--classes", str(tmp_path / "dup.txt")], "lines 1 and 2"),
        (["--data", f"wds:{pattern}", "--classes", str(tmp_path / "blank.txt")], "line 2 is blank"),
        (["--data", f"wds:{pattern}", "--classes", str(tmp_path / "one.txt")], "at least 2"),
        (["--data", f"wds:{pattern}", "--classes", str(tmp_path / "bin.txt")], "not utf-8"),
        (["--data", f"wds:{pattern}"], "pass --classes"),
        (["--data", f"wds:{tmp_path / 'shards'}/{{00000..00009}}.tar", "--classes", names], "7 of 10 missing"),
        (["--data", f"wds:{tmp_path / 'shards'}/{{9..0}}.tar"], "runs backwards"),
        (["--data", "digits", "--classes", names], "applies to folder: and wds: and parquet:"),
        (["--data", f"wds:{pattern}", "--image-col", "jpg"], "applies to parquet:"),
    ]
    for extra, frag in cases:
        out = tmp_path / "s.zarr"
        r = invoke(*base, out, *extra)
        assert_one_line_error(r.exit_code, r.stderr, frag)
        assert not out.exists()
    # a label past the end of the classes file: refused, naming the sample
    write_shards(tmp_path / "big", [("a", {"png": _png(rng), "cls": b"0"}), ("b", {"png": _png(rng), "cls": b"5"})], 2)
    (tmp_path / "cd.txt").write_text("cat\ndog\n")
    r = invoke(*base, tmp_path / "s.zarr", "--data", f"wds:{tmp_path / 'big'}", "--classes", tmp_path / "cd.txt")
    assert_one_line_error(r.exit_code, r.stderr, "00000.tar/b.png", "out of range")
    # a file that is no tar at all: listed, and with nothing else usable, refused
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.tar").write_bytes(b"hello" * 300)
    with pytest.raises(EmbedxError, match="no usable samples.*not a readable tar"):
        parse_source(f"wds:{tmp_path / 'junk'}")


def test_json_labels_by_name_and_field(tmp_path, rng):
    samples = [(f"s{k}", {"webp": _png(rng), "json": f'{{"label": "{("cat", "dog")[k % 2]}", "y": {k % 2}}}'.encode()})
               for k in range(4)]
    write_shards(tmp_path / "shards", samples, 4)
    (tmp_path / "cd.txt").write_text("cat\ndog\n")
    src = parse_source(f"wds:{tmp_path / 'shards'}", classes=str(tmp_path / "cd.txt"))
    assert list(src.labels) == [0, 1, 0, 1]
    src = parse_source(f"wds:{tmp_path / 'shards'}", classes=str(tmp_path / "cd.txt"), label_col="y")
    assert list(src.labels) == [0, 1, 0, 1] and np.asarray(src.load(1)).shape == (20, 17, 3)


def test_wds_on_a_cluster_equals_the_serial_store(tmp_path, rng, dask_client):
    from tests.test_dist_embed import assert_same_store

    samples = paired_samples(rng, 40)
    samples[9][1]["jpg"] = b"broken"
    write_shards(tmp_path / "shards", samples, 16)
    data = f"wds:{tmp_path / 'shards'}/{{00000..00002}}.tar"
    serial, dist = str(tmp_path / "serial" / "s.zarr"), str(tmp_path / "dist" / "s.zarr")
    os.makedirs(os.path.dirname(serial))
    os.makedirs(os.path.dirname(dist))
    embed_to_store(serial, data, **KW)
    res = embed_to_store(dist, data, cluster=ClusterOptions(client=dask_client, task_bytes=2048), **KW)
    assert res.tasks[1] > 1 and res.meta["n_skipped"] == 1
    assert_same_store(serial, dist)
