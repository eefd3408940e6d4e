"""Our interop files read by the real clients users run on them, not by our own readers:

* CLIP_benchmark's ``build`` (``clip_benchmark.cli``, the PyPI package) turns every ``measure --format
  clip-benchmark`` file into its CSV: ``model`` and ``pretrained`` are strings whatever the store recorded;
* a clip-retrieval dump (the columns LAION dumps carry: url, similarity, NSFW, width/height, key, nulls included)
  imported then exported comes back with every metadata column, byte for byte; a partition without files (what
  clip-retrieval's writer leaves for an empty one) is taken, with a warning;
* ``embedding-reader`` reads the export with its metadata, rows unit length in float32; ``autofaiss`` builds a
  Flat inner-product index on it whose recall@k equals ``embedx measure``'s, on both paths (``--knn faiss`` and
  the exact blocked counts; the rows are continuous, so no ties);
* the ``ties`` field names the tie order of the path that ran.

autofaiss is installed by the Makefile with --no-deps (it declares numpy<2; see the Makefile); it runs here on
numpy 2 with ``save_on_disk=False`` (its metrics file dump fails on numpy 2: a float32 is not JSON-serializable).
"""
import csv
import hashlib
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedx.formats.clip_benchmark import names as cb_names
from embedx.store import Store
from tests.conftest import invoke


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def laion_dump(root, rng, sizes=(40, 0, 35, 22), d=32, id_column="image_path"):
    """A clip-retrieval inference output of float16 rows with LAION's metadata columns; a size of 0 writes no
    files for that partition, as clip-retrieval's OutputSink does. Texts are their image plus noise, so recall
    is neither 0 nor 1. Returns the metadata tables of the partitions written."""
    width = int(np.log10(len(sizes))) + 1
    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(root / sub, exist_ok=True)
    tables = []
    for k, n in enumerate(sizes):
        if n == 0:
            continue
        tag = str(k).zfill(width)
        x = _unit(rng.standard_normal((n, d)))
        t = _unit(x + 0.9 * rng.standard_normal((n, d)) / np.sqrt(d) * 3)
        np.save(root / "img_emb" / f"img_emb_{tag}.npy", x.astype(np.float16))
        np.save(root / "text_emb" / f"text_emb_{tag}.npy", t.astype(np.float16))
        key = [f"{k:05d}{i:04d}" for i in range(n)]
        cols = {id_column: key if id_column == "key" else [f"/data/{v}.jpg" for v in key],
                "caption": [None if i == 3 else f"a caption, número {i} \u2603 of {k}" for i in range(n)],
                "url": [f"https://example.com/{v}.jpg" for v in key],
                "key": key,
                "similarity": rng.random(n),
                "NSFW": pa.array([["UNLIKELY", "UNSURE", "NSFW", None][i % 4] for i in range(n)], pa.string()),
                "LICENSE": [None] * n,
                "width": pa.array(rng.integers(64, 1024, n), pa.int64()),
                "height": pa.array(rng.integers(64, 1024, n), pa.int32()),
                "punsafe": pa.array(rng.random(n).astype(np.float32)),
                "status": ["success"] * n}
        table = pa.table(cols)
        pq.write_table(table, root / "metadata" / f"metadata_{tag}.parquet")
        tables.append(table)
    return tables


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _metadata(folder):
    files = sorted(os.listdir(folder / "metadata"))
    return files, [pq.read_table(folder / "metadata" / f) for f in files]


# -- clip-retrieval round trip --------------------------------------------------------------------------------------
def test_clip_retrieval_export_gives_back_every_metadata_column(tmp_path, rng):
    src = tmp_path / "laion"
    tables = laion_dump(src, rng)
    r = invoke("import", "--from", "clip-retrieval", src, "--out", tmp_path / "s.zarr", "--chunk-rows", "16")
    assert r.exit_code == 0, r.output
    # partition 1 has no files: taken, with a warning naming it and why
    assert "warning: partition 1 of" in r.stderr and "taken as empty" in r.stderr, r.stderr
    s = Store(str(tmp_path / "s.zarr"))
    assert s.n_images == 97 and s.meta["source"]["empty_partitions"] == [1]
    assert list(s.ids()[:2]) == ["/data/000000000.jpg", "/data/000000001.jpg"]

    # default: the dump's own partitions and names; the metadata files are the imported files, byte for byte
    r = invoke("export", tmp_path / "s.zarr", "--format", "clip-retrieval", "--out", tmp_path / "ex")
    assert r.exit_code == 0, r.output
    names, got = _metadata(tmp_path / "ex")
    assert names == ["metadata_0.parquet", "metadata_2.parquet", "metadata_3.parquet"]
    for name in names:
        assert _sha(tmp_path / "ex" / "metadata" / name) == _sha(src / "metadata" / name)
    assert sorted(os.listdir(tmp_path / "ex" / "img_emb")) == ["img_emb_0.npy", "img_emb_2.npy", "img_emb_3.npy"]
    for want, have in zip(tables, got):
        assert have.equals(want, check_metadata=True) and have.schema == want.schema

    # other partition sizes: the same rows, every column, types and nulls included
    r = invoke("export", tmp_path / "s.zarr", "--format", "clip-retrieval", "--out", tmp_path / "ex7",
               "--partition-rows", "7")
    assert r.exit_code == 0, r.output
    names, got = _metadata(tmp_path / "ex7")
    assert len(names) == 14 and names[0] == "metadata_00.parquet"
    assert pa.concat_tables(got).equals(pa.concat_tables(tables))

    # and back: export -> import -> export keeps them (and the stored float16 rows, bit for bit)
    r = invoke("import", "--from", "clip-retrieval", tmp_path / "ex7", "--out", tmp_path / "b.zarr")
    assert r.exit_code == 0, r.output
    b = Store(str(tmp_path / "b.zarr"))
    assert b.dtype == np.float16 and b.images().tobytes() == s.images().tobytes()
    assert b.texts().tobytes() == s.texts().tobytes()
    r = invoke("export", tmp_path / "b.zarr", "--format", "clip-retrieval", "--out", tmp_path / "ex2")
    assert r.exit_code == 0, r.output
    assert pa.concat_tables(_metadata(tmp_path / "ex2")[1]).equals(pa.concat_tables(tables))


def test_key_ids_stay_under_their_own_name(tmp_path, rng):
    tables = laion_dump(tmp_path / "laion", rng, sizes=(12, 9), d=16, id_column="key")
    assert "image_path" not in tables[0].column_names
    assert invoke("import", "--from", "clip-retrieval", tmp_path / "laion", "--out", tmp_path / "s.zarr").exit_code == 0
    assert list(Store(str(tmp_path / "s.zarr")).ids()[:1]) == ["000000000"]
    assert invoke("export", tmp_path / "s.zarr", "--format", "clip-retrieval", "--out", tmp_path / "ex",
                  "--partition-rows", "5").exit_code == 0
    got = pa.concat_tables(_metadata(tmp_path / "ex")[1])
    assert got.column_names == tables[0].column_names and got.equals(pa.concat_tables(tables))


def test_a_changed_kept_table_is_refused(tmp_path, rng):
    laion_dump(tmp_path / "laion", rng, sizes=(12,), d=16)
    assert invoke("import", "--from", "clip-retrieval", tmp_path / "laion", "--out", tmp_path / "s.zarr").exit_code == 0
    kept = tmp_path / "s.zarr" / "source_metadata" / "metadata_0.parquet"
    pq.write_table(pq.read_table(kept).slice(0, 12), kept, compression="gzip")
    r = invoke("export", tmp_path / "s.zarr", "--format", "clip-retrieval", "--out", tmp_path / "ex")
    assert r.exit_code == 2 and "changed" in r.stderr and "re-import" in r.stderr, r.output


# -- embedding-reader and autofaiss --------------------------------------------------------------------------------
def _measure(store, knn):
    r = invoke("measure", store, "--metrics", "i2t_recall@1,i2t_recall@5,i2t_recall@10,t2i_recall@1,t2i_recall@5,"
               "t2i_recall@10", "--knn", knn, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_embedding_reader_and_autofaiss_read_the_export_with_embedx_recall(tmp_path, rng):
    try:
        from autofaiss import build_index
    except ImportError:
        pytest.fail("autofaiss is not installed: `make venv` installs it --no-deps after the lock (see the Makefile)")
    from embedding_reader import EmbeddingReader

    laion_dump(tmp_path / "laion", rng, sizes=(60, 45, 50), d=32)
    store = tmp_path / "s.zarr"
    assert invoke("import", "--from", "clip-retrieval", tmp_path / "laion", "--out", store).exit_code == 0
    ex = tmp_path / "ex"
    assert invoke("export", store, "--format", "clip-retrieval", "--out", ex).exit_code == 0
    s = Store(str(store))

    # embedding-reader: the rows and their metadata, aligned; unit length in float32 (the stored float16 rows
    # are not, to float16 rounding: what moved autofaiss recall before)
    rows = {}
    for side in ("img", "text"):
        reader = EmbeddingReader(str(ex / f"{side}_emb"), file_format="parquet_npy",
                                 metadata_folder=str(ex / "metadata"), meta_columns=["image_path", "url"])
        assert (reader.count, reader.dimension) == (155, 32)
        parts = list(reader(batch_size=64, start=0, end=reader.count, show_progress=False))
        emb = np.concatenate([e for e, _ in parts])
        meta = [m for _, m in parts]
        assert list(np.concatenate([m["image_path"].to_numpy() for m in meta])) == list(s.ids())
        assert emb.dtype == np.float32 and np.abs(np.linalg.norm(emb, axis=1) - 1).max() < 1e-6
        stored = (s.images() if side == "img" else s.texts()).astype(np.float32)
        assert np.abs(np.linalg.norm(stored, axis=1) - 1).max() > 1e-5  # the float16 rows were not
        np.testing.assert_allclose(emb, _unit(stored), atol=1e-6)
        rows[side] = emb

    # autofaiss: a Flat inner-product index of each side, queried by the other; recall@k as embedx defines it
    # (every id is distinct here: row i's positive is row i)
    recall = {}
    for side, queries, gallery in (("i2t", "img", "text"), ("t2i", "text", "img")):
        index, infos = build_index(embeddings=str(ex / f"{gallery}_emb"), file_format="npy", index_key="Flat",
                                   metric_type="ip", save_on_disk=False, nb_cores=1, verbose=40)
        assert index.ntotal == 155 and infos["index_key"] == "Flat"
        _, top = index.search(rows[queries], 10)
        for k in (1, 5, 10):
            recall[f"{side}_recall@{k}"] = float((top[:, :k] == np.arange(155)[:, None]).any(1).mean())
    assert 0 < recall["i2t_recall@1"] < recall["i2t_recall@10"] < 1, recall
    for knn in ("faiss", "blocked"):
        got = _measure(store, knn)
        assert {k: got[k] for k in recall} == recall, knn


# -- the ties field ------------------------------------------------------------------------------------------------
def test_ties_names_the_path_that_ran(tmp_path, rng):
    laion_dump(tmp_path / "laion", rng, sizes=(20,), d=16)
    store = tmp_path / "s.zarr"
    assert invoke("import", "--from", "clip-retrieval", tmp_path / "laion", "--out", store).exit_code == 0
    assert _measure(store, "blocked")["ties"].startswith("lowest index wins")
    faiss_ties = _measure(store, "faiss")["ties"]
    assert faiss_ties.startswith("FAISS's own order") and "not the lower index" in faiss_ties


# -- CLIP_benchmark's build -----------------------------------------------------------------------------------------
def _clip_benchmark_build(files, out):
    """CLIP_benchmark's own CLI (``clip_benchmark build FILES --output CSV``), its parser included."""
    from clip_benchmark.cli import main

    argv = sys.argv
    sys.argv = ["clip_benchmark", "build", *map(str, files), "--output", str(out)]
    try:
        main()
    finally:
        sys.argv = argv
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def test_clip_benchmark_build_reads_every_result_file(tmp_path, rng):
    # a paired store imported with nothing recorded, one with --model/--pretrained, and a class store
    laion_dump(tmp_path / "laion", rng, sizes=(30,), d=16)
    for name, extra in (("bare", ()), ("named", ("--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"))):
        r = invoke("import", "--from", "clip-retrieval", tmp_path / "laion", "--out", tmp_path / f"{name}.zarr",
                   *extra)
        assert r.exit_code == 0, r.output
    x, t = _unit(rng.standard_normal((40, 16))), _unit(rng.standard_normal((6, 16)))
    for a, v in (("x", x), ("t", t), ("y", rng.integers(0, 6, 40))):
        np.save(tmp_path / f"{a}.npy", v)
    (tmp_path / "names.txt").write_text("".join(f"class {k}\n" for k in range(6)))
    r = invoke("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels",
               tmp_path / "y.npy", "--names", tmp_path / "names.txt", "--model", "RN50", "--out",
               tmp_path / "cls.zarr")
    assert r.exit_code == 0, r.output
    files, notes = [], {}
    for name in ("bare", "named", "cls"):
        out = tmp_path / f"{name}.json"
        r = invoke("measure", tmp_path / f"{name}.zarr", "--format", "clip-benchmark", "--out", out)
        assert r.exit_code == 0, r.output
        notes[name] = r.stderr
        files.append(out)
    results = [json.loads(f.read_text()) for f in files]
    assert [(d["model"], d["pretrained"]) for d in results] == [
        ("unknown", "unknown"), ("ViT-B-32", "laion2b_s34b_b79k"), ("RN50", "unknown")]
    assert "records no model or pretrained" in notes["bare"] and "--model NAME --pretrained NAME" in notes["bare"]
    assert "records no pretrained;" in notes["cls"] and notes["named"] == ""

    rows = _clip_benchmark_build(files, tmp_path / "benchmark.csv")
    assert [r["model_fullname"] for r in rows] == ["unknown unknown", "ViT-B-32 laion2b_s34b_b79k", "RN50 unknown"]
    assert [r["task"] for r in rows] == ["zeroshot_retrieval"] * 2 + ["zeroshot_classification"]
    for row, res in zip(rows, results):
        for k, v in res["metrics"].items():
            assert row[k] == ("" if v is None else str(v)), k
    # a directory of results, as CLIP_benchmark's users pass it
    os.makedirs(tmp_path / "all")
    for f in files:
        os.replace(f, tmp_path / "all" / f.name)
    assert len(_clip_benchmark_build([tmp_path / "all"], tmp_path / "b2.csv")) == 3


@pytest.mark.parametrize("meta,want", [
    ({"model": "ViT-B-32", "pretrained": "openai", "written_by": "embed"}, ("ViT-B-32", "openai")),
    ({"model": "embedx-tiny", "pretrained": None, "seed": 0, "written_by": "embed"}, ("embedx-tiny", "none")),
    ({"model": "ViT-B-32", "pretrained": "openai", "checkpoint": {"path": "runs/lora"}}, ("ViT-B-32", "runs/lora")),
    ({"model": None, "pretrained": None, "written_by": "import"}, ("unknown", "unknown")),
])
def test_clip_benchmark_names_are_always_strings(meta, want):
    assert cb_names(meta) == want
