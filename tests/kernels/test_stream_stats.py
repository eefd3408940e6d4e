"""Fused stream statistics (kernels/ops/stream_stats.py): numba and torch against the float64 reference (norms, dots,
per-class sums), bad rows flagged, every float16 widened exactly; the class pass built on it."""
import numpy as np
import pytest
import torch

from embedx import kernels as K


@pytest.mark.parametrize("impl", ["numba", "numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("case", ["ragged", "one_class", "empty_classes_and_unlabelled", "one_vector"])
def test_fused_stream_stats_match_reference(rng, case, dtype, impl):
    n, d = int(rng.integers(1, 700)), int(rng.integers(1, 130))
    c = 1 if case == "one_class" else int(rng.integers(2, 40))
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 20, (n, 1))).astype(dtype)
    x[np.abs(x).sum(1) == 0, 0] = 1  # zero rows are tested below
    y = rng.integers(0, c, n)
    if case == "empty_classes_and_unlabelled":
        y[y == 0] = -1          # class 0 empty, its rows unlabelled
    vs = rng.standard_normal((1 if case == "one_vector" else 2, d))
    acc0 = rng.standard_normal((c + 1, d)).astype(np.float32)  # the kernel adds into the caller's sums
    norms, dots, acc = K.stream_stats(x, y, vs, c, acc0.copy(), impl=impl)
    ref = K.stream_stats_reference(x.astype(np.float64), y, vs, c)
    np.testing.assert_allclose(norms, ref[0], rtol=1e-5)
    np.testing.assert_allclose(dots[:, : len(vs)], ref[1], atol=1e-5)
    np.testing.assert_array_equal(dots[:, len(vs):], 0)
    np.testing.assert_allclose(acc - acc0, ref[2], atol=1e-4)


@pytest.mark.parametrize("impl", ["numba", "numpy", "torch"])
def test_fused_stream_stats_flag_bad_rows_and_widen_every_float16_exactly(rng, impl):
    # every finite float16 bit pattern (subnormals included), 512 to a row: norms as float64 of the same values
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    fin = h[np.isfinite(h)]
    fin = fin[: len(fin) // 512 * 512].reshape(-1, 512)
    norms, _, _ = K.stream_stats(fin, np.zeros(len(fin), np.int64), np.zeros((2, 512)), 1, impl=impl)
    np.testing.assert_allclose(norms, np.linalg.norm(fin.astype(np.float64), axis=1), rtol=1e-6)
    tiny = np.zeros((3, 8), np.float16)
    tiny[0, 3] = np.float16(6e-8)  # the smallest subnormal: norm 2^-24
    tiny[1] = np.float16(1e-7)     # a row of subnormals
    tiny[2] = np.float16(3e-3)     # a small normal row
    norms, dots, acc = K.stream_stats(tiny, [0, 0, 1], np.ones((2, 8)), 2, impl=impl)
    ref = K.stream_stats_reference(tiny, [0, 0, 1], np.ones((2, 8)), 2)
    np.testing.assert_allclose(norms, ref[0], rtol=1e-6)
    np.testing.assert_allclose(dots, ref[1], rtol=1e-6)
    np.testing.assert_allclose(acc, ref[2], rtol=1e-6, atol=1e-7)
    for dtype in ("float16", "float32"):
        x = rng.standard_normal((40, 16)).astype(dtype)
        x[3, 5], x[9, 0], x[11, 15] = np.nan, np.inf, -np.inf
        x[20] = 0
        acc = np.zeros((3, 16), np.float32)
        norms, dots, acc = K.stream_stats(x, rng.integers(-1, 2, 40), rng.standard_normal((2, 16)), 2, acc, impl=impl)
        assert np.flatnonzero(np.isnan(norms)).tolist() == [3, 9, 11]
        assert np.flatnonzero(norms == 0).tolist() == [20]
        ok = np.ones(40, bool)
        ok[[3, 9, 11, 20]] = False
        assert np.isfinite(acc).all() and np.isfinite(dots[ok]).all()
    with pytest.raises(ValueError, match="labels"):
        K.stream_stats(x, np.full(40, 2), np.zeros((2, 16)), 2, impl=impl)


def test_class_pass_chunks_merge_to_one_partial(tmp_path, rng):
    """Chunk partials (any split, any thread count) add up to the float64 sums of the definition."""
    from embedx.formats.arrays import import_arrays
    from embedx.measures.stream import PassConfig, Partial, chunk_partial, class_pass, normalized
    from embedx.store import Store

    n, d, c = 3000, 48, 9
    x = rng.standard_normal((n, d)).astype(np.float16)
    y = rng.integers(-1, c, n)
    t = normalized(rng.standard_normal((c, d)))
    hint = torch.from_numpy(rng.standard_normal(d))
    cfg = PassConfig(texts=t, text_sum=t.double().sum(0), n_texts=c, n_images=n, sum_x_hint=hint, zeroshot=True)
    for k, arr in (("x", x), ("t", t.numpy()), ("y", y)):
        np.save(tmp_path / f"{k}.npy", arr)
    import_arrays(str(tmp_path / "s.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), chunk_rows=256)
    s = Store(str(tmp_path / "s.zarr"))
    cuts = [0, 1, 700, 701, 2999, n]
    split = Partial()
    for a, b in zip(cuts[:-1], cuts[1:]):
        split = split.merge(chunk_partial(x[a:b], y[a:b], cfg, a))
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    ref_sums = np.zeros((c, d))
    np.add.at(ref_sums, y[y >= 0], xn[y >= 0])
    logits = xn[y >= 0] @ t.double().numpy().T
    yl = y[y >= 0]
    better = (logits > logits[np.arange(len(yl)), yl][:, None]).sum(1)
    passes = [class_pass(s, cfg, threads=k, impl="numba") for k in (1, 2, 3)] + [class_pass(s, cfg, impl="torch"),
                                                                              class_pass(s, cfg, impl="numpy"),
                                                                              class_pass(s, cfg)]
    for p in [split] + passes:
        np.testing.assert_allclose(p.class_sum, ref_sums, atol=1e-4)
        np.testing.assert_allclose(p.sum_x, xn.sum(0), atol=1e-4)
        np.testing.assert_array_equal(p.top1, np.bincount(yl[better == 0], minlength=c))
        np.testing.assert_array_equal(p.top5, np.bincount(yl[better < 5], minlength=c))
        np.testing.assert_array_equal(p.class_count, np.bincount(yl, minlength=c))
        assert p.n == n and p.cos_sum == pytest.approx(split.cos_sum, abs=1e-6)
