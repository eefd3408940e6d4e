"""Store schema 1: round trips, bounded block iteration, random access, crash-safe commits and resume."""
import os

import numpy as np
import pytest
import zarr

from embedx import store as st
from embedx.errors import StoreError


def _meta(mode="classes", **kw):
    return {"model": "m", "pretrained": "none", "seed": 0, "dataset": "d", "dataset_sha256": "x",
            "mode": mode, "dtype": kw.pop("dtype", "float16"), **kw}


def _write_classes(path, x, t, y, dtype="float16", chunk_rows=None, codec="none", commit_every=None):
    w = st.StoreWriter.create(path, n_rows=len(x), dim=x.shape[1], n_texts=len(t), meta=_meta(dtype=dtype),
                              dtype=dtype, chunk_rows=chunk_rows, codec=codec)
    w.write_texts(t, [f"class {c}" for c in range(len(t))])
    step = commit_every or len(x)
    for s in range(0, len(x), step):
        w.append(x[s:s + step], y[s:s + step], [f"id{i}" for i in range(s, min(s + step, len(x)))])
        w.commit(min(s + step, len(x)))
    return w.finalize()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("codec", ["none", "zstd1", "blosc-zstd"])
def test_round_trip_ragged_chunks(tmp_path, rng, dtype, codec):
    n, d, c = int(rng.integers(50, 400)), int(rng.integers(3, 70)), int(rng.integers(1, 12))
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(-1, c, n).astype(np.int32)
    chunk = int(rng.integers(7, 64))
    meta = _write_classes(str(tmp_path / "s.zarr"), x, t, y, dtype, chunk, codec, commit_every=int(rng.integers(5, 90)))
    assert meta["complete"] and meta["rows_committed"] == n
    s = st.Store(str(tmp_path / "s.zarr"))
    assert (s.n_images, s.n_texts, s.dim, str(s.dtype), s.chunk_rows) == (n, c, d, dtype, min(chunk, n))
    np.testing.assert_array_equal(s.images(), x.astype(dtype))
    np.testing.assert_array_equal(s.texts(), t.astype(dtype))
    np.testing.assert_array_equal(s.labels(), y)
    assert list(s.ids()) == [f"id{i}" for i in range(n)]
    assert list(s.text_names()) == [f"class {k}" for k in range(c)]
    # blocks: whole chunks, cover every row once, in order
    blocks = list(s.iter_images(block_rows=3 * chunk, dtype=np.float32, with_labels=True))
    assert [b[0] for b in blocks] == list(range(0, n, 3 * chunk))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), x.astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[2] for b in blocks]), y)
    # reused buffers give the same blocks, converted or not
    for dt, prefetch in ((None, True), (np.float32, True), (np.float32, False)):
        got = [b.copy() for _, b in s.iter_images(block_rows=2 * chunk, dtype=dt, reuse=True, prefetch=prefetch)]
        np.testing.assert_array_equal(np.concatenate(got), x.astype(dtype).astype(dt or dtype))
    # random access, negative indices included
    rows = rng.integers(-n, n, 17)
    np.testing.assert_array_equal(s.images(rows), x.astype(dtype)[rows])


def test_block_rows_are_whole_chunks_and_bounded(tmp_path, rng):
    x = rng.standard_normal((1000, 64)).astype(np.float32)
    _write_classes(str(tmp_path / "s.zarr"), x, x[:3], np.zeros(1000, np.int32), chunk_rows=100)
    s = st.Store(str(tmp_path / "s.zarr"))
    b = s.block_rows(target_bytes=64 * 100 * 2 * 3)
    assert b == 300 and b % s.chunk_rows == 0
    assert s.block_rows(target_bytes=1) == 100  # never less than one chunk


def test_default_chunking_targets_whole_rows_of_about_4_mib():
    assert st.default_chunk_rows(512, "float16", 10**6) * 512 * 2 == 4 << 20
    assert st.default_chunk_rows(512, "float16", 10) == 10


def test_paired_store_labels_are_row_indices(tmp_path, rng):
    n, d = 123, 16
    x, t = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    w = st.StoreWriter.create(str(tmp_path / "p.zarr"), n_rows=n, dim=d, meta=_meta("paired"), chunk_rows=10)
    for s in range(0, n, 40):
        e = min(s + 40, n)
        w.append(x[s:e], None, [str(i) for i in range(s, e)], text_emb=t[s:e], text_names=[f"c{i}" for i in range(s, e)])
        w.commit(e)
    w.finalize()
    s = st.Store(str(tmp_path / "p.zarr"))
    assert s.paired and s.n_texts == n
    np.testing.assert_array_equal(s.labels(), np.arange(n))
    np.testing.assert_array_equal(s.texts(), t.astype(np.float16))


def test_crash_then_resume_equals_uninterrupted(tmp_path, rng):
    """A writer dropped without finalize (as after SIGKILL) keeps exactly its committed rows; resuming with
    the same inputs continues from source_pos and the final store equals an uninterrupted write."""
    n, d, c = 257, 24, 5
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    ref = str(tmp_path / "ref.zarr")
    _write_classes(ref, x, t, y, chunk_rows=32)

    path = str(tmp_path / "crash.zarr")
    w = st.StoreWriter.create(path, n_rows=n, dim=d, n_texts=c, meta=_meta(), chunk_rows=32)
    w.write_texts(t, [f"class {k}" for k in range(c)])
    w.append(x[:50], y[:50], [f"id{i}" for i in range(50)])
    w.commit(50)  # committed mid-chunk
    w.append(x[50:90], y[50:90], [f"id{i}" for i in range(50, 90)])  # buffered, never committed
    w.wait()
    del w
    # a killed atomic write leaves a temporary file behind; resume cleans it
    junk = os.path.join(path, "images", "embeddings", "c", "0", "0.deadbeef.partial")
    open(junk, "wb").write(b"\0" * 10)
    partial = st.Store(path, allow_partial=True)
    assert not partial.complete and partial.n_images == 50
    np.testing.assert_array_equal(partial.images(), x[:50].astype(np.float16))
    with pytest.raises(StoreError, match="unfinished"):
        st.Store(path)

    w = st.StoreWriter.resume(path, _meta())
    assert not os.path.exists(junk)
    assert (w.rows_committed, w.source_pos) == (50, 50)
    for s in range(w.source_pos, n, 64):
        e = min(s + 64, n)
        w.append(x[s:e], y[s:e], [f"id{i}" for i in range(s, e)])
        w.commit(e)
    w.finalize()
    a, b = st.Store(ref), st.Store(path)
    np.testing.assert_array_equal(a.images(), b.images())
    np.testing.assert_array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.texts(), b.texts())


@pytest.mark.parametrize("key,value", [("model", "other"), ("seed", 1), ("dataset", "x"), ("prompts", {"t": 1}),
                                       ("checkpoint_sha256", "ab12"), ("dataset_sha256", "y")])
def test_resume_with_other_inputs_is_refused(tmp_path, key, value):
    path = str(tmp_path / "s.zarr")
    st.StoreWriter.create(path, n_rows=10, dim=4, n_texts=2, meta=_meta(prompts={"t": 0})).close()
    with pytest.raises(StoreError, match=f"refusing to resume.*{key}="):
        st.StoreWriter.resume(path, {**_meta(prompts={"t": 0}), key: value})


def test_complete_store_is_never_overwritten_without_flag(tmp_path, rng):
    path = str(tmp_path / "s.zarr")
    x = rng.standard_normal((20, 4)).astype(np.float32)
    _write_classes(path, x, x[:2], np.zeros(20, np.int32))
    with pytest.raises(StoreError, match="complete store.*overwrite=True"):
        st.StoreWriter.create(path, n_rows=5, dim=4, n_texts=2, meta=_meta())
    with pytest.raises(StoreError, match="already complete"):
        st.StoreWriter.resume(path, _meta())
    np.testing.assert_array_equal(st.Store(path).images(), x.astype(np.float16))


def test_skipped_inputs_are_listed_and_trimmed(tmp_path, rng):
    path = str(tmp_path / "s.zarr")
    x = rng.standard_normal((10, 4))
    w = st.StoreWriter.create(path, n_rows=12, dim=4, n_texts=1, meta=_meta(), chunk_rows=4)
    w.write_texts(x[:1], ["a"])
    w.append(x, np.zeros(10, np.int32), [str(i) for i in range(10)])
    w.skip([{"id": "bad1", "error": "broken"}, {"id": "bad2", "error": "broken"}])
    w.commit(12)
    meta = w.finalize()
    s = st.Store(path)
    assert s.n_images == 10 and s.group["images/embeddings"].shape == (10, 4)
    assert meta["n_skipped"] == 2 and [e["id"] for e in s.meta["skipped"]] == ["bad1", "bad2"]


def test_fsspec_url_round_trip(rng):
    url = f"memory://embedx-test-{rng.integers(1 << 30)}/s.zarr"
    x = rng.standard_normal((40, 8)).astype(np.float32)
    _write_classes(url, x, x[:3], np.arange(40, dtype=np.int32) % 3, chunk_rows=16)
    s = st.Store(url)
    np.testing.assert_array_equal(s.images(), x.astype(np.float16))
    assert s.info()["size_bytes"] > 0


def test_bad_paths_and_foreign_groups(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        st.Store(str(tmp_path / "nope.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an embedx store"):
        st.Store(str(tmp_path / "plain.zarr"))
    g = zarr.open_group(str(tmp_path / "future.zarr"), mode="w")
    g.attrs["embedx"] = {"schema": 99}
    with pytest.raises(StoreError, match="schema 99"):
        st.Store(str(tmp_path / "future.zarr"))


def test_never_writes_over_something_that_is_not_a_store(tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not an embedx store"):
            st.StoreWriter.create(str(precious), n_rows=3, dim=2, n_texts=1, meta=_meta(), overwrite=overwrite)
    assert (precious / "cat.jpg").read_bytes() == b"meow"
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not an embedx store"):
        st.StoreWriter.create(str(tmp_path / "file.txt"), n_rows=3, dim=2, n_texts=1, meta=_meta())
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    st.StoreWriter.create(str(tmp_path / "empty"), n_rows=3, dim=2, n_texts=1, meta=_meta()).close()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_chunk_reads_equal_zarr_and_fall_back_when_they_cannot(tmp_path, rng, dtype):
    from concurrent.futures import ThreadPoolExecutor

    from embedx.store.chunkio import direct_reader

    n, d, chunk = 1000, 24, 64
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    _write_classes(str(tmp_path / "plain.zarr"), x, x[:3], y, dtype, chunk)
    _write_classes(str(tmp_path / "zstd.zarr"), x, x[:3], y, dtype, chunk, codec="zstd1")
    plain, packed = st.Store(str(tmp_path / "plain.zarr")), st.Store(str(tmp_path / "zstd.zarr"))
    assert direct_reader(plain.group["images/embeddings"]) is not None
    assert direct_reader(packed.group["images/embeddings"]) is None      # compressed: zarr decodes
    assert direct_reader(packed.group["images/labels"]) is not None      # labels are never compressed
    for s in (plain, packed):
        np.testing.assert_array_equal(s.labels(), y)
        np.testing.assert_array_equal(s.labels(130, 700), y[130:700])
    want = x.astype(dtype)
    for s in (plain, packed):
        # ragged ranges across chunk borders, from several threads at once, each into its own buffer
        ranges = [(0, 1), (63, 65), (100, 1000), (999, 1000), (0, 1000)] + [
            tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(20)]

        def read(r):
            return s.read_images_into(r[0], np.empty((r[1] - r[0], d), dtype))

        with ThreadPoolExecutor(4) as pool:
            for (a, b), got in zip(ranges, pool.map(read, ranges)):
                np.testing.assert_array_equal(got, want[a:b])
    # a missing chunk file inside the committed rows is damage (zarr would read it as zeros): an error naming it
    missing = r"images/embeddings chunk 3 \(rows 192..255\) is missing"
    for store in ("plain.zarr", "zstd.zarr"):
        opened = st.Store(str(tmp_path / store))
        os.remove(tmp_path / store / "images" / "embeddings" / "c" / "3" / "0")
        with pytest.raises(st.StoreError, match=missing):  # when reading (a store opened before the damage)
            opened.images()
        opened.read_images_into(0, np.empty((3 * chunk, d), dtype))  # the rows before it still read
        with pytest.raises(st.StoreError, match=missing):  # and when opening
            st.Store(str(tmp_path / store))
    with open(tmp_path / "zstd.zarr" / "images" / "embeddings" / "c" / "5" / "0", "r+b") as f:
        f.truncate(10)
    with pytest.raises(st.StoreError, match="damaged"):  # a truncated chunk: never silently short data
        opened.read_images_into(5 * chunk, np.empty((chunk, d), dtype))


@pytest.mark.parametrize("codec", ["none", "zstd1"])
def test_xarray_and_dask_open_a_store(tmp_path, rng, codec):
    """Stores carry zarr v3 dimension_names, so xarray opens them as a tree of labelled arrays and dask reads the
    embeddings lazily; both give the rows the store gives."""
    import dask.array as da
    import xarray as xr  # the test extra installs it

    from embedx.formats.arrays import import_arrays

    x, t = rng.standard_normal((70, 12)).astype(np.float32), rng.standard_normal((5, 12)).astype(np.float32)
    y = rng.integers(-1, 5, 70)
    for name, a in (("x", x), ("t", t), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
    (tmp_path / "names.txt").write_text("".join(f"class {k}\n" for k in range(5)))
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), labels=str(tmp_path / "y.npy"),
                  names=str(tmp_path / "names.txt"), codec=codec, chunk_rows=16)
    s = st.Store(out)
    tree = xr.open_datatree(out, engine="zarr", consolidated=False)
    img, txt = tree["images"].to_dataset(), tree["texts"].to_dataset()
    assert img["embeddings"].dims == ("image", "dim") and txt["embeddings"].dims == ("text", "dim")
    assert img.sizes == {"image": 70, "dim": 12} and txt.sizes == {"text": 5, "dim": 12}
    np.testing.assert_array_equal(img["embeddings"].values, s.images())
    np.testing.assert_array_equal(img["labels"].values, y)
    np.testing.assert_array_equal(txt["embeddings"].values, s.texts())
    assert [str(v) for v in txt["names"].values] == [f"class {k}" for k in range(5)]
    lazy = da.from_zarr(out, component="images/embeddings")
    assert lazy.chunks[0][0] == 16
    np.testing.assert_array_equal(lazy.compute(), s.images())


@pytest.mark.parametrize("compressors", ["auto", None])
def test_string_chunk_writer_writes_zarrs_bytes(tmp_path, compressors):
    """chunkio.StringChunks (numpy vlen-utf8 from arrow's buffers) writes the chunk files zarr writes: empty and
    non-ASCII strings, a sliced arrow array (offset != 0), large_string input, a padded edge chunk."""
    import pyarrow as pa

    from embedx.store.chunkio import string_writer

    vals = ["a", "", "dé€", "x" * 300, "f", "", "g", "日本語", "i", "jj", "k"]
    arrays = {}
    for name in ("zarr", "direct"):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        arrays[name] = g.create_array("ids", shape=(len(vals),), chunks=(4,), dtype=str, compressors=compressors,
                                      config={"write_empty_chunks": True})
    arrays["zarr"][:] = np.asarray(vals)
    w = string_writer(arrays["direct"])
    assert w is not None
    src = pa.array(["skip"] + vals, type=pa.large_string()).slice(1)
    for k in range(3):
        w.write_chunk(k, src.slice(4 * k, 4))
    for k in range(3):
        assert (tmp_path / "direct.zarr" / "ids" / "c" / str(k)).read_bytes() == \
            (tmp_path / "zarr.zarr" / "ids" / "c" / str(k)).read_bytes(), k
    assert list(zarr.open_array(str(tmp_path / "direct.zarr" / "ids"))[:]) == vals
