"""`embedx import`, `embedx info` and `embedx demo`: arrays in, validated stores out."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedx.data import MODALITY_GAP_DIR
from embedx.store import Store
from tests.conftest import SHARED_DATA, assert_one_line_error, invoke, run_embedx


def _arrays(tmp_path, rng, n=300, c=7, d=24):
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "names.txt").write_text("\n".join(f"class {k}" for k in range(c)) + "\n")
    return x, t, y


def test_import_classes_npy(tmp_path, rng):
    x, t, y = _arrays(tmp_path, rng)
    out = tmp_path / "s.zarr"
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels",
               tmp_path / "y.npy", "--names", tmp_path / "names.txt", "--dtype", "float32", "--chunk-rows", "64",
               "--out", out)
    assert r.exit_code == 0, r.stderr
    s = Store(str(out))
    np.testing.assert_array_equal(s.images(), x)
    np.testing.assert_array_equal(s.texts(), t)
    np.testing.assert_array_equal(s.labels(), y)
    assert list(s.text_names()) == [f"class {k}" for k in range(7)] and s.chunk_rows == 64
    assert s.meta["normalized"] is False and not s.paired
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # no temporary left behind


def test_import_npz_and_parquet(tmp_path, rng):
    x, t, y = _arrays(tmp_path, rng, n=50, d=6)
    np.savez(tmp_path / "all.npz", img=x, txt=t, lab=y)
    pq.write_table(pa.table({"emb": pa.array(list(x), type=pa.list_(pa.float32()))}), tmp_path / "x.parquet")
    pq.write_table(pa.table({f"f{k}": t[:, k] for k in range(6)}), tmp_path / "t.parquet")
    r = invoke("import", "--images", f"{tmp_path}/x.parquet", "--texts", f"{tmp_path}/t.parquet",
               "--labels", f"{tmp_path}/all.npz:lab", "--dtype", "float32", "--out", tmp_path / "a.zarr")
    assert r.exit_code == 0, r.stderr
    s = Store(str(tmp_path / "a.zarr"))
    np.testing.assert_array_equal(s.images(), x)
    np.testing.assert_array_equal(s.texts(), t)
    r = invoke("import", "--images", f"{tmp_path}/all.npz:img", "--texts", f"{tmp_path}/all.npz:txt",
               "--labels", f"{tmp_path}/all.npz:lab", "--out", tmp_path / "b.zarr")
    assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(Store(str(tmp_path / "b.zarr")).images(), x.astype(np.float16))


def test_import_paired_array_of_the_real_clip_embeddings(tmp_path):
    src = os.path.join(SHARED_DATA, "features_clip.npy")
    if not os.path.exists(src):  # the package ships the same file with its attribution
        src = os.path.join(MODALITY_GAP_DIR, "features_clip.npy")
    a = np.load(src)
    r = invoke("import", "--paired-array", src, "--out", tmp_path / "coco.zarr", "--model", "CLIP ViT-B/16")
    assert r.exit_code == 0, r.stderr
    s = Store(str(tmp_path / "coco.zarr"))
    assert s.paired and (s.n_images, s.n_texts, s.dim) == (500, 500, 512)
    np.testing.assert_array_equal(s.images(), a[0].astype(np.float16))
    np.testing.assert_array_equal(s.texts(), a[1].astype(np.float16))
    np.testing.assert_array_equal(s.labels(), np.arange(500))
    assert s.meta["normalized"] is True and s.meta["model"] == "CLIP ViT-B/16"


def test_import_paired_separate_arrays(tmp_path, rng):
    x = rng.standard_normal((40, 5))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "c.npy", x[::-1].copy())
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "c.npy", "--paired",
               "--out", tmp_path / "p.zarr")
    assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(Store(str(tmp_path / "p.zarr")).texts(), x[::-1].astype(np.float16))


def _bad(tmp_path, rng, kind):
    x, t, y = _arrays(tmp_path, rng, n=100, c=5, d=8)
    base = ["import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels", tmp_path / "y.npy"]
    if kind == "nan":
        x[37, 3] = np.nan
        np.save(tmp_path / "x.npy", x)
        return base, ["row 37", "nan"]
    if kind == "inf":
        t[2, 0] = -np.inf
        np.save(tmp_path / "t.npy", t)
        return base, ["texts row 2", "inf"]
    if kind == "zero":
        x[5] = 0
        np.save(tmp_path / "x.npy", x)
        return base, ["row 5", "zeros"]
    if kind == "dim":
        np.save(tmp_path / "t.npy", t[:, :7])
        return base, ["dimension mismatch", "d=8", "d=7"]
    if kind == "labels":
        y[11] = 5
        np.save(tmp_path / "y.npy", y)
        return base, ["labels out of range", "row 11"]
    if kind == "fp16":
        x[0, 0] = 1e6
        np.save(tmp_path / "x.npy", x)
        return base, ["float16 range", "--dtype float32"]
    if kind == "missing":
        return ["import", "--images", tmp_path / "nope.npy", "--texts", tmp_path / "t.npy", "--paired"], ["not found"]
    if kind == "names":
        (tmp_path / "names.txt").write_text("a\nb\n")
        return base + ["--names", tmp_path / "names.txt"], ["2 names", "5"]
    if kind == "paired-count":
        return ["import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--paired"], ["as many"]
    if kind == "paired-shape":
        return ["import", "--paired-array", tmp_path / "x.npy"], ["(2, N, d)"]
    if kind in ("ragged-list", "null-row", "null-value"):  # 100 x 8 values in all: a reshape would "work"
        rows = [list(map(float, r)) for r in x]
        if kind == "ragged-list":
            rows[3], rows[4] = rows[3] + [1.0], rows[4][:-1]
        elif kind == "null-row":
            rows[6] = None
        else:
            rows[9][2] = None
        pq.write_table(pa.table({"emb": pa.array(rows, type=pa.list_(pa.float32()))}), tmp_path / "x.parquet")
        base[2] = f"{tmp_path}/x.parquet"
        return base, {"ragged-list": ["ragged", "row 3"], "null-row": ["row 6", "null"],
                      "null-value": ["null values"]}[kind]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["nan", "inf", "zero", "dim", "labels", "fp16", "missing", "names", "paired-count",
                                  "paired-shape", "ragged-list", "null-row", "null-value"])
def test_bad_import_input_is_one_line_and_writes_nothing(tmp_path, rng, kind):
    args, fragments = _bad(tmp_path, rng, kind)
    r = invoke(*args, "--out", tmp_path / "s.zarr")
    assert_one_line_error(r.exit_code, r.stderr, *fragments)
    assert not os.path.exists(tmp_path / "s.zarr")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_bad_input_through_the_console_script_has_no_traceback(tmp_path, rng):
    args, fragments = _bad(tmp_path, rng, "nan")
    rc, _, err = run_embedx(*args, "--out", tmp_path / "s.zarr")
    assert rc == 2
    assert_one_line_error(rc, err, *fragments)


def test_fixed_size_lists_import_and_chunk_rows_are_capped(tmp_path, rng):
    x, t, y = _arrays(tmp_path, rng, n=30, d=8)
    pq.write_table(pa.table({"emb": pa.array(list(x), type=pa.list_(pa.float32(), 8))}), tmp_path / "x.parquet")
    r = invoke("import", "--images", f"{tmp_path}/x.parquet", "--texts", tmp_path / "t.npy", "--labels",
               tmp_path / "y.npy", "--dtype", "float32", "--chunk-rows", 4_000_000, "--out", tmp_path / "a.zarr")
    assert r.exit_code == 0, r.stderr
    s = Store(str(tmp_path / "a.zarr"))
    np.testing.assert_array_equal(s.images(), x)
    assert s.chunk_rows == 30  # capped at the row count: no 4,000,000-row chunk on disk
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--chunk-rows", 0,
               "--out", tmp_path / "b.zarr")
    assert r.exit_code == 2 and "--chunk-rows" in r.stderr and not (tmp_path / "b.zarr").exists()
    from embedx.errors import EmbedxError
    from embedx.formats.arrays import import_arrays

    with pytest.raises(EmbedxError, match="chunk_rows must be at least 1"):
        import_arrays(str(tmp_path / "c.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                      labels=str(tmp_path / "y.npy"), chunk_rows=-5)
    assert not (tmp_path / "c.zarr").exists()


def test_existing_store_is_kept_unless_overwrite(tmp_path, rng):
    x, t, y = _arrays(tmp_path, rng, n=30, d=4)
    args = ["import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels", tmp_path / "y.npy",
            "--out", tmp_path / "s.zarr"]
    assert invoke(*args).exit_code == 0
    np.save(tmp_path / "x.npy", -x)
    r = invoke(*args)
    assert_one_line_error(r.exit_code, r.stderr, "already holds a complete store", "--overwrite")
    np.testing.assert_array_equal(Store(str(tmp_path / "s.zarr")).images(), x.astype(np.float16))
    assert invoke(*args, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(Store(str(tmp_path / "s.zarr")).images(), (-x).astype(np.float16))
    # a failing --overwrite keeps the old store intact
    x2 = -x
    x2[3] = np.nan
    np.save(tmp_path / "x.npy", x2)
    assert invoke(*args, "--overwrite").exit_code == 2
    np.testing.assert_array_equal(Store(str(tmp_path / "s.zarr")).images(), (-x).astype(np.float16))


def test_info_human_and_json(tmp_path, rng):
    _arrays(tmp_path, rng, n=77, c=3, d=16)
    invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels", tmp_path / "y.npy",
           "--out", tmp_path / "s.zarr", "--chunk-rows", "10")
    r = invoke("info", tmp_path / "s.zarr", "--json")
    d = json.loads(r.stdout)
    assert (d["n_images"], d["n_texts"], d["dim"], d["dtype"], d["rows_committed"], d["complete"]) == \
        (77, 3, 16, "float16", 77, True)
    assert d["chunk_rows"] == 10 and d["size_bytes"] > 77 * 16 * 2
    r = invoke("info", tmp_path / "s.zarr")
    assert r.exit_code == 0 and "complete" in r.stdout and "10 rows" in r.stdout


def test_demo_runs_offline_on_the_shipped_embeddings(tmp_path):
    r = invoke("demo", "--out", tmp_path / "demo", "--json")
    assert r.exit_code == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    clip = np.load(os.path.join(MODALITY_GAP_DIR, "features_clip.npy")).astype(np.float16).astype(np.float64)
    x, t = clip[0], clip[1]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    m = rows["clip"]["measures"]
    assert m["acs"] == pytest.approx(float((x * t).sum(1).mean()), abs=1e-6)
    assert m["gap"] == pytest.approx(float(np.linalg.norm(x.mean(0) - t.mean(0))), abs=1e-6)
    assert m["gap"] == pytest.approx(0.85, abs=0.02)  # the dataset's documented gap
    assert m["i2t_recall@1"] == pytest.approx(0.55, abs=0.02) and rows["random"]["measures"]["i2t_recall@1"] < 0.02
    assert set(m) >= {"silhouette_euclidean", "silhouette_cosine", "iimm", "text_intra", "t2i_recall@10"}
    assert os.path.exists(os.path.join(MODALITY_GAP_DIR, "LICENSE"))
    r = invoke("demo", "--out", tmp_path / "demo")  # human table; rerunning replaces the demo stores
    assert r.exit_code == 0 and "silhouette_cosine" in r.stdout and "i2t_recall@1" in r.stdout


def test_import_never_replaces_a_folder_that_is_not_a_store(tmp_path, rng):
    _arrays(tmp_path, rng, n=10, d=4)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels",
               tmp_path / "y.npy", "--out", tmp_path / "keep", "--overwrite")
    assert_one_line_error(r.exit_code, r.stderr, "not an embedx store")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_cli_codec_choices_are_the_stores():
    from embedx.cli.options import CODECS
    from embedx.store import CODECS as STORE_CODECS

    assert CODECS == list(STORE_CODECS)


def test_import_ids_from_the_cli_coco_style(tmp_path, rng):
    """`--ids FILE` (one id per caption): captions that share an id are one image's; --images one row per
    distinct id, in order of first appearance. Recall against float64 brute force with every caption of the
    image a positive."""
    m, per, d = 12, 5, 16
    images = rng.standard_normal((m, d)).astype(np.float32)
    item = rng.permutation(np.repeat(np.arange(m), per))  # caption j shows image item[j]
    texts = (images[item] + 0.8 * rng.standard_normal((m * per, d))).astype(np.float32)
    _, first = np.unique(item, return_index=True)
    order = item[np.sort(first)]
    np.save(tmp_path / "x.npy", images[order])
    np.save(tmp_path / "t.npy", texts)
    ids = [f"img {v}" for v in item]  # spaces are part of an id
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "coco.zarr"
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--paired", "--ids",
               tmp_path / "ids.txt", "--dtype", "float32", "--out", out)
    assert r.exit_code == 0, r.stderr
    s = Store(str(out))
    assert list(s.ids()) == ids
    np.testing.assert_array_equal(s.images(), images[item])
    r = invoke("measure", out, "--metrics", "i2t_recall@1", "--json")
    assert r.exit_code == 0, r.stderr
    xn = images / np.linalg.norm(images, axis=1, keepdims=True)
    tn = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sim = xn.astype(np.float64) @ tn.astype(np.float64).T
    want = np.mean([sim[u].argmax() in np.flatnonzero(item == u) for u in range(m)])
    assert json.loads(r.stdout)["i2t_recall@1"] == pytest.approx(want, abs=1e-12)

    (tmp_path / "short.txt").write_text("\n".join(ids[:-1]) + "\n")
    bad = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--paired", "--ids",
                 tmp_path / "short.txt", "--out", tmp_path / "bad.zarr")
    assert_one_line_error(bad, "one id per row")
    assert not (tmp_path / "bad.zarr").exists()
    from embedx.texts import MAX_TEXT_CHARS

    (tmp_path / "long.txt").write_text("\n".join(["x" * (MAX_TEXT_CHARS + 5)] + ids[1:]) + "\n")
    bad = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--paired", "--ids",
                 tmp_path / "long.txt", "--out", tmp_path / "bad.zarr")
    assert_one_line_error(bad, "longer than")  # a cut id could equal another: refused
    assert not (tmp_path / "bad.zarr").exists()
