"""``--silhouette auto`` (the default), measures printed as they finish, and Ctrl-C during ``measure``.

Auto's threshold is forced to 0 s through ``EMBEDX_SILHOUETTE_AUTO_SECONDS`` to take the sampled branch on small
stores; references are sklearn's float64 silhouette values.
"""
import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples

import embedx
from embedx import measures as M
from embedx.formats.arrays import import_arrays
from embedx.measures.silhouette import AUTO_ENV
from embedx.store import Store
from tests.conftest import assert_one_line_error, embedx_cmd, invoke


def _store(tmp_path, n, d, c=3, chunk_rows=1024, seed=0, name="s.zarr"):
    """A class store of n float32 rows (chunks of ``chunk_rows``: the exact silhouette's block pairs are whole
    chunks of about 4096 rows, so n > 4096 gives several pairs) -> (store, x, t)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) + 0.5).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    for k, a in (("x", x), ("t", t), ("y", rng.integers(0, c, n))):
        np.save(tmp_path / f"{k}.npy", a)
    import_arrays(str(tmp_path / name), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), dtype="float32", chunk_rows=chunk_rows)
    return Store(str(tmp_path / name)), x, t


def _reference(x, t):
    """sklearn's per-point silhouette values of the unit rows labelled by modality (float64)."""
    pts = np.vstack([x, t]).astype(np.float64)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    return silhouette_samples(pts, [1] * len(x) + [0] * len(t))


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
    """4600 points of d = 8: two block pairs' worth of rows, exact in well under a second."""
    return _store(tmp_path_factory.mktemp("auto"), 4600, 8)


def test_auto_is_exact_under_its_threshold(two_blocks):
    s, x, t = two_blocks
    r = M.compute(s, ["silhouette_euclidean"])  # the default: auto, far under a minute here
    assert r.info["silhouette_method"] == {"silhouette_euclidean": "exact"} and not r.estimates
    assert r["silhouette_euclidean"] == pytest.approx(_reference(x, t).mean(), abs=1e-5)
    assert r.provenance["options"]["silhouette"] == "auto"


def test_auto_samples_over_its_threshold_seeded_and_deterministic(two_blocks, monkeypatch):
    s, x, t = two_blocks
    monkeypatch.setenv(AUTO_ENV, "0")
    r = M.compute(s, ["gap", "silhouette_euclidean"], sample_size=500, seed=7)
    assert r.info["silhouette_method"] == {"silhouette_euclidean": "sampled"}
    est = r.estimates["silhouette_euclidean"]
    assert est["auto"]["limit_s"] == 0 and est["auto"]["projected_exact_s"] > 0
    total = len(x) + len(t)
    ids = np.sort(np.random.default_rng(7).choice(total, 500, replace=False))  # uniform, without replacement
    vals = _reference(x, t)[ids]
    assert r["silhouette_euclidean"] == pytest.approx(vals.mean(), abs=1e-5)
    se = vals.std(ddof=1) / np.sqrt(500) * np.sqrt((total - 500) / (total - 1))
    np.testing.assert_allclose(est["ci95"], [vals.mean() - 1.96 * se, vals.mean() + 1.96 * se], atol=1e-5)
    again = M.compute(s, ["silhouette_euclidean"], sample_size=500, seed=7)
    sample = M.compute(s, ["silhouette_euclidean"], silhouette_mode="sample", sample_size=500, seed=7)
    assert again["silhouette_euclidean"] == sample["silhouette_euclidean"] == r["silhouette_euclidean"]
    assert sample.info["silhouette_method"] == {"silhouette_euclidean": "sampled"}
    assert "auto" not in sample.estimates["silhouette_euclidean"]
    exact = embedx.measure(s, ["silhouette_euclidean"], silhouette="exact")  # exact stays exact at any threshold
    assert exact.info["silhouette_method"] == {"silhouette_euclidean": "exact"}
    assert embedx.measure(s, ["silhouette_euclidean"]).info["silhouette_method"]["silhouette_euclidean"] == "sampled"


def test_auto_never_abandons_a_silhouette_done_in_one_block(tmp_path, monkeypatch):
    s, x, t = _store(tmp_path, 300, 6)
    monkeypatch.setenv(AUTO_ENV, "0")
    r = M.compute(s, ["silhouette_euclidean"])
    assert r.info["silhouette_method"] == {"silhouette_euclidean": "exact"}
    assert r["silhouette_euclidean"] == pytest.approx(_reference(x, t).mean(), abs=1e-5)


def test_auto_threshold_env_is_checked(two_blocks, monkeypatch):
    monkeypatch.setenv(AUTO_ENV, "soon")
    with pytest.raises(embedx.EmbedxError, match=AUTO_ENV):
        M.compute(two_blocks[0], ["silhouette_euclidean"])


def test_cli_prints_measures_as_they_finish_and_labels_the_sample(two_blocks, monkeypatch):
    s = two_blocks[0]
    monkeypatch.setenv(AUTO_ENV, "0")
    r = invoke("measure", s.path, "--metrics", "silhouette_euclidean,gap,acs", "--sample-size", "300")
    assert r.exit_code == 0, r.stderr
    lines = [ln.split()[0] for ln in r.stdout.splitlines()[2:] if ln.strip()]
    assert lines[:3] == ["gap", "acs", "silhouette_euclidean"]  # the streaming ones first, the silhouette last
    assert "sampled: 300 of 4,603 points, 95% CI" in r.stdout
    assert f"embedx measure {s.path} --silhouette exact" in r.stdout
    r = invoke("measure", s.path, "--metrics", "gap,silhouette_euclidean", "--json")
    d = json.loads(r.stdout)
    assert d["silhouette_method"] == {"silhouette_euclidean": "sampled"}
    assert d["estimates"]["silhouette_euclidean"]["auto"]["exact_command"] == \
        f"embedx measure {s.path} --silhouette exact"
    assert d["options"]["silhouette"] == "auto" and d["options"]["sample_size"] == 2000
    monkeypatch.delenv(AUTO_ENV)
    d = json.loads(invoke("measure", s.path, "--metrics", "silhouette_euclidean", "--json").stdout)
    assert d["silhouette_method"] == {"silhouette_euclidean": "exact"} and "estimates" not in d


def test_cli_exact_refuses_the_sample_options(two_blocks):
    r = invoke("measure", two_blocks[0].path, "--silhouette", "exact", "--sample-size", "50")
    assert_one_line_error(r.exit_code, r.stderr, "--sample-size", "--silhouette sample or auto")


def test_ctrl_c_prints_the_finished_measures_and_exits_130(tmp_path):
    """A real SIGINT while the exact silhouette runs (30,000 x 512 rows: about 1e12 flops of block pairs, several
    seconds even on a quiet machine; at 30,000 x 64 a quiet machine finished before the signal arrived)."""
    s, _, _ = _store(tmp_path, 30_000, 512, c=10)
    p = subprocess.Popen(embedx_cmd("measure", s.path, "--silhouette", "exact", "--metrics",
                                    "gap,silhouette_cosine,silhouette_euclidean"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    t0 = time.time()
    # the signal goes once the cosine silhouette is printed, or 4 s in (the exact Euclidean silhouette of 30,000 x
    # 512 rows takes longer than that even on a quiet machine), whichever comes first
    while not any(ln.startswith("silhouette_cosine") for ln in lines) and p.poll() is None and time.time() - t0 < 4:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    try:
        err = p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("measure did not exit within 60 s of SIGINT")
    reader.join(10)
    out = "".join(lines)
    assert p.returncode == 130, (out, err)
    names = [ln.split()[0] for ln in out.splitlines()[2:] if ln.strip()]
    assert names == ["gap", "silhouette_cosine"][:len(names)], out  # finished and printed; the silhouette was cut
    n = len(names)
    assert f"interrupted: {n} measure{'s' if n != 1 else ''} finished" in err and "nothing resumes" in err, err
    assert "Traceback" not in err


def test_drift_gives_after_the_method_auto_chose_for_before(tmp_path, monkeypatch):
    a, _, _ = _store(tmp_path, 4600, 8, name="a.zarr")
    b, _, _ = _store(tmp_path, 4600, 8, seed=1, name="b.zarr")
    monkeypatch.setenv(AUTO_ENV, "0")
    d = embedx.drift(a.path, b.path, metrics=["gap", "silhouette_euclidean"], sample_size=300, force=True)
    s = d.to_dict()
    for side in ("before", "after"):
        assert s[side]["silhouette_method"] == {"silhouette_euclidean": "sampled"}
        assert s[side]["estimates"]["silhouette_euclidean"]["sample_size"] == 300
    assert "auto" in s["before"]["estimates"]["silhouette_euclidean"]  # AFTER was asked for "sample" outright
    assert "auto" not in s["after"]["estimates"]["silhouette_euclidean"]


def test_the_engine_checks_the_silhouette_modes_the_silhouette_module_has():
    """The engine keeps its own copy of the mode names (importing the silhouette module imports torch)."""
    from embedx.measures import engine, silhouette

    assert engine.SILHOUETTE_MODES == silhouette.MODES
