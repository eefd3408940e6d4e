"""``parquet:`` (issue 14): real Parquet files written with pyarrow (image bytes, Hugging Face's ``{bytes, path}``
struct, or paths) embed into the same store as the same images from a folder or a CSV, read one row group at a
time; null rows are listed, bad columns and class files are one-line errors."""
import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedx.embedding.options import SourceOptions
from embedx.embedding.serial import embed_to_store
from embedx.errors import EmbedxError
from embedx.sources.catalog import parse_source
from embedx.store import Store, read_meta
from tests.conftest import assert_one_line_error, invoke
from tests.test_sources_wds import KW, _png, assert_same_rows


def _images(tmp_path, rng, n=9):
    os.makedirs(tmp_path / "imgs")
    rows = []
    for k in range(n):
        data = _png(rng, 16 + k % 4)
        (tmp_path / "imgs" / f"{k}.png").write_bytes(data)
        rows.append((f"imgs/{k}.png", data, f"caption {k}", ("cat", "dog")[k % 2]))
    return rows


def test_parquet_layouts_equal_the_csv_store(tmp_path, rng):
    rows = _images(tmp_path, rng)
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([(p, c) for p, _, c, _ in rows])
    ref = str(tmp_path / "csv.zarr")
    embed_to_store(ref, f"csv:{tmp_path / 'caps.csv'}", **KW)
    caps = [c for _, _, c, _ in rows]
    tables = {
        "binary": pa.table({"jpg": pa.array([d for _, d, _, _ in rows], pa.binary()), "text": caps}),
        "struct": pa.table({"image": [{"bytes": d, "path": p} for p, d, _, _ in rows], "caption": caps}),
        "paths": pa.table({"filepath": [p for p, _, _, _ in rows], "TEXT": caps}),
    }
    for name, table in tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=4)  # 4 + 4 + 1: row groups change
        out = str(tmp_path / f"{name}.zarr")
        embed_to_store(out, f"parquet:{tmp_path / f'{name}.parquet'}", **KW)
        s = Store(out)
        assert_same_rows(Store(ref), s, ids_a=s.ids())
        if name != "binary":  # paths (and the struct's path field) are the ids, as csv: writes them
            np.testing.assert_array_equal(Store(ref).ids(), s.ids())
        else:
            assert list(s.ids())[:2] == ["binary.parquet:0", "binary.parquet:1"]
    src = read_meta(str(tmp_path / "struct.zarr"))["source"]
    assert src == {"format": "parquet", "files": 1, "rows": 9, "usable": 9, "left_out": 0, "image_column": "image",
                   "image_kind": "struct", "caption_column": "caption"}
    r = invoke("info", str(tmp_path / "struct.zarr"), "--quick")
    assert r.exit_code == 0 and "parquet: files 1, rows 9" in r.stdout
    # two files (a folder of them): rows in file order
    os.makedirs(tmp_path / "many")
    t = tables["binary"]
    pq.write_table(t.slice(0, 5), tmp_path / "many" / "part-0.parquet", row_group_size=2)
    pq.write_table(t.slice(5), tmp_path / "many" / "part-1.parquet", row_group_size=2)
    src = parse_source(f"parquet:{tmp_path / 'many'}")
    assert src.captions == caps and src.ids[5] == "part-1.parquet:0"
    assert all(np.array_equal(np.asarray(src.load(i)), np.asarray(parse_source(
        f"csv:{tmp_path / 'caps.csv'}").load(i))) for i in (0, 4, 5, 8))


def test_parquet_class_stores(tmp_path, rng):
    rows = _images(tmp_path, rng, 6)
    os.makedirs(tmp_path / "folder" / "cat")
    os.makedirs(tmp_path / "folder" / "dog")
    for k, (p, d, _, c) in enumerate(rows):
        (tmp_path / "folder" / c / f"{k}.png").write_bytes(d)
    ref = str(tmp_path / "folder.zarr")
    embed_to_store(ref, f"folder:{tmp_path / 'folder'}", **KW)
    order = [0, 2, 4, 1, 3, 5]  # the folder's order: cat/0,2,4 then dog/1,3,5
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    hf_meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"names": ["cat", "dog"],
                                                                            "_type": "ClassLabel"}}}}).encode()}
    tables = {
        "names": (pa.table({"image": [rows[k][1] for k in order], "label": [rows[k][3] for k in order]}), {}),
        "ints": (pa.table({"image": [rows[k][1] for k in order], "y": [k % 2 for k in order]}),
                 {"classes": str(tmp_path / "names.txt"), "label_col": "y"}),
        "hf": (pa.table({"image": [{"bytes": rows[k][1], "path": None} for k in order],
                         "label": [k % 2 for k in order]}).replace_schema_metadata(hf_meta), {}),
    }
    for name, (table, opts) in tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=2)
        out = str(tmp_path / f"{name}.zarr")
        embed_to_store(out, f"parquet:{tmp_path / f'{name}.parquet'}", source=SourceOptions(**opts), **KW)
        s = Store(out)
        assert_same_rows(Store(ref), s, ids_a=s.ids())


def test_parquet_null_rows_are_listed_and_bad_bytes_skipped(tmp_path, rng):
    rows = _images(tmp_path, rng, 6)
    images = [{"bytes": d, "path": None} for _, d, _, _ in rows]
    images[1] = {"bytes": b"garbage", "path": None}       # undecodable: skipped by the embed
    images[3] = {"bytes": None, "path": "imgs/3.png"}     # null bytes: read from the path (beside the file)
    caps = [c for _, _, c, _ in rows]
    caps[4] = None                                        # no caption: left out when listing
    pq.write_table(pa.table({"image": images, "caption": caps}), tmp_path / "t.parquet", row_group_size=2)
    out = str(tmp_path / "s.zarr")
    res = embed_to_store(out, f"parquet:{tmp_path / 't.parquet'}", **KW)
    skipped = {e["id"]: e["error"] for e in res.meta["skipped"]}
    assert set(skipped) == {"t.parquet:1", "t.parquet:4"}
    assert "cannot identify image" in skipped["t.parquet:1"] and "no caption" in skipped["t.parquet:4"]
    s = Store(out)
    assert list(s.ids()) == ["t.parquet:0", "t.parquet:2", "imgs/3.png", "t.parquet:5"]
    assert [str(t) for t in s.text_names()] == ["caption 0", "caption 2", "caption 3", "caption 5"]


def test_parquet_bad_inputs_are_one_line_errors(tmp_path, rng):
    rows = _images(tmp_path, rng, 4)
    pq.write_table(pa.table({"picture": [d for _, d, _, _ in rows], "caption": ["a"] * 4}), tmp_path / "noimg.parquet")
    pq.write_table(pa.table({"image": [d for _, d, _, _ in rows], "y": [0, 1, 0, 1]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"image": [1, 2, 3, 4], "caption": ["a"] * 4}), tmp_path / "badtype.parquet")
    pq.write_table(pa.table({"image": ["nope/1.png"] * 4, "caption": ["a"] * 4}), tmp_path / "nofiles.parquet")
    pq.write_table(pa.table({"image": [d for _, d, _, _ in rows], "caption": [1, 2, 3, 4]}),
                   tmp_path / "intcap.parquet")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    base = ["embed", "-m", "embedx-tiny", "--workers", "0", "--out"]
    cases = [
        (["--data", f"parquet:{tmp_path / 'noimg.parquet'}"], "no image column", "--image-col"),
        (["--data", f"parquet:{tmp_path / 'noimg.parquet'}", "--image-col", "jpg"], "no column 'jpg'"),
        (["--data", f"parquet:{tmp_path / 'ints.parquet'}", "--label-col", "y"], "pass --classes"),
        (["--data", f"parquet:{tmp_path / 'ints.parquet'}", "--label-col", "y", "--classes",
          str(tmp_path / "nope.txt")], "classes file not found"),
        (["--data", f"parquet:{tmp_path / 'ints.parquet'}"], "no caption column"),
        (["--data", f"parquet:{tmp_path / 'badtype.parquet'}"], "has type int64"),
        (["--data", f"parquet:{tmp_path / 'nofiles.parquet'}"], "none of its 4 image paths"),
        (["--data", f"parquet:{tmp_path / 'intcap.parquet'}"], "not text"),
        (["--data", f"parquet:{tmp_path / 'fake.parquet'}"], "not a readable parquet file"),
        (["--data", f"parquet:{tmp_path / 'missing.parquet'}"], "parquet file not found"),
    ]
    for extra, *frags in cases:
        out = tmp_path / "s.zarr"
        r = invoke(*base, out, *extra)
        assert_one_line_error(r.exit_code, r.stderr, *frags)
        assert not out.exists()
    pq.write_table(pa.table({"image": [d for _, d, _, _ in rows], "y": [0, 1, 7, 1]}), tmp_path / "big.parquet")
    with pytest.raises(EmbedxError, match="label 7 is out of range for the 2 classes"):
        parse_source(f"parquet:{tmp_path / 'big.parquet'}", label_col="y", classes=str(tmp_path / "names.txt"))
