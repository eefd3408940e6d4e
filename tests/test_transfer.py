"""Transfer scores streamed from real stores against the in-memory float64 references, the separable-vs-shuffled
check, TransRate's class groups, and the CLI (registered as ``embedx transfer``)."""
import json

import numpy as np
import pytest

from embedx import transferability as T
from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.store import Store
from embedx.transferability import reference as R
from embedx.transferability import transrate as TR
from tests.conftest import assert_one_line_error, invoke, run_embedx

ALL = list(T.SCORES)


def _labels(rng, n, c):
    """Labels 0..c-1 with class 1 empty, class c-1 a single row, ~5% unlabelled (-1)."""
    y = rng.choice(np.array([k for k in range(c - 1) if k != 1]), n)
    y[rng.integers(n)] = c - 1
    y[(rng.random(n) < 0.05) & (y != c - 1)] = -1
    return y


def _data(rng, n, c, d, spread=0.8):
    """Class clusters (unnormalized rows of very different lengths) and class prompts near the class means."""
    centers = rng.standard_normal((c, d))
    y = _labels(rng, n, c)
    x = spread * centers[np.maximum(y, 0)] + rng.standard_normal((n, d))
    x *= rng.uniform(0.2, 5, (n, 1))
    t = centers + 0.5 * rng.standard_normal((c, d))
    return x.astype(np.float32), y, t.astype(np.float32)


def _store(tmp_path, x, y, t, dtype, name="s"):
    for k, v in (("x", x), ("y", y), ("t", t)):
        np.save(tmp_path / f"{name}.{k}.npy", v)
    path = str(tmp_path / f"{name}.zarr")
    import_arrays(path, images=str(tmp_path / f"{name}.x.npy"), texts=str(tmp_path / f"{name}.t.npy"),
                  labels=str(tmp_path / f"{name}.y.npy"), dtype=dtype, chunk_rows=97)
    return Store(path)


def _close(got, ref, rel):
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert np.isfinite(got[k]), k
        assert got[k] == pytest.approx(v, rel=rel, abs=1e-300), (k, got[k], v)


@pytest.mark.parametrize("n,c,d,dtype", [(1234, 7, 24, "float16"), (2001, 12, 64, "float32"),
                                         (650, 4, 130, "float32")])
def test_streamed_scores_equal_reference(tmp_path, rng, n, c, d, dtype):
    x, y, t = _data(rng, n, c, d)
    s = _store(tmp_path, x, y, t, dtype)
    assert s.n_images % s.chunk_rows and s.n_images > 5 * s.chunk_rows  # ragged, many chunks
    xs, ys, ts = s.images().astype(np.float64), s.labels(), s.texts().astype(np.float64)
    assert (ys == 1).sum() == 0 and (ys == c - 1).sum() == 1 and (ys == -1).sum() > 0
    got = T.compute(s, ALL)
    ref = R.compute(xs, ys, ts, ALL)
    # Same stored values on both sides: only summation order differs. hscore goes through pinv(Cov X): its
    # rounding error grows with the condition number of Cov X, small here (N >> d, rows not degenerate).
    xu = xs[ys >= 0] / np.linalg.norm(xs[ys >= 0], axis=1, keepdims=True)
    assert np.linalg.cond(np.cov(xu.T)) < 1e5
    _close(got, ref, rel=1e-7)
    # in-memory arrays go through the same streaming code (other blocks, so other rounding)
    _close(T.compute_arrays(xs, ys, ts, ALL), dict(got), rel=1e-9)
    # default: every score but gbc_diagonal; without texts, the label-only scores
    assert list(T.compute(str(tmp_path / "s.zarr"))) == list(T.DEFAULT)
    assert set(T.compute_arrays(xs, ys)) == set(T.DEFAULT) - {"leep", "nce"}
    assert set(got.timings) == set(ALL) | {T.SHARED} and all(v >= 0 for v in got.timings.values())


def test_singleton_and_empty_classes_are_finite(rng):
    x, y, t = _data(rng, 400, 6, 16)
    y[y == 3] = 4  # another empty class
    got = T.compute_arrays(x, y, t, ALL)
    _close(got, R.compute(x, y, t, ALL), rel=1e-7)


def test_separable_beats_shuffled_labels(rng):
    """The issue's "Done when": on well separated classes every score is higher than with shuffled labels."""
    c, d, n = 6, 32, 1200
    centers = rng.standard_normal((c, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    x = centers[y] + 0.15 * rng.standard_normal((n, d))
    t = centers + 0.05 * rng.standard_normal((c, d))
    sep = T.compute_arrays(x, y, t, ALL)
    shuffled = T.compute_arrays(x, rng.permutation(y), t, ALL)
    for k in ALL:
        assert sep[k] > shuffled[k], (k, sep[k], shuffled[k])
    assert sep["sfda"] > 0.9 and shuffled["sfda"] < 0.5
    assert sep["nce"] > -0.1 and shuffled["nce"] < -1  # -H(Y|Z): near 0 when the zero-shot argmax finds y


def test_transrate_class_groups_equal_one_group(tmp_path, rng, monkeypatch):
    x, y, t = _data(rng, 900, 6, 20)
    s = _store(tmp_path, x, y, t, "float32")
    one = T.compute(s, ["transrate", "hscore"])
    monkeypatch.setattr(TR, "BUDGET_BYTES", 1)  # one class per group: an extra pass per class
    assert len(TR.groups(np.arange(5), 20)) == 5
    grouped = T.compute(s, ["transrate", "hscore"])
    assert grouped["transrate"] == pytest.approx(one["transrate"], rel=1e-12)
    assert grouped["hscore"] == one["hscore"]


def test_bad_input_arrays(rng):
    x, y, t = _data(rng, 300, 4, 8)
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(EmbedxError, match="images row 17 contains NaN"):
        T.compute_arrays(bad, y, t)
    bad = x.copy()
    bad[250] = 0
    with pytest.raises(EmbedxError, match="images row 250 is all zeros"):
        T.compute_arrays(bad, y, t, ["hscore"])
    with pytest.raises(EmbedxError, match="texts row 2"):
        tt = t.copy()
        tt[2] = np.inf
        T.compute_arrays(x, y, tt, ["leep"])
    with pytest.raises(EmbedxError, match="unknown transfer score 'foo'; choose from hscore, gbc, gbc_diagonal"):
        T.compute_arrays(x, y, t, ["hscore", "foo"])
    with pytest.raises(EmbedxError, match="at least 2 classes"):
        T.compute_arrays(x, np.where(y == 0, 0, -1), t)
    with pytest.raises(EmbedxError, match="need the class text embeddings"):
        T.compute_arrays(x, y, None, ["nce"])
    with pytest.raises(EmbedxError, match="labels out of range"):
        T.compute_arrays(x, np.where(y == 0, 9, y), t)
    with pytest.raises(EmbedxError, match="one entry per image"):
        T.compute_arrays(x, y[:-1], t)
    with pytest.raises(EmbedxError, match="logit_scale"):
        T.compute_arrays(x, y, t, ["leep"], logit_scale=-1.0)


def test_paired_store_is_refused(tmp_path, rng):
    x = rng.standard_normal((50, 8)).astype(np.float32)
    np.save(tmp_path / "p.npy", np.stack([x, x + 0.1]))
    import_arrays(str(tmp_path / "p.zarr"), paired_array=str(tmp_path / "p.npy"))
    with pytest.raises(EmbedxError, match=r"transfer scores need class labels \(this store is paired\)"):
        T.compute(str(tmp_path / "p.zarr"))
    rc, out, err = run_embedx("transfer", tmp_path / "p.zarr", "--json")
    assert_one_line_error(rc, err, "need class labels", "paired")


def test_cli_json_matches_compute_and_bad_input(tmp_path, rng):
    x, y, t = _data(rng, 700, 5, 16)
    s = _store(tmp_path, x, y, t, "float16")
    path = str(tmp_path / "s.zarr")
    r = invoke("transfer", path, "--json", "--scores", "hscore,gbc_diagonal,nce,leep", "--logit-scale", "50",
               "--out", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    ref = T.compute(s, ["hscore", "gbc_diagonal", "nce", "leep"], logit_scale=50.0)
    head = {"schema", "embedx_version", "created", "stores", "options"}  # embedx.provenance
    assert set(list(got)[:len(head)]) == head  # the header first, then the scores
    scores = {k: v for k, v in got.items() if k not in head}
    assert list(scores) == list(ref) and scores == pytest.approx(dict(ref), rel=1e-12)
    assert got["schema"] == "embedx.transfer/1" and got["stores"]["store"]["path"] == path
    assert got["options"] == {"scores": ["hscore", "gbc_diagonal", "nce", "leep"], "logit_scale": 50.0}
    assert json.load(open(tmp_path / "t.json")) == got
    r = invoke("transfer", path)  # the table: every default score, its seconds, what higher means
    assert r.exit_code == 0, r.output
    for k in T.DEFAULT:
        assert k in r.output
    assert "higher" in r.output
    rc, out, err = run_embedx("transfer", path, "--scores", "hscore,nope")
    assert_one_line_error(rc, err, "unknown transfer score 'nope'", "hscore, gbc")
    rc, out, err = run_embedx("transfer", tmp_path / "missing.zarr")
    assert_one_line_error(rc, err, "no store at")
    r = invoke("transfer", "--help")
    assert r.exit_code == 0 and "tr(pinv(Cov X) Cov g)" in r.output and "Example" in r.output
