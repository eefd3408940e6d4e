"""`embedx import --from clip-retrieval|datacomp|npy|parquet DIR` and `embedx export`: released dumps in, files out.

The folders are built here in the writers' layouts (clip_retrieval.clip_inference.writer.OutputSink; DataComp's
{shard}.npz with b32_img/b32_txt/l14_img/l14_txt/dedup beside {shard}.parquet with uid/url/text).
"""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedx.formats import dumps
from embedx.formats.dumps import import_dump
from embedx.errors import EmbedxError
from embedx.store.integrity import verify
from embedx.formats.export import export_store
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, run_embedx


def _unit(rng, n, d, dtype=np.float16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def clip_retrieval_dir(root, rng, sizes=(70, 50, 33), d=32, width=None, extra_meta=True):
    """A clip-retrieval inference output: partitions numbered as OutputSink numbers them."""
    width = width or int(np.log10(len(sizes))) + 1
    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(root / sub, exist_ok=True)
    xs, ts, ids, caps = [], [], [], []
    for k, n in enumerate(sizes):
        tag = str(k).zfill(width)
        x, t = _unit(rng, n, d), _unit(rng, n, d)
        np.save(root / "img_emb" / f"img_emb_{tag}.npy", x)
        np.save(root / "text_emb" / f"text_emb_{tag}.npy", t)
        p = [f"{k:05d}{i:04d}" for i in range(n)]
        c = [f"a photo number {i} of partition {k}" for i in range(n)]
        cols = {"image_path": p, "caption": c}
        if extra_meta:
            cols.update(url=[f"http://x/{v}.jpg" for v in p], width=list(range(n)))
        pq.write_table(pa.table(cols), root / "metadata" / f"metadata_{tag}.parquet")
        xs.append(x)
        ts.append(t)
        ids += p
        caps += c
    return np.concatenate(xs), np.concatenate(ts), ids, caps


def datacomp_dir(root, rng, sizes=(40, 25, 31), compressed=True):
    """A DataComp metadata folder: hashed shard names, npz of both models' features, parquet of uid/url/text."""
    os.makedirs(root, exist_ok=True)
    stems = sorted(f"{rng.integers(2 ** 63):032x}" for _ in sizes)
    out = {"l14_img": [], "l14_txt": [], "b32_img": [], "b32_txt": [], "uid": [], "text": []}
    for stem, n in zip(stems, sizes):
        arrs = {"b32_img": _unit(rng, n, 16), "b32_txt": _unit(rng, n, 16), "l14_img": _unit(rng, n, 24),
                "l14_txt": _unit(rng, n, 24), "dedup": _unit(rng, n, 8)}
        (np.savez_compressed if compressed else np.savez)(root / f"{stem}.npz", **arrs)
        uid = [f"{rng.integers(2 ** 63):032x}" for _ in range(n)]
        text = [f"caption {stem[:4]} {i}" for i in range(n)]
        pq.write_table(pa.table({"uid": uid, "url": [f"http://y/{u}" for u in uid], "text": text,
                                 "clip_l14_similarity_score": np.zeros(n)}), root / f"{stem}.parquet")
        for k in ("l14_img", "l14_txt", "b32_img", "b32_txt"):
            out[k].append(arrs[k])
        out["uid"] += uid
        out["text"] += text
    return {k: np.concatenate(v) if k.endswith(("_img", "_txt")) else v for k, v in out.items()}


def _same_store(a: Store, b: Store):
    """Arrays equal, dtype included."""
    assert a.dtype == b.dtype and a.meta["mode"] == b.meta["mode"]
    for x, y in ((a.images(), b.images()), (a.texts(), b.texts()), (a.labels(), b.labels())):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    assert list(a.ids()) == list(b.ids()) and list(a.text_names()) == list(b.text_names())


def test_import_clip_retrieval_equals_the_arrays(tmp_path, rng):
    x, t, ids, caps = clip_retrieval_dir(tmp_path / "cr", rng)
    out = tmp_path / "s.zarr"
    r = invoke("import", "--from", "clip-retrieval", tmp_path / "cr", "--model", "ViT-B-32", "--chunk-rows", "16",
               "--out", out)
    assert r.exit_code == 0, r.output
    assert "from 3 clip-retrieval partitions" in r.output
    s = Store(str(out))
    assert s.paired and s.dtype == np.float16 and s.meta["model"] == "ViT-B-32"
    assert s.images().tobytes() == x.tobytes() and s.texts().tobytes() == t.tobytes()
    assert list(s.ids()) == ids and list(s.text_names()) == caps
    assert s.meta["normalized"] is True
    src = s.info()["source"]
    assert src["format"] == "clip-retrieval" and src["partitions"] == 3 and src["rows"] == len(x)
    r = invoke("info", out, "--quick")
    assert "clip-retrieval: partitions 3, rows 153" in r.output, r.output
    # --id-column picks another metadata column; float32 on request
    import_dump(str(tmp_path / "u.zarr"), "clip-retrieval", tmp_path / "cr", id_column="url", dtype="float32")
    u = Store(str(tmp_path / "u.zarr"))
    assert list(u.ids())[:2] == [f"http://x/{v}.jpg" for v in ids[:2]] and u.dtype == np.float32
    np.testing.assert_array_equal(u.images(), x.astype(np.float32))


def test_partitions_are_taken_in_number_order_whatever_the_padding(tmp_path, rng):
    # 11 partitions: numbered 00..10 by clip-retrieval; a name sort would put 10 before 2 without padding
    x, _, ids, _ = clip_retrieval_dir(tmp_path / "cr", rng, sizes=[3] * 11, d=8, width=1)
    import_dump(str(tmp_path / "s.zarr"), "clip-retrieval", tmp_path / "cr")
    s = Store(str(tmp_path / "s.zarr"))
    assert list(s.ids()) == ids and s.images().tobytes() == x.tobytes()


def test_import_datacomp_features_and_models(tmp_path, rng):
    want = datacomp_dir(tmp_path / "dc", rng)
    out = tmp_path / "l14.zarr"
    r = invoke("import", "--from", "datacomp", tmp_path / "dc", "--out", out)
    assert r.exit_code == 0, r.output
    s = Store(str(out))
    assert s.images().tobytes() == want["l14_img"].tobytes() and s.texts().tobytes() == want["l14_txt"].tobytes()
    assert list(s.ids()) == want["uid"] and list(s.text_names()) == want["text"]
    assert (s.meta["model"], s.meta["pretrained"]) == ("ViT-L-14", "openai")
    assert s.meta["source"]["features"] == "l14" and s.meta["source"]["shards"] == 3
    import_dump(str(tmp_path / "b32.zarr"), "datacomp", tmp_path / "dc", features="b32", model="mine")
    b = Store(str(tmp_path / "b32.zarr"))
    assert b.dim == 16 and b.images().tobytes() == want["b32_img"].tobytes() and b.meta["model"] == "mine"
    with pytest.raises(EmbedxError, match=r"no array 'h14_img' \(has: b32_img, b32_txt, l14_img, l14_txt, dedup\)"):
        import_dump(str(tmp_path / "h.zarr"), "datacomp", tmp_path / "dc", features="h14")
    assert not os.path.exists(tmp_path / "h.zarr")


def test_datacomp_uncompressed_npz_and_metadata_subfolder(tmp_path, rng):
    want = datacomp_dir(tmp_path / "data" / "metadata", rng, sizes=(9, 4), compressed=False)
    import_dump(str(tmp_path / "s.zarr"), "datacomp", tmp_path / "data")
    assert list(Store(str(tmp_path / "s.zarr")).ids()) == want["uid"]


@pytest.mark.parametrize("fmt", ["clip-retrieval", "npy", "parquet"])
def test_export_import_round_trips_byte_for_byte(tmp_path, rng, fmt):
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(70, 50, 33))
    a = tmp_path / "a.zarr"
    import_dump(str(a), "clip-retrieval", tmp_path / "cr", model="ViT-B-32", chunk_rows=16)
    r = invoke("export", a, "--format", fmt, "--out", tmp_path / "ex", "--partition-rows", "40")
    assert r.exit_code == 0, r.output
    if fmt == "clip-retrieval":
        assert sorted(os.listdir(tmp_path / "ex" / "img_emb")) == [f"img_emb_{k}.npy" for k in range(4)]
        assert np.load(tmp_path / "ex" / "img_emb" / "img_emb_3.npy").shape == (33, 32)
    if fmt == "parquet":  # one table, the embeddings as fixed-size lists
        t = pq.read_table(tmp_path / "ex" / "embeddings.parquet")
        assert t.column_names == ["id", "caption", "image", "text"] and t.schema.field("image").type.list_size == 32
    r = invoke("import", "--from", fmt, tmp_path / "ex", "--out", tmp_path / "b.zarr")
    assert r.exit_code == 0, r.output
    b = Store(str(tmp_path / "b.zarr"))
    _same_store(Store(str(a)), b)
    assert b.meta["model"] == "ViT-B-32"


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_class_store_round_trips(tmp_path, rng, fmt):
    x, t = rng.standard_normal((90, 12)).astype(np.float32), rng.standard_normal((5, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "y.npy", rng.integers(-1, 5, 90))
    (tmp_path / "names.txt").write_text("".join(f"class {k}\n" for k in range(5)))
    a = tmp_path / "a.zarr"
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels", tmp_path / "y.npy",
               "--names", tmp_path / "names.txt", "--dtype", "float32", "--out", a, "--chunk-rows", "32")
    assert r.exit_code == 0, r.output
    export_store(str(a), fmt, tmp_path / "ex")
    import_dump(str(tmp_path / "b.zarr"), fmt, tmp_path / "ex")
    _same_store(Store(str(a)), Store(str(tmp_path / "b.zarr")))
    with pytest.raises(EmbedxError, match="needs a paired store"):
        export_store(str(a), "clip-retrieval", tmp_path / "cr")


def _bad(root, rng, what):
    clip_retrieval_dir(root, rng, sizes=(30, 20, 25), d=16)
    if what == "ragged":
        np.save(root / "img_emb" / "img_emb_1.npy", _unit(rng, 20, 15))
        np.save(root / "text_emb" / "text_emb_1.npy", _unit(rng, 20, 15))
    elif what == "count":
        pq.write_table(pa.table({"image_path": ["a"] * 19, "caption": ["b"] * 19}),
                       root / "metadata" / "metadata_1.parquet")
    elif what == "imgtext":
        np.save(root / "text_emb" / "text_emb_2.npy", _unit(rng, 24, 16))
    elif what == "nan":
        x = np.load(root / "img_emb" / "img_emb_2.npy")
        x[7, 3] = np.nan
        np.save(root / "img_emb" / "img_emb_2.npy", x)
    elif what == "zero":
        t = np.load(root / "text_emb" / "text_emb_1.npy")
        t[4] = 0
        np.save(root / "text_emb" / "text_emb_1.npy", t)
    elif what == "lone":
        os.remove(root / "metadata" / "metadata_0.parquet")


BAD = [("ragged", ["ragged dump", "img_emb/img_emb_1.npy has d=15", "img_emb/img_emb_0.npy has d=16"]),
       ("count", ["row count mismatch", "img_emb/img_emb_1.npy has 20 rows", "metadata/metadata_1.parquet has 19"]),
       ("imgtext", ["row count mismatch", "img_emb_2.npy has 25 rows", "text_emb/text_emb_2.npy has 24"]),
       ("nan", ["img_emb/img_emb_2.npy row 7 contains NaN"]),
       ("zero", ["text_emb/text_emb_1.npy row 4 is all zeros"]),
       ("lone", ["metadata/metadata_0.parquet is missing"])]


@pytest.mark.parametrize("what,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_dumps_give_one_line_and_keep_the_old_store(tmp_path, rng, what, fragments):
    out = tmp_path / "s.zarr"
    good = tmp_path / "good"
    clip_retrieval_dir(good, rng, sizes=(5,), d=16)
    import_dump(str(out), "clip-retrieval", good)
    before = Store(str(out)).generation
    _bad(tmp_path / "cr", rng, what)
    rc, _, err = run_embedx("import", "--from", "clip-retrieval", tmp_path / "cr", "--out", out, "--overwrite")
    assert_one_line_error(rc, err, *fragments)
    assert Store(str(out)).generation == before and Store(str(out)).n_images == 5  # never a misaligned store
    assert sorted(p for p in os.listdir(tmp_path) if not p.endswith(".lock")) == ["cr", "good", "s.zarr"]  # no staging


def test_empty_and_missing_folders(tmp_path, rng):
    os.makedirs(tmp_path / "empty")
    for kind in ("clip-retrieval", "datacomp"):
        r = invoke("import", "--from", kind, tmp_path / "empty", "--out", tmp_path / "s.zarr")
        assert r.exit_code == 2 and "is empty" in r.output
    dc = tmp_path / "dc"
    datacomp_dir(dc, rng, sizes=(3, 4))
    os.remove(dc / sorted(os.listdir(dc))[0])  # the first shard's .npz
    with pytest.raises(EmbedxError, match=r"\.npz is missing"):
        import_dump(str(tmp_path / "s.zarr"), "datacomp", dc)
    r = invoke("import", "--from", "datacomp", dc, "--images", "x.npy", "--out", tmp_path / "s.zarr")
    assert r.exit_code == 2 and "drop --images" in r.output


def test_export_refuses_to_write_over_other_files(tmp_path, rng):
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(10,), d=8)
    import_dump(str(tmp_path / "a.zarr"), "clip-retrieval", tmp_path / "cr")
    rc, _, err = run_embedx("export", tmp_path / "a.zarr", "--format", "npy", "--out", tmp_path / "cr")
    assert_one_line_error(rc, err, "not empty", "--overwrite")
    export_store(str(tmp_path / "a.zarr"), "npy", tmp_path / "ex")
    export_store(str(tmp_path / "a.zarr"), "parquet", tmp_path / "ex", overwrite=True)  # an export is replaced
    assert sorted(os.listdir(tmp_path / "ex")) == ["embeddings.parquet", "embedx.json"]
    assert json.load(open(tmp_path / "ex" / "embedx.json"))["format"] == "parquet"


@pytest.mark.parametrize("codec, most", [("none", 16), ("zstd1", 64)])
def test_reads_one_block_at_a_time(tmp_path, rng, monkeypatch, codec, most):
    """Structural bound on memory: the importer never asks a shard for more rows than one chunk (the direct chunk
    path of an uncompressed local store) or one commit block (zarr's path), and reads every row once."""
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(300, 260), d=8)
    monkeypatch.setattr(dumps, "BLOCK_ROWS", 64)
    reads = []
    real = dumps.NpyRows.read_into  # read() reads through it too

    def spy(self, start, stop, out):
        reads.append(stop - start)
        return real(self, start, stop, out)

    monkeypatch.setattr(dumps.NpyRows, "read_into", spy)
    import_dump(str(tmp_path / "s.zarr"), "clip-retrieval", tmp_path / "cr", chunk_rows=16, codec=codec)
    assert max(reads) == most and sum(reads) == 2 * 560
    assert Store(str(tmp_path / "s.zarr")).n_images == 560


@pytest.mark.parametrize("src_dtype, dtype", [("float16", None), ("float32", "float16"), ("float16", "float32")])
def test_direct_chunk_path_equals_zarrs_path(tmp_path, rng, src_dtype, dtype):
    """The direct chunk writer (local uncompressed store) and zarr's path (a compressed store) store the same rows,
    sums equal to a float64 brute force, and checksums that `embedx verify` finds true; chunks straddle shards."""
    x, t, ids, caps = clip_retrieval_dir(tmp_path / "cr", rng, sizes=(37, 21, 50), d=24)
    if src_dtype == "float32":
        for sub in ("img_emb", "text_emb"):
            for f in os.listdir(tmp_path / "cr" / sub):
                np.save(tmp_path / "cr" / sub / f, np.load(tmp_path / "cr" / sub / f).astype(np.float32))
    stores = {}
    for codec in ("none", "zstd1"):
        out = str(tmp_path / f"{codec}.zarr")
        import_dump(out, "clip-retrieval", tmp_path / "cr", chunk_rows=16, codec=codec, dtype=dtype)
        stores[codec] = Store(out)
        assert verify(out)["ok"], verify(out)
    _same_store(stores["none"], stores["zstd1"])
    a = stores["none"]
    assert list(a.ids()) == ids and list(a.text_names()) == caps
    for name, rows in (("images", a.images()), ("texts", a.texts())):
        r = rows.astype(np.float64)
        want = (r / np.linalg.norm(r, axis=1, keepdims=True)).sum(0)
        np.testing.assert_allclose(a.meta["sums"][name], want, rtol=0, atol=1e-5)  # float32 per chunk (chunkwrite)
        np.testing.assert_allclose(stores["zstd1"].meta["sums"][name], want, rtol=1e-12, atol=1e-12)
    assert a.meta["integrity"]["content"] == stores["zstd1"].meta["integrity"]["content"]
    for name in ("images/ids", "images/labels", "texts/names"):  # same codecs in both stores: same chunk files
        assert a.meta["integrity"]["arrays"][name] == stores["zstd1"].meta["integrity"]["arrays"][name], name


@pytest.mark.parametrize("src_dtype", ["float16", "float32"])
def test_direct_path_names_a_bad_row_in_a_chunk_across_shards(tmp_path, rng, src_dtype):
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(37, 21, 50), d=24)
    t = np.load(tmp_path / "cr" / "text_emb" / "text_emb_1.npy").astype(src_dtype)
    t[2, 5] = np.inf  # global row 39: chunk 2 (rows 32..47) holds rows of partitions 0 and 1
    np.save(tmp_path / "cr" / "text_emb" / "text_emb_1.npy", t)
    for sub in ("img_emb", "text_emb"):  # every shard in the dump's dtype, stored as it is
        for f in os.listdir(tmp_path / "cr" / sub):
            np.save(tmp_path / "cr" / sub / f, np.load(tmp_path / "cr" / sub / f).astype(src_dtype))
    with pytest.raises(EmbedxError, match=r"text_emb/text_emb_1.npy row 2 contains NaN or inf"):
        import_dump(str(tmp_path / "s.zarr"), "clip-retrieval", tmp_path / "cr", chunk_rows=16)
    assert not os.path.exists(tmp_path / "s.zarr")
