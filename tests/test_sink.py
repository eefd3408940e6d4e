"""One chunk sink (embedx.store.sink): every writer (a serial embed, import_arrays, import --from, a cluster embed,
its compaction) writes whole chunks and takes each chunk's crc32c, content hash and normalized sum as it writes, so
finalize reads nothing back. Reads are counted, not mocked: a Python audit hook sees every file a process opens
(builtin open, os.open, pathlib), and we count the chunk files of the store being written opened for reading. The
recorded inventory and sums are checked against what reading the finished store back computes."""
import csv
import os
import sys

import numpy as np
import pytest

from embedx.embedding.options import split
from embedx.embedding.serial import embed_to_store
from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.formats.dumps import import_dump
from embedx.rows import check_block
from embedx.store import ARRAYS, Store, StoreWriter, normalized_sum, read_meta
from embedx.store.checksums import inventory
from embedx.store.integrity import verify
from embedx.store.layout import units
from embedx.store.placement import staged
from tests.test_dumps import clip_retrieval_dir
from tests.test_embed import _image_folder

_READS: list = []
_ROOTS: list = []


def _audit(event, args):
    if event != "open" or not _ROOTS:
        return
    path, _, flags = args
    if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(flags, int) and flags & os.O_ACCMODE != os.O_RDONLY:
        return
    p = os.fsdecode(os.fspath(path))
    for root in _ROOTS:  # a chunk file of the store's rows (or its staging sibling's): ROOT[.tmp-*]/ARRAY/c/...
        if p.startswith(root) and any(f"/{name}/c/" in p[len(root):].replace(os.sep, "/") for name in ARRAYS):
            _READS.append(p)


sys.addaudithook(_audit)  # hooks cannot be removed: it counts only while a test watches a root


class chunk_reads:
    """Collects the chunk files of the store's arrays at ``root`` that this process opens for reading inside the
    block (a cluster embed's driver reads its tasks' flags and results: not rows, not counted)."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def __enter__(self):
        _READS.clear()
        _ROOTS[:] = [self.root]
        return _READS

    def __exit__(self, *exc):
        _ROOTS.clear()


def _read_back(path: str) -> tuple[dict, dict]:
    """(the inventory, {"images", "texts"} the fold of per-chunk normalized sums) computed by reading the finished
    store's chunk files and rows: the reference the sink's records must equal."""
    s = Store(path, verify_content=False)
    meta = dict(s.meta)
    inv = inventory(path, s.group, meta, ARRAYS, s)
    sums = {}
    names = {"images": "images/embeddings", **({"texts": "texts/embeddings"} if s.paired else {})}
    for key, name in names.items():
        arr, out = s.group[name], np.zeros(s.dim)
        for _, r0, r1 in units(arr, s.committed(name)):
            out = out + normalized_sum(s.read_rows_into(name, r0, np.empty((r1 - r0, s.dim), arr.dtype)))
        sums[key] = out
    if not s.paired:
        sums["texts"] = normalized_sum(s.texts())
    return inv, sums


def _records_match_a_read_back(path: str, exact_sums: bool = True) -> None:
    meta = read_meta(path)
    inv, sums = _read_back(path)
    assert meta["integrity"] == inv
    for k, v in sums.items():
        if exact_sums:
            assert np.array_equal(np.asarray(meta["sums"][k]), v), k
        else:  # float32 chunk sums (the import's direct path), float64 across chunks
            np.testing.assert_allclose(meta["sums"][k], v, rtol=0, atol=1e-5)
    assert verify(path)["ok"], verify(path)


def test_audit_hook_sees_chunk_reads(tmp_path, rng):
    """The counter is real: reading a finished store's rows opens its chunk files."""
    out = tmp_path / "s.zarr"
    import_arrays(str(out), images=rng.standard_normal((50, 4)), texts=rng.standard_normal((3, 4)),
                  labels=rng.integers(0, 3, 50), chunk_rows=16)
    with chunk_reads(out) as reads:
        Store(str(out)).images()
    assert len(reads) >= 4


@pytest.mark.parametrize("paired", [False, True])
def test_serial_embed_reads_no_chunk_back(tmp_path, rng, paired):
    """A folder with an unreadable image (skipped: the arrays are trimmed at finalize), or captions; commits every
    4-row batch into chunks of 6 rows: whole chunks written and rewritten, never read."""
    _image_folder(tmp_path / "imgs", rng, per_class=(11, 14), bad=not paired)
    data = f"folder:{tmp_path / 'imgs'}"
    if paired:
        with open(tmp_path / "caps.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows([[f"imgs/{c}/{k}.png", f"{c} number {k}"] for c, n in (("cat", 11), ("dog", 14))
                         for k in range(n)])
        data = f"csv:{tmp_path / 'caps.csv'}"
    out = str(tmp_path / "s.zarr")
    with chunk_reads(out) as reads:
        res = embed_to_store(out, data, "embedx-tiny", "none", seed=1, progress=False,
                             **split(batch_size=4, chunk_rows=6, workers=0, commit_every_s=0.0))
    assert reads == []
    assert res.meta["rows_committed"] == 25 and res.meta["n_skipped"] == (0 if paired else 1)
    _records_match_a_read_back(out)


@pytest.mark.parametrize("codec", ["none", "zstd1", "blosc-zstd"])
@pytest.mark.parametrize("paired", [False, True])
def test_writer_commits_anywhere_and_finalize_reads_nothing(tmp_path, rng, codec, paired):
    """Commits that end mid-chunk (the partly filled chunk is written whole, then again with the rows that follow),
    skipped inputs trimmed at finalize, compressed chunks: the inventory and the sums the sink took equal what
    reading the store back gives, and no chunk file is read on the way."""
    n, d, c, cr = 203, 12, 4, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((n if paired else c, d)).astype(np.float32)
    y = rng.integers(-1, c, n).astype(np.int32)
    out = str(tmp_path / "s.zarr")
    meta = {"model": "m", "pretrained": "none", "seed": 0, "dataset": "d", "mode": "paired" if paired else "classes"}
    with chunk_reads(out) as reads:
        w = StoreWriter.create(out, n_rows=n + 9, dim=d, meta=meta, n_texts=None if paired else c, codec=codec,
                               chunk_rows=cr)
        if not paired:
            w.write_texts(t, [f"class {k}" for k in range(c)])
        cuts = sorted(set(rng.integers(1, n, 9).tolist()) | {n})
        a = 0
        for b in cuts:
            ids = [f"id{i}" for i in range(a, b)]
            if paired:
                w.append(x[a:b], None, ids, text_emb=t[a:b], text_names=[f"cap {i}" for i in range(a, b)])
            else:
                w.append(x[a:b], y[a:b], ids)
            w.commit(b)
            a = b
        w.commit(n + 9)  # nine inputs skipped: the arrays are trimmed to n rows
        w.finalize()
    assert reads == []
    s = Store(out)
    assert s.n_images == n
    np.testing.assert_array_equal(s.images(), x.astype(np.float16))
    np.testing.assert_array_equal(s.labels(), np.arange(n) if paired else y)
    _records_match_a_read_back(out)


def test_resume_reads_back_once_then_finalize_reads_nothing(tmp_path, rng):
    n, d, c = 150, 8, 3
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    meta = {"model": "m", "pretrained": "none", "seed": 0, "dataset": "d", "mode": "classes"}

    def write(path, parts):
        w = StoreWriter.create(path, n_rows=n, dim=d, meta=meta, n_texts=c, chunk_rows=32)
        w.write_texts(x[:c], ["a", "b", "c"])
        for a, b in parts:
            w.append(x[a:b], y[a:b], [str(i) for i in range(a, b)])
            w.commit(b)
        return w

    ref = str(tmp_path / "ref.zarr")
    write(ref, [(0, n)]).finalize()
    out = str(tmp_path / "s.zarr")
    w = write(out, [(0, 45)])  # committed mid-chunk 1
    w.append(x[45:60], y[45:60], [str(i) for i in range(45, 60)])  # buffered, lost with the writer
    w.wait()
    del w
    with chunk_reads(out) as reads:
        w = StoreWriter.resume(out, meta)
    assert reads  # what an earlier process committed is read back, here
    with chunk_reads(out) as reads:
        w.append(x[45:], y[45:], [str(i) for i in range(45, n)])
        w.commit(n)
        w.finalize()
    assert reads == []
    for f in ("images/embeddings/c/0/0", "images/embeddings/c/4/0", "images/labels/c/1", "images/ids/c/1"):
        assert open(os.path.join(ref, f), "rb").read() == open(os.path.join(out, f), "rb").read(), f
    a, b = read_meta(ref), read_meta(out)
    assert a["integrity"] == b["integrity"] and a["sums"] == b["sums"]
    _records_match_a_read_back(out)


@pytest.mark.parametrize("paired", [False, True])
def test_import_arrays_reads_no_chunk_back(tmp_path, rng, paired):
    x = rng.standard_normal((300, 16)).astype(np.float32)
    t = rng.standard_normal((300 if paired else 7, 16)).astype(np.float32)
    kw = {"paired": True} if paired else {"labels": rng.integers(0, 7, 300)}
    out = tmp_path / "s.zarr"
    with chunk_reads(out) as reads:
        import_arrays(str(out), images=x, texts=t, chunk_rows=64, **kw)
    assert reads == []
    _records_match_a_read_back(str(out))


@pytest.mark.parametrize("codec", ["none", "zstd1"])  # the thread pool's direct chunks; the writer's commits
def test_import_dump_reads_no_chunk_back(tmp_path, rng, codec):
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(70, 50, 33), d=16)
    out = tmp_path / "s.zarr"
    with chunk_reads(out) as reads:
        import_dump(str(out), "clip-retrieval", tmp_path / "cr", chunk_rows=32, codec=codec)
    assert reads == []
    _records_match_a_read_back(str(out), exact_sums=codec != "none")


def test_cluster_embed_reads_no_chunk_back(tmp_path, dask_client):
    out = str(tmp_path / "s.zarr")
    with chunk_reads(out) as reads:
        res = embed_to_store(out, "digits:train", "embedx-tiny", "none", seed=1, progress=False,
                             **split(batch_size=16, chunk_rows=32, limit=160, workers=0, client=dask_client,
                                     task_bytes=2048))
    assert res.tasks == (0, 5)
    assert reads == []  # the driver: its finalize; the tasks write whole chunks (never a read-modify-write)
    _records_match_a_read_back(out)


def test_staged_places_on_success_and_removes_on_failure(tmp_path):
    target = str(tmp_path / "t")
    os.makedirs(target)
    open(os.path.join(target, "old"), "w").write("old")
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with staged(target) as stage:
                assert stage != target and os.path.dirname(stage) == str(tmp_path)
                os.makedirs(stage)
                open(os.path.join(stage, "new"), "w").write("new")
                raise exc
        assert sorted(os.listdir(tmp_path)) == ["t"] and os.listdir(target) == ["old"]
    with staged(target) as stage:
        os.makedirs(stage)
        open(os.path.join(stage, "new"), "w").write("new")
    assert sorted(os.listdir(tmp_path)) == ["t"] and os.listdir(target) == ["new"]


def test_one_row_rule_for_float16_and_converted_rows(rng):
    """float16 rows take the fast path (norms), other rows the float64 one: the same verdicts and messages."""
    x = rng.standard_normal((40, 8)).astype(np.float16)
    for bad, msg in ((lambda a: a.__setitem__((11, 2), np.nan), r"rows row 11 contains NaN or inf \(1 rows in all\)"),
                     (lambda a: a.__setitem__(7, 0), r"rows row 7 is all zeros")):
        a = x.copy()
        bad(a)
        for rows in (a, a.astype(np.float32)):
            for dtype in ("float16", "float32"):
                with pytest.raises(EmbedxError, match=msg):
                    check_block(rows, "rows", dtype, offset=0)
    assert check_block(x, "rows", "float16") is False
    u = (x / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)).astype(np.float16)
    assert check_block(u, "rows", "float16") and check_block(u.astype(np.float32), "rows", "float16")
    with pytest.raises(EmbedxError, match="dimension mismatch: images have d=9, texts have d=8"):
        check_block(x, "texts", "float16", dim=9, dim_of="images")
