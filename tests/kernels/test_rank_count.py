"""Rank counts (kernels/ops/rank_count.py): torch and Triton (TRITON_INTERPRET=1 on CPU) against the float64
reference on fresh random ragged inputs, and the recall@k they give against dense similarity + stable argsort."""
import numpy as np
import pytest
import torch

from embedx import kernels as K
from tests.kernels.conftest import IMPLS, unit as _unit


def _run(impl, rng, a, b, a_thr, b_thr, pos, row_offset=0, add=False):
    args = [torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(a_thr), torch.from_numpy(b_thr),
            torch.from_numpy(pos), row_offset]
    base = [torch.from_numpy(rng.integers(0, 9, len(x))) for x in (a, b)] if add else [None, None]
    out = [o.clone() for o in base] if add else [None, None]  # counts are added into the caller's tensors
    if impl == "torch":
        got = K.rank_count_torch(*args, *out, block_rows=int(rng.integers(1, 40)), block_cols=int(rng.integers(1, 70)))
    else:
        got = K.rank_count_triton(*args, *out)
    assert all(g.dtype == torch.long for g in got)
    return [(g - b0 if add else g).numpy() for g, b0 in zip(got, base)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "one_row", "one_col", "offset_and_no_positive"])
def test_rank_count_matches_reference(rng, impl, dtype, case):
    m = 1 if case == "one_row" else int(rng.integers(2, 120))
    n = 1 if case == "one_col" else int(rng.integers(2, 200))
    d = int(rng.integers(1, 70))
    a, b = _unit(rng, m, d).astype(dtype), _unit(rng, n, d).astype(dtype)
    row_offset = int(rng.integers(1, 500)) if case == "offset_and_no_positive" else 0
    pos = rng.integers(row_offset - 3, row_offset + m + 3, n)  # several positives per row; some not among the rows
    a_thr, b_thr = rng.uniform(-0.3, 0.3, m), rng.uniform(-0.3, 0.3, n)
    if case == "offset_and_no_positive":
        pos[pos == row_offset] = row_offset + 1
        a_thr[0] = np.inf                # a row with no positives: nothing ranks above it
    got = _run(impl, rng, a, b, a_thr, b_thr, pos, row_offset, add=bool(rng.integers(2)))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    # exact, but for a score within float32 round-off of its threshold (either way is right there)
    lo = K.rank_count_reference(a64, b64, a_thr + 1e-5, b_thr + 1e-5, pos, row_offset)
    hi = K.rank_count_reference(a64, b64, a_thr - 1e-5, b_thr - 1e-5, pos, row_offset)
    for g, low, high in zip(got, lo, hi):
        assert g.shape == low.shape and (low <= g).all() and (g <= high).all()
    # the bounds are (nearly) exact: at most one in ten counts (and at least one: a single row or column) has a
    # score within round-off of its threshold
    loose = int((lo[0] != hi[0]).sum() + (lo[1] != hi[1]).sum())
    assert loose <= max(1, (m + n) // 10), loose
    if case == "offset_and_no_positive":
        assert got[0][0] == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_positives_are_masked_and_ties_count_for_the_query(rng, impl):
    """Exactly representable scores: a tie with the threshold does not count; a positive never does."""
    m, n, d = 5, 9, 4
    a = rng.integers(-2, 3, (m, d)).astype(np.float32)
    b = rng.integers(-2, 3, (n, d)).astype(np.float32)
    pos = rng.integers(0, m, n)
    s = a.astype(np.float64) @ b.astype(np.float64).T
    b_thr = s[pos, np.arange(n)]                     # every column's positive score: ties are frequent
    a_thr = np.array([s[i, pos == i].max() if (pos == i).any() else np.inf for i in range(m)])
    b_thr_low = b_thr - 100                          # everything but the positive counts
    ref = K.rank_count_reference(a, b, a_thr, b_thr_low, pos)
    np.testing.assert_array_equal(ref[1], np.full(n, m - 1))
    for thr in (b_thr, b_thr_low):
        ref = K.rank_count_reference(a, b, a_thr, thr, pos)
        got = _run(impl, rng, a, b, a_thr, thr, pos)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    strict = [((s[i] > a_thr[i]) & (pos != i)).sum() for i in range(m)]
    np.testing.assert_array_equal(got[0], strict)


@pytest.mark.parametrize("impl", IMPLS)
def test_streamed_blocks_add_up(rng, impl):
    """Row blocks (row_offset) and column blocks streamed into the same count tensors give the whole counts."""
    m, n, d = 70, 90, 16
    a, b = _unit(rng, m, d).astype(np.float32), _unit(rng, n, d).astype(np.float32)
    pos = rng.integers(0, m, n)
    s = a.astype(np.float64) @ b.astype(np.float64).T
    b_thr = s[pos, np.arange(n)]
    a_thr = np.array([s[i, pos == i].max() if (pos == i).any() else np.inf for i in range(m)])
    ref = K.rank_count_reference(a, b, a_thr, b_thr, pos)
    fn = K.rank_count_torch if impl == "torch" else K.rank_count_triton
    rc, cc = torch.zeros(m, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for r0, r1 in ((0, 33), (33, m)):
        for c0, c1 in ((0, 50), (50, n)):
            fn(torch.from_numpy(a[r0:r1]), torch.from_numpy(b[c0:c1]), torch.from_numpy(a_thr[r0:r1]),
               torch.from_numpy(b_thr[c0:c1]), torch.from_numpy(pos[c0:c1]), r0, rc[r0:r1], cc[c0:c1])
    np.testing.assert_array_equal(rc.numpy(), ref[0])
    np.testing.assert_array_equal(cc.numpy(), ref[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_counts_give_dense_argsort_recall(rng, impl, monkeypatch):
    """recall@k from the counts (through the dispatch) = float64 dense similarity + stable argsort, with
    several captions per image."""
    from embedx.measures.retrieval import recall_at_k

    monkeypatch.setenv("EMBEDX_KERNEL", impl)
    n, d = int(rng.integers(40, 160)), int(rng.integers(4, 40))
    groups = np.sort(rng.integers(0, n // 2, n))
    _, groups = np.unique(groups, return_inverse=True)
    x = _unit(rng, n, d)
    x = x[np.searchsorted(groups, groups)]           # rows of one item share the image
    t = _unit(rng, n, d)
    t[: n // 2] += 1.5 * x[: n // 2]                 # half of the captions aligned: recall neither 0 nor 1
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    got = recall_at_k(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(t.astype(np.float32)), groups)
    first = np.unique(groups, return_index=True)[1]
    sim = x[first] @ t.T
    u = np.arange(len(first))
    for k in (1, 5, 10):
        i2t = (groups[np.argsort(-sim, 1, kind="stable")[:, :k]] == u[:, None]).any(1).mean()
        t2i = (np.argsort(-sim.T, 1, kind="stable")[:, :k] == groups[:, None]).any(1).mean()
        assert got[f"i2t_recall@{k}"] == pytest.approx(i2t, abs=1e-12)
        assert got[f"t2i_recall@{k}"] == pytest.approx(t2i, abs=1e-12)
    assert 0 < got["t2i_recall@1"] < 1


def _random_ties(rng, m, n):
    """Group ids (-1: none) and skip ids (-2: none) for both sides, with plenty of matches."""
    skip = (lambda k: np.where((v := rng.integers(-2, 3, k)) == -1, -2, v))  # -2 or a group id, never -1
    return rng.integers(-1, 3, m), skip(m), rng.integers(-1, 3, n), skip(n)


@pytest.mark.parametrize("impl", IMPLS)
def test_rank_count_skips_the_exact_tie_groups(rng, impl):
    m, n, d = int(rng.integers(2, 90)), int(rng.integers(2, 150)), int(rng.integers(2, 40))
    a, b = _unit(rng, m, d).astype(np.float32), _unit(rng, n, d).astype(np.float32)
    pos = rng.integers(-3, m + 3, n)
    a_thr, b_thr = rng.uniform(-0.3, 0.3, m), rng.uniform(-0.3, 0.3, n)
    ties = _random_ties(rng, m, n)
    args = [torch.from_numpy(v) for v in (a, b, a_thr, b_thr, pos)]
    tt = tuple(torch.from_numpy(v) for v in ties)
    if impl == "torch":
        got = K.rank_count_torch(*args, block_rows=int(rng.integers(1, 30)), block_cols=int(rng.integers(1, 50)),
                                 ties=tt)
    else:
        got = K.rank_count_triton(*args, ties=tt)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    lo = K.rank_count_reference(a64, b64, a_thr + 1e-5, b_thr + 1e-5, pos, ties=ties)
    hi = K.rank_count_reference(a64, b64, a_thr - 1e-5, b_thr - 1e-5, pos, ties=ties)
    plain = K.rank_count_reference(a64, b64, a_thr, b_thr, pos)
    for g, low, high in zip(got, lo, hi):
        assert ((low <= g.numpy()) & (g.numpy() <= high)).all()
    assert (lo[0] < plain[0]).any() or (lo[1] < plain[1]).any()  # the skips took candidates out
