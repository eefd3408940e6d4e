"""Data sources and dump formats as registered kinds (``embedx.engine.kinds``): a bare path is read by the one kind
that recognises it, exactly as its ``KIND:`` spec; options a kind does not take are refused naming the parameter;
``import`` without ``--from`` finds the format; a kind registered in a new module is read, listed and documented
with no other change."""
import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedx.engine import docs, kinds
from embedx.engine.kinds import Option
from embedx.errors import EmbedxError
from embedx.formats import dumps
from embedx.formats.dumps import import_dump
from embedx.formats.export import export_store
from embedx.sources.base import Source
from embedx.sources.catalog import parse_source, source_kind
from embedx.store import Store
from tests.conftest import invoke
from tests.test_dumps import _same_store, clip_retrieval_dir, datacomp_dir
from tests.test_sources_wds import _png, class_dataset


def _same_source(a: Source, b: Source):
    assert (a.spec, a.ids, a.classnames, a.captions) == (b.spec, b.ids, b.classnames, b.captions)
    assert (a.labels is None and b.labels is None) or np.array_equal(a.labels, b.labels)
    assert a.fingerprint() == b.fingerprint()  # a resume with either spelling is the same dataset
    assert np.array_equal(np.asarray(a.load(0)), np.asarray(b.load(0)))


def test_a_bare_path_reads_as_the_kind_that_recognises_it(tmp_path, rng):
    folder, pattern, names = class_dataset(tmp_path, rng)
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), ("imgs/cat/0.png", "a cat"), ("imgs/dog/1.png", "a dog")])
    pq.write_table(pa.table({"jpg": pa.array([_png(rng) for _ in range(3)], pa.binary()), "text": ["a", "b", "c"]}),
                   tmp_path / "t.parquet")
    os.makedirs(tmp_path / "pq")
    pq.write_table(pa.table({"jpg": pa.array([_png(rng)], pa.binary()), "text": ["d"]}), tmp_path / "pq" / "a.parquet")
    for bare, kind, opts in [(str(folder), "folder", {}), (str(tmp_path / "caps.csv"), "csv", {}),
                             (pattern, "wds", {"classes": names}),
                             (str(tmp_path / "shards"), "wds", {"classes": names}),
                             (str(tmp_path / "t.parquet"), "parquet", {}), (str(tmp_path / "pq"), "parquet", {})]:
        assert source_kind(bare)[0].name == kind, bare
        got = parse_source(bare, **opts)
        assert got.spec == f"{kind}:{bare}"  # what the store records: the same as the spelled-out spec
        _same_source(got, parse_source(f"{kind}:{bare}", **opts))
    # URLs are recognised by their pattern alone (nothing is listed to decide)
    assert source_kind("s3://bucket/laion/{000000..000009}.tar")[0].name == "wds"
    assert source_kind("hf://datasets/x/train-*.parquet")[0].name == "parquet"


def test_paths_no_kind_or_several_kinds_read_are_one_line(tmp_path, rng):
    folder, _, _ = class_dataset(tmp_path, rng)
    (folder / "extra.tar").write_bytes(b"")  # class subfolders and a tar beside them: folder or wds?
    with pytest.raises(EmbedxError, match=r"can be read as folder or wds: name the kind \(folder:.*, wds:.*\)"):
        parse_source(str(folder))
    (tmp_path / "notes.txt").write_text("x")
    for spec, msg in [(str(tmp_path / "notes.txt"), "no kind reads what is there"),
                      (str(tmp_path / "nope"), "use folder:PATH"), ("csv:", "csv needs a path"),
                      ("", "unknown data source")]:
        with pytest.raises(EmbedxError, match=msg) as e:
            parse_source(spec)
        assert "\n" not in str(e.value)
    # an empty folder, a folder of loose images: no kind's layout
    os.makedirs(tmp_path / "loose")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose" / "a.png")
    with pytest.raises(EmbedxError, match="unknown data source"):
        parse_source(str(tmp_path / "loose"))


def test_options_a_kind_does_not_take_are_refused_with_their_parameter(tmp_path, rng):
    folder, pattern, names = class_dataset(tmp_path, rng)
    table = tmp_path / "d.csv"  # csv: takes no classes file (its labels are names)
    table.write_text("image,label\nx.png,a\n")
    for spec, opts, frag in [(f"csv:{table}", {"classes": names},
                              "classes applies to folder: and wds: and parquet: sources"),
                             (f"wds:{pattern}", {"image_col": "jpg"}, "image_col applies to parquet: sources"),
                             ("digits", {"label_col": "y"}, "label_col applies to wds: and parquet:"),
                             (str(folder), {"caption_col": "c"}, "caption_col applies to wds: and parquet:")]:
        with pytest.raises(EmbedxError, match=frag) as e:
            parse_source(spec, **opts)
        assert e.value.param == next(iter(opts))
    # in-spec options: each key once, only the kind's own
    for spec, msg in [("digits:classes=0-4:classes=5-9", "unknown digits option 'classes=5-9'"),
                      ("synthetic:n=5", "unknown synthetic option 'n=5'"),
                      ("digits:train:test", "unknown digits option")]:
        with pytest.raises(EmbedxError, match=msg):
            parse_source(spec)
    src = parse_source("synthetic:12:size=8:classes=3:seed=4")
    assert (len(src), src.load(0).size, src.classnames, src.spec) == (12, (8, 8), ["class 0", "class 1", "class 2"],
                                                                       "synthetic:12:size=8:classes=3:seed=4")


def test_dump_formats_are_recognised_and_import_without_from_equals_with_it(tmp_path, rng):
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(20, 13), d=8)
    datacomp_dir(tmp_path / "dc", rng, sizes=(9, 7))
    os.makedirs(tmp_path / "dcm")
    os.rename(tmp_path / "dc", tmp_path / "dcm" / "metadata")  # download_upstream.py's --data_dir
    import_dump(str(tmp_path / "a.zarr"), "clip-retrieval", tmp_path / "cr", chunk_rows=8)
    for fmt in ("npy", "parquet"):
        export_store(str(tmp_path / "a.zarr"), fmt, tmp_path / fmt)
    for name, fmt in [("cr", "clip-retrieval"), ("dcm", "datacomp"), ("npy", "npy"), ("parquet", "parquet")]:
        assert dumps.recognise(str(tmp_path / name)) == fmt
        given, found = tmp_path / f"{name}-given.zarr", tmp_path / f"{name}-found.zarr"
        import_dump(str(given), fmt, tmp_path / name, chunk_rows=8)
        r = invoke("import", tmp_path / name, "--out", found, "--chunk-rows", "8")
        assert r.exit_code == 0, r.output
        assert f" {fmt} " in r.stdout  # "from 2 clip-retrieval partitions"
        _same_store(Store(str(given)), Store(str(found)))
        assert Store(str(found)).meta["source"]["format"] == fmt
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(EmbedxError, match="no dump format recognises it") as e:
        import_dump(str(tmp_path / "o.zarr"), None, tmp_path / "other")
    assert e.value.param == "kind" and not os.path.exists(tmp_path / "o.zarr")
    for fmt, opts, frag in [("clip-retrieval", {"features": "b32"}, "features applies to datacomp dumps, not "
                                                                     "clip-retrieval"),
                            ("npy", {"id_column": "url"}, "id_column applies to clip-retrieval/datacomp dumps")]:
        with pytest.raises(EmbedxError, match=frag) as e:
            import_dump(str(tmp_path / "o.zarr"), fmt, tmp_path / ("cr" if fmt == "clip-retrieval" else "npy"), **opts)
        assert e.value.param == next(iter(opts))
    with pytest.raises(EmbedxError, match="unknown dump format 'laion'; choose one of clip-retrieval, datacomp, npy, "
                                          "parquet"):
        dumps.scan("laion", str(tmp_path / "cr"))


def _help(command, name: str) -> str:
    """The help text of ``command``'s option ``name`` as ``--help`` shows it, unwrapped."""
    import click

    param = next(p for p in command.params if p.name == name)
    return param.get_help_record(click.Context(command))[1]


def test_the_cli_lists_the_registered_kinds():
    from embedx.cli.embed import embed
    from embedx.cli.import_ import import_

    text = _help(embed, "data")
    for k in kinds.kinds("source").values():
        assert f"{k.usage}: {k.summary}" in text
    assert _help(embed, "image_col").startswith("parquet: the image column")
    assert _help(import_, "features").startswith("--from datacomp: the feature pair NAME_img/NAME_txt")
    assert "[clip-retrieval|datacomp|npy|parquet]" in invoke("import", "--help").stdout
    r = invoke("import", "--from", "laion", "x", "--out", "o.zarr")
    assert r.exit_code == 2 and "'laion' is not one of 'clip-retrieval', 'datacomp', 'npy', 'parquet'" in r.output


@pytest.fixture
def tiles_kind():
    """A kind registered from outside embedx: ``tiles:N`` (N gray tiles, class "light" or "dark"), bare paths
    ending in ``.tiles``; ``shade`` is its keyword option."""
    def can_open(path):
        return path.endswith(".tiles")

    @kinds.register("source", "tiles", usage="tiles:N", can_open=can_open, summary="N gray tiles",
                    options=(Option("shade", "the gray level of every tile", 128),))
    def open_tiles(arg, spec, *, shade=128):
        n = int(arg.removesuffix(".tiles"))
        return Source(spec, [f"t{i}" for i in range(n)], lambda i: Image.new("RGB", (8, 8), (int(shade),) * 3),
                      classnames=["light", "dark"], labels=np.arange(n, dtype=np.int32) % 2)

    kinds.kinds("source")  # the shipped kinds first (their modules register on first use)
    yield
    kinds.unregister("source", "tiles")


def test_a_new_kind_is_read_listed_and_documented(tiles_kind):
    src = parse_source("tiles:5")
    assert (src.spec, len(src), src.load(0).getpixel((0, 0))) == ("tiles:5", 5, (128, 128, 128))
    assert parse_source("3.tiles").spec == "tiles:3.tiles"
    assert "`tiles` | `tiles:N` | N gray tiles | `shade` (`--shade`): the gray level of every tile [default: 128]" \
        in docs.table("source")
    from embedx.cli.embed import embed

    assert "tiles:N: N gray tiles" in _help(embed, "data")
    with pytest.raises(EmbedxError, match="unknown data source 'nope'; use folder:PATH, csv:PATH, .*, tiles:N"):
        parse_source("nope")
    with pytest.raises(ValueError, match="registered twice"):
        kinds.register("source", "tiles", summary="again")(lambda arg, spec: None)
