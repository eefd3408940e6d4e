"""Hostile input to the readers of sources and dumps (wds shards, parquet files and their image paths, classes
files, clip-retrieval / DataComp / npy dumps): nothing hangs, nothing is read without bound, every fault is one
line. Each case is bounded: the CLI in a child with a timeout and an address-space cap (``run_bounded``), the
library in-process under :func:`bounded` (an alarm and an ``RLIMIT_AS`` cap for the duration of the call), so a
regression fails the test instead of stalling CI.

Real files throughout: tar shards written with ``tarfile`` then edited byte by byte, Parquet written by pyarrow,
FIFOs made by ``os.mkfifo``, ``/dev/zero``, sparse files standing in for huge ones."""
import contextlib
import gzip
import os
import pickle
import random
import resource
import signal
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedx.formats import dumps
from embedx.errors import EmbedxError
from embedx.sources.catalog import parse_source
from embedx.sources.files import MAX_FILES, expand_braces, read_classes
from embedx.sources.webdataset import _scan_shard, _Want
from embedx.store import read_meta
from tests.conftest import assert_one_line_error, run_bounded
from tests.test_dumps import clip_retrieval_dir, datacomp_dir
from tests.test_sources_wds import _png, paired_samples, write_shards

IMAGE_CAP = 256 << 20  # the documented caps: an image file or member; a classes file, caption or embedx.json
SMALL_CAP = 64 << 20


# -- the in-process guard ------------------------------------------------------------------------------------------
def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


class Hung(BaseException):
    """Raised by :func:`bounded`'s alarm: a BaseException, so no ``except Exception`` of the code under test
    mistakes it for a bad file."""


@contextlib.contextmanager
def bounded(seconds: float = 10, extra_gib: float = 1):
    """The body fails with :class:`Hung` after ``seconds`` (SIGALRM interrupts a blocking open of a FIFO too) and
    with MemoryError past ``extra_gib`` more address space than the process holds now."""
    def on_alarm(*_):
        raise Hung(f"no result within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + int(extra_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def in_child(fn, timeout: float = 30, mem_gib: float = 1):
    """``fn()`` in a forked child bounded in time (killed after ``timeout``) and address space (``mem_gib`` more
    than now): for a call that may block in C code (pyarrow opening a FIFO), where no alarm reaches it. Returns
    ``fn()``'s (picklable) value, or re-raises its EmbedxError (message kept); anything else fails the test."""
    import pickle
    import select

    r, w = os.pipe()
    cap = _address_space() + int(mem_gib * (1 << 30))
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
            try:
                out = ("ok", fn())
            except EmbedxError as e:
                out = ("embedx", str(e))
            except BaseException as e:
                out = ("other", f"{type(e).__name__}: {e}")
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"no result within {timeout} s: a hang")
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:
        pytest.fail("the child died without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "embedx":
        raise EmbedxError(value)
    assert kind == "ok", value
    return value


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# -- tar shards ----------------------------------------------------------------------------------------------------
def _fix_checksum(raw: bytearray, o: int) -> None:
    raw[o + 148:o + 156] = b" " * 8
    raw[o + 148:o + 156] = b"%06o\0 " % sum(raw[o:o + 512])


def _member_offsets(path) -> list[int]:
    with tarfile.open(path) as tf:
        return [m.offset for m in tf.getmembers()]


NEG_512 = b"\xff" * 10 + b"\xfe\x00"  # -512 in GNU base-256: the next header is this one again


def _negative_size_shard(tmp_path, rng) -> str:
    """3 samples; the last member's size set to -512 (GNU base-256), its checksum valid: Python 3.11.7's tarfile
    seeks back to this header for ever (CVE-2025-8194)."""
    path = write_shards(tmp_path / "shards", paired_samples(rng, 3), 3)[0]
    raw = bytearray(open(path, "rb").read())
    o = _member_offsets(path)[-1]
    raw[o + 124:o + 136] = NEG_512
    _fix_checksum(raw, o)
    neg = tmp_path / "shards" / "neg.tar"
    neg.write_bytes(bytes(raw))
    os.remove(path)
    return str(neg)


def test_wds_negative_member_size_is_a_corrupt_shard_not_a_loop(tmp_path, rng):
    neg = _negative_size_shard(tmp_path, rng)
    with bounded(10):
        scan = _scan_shard(neg, _Want(None, None, None, None))
    assert [s["id"] for s in scan["samples"]] == ["neg.tar/000000.jpg", "neg.tar/000001.jpg"]
    assert "negative member size" in [e for e in scan["excluded"] if e.get("shard")][0]["error"]
    out = tmp_path / "s.zarr"
    rc, _, err = run_bounded("embed", "-q", "-m", "embedx-tiny", "-p", "none", "--data", f"wds:{neg}", "--out", out,
                             "--workers", "0", timeout=120, mem_gib=4)
    assert rc == 0, err
    meta = read_meta(str(out))
    assert meta["rows_committed"] == 2 and meta["source"]["truncated_shards"] == 1


def test_wds_compressed_shards_are_named_not_truncated(tmp_path, rng):
    path = write_shards(tmp_path / "shards", paired_samples(rng, 2), 2)[0]
    gz = tmp_path / "shards" / "a.tar.gz"
    gz.write_bytes(gzip.compress(open(path, "rb").read()))
    with bounded(10), pytest.raises(EmbedxError) as e:
        parse_source(f"wds:{gz}")
    assert "gzip-compressed tar is not supported; decompress it" in _one_line(e.value)


def _sparse_tar(path, big: int, caption: bytes = b"a caption") -> None:
    """One sample: a ``jpg`` member of ``big`` bytes (a hole: nothing on disk) and its ``txt`` caption."""
    with open(path, "wb") as f:
        info = tarfile.TarInfo("000000.jpg")
        info.size, info.mtime = big, 0
        f.write(info.tobuf(format=tarfile.GNU_FORMAT))
        f.seek(512 + -(-big // 512) * 512)
        info = tarfile.TarInfo("000000.txt")
        info.size, info.mtime = len(caption), 0
        f.write(info.tobuf(format=tarfile.GNU_FORMAT))
        f.write(caption + b"\0" * (-len(caption) % 512) + b"\0" * 1024)


def test_wds_image_member_above_the_cap_is_unreadable_without_a_read(tmp_path):
    shard = tmp_path / "big.tar"
    _sparse_tar(shard, IMAGE_CAP + 1)
    with bounded(20, extra_gib=0.2):  # the member is never read: a read would pass the cap
        src = parse_source(f"wds:{shard}")
        assert len(src) == 1
        with pytest.raises(OSError, match="above the 256 MiB cap"):
            src.load(0)


def test_wds_fifo_and_device_shards_are_refused_in_one_line(tmp_path):
    fifo = tmp_path / "a.tar"
    os.mkfifo(fifo)
    for spec, what in ((f"wds:{fifo}", "a FIFO"), (f"wds:file://{fifo}", "a FIFO"), ("wds:/dev/zero", "device")):
        with bounded(10), pytest.raises(EmbedxError) as e:
            parse_source(spec)
        msg = _one_line(e.value)
        assert what in msg and "not a regular file" in msg, msg
    with pytest.raises(EmbedxError) as e:
        read_classes(f"file://{fifo}")
    again = pickle.loads(pickle.dumps(e.value))  # as a Dask worker would send it back
    assert type(again) is type(e.value) and str(again) == str(e.value)


def test_classes_file_fifo_device_and_oversize_are_refused(tmp_path, rng):
    write_shards(tmp_path / "shards", [(f"{k}", {"png": _png(rng), "cls": b"0"}) for k in range(2)], 2)
    fifo = tmp_path / "names.txt"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(SMALL_CAP + 1)
    for path, what in ((str(fifo), "a FIFO, not a regular file"), (f"file://{fifo}", "a FIFO, not a regular file"),
                       ("/dev/zero", "a character device"), (str(big), "too large for a classes file")):
        with bounded(10, extra_gib=0.2), pytest.raises(EmbedxError) as e:
            read_classes(path)
        assert what in _one_line(e.value) and "classes file" in str(e.value), str(e.value)


def test_folder_image_above_the_cap_is_unreadable_without_a_read(tmp_path, rng):
    os.makedirs(tmp_path / "f" / "cat")
    os.makedirs(tmp_path / "f" / "dog")
    (tmp_path / "f" / "cat" / "a.png").write_bytes(_png(rng))
    with open(tmp_path / "f" / "dog" / "b.png", "wb") as f:
        f.truncate(IMAGE_CAP + 1)  # a hole: nothing on disk
    src = parse_source(f"folder:{tmp_path / 'f'}")
    with bounded(10, extra_gib=0.2):
        src.load(0)
        with pytest.raises(OSError, match="above the 256 MiB cap"):
            src.load(1)


# -- parquet: image paths that are not regular files ---------------------------------------------------------------
def test_parquet_paths_to_dev_zero_and_fifos_are_unreadable_images(tmp_path, rng):
    os.makedirs(tmp_path / "imgs")
    (tmp_path / "imgs" / "ok.png").write_bytes(_png(rng))
    fifo = tmp_path / "imgs" / "fifo.png"
    os.mkfifo(fifo)
    paths = ["imgs/ok.png", "file:///dev/zero", f"file://{fifo}", str(fifo)]
    pq.write_table(pa.table({"path": paths, "caption": [f"c{k}" for k in range(4)]}), tmp_path / "p.parquet")
    struct = pa.array([{"bytes": _png(rng), "path": None}, {"bytes": None, "path": "file:///dev/zero"},
                       {"bytes": None, "path": f"file://{fifo}"}, {"bytes": None, "path": "imgs/fifo.png"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct, "caption": [f"c{k}" for k in range(4)]}), tmp_path / "hf.parquet")
    src = parse_source(f"parquet:{tmp_path / 'p.parquet'}")  # a path column: in-process, bounded
    with bounded(10, extra_gib=0.5):
        src.load(0)
        for i, what in ((1, "a character device"), (2, "a FIFO"), (3, "a FIFO")):
            with pytest.raises(OSError, match=f"{what}, not a regular file"):
                src.load(i)
    out = tmp_path / "hf.zarr"  # a {bytes, path} struct: the real CLI, bounded
    rc, _, err = run_bounded("embed", "-q", "-m", "embedx-tiny", "-p", "none", "--data",
                             f"parquet:{tmp_path / 'hf.parquet'}", "--out", out, "--workers", "0", timeout=120,
                             mem_gib=4)
    assert rc == 0, err
    meta = read_meta(str(out))
    assert meta["rows_committed"] == 1, meta
    reasons = [s["error"] for s in meta["skipped"]]
    assert len(reasons) == 3, reasons
    assert sum("a character device, not a regular file" in r for r in reasons) == 1, reasons
    assert sum("a FIFO, not a regular file" in r for r in reasons) == 2, reasons


def test_parquet_file_that_is_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "t.parquet"
    os.mkfifo(fifo)
    for spec in (f"parquet:{fifo}", f"parquet:file://{fifo}"):
        with bounded(10), pytest.raises(EmbedxError) as e:
            parse_source(spec)
        assert "a FIFO, not a regular file" in _one_line(e.value)


# -- dumps ---------------------------------------------------------------------------------------------------------
def _fifo_in_place_of(path) -> None:
    os.remove(path)
    os.mkfifo(path)


def test_import_clip_retrieval_fifo_partition_is_one_line(tmp_path, rng):
    root = tmp_path / "cr"
    clip_retrieval_dir(root, rng, sizes=(5, 4))
    _fifo_in_place_of(root / "metadata" / "metadata_1.parquet")
    rc, _, err = run_bounded("import", "--from", "clip-retrieval", root, "--model", "embedx-tiny", "--out",
                             tmp_path / "s.zarr", timeout=120, mem_gib=4)
    assert rc == 2, err
    assert_one_line_error(rc, err, "metadata_1.parquet", "a FIFO, not a regular file")
    for k, sub in enumerate(("img_emb/img_emb_0.npy", "text_emb/text_emb_1.npy")):
        root = tmp_path / f"cr{k}"
        clip_retrieval_dir(root, rng, sizes=(5, 4))
        _fifo_in_place_of(root / sub)
        with bounded(10), pytest.raises(EmbedxError) as e:
            dumps.scan("clip-retrieval", str(root))
        assert sub in _one_line(e.value) and "a FIFO, not a regular file" in str(e.value), str(e.value)


@pytest.mark.parametrize("which", ["npz", "parquet"])
def test_import_datacomp_fifo_shard_is_one_line(tmp_path, rng, which):
    root = tmp_path / "dc"
    datacomp_dir(root, rng, sizes=(4, 3))
    stems = sorted(n[:-4] for n in os.listdir(root) if n.endswith(".npz"))
    _fifo_in_place_of(root / f"{stems[1 if which == 'npz' else 0]}.{which}")
    with pytest.raises(EmbedxError) as e:  # pyarrow opens the parquet files: in C, out of an alarm's reach
        in_child(lambda: len(dumps.scan("datacomp", str(root)).shards))
    assert f".{which} is a FIFO, not a regular file" in _one_line(e.value), str(e.value)


def test_import_npy_export_fifos_are_one_line(tmp_path):
    exp = tmp_path / "exp"
    os.makedirs(exp)
    np.save(exp / "images.npy", np.ones((2, 4), np.float16))
    os.mkfifo(exp / "texts.npy")
    os.mkfifo(exp / "embedx.json")
    with bounded(10), pytest.raises(EmbedxError) as e:
        dumps.scan("npy", str(exp))
    assert "embedx.json is a FIFO, not a regular file" in _one_line(e.value)
    os.remove(exp / "embedx.json")
    with bounded(10), pytest.raises(EmbedxError) as e:
        dumps.scan("npy", str(exp))
    assert "texts.npy is a FIFO, not a regular file" in _one_line(e.value)


def _npy_with_shape(path, shape: str) -> None:
    """A small valid float16 .npy whose header then claims ``shape`` (the header length kept)."""
    np.save(path, np.ones((4, 8), np.float16))
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + n].decode("latin1").replace("(4, 8)", shape)
    header = header.rstrip("\n").rstrip(" ")
    header = header + " " * (n - 1 - len(header)) + "\n"
    assert len(header) == n
    with open(path, "wb") as f:
        f.write(raw[:10] + header.encode("latin1") + raw[10 + n:])


@pytest.mark.parametrize("shape", ["(4611686018427387904, 1024)", "(-1, 8)", "(4, 0)"])
def test_npy_header_sizes_cannot_overflow_past_the_truncation_check(tmp_path, shape):
    exp = tmp_path / "exp"
    os.makedirs(exp)
    _npy_with_shape(exp / "images.npy", shape)
    with bounded(10), pytest.raises(EmbedxError) as e:
        dumps.NpyRows(str(exp / "images.npy"), "images.npy")
    msg = _one_line(e.value)
    assert "images.npy" in msg and ("truncated" in msg or "negative or zero" in msg), msg


# -- patterns ------------------------------------------------------------------------------------------------------
def test_brace_products_are_bounded_before_they_are_expanded():
    for pattern in ("s/{a,b}{0..9999999}.tar", "s/{0..99999}{0..99999}.tar", "{0..9}" * 8):
        with bounded(5, extra_gib=0.5), pytest.raises(EmbedxError) as e:
            expand_braces(pattern)
        assert f"more than {MAX_FILES:,} files" in _one_line(e.value)
    assert expand_braces("s/{a,b}{0..2}.tar") == ["s/a0.tar", "s/a1.tar", "s/a2.tar", "s/b0.tar", "s/b1.tar",
                                                  "s/b2.tar"]


# -- fuzzing -------------------------------------------------------------------------------------------------------
def _load_all(src) -> None:
    """Every item, as the embed loads them: any exception is an unreadable image (skipped and listed), except a
    MemoryError (a read without bound) or the guard's :class:`Hung`."""
    for i in range(len(src)):
        try:
            src.load(i)
        except MemoryError:
            raise
        except Exception:
            pass


def _valid_shard(tmp_path) -> bytes:
    rng = np.random.default_rng(7)
    samples = [(f"{k:06d}", {"png": _png(rng, 8, 8), "txt": f"caption {k}".encode(), "cls": b"1"}) for k in range(3)]
    return open(write_shards(tmp_path / "seed", samples, 3)[0], "rb").read()


_EDITS = st.lists(st.tuples(st.sampled_from(["byte", "size", "type", "trunc", "zero"]),
                            st.integers(0, 1 << 20), st.integers(0, 255), st.booleans()), min_size=1, max_size=4)


def _mutate(raw: bytes, edits) -> bytes:
    """Byte flips, truncations and header edits (size fields, including GNU base-256 negatives and huge values;
    type flags; checksums fixed or not) of a tar shard."""
    b = bytearray(raw)
    heads = [o for o in range(0, len(b) - 511, 512) if b[o + 257:o + 262] == b"ustar"] or [0]
    for kind, pos, val, fix in edits:
        if not b:
            break
        o = heads[pos % len(heads)]
        if kind == "byte":
            b[pos % len(b)] = val
        elif kind == "trunc":
            del b[pos % len(b):]
        elif kind == "zero":
            b[pos % len(b):pos % len(b) + 512] = bytes(min(512, len(b) - pos % len(b)))
        elif kind == "size" and o + 512 <= len(b):
            choices = [NEG_512, b"\xff" * 10 + bytes([0xFE - val % 8, 0]), b"\xff" * 11 + bytes([val]),
                       b"\x80" + bytes(10) + bytes([val]), b"%011o\0" % (pos * val), b"77777777777\0",
                       b"\x80" + b"\xff" * 11]
            b[o + 124:o + 136] = choices[val % len(choices)]
        elif kind == "type" and o + 512 <= len(b):
            b[o + 156] = b"0xgLK125S"[val % 9]
        if fix and kind in ("size", "type", "byte") and o + 512 <= len(b):
            _fix_checksum(b, o)
    return bytes(b)


FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(edits=_EDITS)
def test_fuzz_tar_shards_scan_and_load_cleanly(tmp_path_factory, edits):
    tmp = tmp_path_factory.mktemp("fz")
    shard = tmp / "s.tar"
    shard.write_bytes(_mutate(_valid_shard(tmp), edits))
    with bounded(10, extra_gib=0.5):
        scan = _scan_shard(str(shard), _Want(None, None, None, None))  # the scan, in this thread
        assert all(0 <= s["offset"] <= scan["size"] and s["size"] >= 0 for s in scan["samples"])
        try:
            src = parse_source(f"wds:{shard}")
        except EmbedxError as e:
            _one_line(e)
            return
        _load_all(src)


def _valid_parquet(tmp_path) -> bytes:
    rng = np.random.default_rng(7)
    imgs = [_png(rng, 8, 8) for _ in range(4)]
    path = tmp_path / "seed.parquet"
    pq.write_table(pa.table({"image": imgs, "caption": [f"caption {k}" for k in range(4)]}), path,
                   row_group_size=2)
    return open(path, "rb").read()


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(["byte", "byte", "trunc", "tail"]), st.integers(0, 2 ** 32 - 1),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_parquet_files_read_cleanly(tmp_path_factory, edits):
    tmp = tmp_path_factory.mktemp("fzp")
    b = bytearray(_valid_parquet(tmp))
    for kind, seed, val in edits:
        pos = random.Random(seed).randrange(1 << 30)  # uniform over the file (hypothesis favours small integers)
        if kind == "byte":
            b[pos % len(b)] = val
        elif kind == "trunc":
            del b[pos % len(b):]
        elif len(b) > 64:  # the footer (metadata length, thrift metadata): where sizes and offsets live
            b[len(b) - 1 - pos % 64] = val
    path = tmp / "t.parquet"
    path.write_bytes(bytes(b))
    with bounded(10, extra_gib=0.5):
        try:
            src = parse_source(f"parquet:{path}")
        except EmbedxError as e:
            _one_line(e)
            return
        _load_all(src)


def test_fuzz_found_shards_through_the_cli(tmp_path):
    """Mutations the fuzzer found, through the real CLI, bounded: exit 0 or one error line with exit 2. A middle
    member of size -512 (tarfile loops); a member turned into a pax header claiming 8 GiB (a read of 8 GiB)."""
    raw = _valid_shard(tmp_path)
    cases = [[("size", 3, 0, True)], [("type", 1, 1, True), ("size", 1, 5, True)]]
    for k, edits in enumerate(cases):
        shard = tmp_path / f"m{k}.tar"
        shard.write_bytes(_mutate(raw, edits))
        rc, _, err = run_bounded("embed", "-q", "-m", "embedx-tiny", "-p", "none", "--data", f"wds:{shard}",
                                 "--out", tmp_path / f"m{k}.zarr", "--workers", "0", timeout=120, mem_gib=4)
        assert rc in (0, 2), err
        if rc == 2:
            assert_one_line_error(rc, err)
        else:
            assert read_meta(str(tmp_path / f"m{k}.zarr"))["source"]["truncated_shards"] == 1
