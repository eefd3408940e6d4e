"""Property-based round trips (hypothesis): arrays of random shapes, norms, dtypes and label patterns go through
`import` and `measure`, and every measure equals the float64 brute force of its definition on the stored values."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedx import measures as M
from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.store import Store
from tests.test_measures import brute_force

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _arrays(data, paired: bool):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    n = data.draw(st.integers(3, 90), label="n")
    c = n if paired else data.draw(st.integers(2, 12), label="classes")
    d = data.draw(st.integers(1, 40), label="dim")  # d = 1: every row parallel to every other
    scale = data.draw(st.sampled_from([1e-2, 1.0, 300.0]), label="norm scale")
    x = rng.standard_normal((n, d)) * scale * rng.uniform(0.5, 2.0, (n, 1))
    t = rng.standard_normal((c, d)) * scale
    if paired:
        t[: n // 2] += 2 * x[: n // 2]
        return x, t, None
    y = rng.integers(0, c, n)
    pattern = data.draw(st.sampled_from(["all", "unlabelled", "empty_class", "singleton"]), label="labels")
    if pattern == "unlabelled":
        y[rng.random(n) < 0.3] = -1
        y[0], y[1] = 0, 1          # two labelled rows at least
    elif pattern == "empty_class":
        y[y == c - 1] = 0
    elif pattern == "singleton":
        y[y == 1] = 0
        y[n // 2] = 1
    return x, t, y


def _round_trip(tmp_path, x, t, y, dtype):
    for k, arr in (("x", x), ("t", t)):
        np.save(tmp_path / f"{k}.npy", arr)
    args = dict(images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), dtype=dtype, overwrite=True,
                chunk_rows=int(np.random.default_rng(len(x)).integers(1, len(x) + 1)))
    if y is None:
        args["paired"] = True
    else:
        np.save(tmp_path / "y.npy", y)
        args["labels"] = str(tmp_path / "y.npy")
    import_arrays(str(tmp_path / "s.zarr"), **args)
    return Store(str(tmp_path / "s.zarr"))


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("paired", [False, True])
def test_import_then_measure_equals_the_float64_definition(tmp_path, data, paired):
    x, t, y = _arrays(data, paired)
    dtype = data.draw(st.sampled_from(["float16", "float32"]), label="dtype")
    stored = np.vstack([x, t]).astype(dtype).astype(np.float64)
    moved = np.linalg.norm(stored - np.vstack([x, t]), axis=1) / np.linalg.norm(np.vstack([x, t]), axis=1)
    if (moved > 1e-3).any():  # a row float16 cannot hold (subnormal values): refused, never measured wrong
        with pytest.raises(EmbedxError, match="loses its direction"):
            _round_trip(tmp_path, x, t, y, dtype)
        return
    s = _round_trip(tmp_path, x, t, y, dtype)
    np.testing.assert_array_equal(s.images(), x.astype(dtype))  # stored as given, converted once
    got = M.compute(s)
    ref = brute_force(s.images(), s.texts(), s.labels(), paired)
    for k, v in ref.items():
        if np.isnan(v):
            assert np.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(v, abs=1e-5), k
