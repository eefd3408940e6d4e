"""Hostile input, slice B: memory stays bounded whatever a store or the data claims (the layout a store's metadata
claims, caption lengths, class counts). Every CLI case runs in a child bounded in time and address space
(``run_bounded``): the old behaviour fails by the memory cap or the timeout instead of exhausting the machine."""
import json

import numpy as np
import pytest

from embedx.formats.arrays import import_arrays
from tests.conftest import assert_one_line_error, run_bounded

TRILLION = 10 ** 12


def _class_store(tmp_path, rng, name="s", n=300, d=8, c=5, chunk_rows=64):
    x = rng.standard_normal((n, d)).astype(np.float32)
    for part, arr in (("x", x), ("t", rng.standard_normal((c, d)).astype(np.float32)), ("y", rng.integers(0, c, n))):
        np.save(tmp_path / f"{name}{part}.npy", arr)
    out = tmp_path / f"{name}.zarr"
    import_arrays(str(out), images=str(tmp_path / f"{name}x.npy"), texts=str(tmp_path / f"{name}t.npy"),
                  labels=str(tmp_path / f"{name}y.npy"), chunk_rows=chunk_rows)
    return out


def _forge_rows(store, rows: int, chunk: int, keep_inventory: bool) -> None:
    """What an attacker does with a few KB of edits: the image arrays claim ``rows`` rows in chunks of ``chunk``,
    and the commit marker vouches for them (the inventory of checksums kept or dropped)."""
    for name in ("images/embeddings", "images/labels", "images/ids"):
        p = store / name / "zarr.json"
        meta = json.loads(p.read_text())
        meta["shape"][0] = rows
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = chunk
        p.write_text(json.dumps(meta))
    p = store / "zarr.json"
    meta = json.loads(p.read_text())
    attrs = meta["attributes"]["embedx"]
    attrs.update(rows_committed=rows, n_rows_max=rows, source_pos=rows)
    if not keep_inventory:
        attrs.pop("integrity")
    p.write_text(json.dumps(meta))


@pytest.mark.parametrize("keep_inventory", [True, False])
def test_a_forged_layout_of_a_trillion_one_row_chunks_is_refused_before_any_listing(tmp_path, rng, keep_inventory):
    """10^12 rows in 1-row chunks: info, verify, measure and transfer refuse the store at once in one line naming
    the array and the numbers (the old code built the list of every chunk path: out of memory)."""
    out = _class_store(tmp_path, rng)
    _forge_rows(out, TRILLION, 1, keep_inventory)
    for cmd in ("info", "verify", "measure", "transfer"):
        rc, stdout, stderr = run_bounded(cmd, out, timeout=60, mem_gib=3)
        assert rc == 2, (cmd, rc, stderr[-2000:])
        assert "Traceback" not in stderr and "internal" not in stderr, (cmd, stderr[-2000:])
        said = stdout + stderr
        assert "images/embeddings: 1,000,000,000,000 committed rows in chunks of 1 row make 1,000,000,000,000 " \
               "chunk files, above the limit of 1,000,000" in said, (cmd, said[-2000:])
        if cmd != "verify":  # verify lists every damaged array (stdout), then one error line
            assert_one_line_error(rc, stderr, "images/embeddings", "1,000,000,000,000")


def test_a_forged_chunk_count_that_disagrees_with_the_inventory_is_refused_without_a_stat_per_chunk(tmp_path, rng):
    """Within the cap (10^6 chunk files of 64 rows) but against the inventory recorded at finalize (5 chunks): the
    count is refused from the metadata alone, naming both numbers."""
    out = _class_store(tmp_path, rng)
    _forge_rows(out, 64 * 10 ** 6, 64, keep_inventory=True)
    for cmd in ("info", "measure"):
        rc, _, stderr = run_bounded(cmd, out, timeout=60, mem_gib=3)
        assert_one_line_error(rc, stderr, "images/embeddings: the inventory lists 5 chunks, the array has 1,000,000")
        assert rc == 2


def test_a_store_of_more_chunk_files_than_readers_accept_is_not_written(tmp_path):
    """import with --chunk-rows 1 on 1,000,001 rows would make more chunk files than any reader accepts: refused
    before anything is written (the old code started writing a million files per array)."""
    n = 1_000_001
    np.save(tmp_path / "x.npy", np.full((n, 2), 0.5, np.float32))
    np.save(tmp_path / "t.npy", np.eye(2, dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(n, np.int64))
    rc, _, stderr = run_bounded("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels",
                                tmp_path / "y.npy", "--chunk-rows", 1, "-o", tmp_path / "s.zarr", timeout=60,
                                mem_gib=3)
    assert_one_line_error(rc, stderr, "--chunk-rows 1 makes 1,000,001 chunk files", "limit of 1,000,000",
                          "at least 2 rows")
    assert rc == 2
    assert not (tmp_path / "s.zarr").exists()


HUGE_CAPTION = "a very long caption " * (20_000_000 // 20)  # 20 MB of text


def test_a_20_mb_caption_in_an_imported_names_file_is_stored_cut_and_counted(tmp_path, rng):
    """import --paired --names: one 20 MB caption among 200 (the old write made a fixed-width array of 200 x 20M
    characters: 11 GB). It is stored as its first 1,000 characters, counted in the store's metadata and said in
    one warning line; the other captions are untouched."""
    from embedx.store import Store
    from embedx.texts import MAX_TEXT_CHARS

    x = rng.standard_normal((200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", x + 0.1 * rng.standard_normal((200, 8)).astype(np.float32))
    with open(tmp_path / "names.txt", "w") as f:
        f.writelines((HUGE_CAPTION if i == 5 else f"caption {i}") + "\n" for i in range(200))
    rc, _, stderr = run_bounded("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--paired",
                                "--names", tmp_path / "names.txt", "-o", tmp_path / "s.zarr", timeout=90, mem_gib=3)
    assert rc == 0, stderr[-2000:]
    assert "warning: 1 captions longer than 1000 characters were cut" in stderr
    s = Store(str(tmp_path / "s.zarr"))
    names = s.text_names()
    assert MAX_TEXT_CHARS == 1000 and names[5] == HUGE_CAPTION[:1000]
    assert [str(n) for n in names[:5]] == [f"caption {i}" for i in range(5)] and names[199] == "caption 199"
    assert s.meta["texts_truncated"] == {"count": 1, "max_chars": 1000}


def test_a_20_mb_caption_in_a_parquet_source_is_embedded_and_stored_cut(tmp_path, rng):
    """embed of a parquet: source whose caption 3 is 20 MB, 64 rows in one commit: embedded from its first 1,000
    characters (the tokenizer reads 77 tokens of them), stored cut and counted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedx.store import Store
    from tests.test_sources_wds import _png

    n = 64
    img = _png(rng, 16, 16)
    caps = [HUGE_CAPTION if i == 3 else f"caption {i}" for i in range(n)]
    pq.write_table(pa.table({"jpg": pa.array([img] * n, pa.binary()), "text": caps}), tmp_path / "d.parquet")
    out = tmp_path / "s.zarr"
    rc, _, stderr = run_bounded("embed", "-m", "embedx-tiny", "--pretrained", "none", "--workers", "0",
                                "--batch-size", 64, "--data", f"parquet:{tmp_path / 'd.parquet'}", "--out", out,
                                timeout=180, mem_gib=4)
    assert rc == 0, stderr[-2000:]
    assert "1 captions or class names longer than 1000 characters were cut" in stderr
    s = Store(str(out))
    assert s.n_images == n and s.text_names()[3] == HUGE_CAPTION[:1000] and s.text_names()[4] == "caption 4"
    assert s.meta["texts_truncated"] == {"count": 1, "max_chars": 1000}


def _million_class_store(tmp_path, rng, n=65536, labelled=200, c=10 ** 6, d=8):
    """``n`` images (one chunk: the texts are chunked alike, 16 files) over 10^6 class texts (16 MB of float16),
    ``labelled`` of them with a label anywhere in 0..C-1, the others -1."""
    np.save(tmp_path / "x.npy", rng.standard_normal((n, d)).astype(np.float32))
    np.save(tmp_path / "t.npy", rng.standard_normal((c, d)).astype(np.float32))
    y = np.full(n, -1)
    y[rng.choice(n, labelled, replace=False)] = rng.integers(0, c, labelled)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "c.zarr"
    import_arrays(str(out), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"))
    return out


def test_zero_shot_over_a_million_classes_runs_in_bounded_memory(tmp_path, rng):
    """measure's zero-shot metrics with 10^6 classes under a 4 GiB address-space cap: the rows of one zero-shot
    step follow C (4 rows x 10^6 logits, 16 MiB), where the old pass allocated 4,096 x C comparisons (16 GB).
    The counts equal the float64 reference's (over the labelled rows)."""
    from embedx import kernels
    from embedx.store import Store

    out = _million_class_store(tmp_path, rng)
    rc, stdout, stderr = run_bounded("measure", out, "--json", "--metrics", "zeroshot_top1,zeroshot_top5", timeout=180,
                                     mem_gib=4)
    assert rc == 0, stderr[-2000:]
    got = json.loads(stdout)
    s = Store(str(out))
    y = s.labels()
    keep = y >= 0
    x, y, t = s.images(dtype=np.float32)[keep], y[keep], s.texts(np.float32)
    top1, top5 = kernels.zeroshot_hits_reference(x / np.linalg.norm(x, axis=1, keepdims=True), y,
                                                 t / np.linalg.norm(t, axis=1, keepdims=True))
    values = got.get("measures", got)
    assert values["zeroshot_top1"] == pytest.approx(top1.sum() / len(y), abs=1e-12)
    assert values["zeroshot_top5"] == pytest.approx(top5.sum() / len(y), abs=1e-12)
    assert kernels.zs_rows(10 ** 6) == 4 and kernels.zs_rows(1000) == kernels.ZS_ROWS


def test_transfer_refuses_a_million_class_joint_in_one_line_stating_the_memory(tmp_path, rng):
    """transfer's leep/nce hold a K x C float64 joint (7.3 TiB at 10^6 classes): refused before any allocation, in
    one line stating the estimate; the scores whose memory grows only with K x d still run."""
    out = _million_class_store(tmp_path, rng)
    rc, _, stderr = run_bounded("transfer", out, timeout=120, mem_gib=3)
    assert_one_line_error(rc, stderr, "transfer nce needs about 21.8 TiB for 1,000,000 classes",
                          "1,000,000 x 1,000,000 float64 joint", "above the memory budget of 3.0 GiB",
                          "(leep too)", "leave nce, leep out of --scores")
    assert rc == 2
    rc, stdout, stderr = run_bounded("transfer", out, "--scores", "hscore,logme,transrate", timeout=120, mem_gib=3)
    assert rc == 0 and "hscore" in stdout and "logme" in stdout, stderr[-2000:]


def test_leep_and_nce_over_many_rows_and_classes_compute_probabilities_in_bounded_slices(tmp_path, rng):
    """100,000 rows x 4,000 classes at d = 8: one block's zero-shot probabilities were 100,000 x 4,000 float64
    (3.2 GB, and temporaries); now slices of THETA_ELEMENTS // C rows, in a 3 GiB address space."""
    n, c, d = 100_000, 4_000, 8
    np.save(tmp_path / "x.npy", rng.standard_normal((n, d)).astype(np.float32))
    np.save(tmp_path / "t.npy", rng.standard_normal((c, d)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, c, n))
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"))
    rc, stdout, stderr = run_bounded("transfer", out, "--json", "--scores", "leep,nce", timeout=240, mem_gib=3)
    assert rc == 0, stderr[-2000:]
    got = json.loads(stdout)
    values = got.get("scores", got)
    assert np.isfinite(values["leep"]) and np.isfinite(values["nce"])


def test_leep_and_nce_in_slices_equal_the_reference(rng, monkeypatch):
    """The sliced probabilities (forced small here) give the float64 reference's leep and nce."""
    from embedx import transferability as T
    from embedx.transferability import leep as L
    from embedx.transferability import reference as R

    x = rng.standard_normal((500, 16))
    t = rng.standard_normal((40, 16))
    y = rng.integers(0, 40, 500)
    whole = T.compute_arrays(x, y, t, ["leep", "nce"])
    monkeypatch.setattr(L, "THETA_ELEMENTS", 40 * 7)  # 7 rows at once
    sliced = T.compute_arrays(x, y, t, ["leep", "nce"])
    for s in ("leep", "nce"):
        ref = getattr(R, s)(x, y, t)
        assert sliced[s] == pytest.approx(ref, abs=1e-9) and whole[s] == pytest.approx(ref, abs=1e-9)
