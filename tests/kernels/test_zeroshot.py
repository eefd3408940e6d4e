"""Zero-shot hit counts (kernels/ops/zeroshot.py): the torch op through the dispatch against the float64 reference and
against argmax, on ragged sizes and row steps, float16 inputs, one class, fewer than five classes, duplicate
(bit-identical) class texts and exact ties between different texts."""
import numpy as np
import pytest
import torch

from embedx import kernels as K


def _groups(t):
    """Index arrays of bit-identical rows (two or more), found independently of embedx.rows."""
    _, inv, cnt = np.unique(t, axis=0, return_inverse=True, return_counts=True)
    return [np.flatnonzero(inv.ravel() == u) for u in np.flatnonzero(cnt > 1)]


def _count(x, y, t, groups, step, rng):
    """The dispatch, adding into non-zero tensors (as callers accumulate); returns what it added."""
    c = len(t)
    base = [torch.from_numpy(rng.integers(0, 9, c)) for _ in range(2)]
    top1, top5 = base[0].clone(), base[1].clone()
    hit = torch.empty(min(step, len(x)), c)
    K.zeroshot_hits(torch.from_numpy(x).float(), torch.from_numpy(y), torch.from_numpy(t).float(), top1, top5, hit,
                    step=step, groups=[torch.from_numpy(g) for g in groups])
    return (top1 - base[0]).numpy(), (top5 - base[1]).numpy()


def _clear_rows(x, y, t, gap=1e-4):
    """Rows whose true logit is more than ``gap`` from every other text's, identical texts aside (float64)."""
    s = x.astype(np.float64) @ t.astype(np.float64).T
    d = np.abs(s - s[np.arange(len(y)), y][:, None])
    same = (t[None, :, :] == t[y][:, None, :]).all(2)
    return np.flatnonzero(np.where(same, np.inf, d).min(1) > gap)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["ragged", "one_class", "few_classes", "duplicate_texts"])
def test_zeroshot_hits_match_reference_and_argmax(rng, dtype, case):
    n, d = int(rng.integers(1, 400)), int(rng.integers(1, 40))
    c = {"one_class": 1, "few_classes": int(rng.integers(2, 5))}.get(case, int(rng.integers(5, 60)))
    t = rng.standard_normal((c, d)).astype(dtype)
    if case == "duplicate_texts" and c > 2:
        t[rng.integers(0, c, c // 2)] = t[0]    # several copies of class 0's text
        t[-1] = t[1]
    x = rng.standard_normal((n, d)).astype(dtype) * rng.uniform(0.1, 10, (n, 1)).astype(dtype)
    y = rng.integers(0, c, n)
    keep = _clear_rows(x, y, t)                  # float32 and float64 agree off round-off ties
    x, y = x[keep], y[keep]
    groups = _groups(t)
    got = _count(x, y, t, groups, int(rng.integers(1, 50)), rng)
    ref = K.zeroshot_hits_reference(x.astype(np.float64), y, t.astype(np.float64), groups)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    s = x.astype(np.float64) @ t.astype(np.float64).T
    if len(y):  # the lowest index wins among identical texts, as argmax
        np.testing.assert_array_equal(got[0], np.bincount(y[s.argmax(1) == y], minlength=c))
        rank = (np.argsort(-s, 1, kind="stable") == y[:, None]).argmax(1)
        np.testing.assert_array_equal(got[1], np.bincount(y[rank < 5], minlength=c))
    if c <= 5:
        np.testing.assert_array_equal(got[1], np.bincount(y, minlength=c))
    if case == "one_class":
        np.testing.assert_array_equal(got[0], [len(y)])
    if case == "duplicate_texts" and c > 2:
        assert groups and all(got[0][g[1:]].sum() == 0 for g in groups)  # a higher copy never wins


def test_exact_ties_between_different_texts_count_as_hits(rng):
    """Integer rows: logits exact in float32 and float64, ties frequent. A different text scoring the same as the
    true one does not rank ahead of it (only a strictly higher score does)."""
    n, c, d = 300, 12, 4
    x = rng.integers(-2, 3, (n, d)).astype(np.float16)
    t = rng.integers(-1, 2, (c, d)).astype(np.float32)
    t[5] = t[2]                                  # and one pair of identical texts, decided by index
    y = rng.integers(0, c, n)
    groups = _groups(t)
    got = _count(x, y, t, groups, 64, rng)
    ref = K.zeroshot_hits_reference(x, y, t, groups)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    s = x.astype(np.float64) @ t.T
    strict = (s > s[np.arange(n), y][:, None]).sum(1)
    same = (t[None, :, :] == t[y][:, None, :]).all(2)   # identical texts (text 2 = text 5, and chance ones)
    strict += (same & (np.arange(c)[None, :] < y[:, None])).sum(1)  # ... of lower index rank ahead
    np.testing.assert_array_equal(got[0], np.bincount(y[strict == 0], minlength=c))
    assert got[0].sum() > np.bincount(y[s.argmax(1) == y], minlength=c).sum()  # the ties did count


def test_kernels_match_what_measures_count(rng):
    """The op is the one measures and drift count with: the same counts as embedx.measures.stream.zeroshot_hits."""
    from embedx.measures.stream import zeroshot_hits as measures_hits

    n, c, d = 500, 20, 16
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    t = torch.from_numpy(rng.standard_normal((c, d)).astype(np.float32))
    t[7] = t[3]
    y = torch.from_numpy(rng.integers(0, c, n))
    groups = [torch.tensor([3, 7])]
    out = []
    for fn in (K.zeroshot_hits, measures_hits):
        top1, top5 = torch.zeros(c, dtype=torch.long), torch.zeros(c, dtype=torch.long)
        fn(x, y, t, top1, top5, torch.empty(100, c), step=100, groups=groups)
        out.append((top1, top5))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
