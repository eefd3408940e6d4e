"""Content checksums (kernels/ops/content_hash.py): the NH2 kernel and its reference against the formula written out in
Python integers, on ragged arrays, and its sensitivity to any bit flip, swap or move."""
import numpy as np
import pytest

from embedx.kernels.ops import content_hash as ch
from embedx.kernels.ops.content_hash import BLOCK_WORDS, content_hash, content_hash_numpy, content_hash_reference


def _numba_hash(data) -> int:
    """``content_hash`` on its numba path (the one a process takes once it has hashed NUMBA_AFTER_BYTES)."""
    raw = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), np.uint8)
    full = len(raw) // (4 * BLOCK_WORDS)
    tail = ch._words(raw[full * 4 * BLOCK_WORDS:]) if len(raw) == 0 or len(raw) % (4 * BLOCK_WORDS) else \
        np.empty(0, np.uint32)
    return int(ch.numba_kernel()(raw[: full * 4 * BLOCK_WORDS].view("<u4"), ch.BLOCK_KEYS, full, tail))


IMPLS = {"default": content_hash, "numpy": content_hash_numpy, "numba": _numba_hash}

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
    assert {name: f(data) for name, f in IMPLS.items()} == dict.fromkeys(IMPLS, want)


@pytest.mark.parametrize("dtype,shape", [("float16", (257, 512)), ("float32", (33, 7)), ("int32", (1001,)),
                                         ("float16", (1, 3))])
def test_nh2_kernel_matches_the_reference_on_ragged_arrays(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    want = content_hash_reference(x)
    for f in IMPLS.values():
        assert f(x) == want == f(x.tobytes())
    assert content_hash_numpy(x[:, ::2] if x.ndim == 2 else x[::2]) == content_hash_reference(
        np.ascontiguousarray(x[:, ::2] if x.ndim == 2 else x[::2]))  # strided views hash their values


def test_content_hash_switches_to_numba_after_numpy_budget(rng, monkeypatch):
    """A process hashes in numpy until NUMBA_AFTER_BYTES, then in numba: the same values either way."""
    monkeypatch.setattr(ch, "_numba", None)
    monkeypatch.setattr(ch, "_hashed", 0)
    monkeypatch.setattr(ch, "NUMBA_AFTER_BYTES", 3000)
    xs = [rng.standard_normal(700).astype(np.float32) for _ in range(3)]
    got = [content_hash(x) for x in xs]
    assert ch._numba is not None and ch._hashed == 2 * 2800  # two in numpy, the third in numba
    assert got == [content_hash_reference(x) for x in xs]


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
