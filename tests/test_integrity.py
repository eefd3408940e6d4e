"""Content checksums: the NH2 kernel against its definition, and every streaming reader checking every chunk it
reads (a chunk overwritten with another valid chunk of the right size is refused by measure, transfer and drift,
never turned into a number)."""
import os
import shutil

import numpy as np
import pytest

from embedx import measures, transfer
from embedx.errors import StoreError
from embedx.importer import import_arrays
from embedx.kernels.content_hash import BLOCK_WORDS, content_hash, content_hash_reference
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def _splitmix64(i: int) -> int:
    z = (i + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _nh2_literal(data: bytes) -> int:
    """The module docstring's formula in Python integers, word by word (independent of numpy and numba)."""
    data = bytes(data)
    block = 4 * BLOCK_WORDS
    data += b"\0" * ((-len(data)) % block or (block if not data else 0))
    total = 0
    for b in range(len(data) // block):
        w = [int.from_bytes(data[b * block + 4 * j: b * block + 4 * j + 4], "little") for j in range(BLOCK_WORDS)]
        k = [_splitmix64(j) & M32 for j in range(BLOCK_WORDS)]
        half = BLOCK_WORDS // 2
        h = sum(((w[j] + k[j]) & M32) * ((w[j + half] + k[j + half]) & M32) for j in range(half)) & M64
        l0, l1 = _splitmix64((1 << 32) + 2 * b) & M32, _splitmix64((1 << 32) + 2 * b + 1) & M32
        total = (total + (((h & M32) + l0) & M32) * (((h >> 32) + l1) & M32)) & M64
    return total


@pytest.mark.parametrize("n_bytes", [0, 1, 3, 4, 1023, 1024, 1025, 3000])
def test_nh2_kernel_and_reference_follow_the_formula(rng, n_bytes):
    data = rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    want = _nh2_literal(data)
    assert content_hash_reference(data) == want
    assert content_hash(data) == want


@pytest.mark.parametrize("dtype,shape", [("float16", (257, 512)), ("float32", (33, 7)), ("int32", (1001,)),
                                         ("float16", (1, 3))])
def test_nh2_kernel_matches_the_reference_on_ragged_arrays(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    assert content_hash(x) == content_hash_reference(x) == content_hash(x.tobytes())


def test_nh2_changes_with_any_bit_flip_swap_or_move(rng):
    x = rng.standard_normal((64, 512)).astype(np.float16)
    h = content_hash(x)
    raw = bytearray(x.tobytes())
    for pos in rng.integers(0, len(raw), 200):  # one bit anywhere
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        assert content_hash(bytes(flipped)) != h
    two = bytearray(raw)  # the top bits of two words: a plain sum of products mod 2^32 would miss this
    two[3] ^= 0x80
    two[7] ^= 0x80
    assert content_hash(bytes(two)) != h
    assert content_hash(x[[1, 0] + list(range(2, 64))]) != h  # two rows swapped
    assert content_hash(np.roll(x, 1, axis=1)) != h           # values moved within rows
    assert content_hash(-x) != h


def _store(tmp_path, rng, name, n=300, d=8, c=5, paired=False, seed_shift=0.0, chunk_rows=64, codec="none"):
    x = rng.standard_normal((n, d)).astype(np.float32) + seed_shift
    np.save(tmp_path / f"{name}x.npy", x)
    kw = {}
    if paired:
        np.save(tmp_path / f"{name}t.npy", x + 0.1 * rng.standard_normal((n, d)).astype(np.float32))
        kw["paired"] = True
    else:
        np.save(tmp_path / f"{name}t.npy", rng.standard_normal((c, d)).astype(np.float32))
        np.save(tmp_path / f"{name}y.npy", rng.integers(-1, c, n))
        kw["labels"] = str(tmp_path / f"{name}y.npy")
    out = str(tmp_path / f"{name}.zarr")
    import_arrays(out, images=str(tmp_path / f"{name}x.npy"), texts=str(tmp_path / f"{name}t.npy"),
                  chunk_rows=chunk_rows, codec=codec, **kw)
    return out


@pytest.mark.parametrize("paired", [False, True])
def test_every_reader_checks_every_chunk_it_reads(tmp_path, rng, paired):
    out = _store(tmp_path, rng, "s", paired=paired)
    runs = [dict(), dict(metrics=["silhouette_euclidean"]), dict(metrics=["zeroshot_top1"])]
    runs += [dict(knn="faiss")] if paired else [dict(silhouette_labels="class"), dict(per_class=True)]
    for kw in runs:
        s = Store(out)
        res = measures.compute(s, **kw)
        # the modality silhouette alone needs no labels: the planner runs no pass that reads them
        labels = not paired and kw.get("metrics") != ["silhouette_euclidean"]
        read = ("images/embeddings", "texts/embeddings") + (("images/labels",) if labels else ())
        assert s.chunks_verified() == {k: list(range(v)) if k in read else [] for k, v in s.content_chunks().items()}
        n = 10 if paired else 6 + 5 * labels
        assert res["integrity"] == {"chunks_verified": n, "chunks_recorded": n}
    if not paired:
        s = Store(out)
        transfer.compute(s)
        seen = s.chunks_verified()
        assert seen["images/embeddings"] == list(range(5)) and seen["images/labels"] == list(range(5))


@pytest.mark.parametrize("codec", ["none", "zstd1"])
def test_a_chunk_from_another_store_is_refused_wherever_it_sits(tmp_path, rng, codec):
    """Each chunk in turn replaced by the same chunk of a store of identical shape (valid data, right size, so
    lengths and decoding cannot tell): measure, transfer and drift name it; never a number."""
    good = _store(tmp_path, rng, "a", codec=codec)
    other = _store(tmp_path, rng, "b", seed_shift=0.5, codec=codec)
    for k in range(5):
        bad = str(tmp_path / f"bad{k}.zarr")
        shutil.copytree(good, bad)
        shutil.copyfile(os.path.join(other, "images", "embeddings", "c", str(k), "0"),
                        os.path.join(bad, "images", "embeddings", "c", str(k), "0"))
        what = f"images/embeddings chunk {k} (rows {64 * k}..{min(64 * k + 63, 299)}): content checksum mismatch"
        for cmd in (["measure", bad], ["measure", bad, "--metrics", "silhouette_euclidean"], ["transfer", bad],
                    ["drift", good, bad]):
            r = invoke(*cmd)
            assert_one_line_error(r.exit_code, r.stderr, what, "damaged")
        with pytest.raises(StoreError, match="content checksum mismatch"):
            Store(bad).images()
    r = invoke("measure", good)
    assert r.exit_code == 0 and "checksums: 11 of 11 chunks read and matched" in r.stdout, r.stdout + r.stderr


def test_random_access_reads_of_part_of_a_chunk_are_not_checked_but_whole_chunks_are(tmp_path, rng):
    out = _store(tmp_path, rng, "s")
    s = Store(out)
    s.read_images_into(10, np.empty((40, 8), np.float16))  # inside chunk 0: nothing whole to check
    assert s.chunks_verified()["images/embeddings"] == []
    s.read_images_into(60, np.empty((140, 8), np.float16))  # rows 60..199: chunks 1 and 2 whole
    assert s.chunks_verified()["images/embeddings"] == [1, 2]
    s.read_images_into(256, np.empty((44, 8), np.float16))  # the last chunk (rows 256..299) is whole
    assert s.chunks_verified()["images/embeddings"] == [1, 2, 4]
    assert Store(out, verify_content=False).content_chunks() == {}

