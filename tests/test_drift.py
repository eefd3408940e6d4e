"""Drift statistics against float64 brute force on real stores, bad input, and the HTML report in Chromium."""
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import embedx
from embedx import drift_analysis as D
from embedx.drift_analysis import report
from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.measures import compute
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, lora_run_and_stores, run_embedx


# -- stores ---------------------------------------------------------------------------------------------------
def _write(path, x, t, y=None, dtype="float32", ids=None):
    d = os.path.dirname(path)
    stem = os.path.basename(path)
    np.save(f"{d}/{stem}.x.npy", x)
    np.save(f"{d}/{stem}.t.npy", t)
    args = dict(images=f"{d}/{stem}.x.npy", texts=f"{d}/{stem}.t.npy", dtype=dtype, chunk_rows=97)
    if y is None:
        args["paired"] = True
    else:
        np.save(f"{d}/{stem}.y.npy", y)
        args["labels"] = f"{d}/{stem}.y.npy"
    import_arrays(path, **args)
    return Store(path)


def _pair(tmp_path, rng, n, c, d, dtype="float32", paired=False, noise=0.7, name="s"):
    """BEFORE: random rows of very different lengths; AFTER: the same samples moved by noise."""
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.2, 5, (n, 1)).astype(np.float32)
    t = rng.standard_normal((n if paired else c, d)).astype(np.float32)
    if paired:
        t[: n // 2] += 1.5 * x[: n // 2]
    y = None if paired else rng.integers(0, c, n)
    if y is not None:
        x += 2.0 * t[y]  # images lean to their class text: zero-shot accuracy is neither 0 nor 1
    x2 = x + noise * rng.standard_normal(x.shape).astype(np.float32) * np.abs(x).mean()
    t2 = t + 0.3 * rng.standard_normal(t.shape).astype(np.float32)
    a = _write(str(tmp_path / f"{name}_before.zarr"), x, t, y, dtype)
    b = _write(str(tmp_path / f"{name}_after.zarr"), x2, t2, y, dtype)
    return a, b


# -- float64 brute force --------------------------------------------------------------------------------------
def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def bf_displacement(x, y):
    disp = np.linalg.norm(_unit(y) - _unit(x), axis=1)
    return disp.mean(), np.percentile(disp, 50), np.percentile(disp, 95)


def bf_cka(x, y):
    """Gram-matrix (HSIC) form: tr(Kx H Ky H) / sqrt(tr(Kx H Kx H) tr(Ky H Ky H)), K = X X', H centering."""
    x, y = _unit(x), _unit(y)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.sum(kx * ky) / np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))


def bf_knn(x, rows, k):
    """Top-k cosine neighbours of the query rows (self excluded) and whether the k-th/k+1-th are a near tie."""
    x = _unit(x)
    sim = x[rows] @ x.T
    sim[np.arange(len(rows)), rows] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")
    srt = np.take_along_axis(sim, order, 1)
    tie = (srt[:, k - 1] - srt[:, k] < 1e-5) if sim.shape[1] > k + 1 else np.zeros(len(rows), bool)
    return order[:, :k], tie


def bf_overlap(x, y, rows, k):
    a, ta = bf_knn(x, rows, k)
    b, tb = bf_knn(y, rows, k)
    per = np.array([len(set(p) & set(q)) for p, q in zip(a, b)]) / k
    return per.mean(), (ta | tb).sum()


def bf_per_class(x, t, y):
    pred = np.argmax(_unit(x) @ _unit(t).T, axis=1)
    return {c: (pred[y == c] == c).mean() for c in np.unique(y)}


# -- numbers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c,d,dtype,paired,knn_sample,block", [
    (400, 7, 24, "float32", False, None, 128),
    (1000, 20, 64, "float16", False, 300, 333),
    (300, None, 16, "float32", True, None, 97),
])
def test_every_number_matches_brute_force(tmp_path, rng, n, c, d, dtype, paired, knn_sample, block):
    a, b = _pair(tmp_path, rng, n, c, d, dtype, paired)
    seed = int(rng.integers(100))
    res = D.compare(a.path, b.path, knn_sample=knn_sample, block_rows=block, seed=seed)
    s = res.summary
    x, y = a.images(), b.images()  # the stored values (float16 rounding included)
    mean, p50, p95 = bf_displacement(x, y)
    assert s["displacement_mean"] == pytest.approx(mean, abs=1e-6)
    assert s["displacement_p50"] == pytest.approx(p50, abs=1e-6)
    assert s["displacement_p95"] == pytest.approx(p95, abs=1e-6)
    assert s["w1_upper_bound"] == s["displacement_mean"]
    np.testing.assert_allclose(res.displacement, np.linalg.norm(_unit(y) - _unit(x), axis=1), atol=1e-6)
    assert s["cka_linear"] == pytest.approx(bf_cka(x, y), abs=1e-6)
    assert 0.05 < s["cka_linear"] < 0.999
    rows = D.drift_pass.sample_rows(n, knn_sample, seed)  # the query rows compare() drew
    assert s["knn_sample_size"] == len(rows) and s["knn_k"] == 10
    ov, ties = bf_overlap(x, y, rows, 10)
    assert abs(s["knn_overlap"] - ov) <= ties / len(rows) + 1e-12, (s["knn_overlap"], ov, ties)
    assert 0 < s["knn_overlap"] < 1
    # deltas against two independent compute() calls
    mb, ma = compute(a), compute(b)
    skip = {"n_images", "n_texts", "dim", "timings_s", "ties", "integrity"}
    assert set(s["delta"]) == set(mb) - skip
    for k in s["delta"]:
        assert s["before"][k] == pytest.approx(mb[k], abs=1e-12) and s["after"][k] == pytest.approx(ma[k], abs=1e-12)
        assert s["delta"][k] == pytest.approx(ma[k] - mb[k], abs=1e-12), k
    if paired:
        assert s["per_class"] is None
    else:
        yl = a.labels()
        ref_b, ref_a = bf_per_class(x, a.texts(), yl), bf_per_class(y, b.texts(), yl)
        names = [str(v) for v in a.text_names()]
        for k, name in enumerate(names):
            row = s["per_class"][name]
            assert row["n_images"] == (yl == k).sum()
            if row["n_images"]:
                assert row["acc_before"] == pytest.approx(ref_b[k], abs=1e-12)
                assert row["acc_after"] == pytest.approx(ref_a[k], abs=1e-12)
                assert row["delta"] == pytest.approx(ref_a[k] - ref_b[k], abs=1e-12)
        # the per-class hits add up to the store's zero-shot top-1
        tot = sum(r["acc_before"] * r["n_images"] for r in s["per_class"].values() if r["n_images"]) / n
        assert tot == pytest.approx(mb["zeroshot_top1"], abs=1e-12)
    assert s["forgetting"] is None


def test_identical_stores_have_no_drift(tmp_path, rng):
    a, _ = _pair(tmp_path, rng, 250, 5, 12)
    s = D.compare(a.path, a.path, block_rows=64).summary
    assert s["displacement_mean"] == s["displacement_p50"] == s["displacement_p95"] == 0.0
    assert s["cka_linear"] == pytest.approx(1.0, abs=1e-12)
    assert s["knn_overlap"] == 1.0
    assert all(v == 0 for v in s["delta"].values())
    assert all(r["delta"] == 0 for r in s["per_class"].values() if r["n_images"])


def test_cka_is_invariant_to_an_orthogonal_rotation_of_after(tmp_path, rng):
    a, b = _pair(tmp_path, rng, 300, 4, 16)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    y = b.images().astype(np.float64)
    r = _write(str(tmp_path / "rot.zarr"), (y @ q).astype(np.float32), (b.texts().astype(np.float64) @ q)
               .astype(np.float32), b.labels())
    self_rot = _write(str(tmp_path / "self_rot.zarr"), (a.images().astype(np.float64) @ q).astype(np.float32),
                      a.texts(), a.labels())
    plain = D.compare(a.path, b.path).summary
    rotated = D.compare(a.path, r.path).summary
    assert rotated["cka_linear"] == pytest.approx(plain["cka_linear"], abs=1e-6)
    assert plain["cka_linear"] < 0.99
    assert D.compare(a.path, self_rot.path).summary["cka_linear"] == pytest.approx(1.0, abs=1e-6)
    # cosines are rotation-invariant too: the neighbourhoods and zero-shot accuracy of AFTER do not move
    assert rotated["knn_overlap"] == pytest.approx(plain["knn_overlap"], abs=0.01)
    assert rotated["after"]["zeroshot_top1"] == pytest.approx(plain["after"]["zeroshot_top1"], abs=0.01)


def test_cka_sums_merge_whatever_the_blocking(rng):
    import torch

    x, y = rng.standard_normal((200, 9)), rng.standard_normal((200, 9))
    vals = []
    for cuts in ([0, 200], [0, 1, 77, 200], list(range(0, 201, 13)) + [200]):
        sums = D.drift_pass.CkaSums()
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            if hi > lo:
                sums.add(torch.from_numpy(x[lo:hi]), torch.from_numpy(y[lo:hi]))
        vals.append(sums.cka())
    assert np.ptp(vals) < 1e-12
    xc, yc = x - x.mean(0), y - y.mean(0)
    dense = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert vals[0] == pytest.approx(dense, abs=1e-12)


def test_forgetting_on_other_tasks(tmp_path, rng):
    a, b = _pair(tmp_path, rng, 200, 5, 16)
    o1 = _pair(tmp_path, rng, 150, 6, 16, name="cars")
    o2 = _pair(tmp_path, rng, 120, None, 16, paired=True, name="coco")
    res = D.compare(a.path, b.path, [f"{o1[0].path}:{o1[1].path}", f"captions={o2[0].path}:{o2[1].path}"],
                    metrics=["acs"])
    f = res.summary["forgetting"]
    assert list(f["tasks"]) == ["cars_before.zarr", "captions"]
    deltas = []
    for (sb, sa), name in ((o1, "cars_before.zarr"), (o2, "captions")):
        zb, za = (compute(s, ["zeroshot_top1"])["zeroshot_top1"] for s in (sb, sa))
        t = f["tasks"][name]
        assert (t["zeroshot_top1_before"], t["zeroshot_top1_after"]) == (zb, za)
        assert t["delta"] == pytest.approx(za - zb, abs=1e-12)
        deltas.append(za - zb)
    assert f["mean_delta"] == pytest.approx(np.mean(deltas), abs=1e-12)
    assert set(res.summary["delta"]) == {"acs"}


def test_parse_pair():
    assert D.parse_pair("a/b.zarr:c.zarr") == ("b.zarr", "a/b.zarr", "c.zarr")
    assert D.parse_pair("pets=a.zarr/:b.zarr") == ("pets", "a.zarr/", "b.zarr")
    assert D.parse_pair("s3://bk/x.zarr:s3://bk/y.zarr") == ("x.zarr", "s3://bk/x.zarr", "s3://bk/y.zarr")
    assert D.parse_pair("n=file:///x.zarr:/y.zarr") == ("n", "file:///x.zarr", "/y.zarr")
    for bad in ("a.zarr", "a.zarr:", ":b.zarr"):
        with pytest.raises(EmbedxError, match="BEFORE:AFTER"):
            D.parse_pair(bad)


# -- text side, headline, provenance ----------------------------------------------------------------------------
def bf_text_drift(s, t):
    """float64 brute force: per row cosine and |t - s| of the normalized rows, their summaries, Gram-form CKA."""
    u, v = _unit(s), _unit(t)
    cos = np.sum(u * v, axis=1)
    disp = np.linalg.norm(v - u, axis=1)
    return cos, disp


@pytest.mark.parametrize("c,d,dtype,paired,block", [(7, 24, "float32", False, None), (30, 16, "float16", False, 4),
                                                      (None, 12, "float32", True, 37)])
def test_text_drift_matches_brute_force(tmp_path, rng, c, d, dtype, paired, block):
    from embedx.drift_analysis.textside import text_drift

    a, b = _pair(tmp_path, rng, 300, c, d, dtype, paired)
    res = D.compare(a.path, b.path, knn_sample=50)
    s = res.summary
    t = s["text_drift"]
    page = report.render(res)  # both store kinds render
    assert ("captions" if paired else "class prompts") in page and 'id="headline"' in page
    direct = text_drift(a, b, block_rows=block or 16384)  # the blocking does not change a number
    ta, tb = a.texts(), b.texts()  # the stored values
    cos, disp = bf_text_drift(ta, tb)
    for got in (t, direct):
        assert got["rows"] == ("captions" if paired else "class prompts") and got["n_texts"] == len(ta)
        assert got["displacement_mean"] == pytest.approx(disp.mean(), abs=1e-12)
        assert got["displacement_p50"] == pytest.approx(np.percentile(disp, 50), abs=1e-12)
        assert got["displacement_p95"] == pytest.approx(np.percentile(disp, 95), abs=1e-12)
        assert got["displacement_max"] == pytest.approx(disp.max(), abs=1e-12)
        assert got["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-12)
        assert got["cosine_min"] == pytest.approx(cos.min(), abs=1e-12)
        assert got["cka_linear"] == pytest.approx(bf_cka(ta, tb), abs=1e-9)
    assert 0.05 < t["displacement_mean"] < 1.0 and 0.3 < t["cka_linear"] < 0.9999
    if paired:
        assert t["per_class"] is None and s["per_class"] is None
        return
    names = [str(v) for v in a.text_names()]
    assert list(t["per_class"]) == names
    for k, name in enumerate(names):
        assert t["per_class"][name]["cosine"] == pytest.approx(cos[k], abs=1e-12)
        assert t["per_class"][name]["displacement"] == pytest.approx(disp[k], abs=1e-12)
        # each class row carries its prompt's move beside its accuracy change
        assert s["per_class"][name]["prompt_displacement"] == t["per_class"][name]["displacement"]
        assert s["per_class"][name]["prompt_cosine"] == t["per_class"][name]["cosine"]


def test_text_drift_sees_a_text_only_change(tmp_path, rng):
    """The issue's CLIP-Adapter case: images identical, class prompts moved -> image statistics say 'nothing',
    the text side and the accuracy do not."""
    x = rng.standard_normal((200, 8)).astype(np.float32)
    t = rng.standard_normal((4, 8)).astype(np.float32)
    y = rng.integers(0, 4, 200)
    x += 1.5 * t[y]
    t2 = t.copy()
    t2[1] = t[2]  # prompt 1 now points at class 2's images
    a = _write(str(tmp_path / "a.zarr"), x, t, y)
    b = _write(str(tmp_path / "b.zarr"), x, t2, y)
    s = D.compare(a.path, b.path).summary
    assert s["displacement_mean"] == 0.0 and s["cka_linear"] == pytest.approx(1.0) and s["knn_overlap"] == 1.0
    cos, disp = bf_text_drift(t, t2)
    assert s["text_drift"]["per_class"]["1"]["displacement"] == pytest.approx(disp[1], abs=1e-12) and disp[1] > 0.3
    assert s["text_drift"]["per_class"]["0"]["displacement"] == 0.0
    zb, za = (bf_per_class(x, tt, y) for tt in (t, t2))
    acc_b = np.mean(np.argmax(_unit(x) @ _unit(t).T, 1) == y)
    acc_a = np.mean(np.argmax(_unit(x) @ _unit(t2).T, 1) == y)
    h = s["headline"]
    assert h["zeroshot_top1_before"] == pytest.approx(acc_b, abs=1e-12)
    assert h["task_gain"] == pytest.approx(acc_a - acc_b, abs=1e-12) and h["task_gain"] < -0.05
    changes = {str(k): za[k] - zb[k] for k in za}
    assert h["per_class"]["worst"] == {"class": min(changes, key=changes.get), "delta": min(changes.values())}
    assert h["per_class"]["lost"] == sum(v < 0 for v in changes.values()) >= 1 and h["per_class"]["classes"] == 4


def test_knn_key_is_stable_and_provenance_is_on_top(tmp_path, rng):
    a, b = _pair(tmp_path, rng, 120, 4, 8)
    o = _pair(tmp_path, rng, 60, 3, 8, name="cars")
    for k in (3, 10):
        s = D.compare(a.path, b.path, [f"cars={o[0].path}:{o[1].path}"], knn_k=k, seed=5).summary
        assert s["knn_k"] == k and 0 < s["knn_overlap"] <= 1
        assert not [key for key in s if "@" in key]  # no option in a key name
    assert s["schema"] == "embedx.drift/1" and s["embedx_version"] and s["created"]
    assert set(s["stores"]) == {"before", "after", "others/cars/before", "others/cars/after"}
    assert s["stores"]["before"]["path"] == a.path and s["stores"]["others/cars/after"]["path"] == o[1].path
    assert s["stores"]["after"]["generation"] == b.generation
    assert s["options"]["knn_k"] == 10 and s["options"]["seed"] == 5 and s["options"]["silhouette_mode"] == "exact"
    assert s["headline"]["run"] is None and s["headline"]["n_other_tasks"] == 1
    assert s["headline"]["forgetting"] == s["forgetting"]["mean_delta"]


def test_undefined_is_null_never_zero(tmp_path, rng):
    """A class store whose images are all unlabelled (-1) has no zero-shot accuracy: null everywhere."""
    x = rng.standard_normal((60, 6)).astype(np.float32)
    t = rng.standard_normal((3, 6)).astype(np.float32)
    none = -np.ones(60, np.int64)
    a = _write(str(tmp_path / "a.zarr"), x, t, none)
    b = _write(str(tmp_path / "b.zarr"), x + 0.1, t + 0.2, none)
    good = _pair(tmp_path, rng, 80, 3, 6, name="good")
    r = invoke("drift", a.path, b.path, "--others", f"nolabels={a.path}:{b.path}", "--others",
               f"good={good[0].path}:{good[1].path}", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"):
        assert d["before"][key] is None and d["after"][key] is None and d["delta"][key] is None, key
    h = d["headline"]
    assert h["zeroshot_top1_before"] is None and h["task_gain"] is None and h["per_class"] is None
    assert all(v["acc_before"] is None and v["delta"] is None for v in d["per_class"].values())
    t1 = d["forgetting"]["tasks"]["nolabels"]
    assert t1["zeroshot_top1_before"] is None and t1["delta"] is None
    g = d["forgetting"]["tasks"]["good"]
    assert d["forgetting"]["mean_delta"] == pytest.approx(g["delta"], abs=1e-15)  # the defined tasks only
    # a single class prompt: text CKA is undefined (no variance across one row) -> null
    one = _write(str(tmp_path / "one.zarr"), x, t[:1], np.zeros(60, np.int64))
    one2 = _write(str(tmp_path / "one2.zarr"), x + 0.1, t[:1] + 0.3, np.zeros(60, np.int64))
    assert D.compare(one.path, one2.path).summary["text_drift"]["cka_linear"] is None


def test_outputs_are_checked_before_any_work(tmp_path, rng):
    import time

    a, b = _pair(tmp_path, rng, 2000, 10, 32)
    missing = tmp_path / "nodir"
    for flag, name in (("--report", "r.html"), ("--out", "d.json"), ("--history", "h.csv")):
        t0 = time.perf_counter()
        r = invoke("drift", a.path, b.path, flag, missing / name, "--method", "lora")
        assert_one_line_error(r.exit_code, r.stderr, flag, "does not exist")
        assert r.exit_code == 2 and time.perf_counter() - t0 < 1.0  # refused before the comparison (seconds)
    rc, _, err = run_embedx("drift", a.path, b.path, "--report", "nodir/r.html")
    assert_one_line_error(rc, err, "--report", "nodir")
    assert rc == 2 and not missing.exists() and not os.path.exists("nodir")
    with pytest.raises(EmbedxError, match="does not exist") as e:
        embedx.drift(a.path, b.path, report=missing / "r.html")
    assert e.value.param == "report"
    assert not missing.exists()


def test_headline_names_the_finetune_run(tmp_path):
    """A real run: finetune (1 epoch), embed base and tuned; the headline and provenance name the run as its
    config.json records it, and the text side moved."""
    run, base, tuned = lora_run_and_stores(tmp_path, train_limit=96, embed_limit=48)
    s = D.compare(base, tuned).summary
    cfg = json.loads(open(os.path.join(run, "config.json")).read())
    h = s["headline"]
    assert h["before_run"] is None
    got = h["run"]
    assert got["path"] == os.path.abspath(run) and got["method"] == "lora" and got["options"] == {"rank": 2}
    assert got["config_found"] and got["config_matches"]
    for k in ("model", "data", "epochs", "lr", "optimizer", "trainable_params", "total_params", "best_val_acc"):
        assert got[k] == cfg[k], k
    assert got["trainable_params"] > 0 and got["data"].startswith("digits")
    assert s["stores"]["after"]["checkpoint"]["method"] == "lora" and s["stores"]["before"]["checkpoint"] is None
    ref = [compute(Store(p), ["zeroshot_top1"])["zeroshot_top1"] for p in (base, tuned)]
    assert h["task_gain"] == pytest.approx(ref[1] - ref[0], abs=1e-12)
    cos, disp = bf_text_drift(Store(base).texts(), Store(tuned).texts())
    assert s["text_drift"]["displacement_mean"] == pytest.approx(disp.mean(), abs=1e-12) and disp.mean() > 1e-3
    page = tmp_path / "r.html"
    report.write(D.compare(base, tuned), str(page))
    text = page.read_text()
    assert "lora" in text and f"{cfg['trainable_params']:,}" in text and "digits" in text


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_json_out_report_and_table(tmp_path, rng):
    a, b = _pair(tmp_path, rng, 150, 4, 8)
    o = _pair(tmp_path, rng, 100, 3, 8, name="other")
    out, html_path = tmp_path / "d.json", tmp_path / "d.html"
    r = invoke("drift", a.path, b.path, "--others", f"task={o[0].path}:{o[1].path}", "--json", "--out", out,
               "--report", html_path, "--silhouette", "sample", "--sample-size", "50", "--knn-sample", "60")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert json.loads(out.read_text()) == d
    for key in ("before", "after", "delta", "displacement_mean", "displacement_p50", "displacement_p95",
                "w1_upper_bound", "cka_linear", "knn_overlap", "knn_k", "knn_sample_size", "per_class", "forgetting",
                "text_drift", "headline", "schema", "embedx_version", "created", "stores", "options"):
        assert key in d, key
    assert d["knn_sample_size"] == 60 and d["before"]["estimates"]["silhouette_euclidean"]["sample_size"] == 50
    assert set(d["forgetting"]["tasks"]) == {"task"}
    text = html_path.read_text()
    assert text.count("<img ") == 4 + text.count('class="measure-chart"') and "Other tasks: accuracy change" in text
    assert "Per-class" in text and 'id="text-drift"' in text
    # self-contained: every src is a data: URI, nothing is fetched from anywhere
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))
    assert not re.search(r"https?://|<link|url\(", text.split("<body>")[1].replace("data:image", ""))
    rc, stdout, stderr = run_embedx("drift", a.path, b.path, "--knn-k", "5")  # the real entry point
    assert rc == 0, stderr
    assert "delta" in stdout and "linear CKA" in stdout and "kNN overlap" in stdout and "per-class" in stdout
    assert "(k=5," in stdout and "task gain" in stdout and "class prompts" in stdout


def test_history_rows_feed_predict(tmp_path, rng):
    """drift --history appends task/model/method, zero-shot and tuned accuracy, forgetting and the predictors of
    the zero-shot store; three experiments make a history `embedx predict` fits."""
    import csv

    from embedx import transferability as transfer
    from embedx.predict import DEFAULT_STORE_PREDICTORS

    hist = tmp_path / "h.csv"
    o = _pair(tmp_path, rng, 90, 3, 8, name="other")
    for k in range(3):
        a, b = _pair(tmp_path, rng, 120 + 10 * k, 4, 8, noise=0.3 + 0.3 * k, name=f"t{k}")
        train = _pair(tmp_path, rng, 100, 4, 8, name=f"train{k}")[0] if k == 2 else a
        args = ["drift", a.path, b.path, "--history", hist, "--method", "lora", "--knn-sample", "50",
                "--others", f"{o[0].path}:{o[1].path}"]
        if k:
            args += ["--task", f"task{k}"]
        if k == 2:
            args += ["--history-store", train.path]
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
        assert "history: appended" in r.stdout
        with open(hist, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == k + 1
        got = rows[-1]
        assert (got["task"], got["method"]) == (("t0_before.zarr.x.npy" if k == 0 else f"task{k}"), "lora")
        zs, ft = (compute(s, ["zeroshot_top1"])["zeroshot_top1"] for s in (a, b))
        ob, oa = (compute(s, ["zeroshot_top1"])["zeroshot_top1"] for s in o)
        assert float(got["zs_acc"]) == zs and float(got["ft_acc"]) == ft
        assert float(got["ood_delta"]) == pytest.approx(oa - ob, abs=1e-15)
        assert got["store"] == os.path.relpath(train.path, tmp_path)  # relative to the CSV's folder
        assert not os.path.isabs(got["store"])
        ref = dict(compute(train, ["iimm", "iimm_inter", "iimm_intra", "acs", "gap", "silhouette_euclidean"]))
        ref.update(transfer.compute(train, scores=["hscore", "gbc", "transrate", "logme", "sfda", "leep", "nce"]))
        for m in DEFAULT_STORE_PREDICTORS:
            assert float(got[m]) == pytest.approx(ref[m], rel=1e-12, abs=1e-15), m
    r = invoke("predict", "--history", hist, "--measures", "iimm,leep", "--json")
    assert r.exit_code == 0, r.stderr
    fits = json.loads(r.stdout)["fits"]
    assert fits["iimm"]["gain"]["n"] == 3 and fits["leep"]["forgetting"]["n"] == 3

    p = _pair(tmp_path, rng, 50, None, 8, paired=True, name="cap")
    rc, _, err = run_embedx("drift", p[0].path, p[1].path, "--history", hist, "--method", "full")
    assert_one_line_error(rc, err, "class stores")
    a, b = _pair(tmp_path, rng, 40, 3, 8, name="nockpt")
    rc, _, err = run_embedx("drift", a.path, b.path, "--history", hist)
    assert_one_line_error(rc, err, "--method")
    with open(hist, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3  # refused runs append nothing


def test_undefined_measures_give_null_deltas(tmp_path, rng):
    x = rng.standard_normal((40, 6)).astype(np.float32)
    t = rng.standard_normal((1, 6)).astype(np.float32)
    a = _write(str(tmp_path / "a.zarr"), x, t, np.zeros(40, np.int64))
    b = _write(str(tmp_path / "b.zarr"), x + 0.1, t, np.zeros(40, np.int64))
    r = invoke("drift", a.path, b.path, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["delta"]["iimm_inter"] is None and d["delta"]["text_intra"] is None and d["delta"]["acs"] is not None


def test_bad_input_is_one_line(tmp_path, rng):
    import zarr

    a, b = _pair(tmp_path, rng, 60, 3, 8)
    x, t, y = a.images(), a.texts(), a.labels()
    short = _write(str(tmp_path / "short.zarr"), x[:59], t, y[:59])
    wide = _write(str(tmp_path / "wide.zarr"), np.hstack([x, x]), np.hstack([t, t]), y)
    paired = _write(str(tmp_path / "paired.zarr"), x, x + 1)
    other_ids = str(tmp_path / "ids.zarr")
    shutil.copytree(b.path, other_ids)
    g = zarr.open_group(other_ids, mode="r+")
    ids = g["images/ids"][:]
    ids[7] = "somewhere-else.jpg"
    g["images/ids"][:] = ids
    unfinished = str(tmp_path / "unfinished.zarr")
    shutil.copytree(b.path, unfinished)
    g = zarr.open_group(unfinished, mode="r+")
    g.attrs["embedx"] = dict(g.attrs["embedx"], complete=False)
    cases = [((a.path, short.path), ("different samples", "60 vs 59")),
             ((a.path, other_ids), ("ids differ at row 7", "somewhere-else.jpg")),
             ((a.path, wide.path), ("different dimensions", "d=8 vs d=16")),
             ((a.path, paired.path), ("mode",)),
             ((a.path, str(tmp_path / "missing.zarr")), ("no store at",)),
             ((a.path, unfinished), ("unfinished",)),
             ((a.path, b.path, "--others", "nocolon.zarr"), ("BEFORE:AFTER",)),
             ((a.path, b.path, "--others", f"{a.path}:{short.path}"), ("different samples",)),
             ((a.path, b.path, "--others", f"t={a.path}:{b.path}", "--others", f"t={b.path}:{a.path}"),
              ("named 't'",)),
             ((a.path, b.path, "--knn-k", "0"), ("--knn-k",))]
    for args, frags in cases:
        r = invoke("drift", *args)
        assert_one_line_error(r.exit_code, r.stderr, *frags)
    rc, _, stderr = run_embedx("drift", a.path, short.path)
    assert_one_line_error(rc, stderr, "different samples")
    assert rc == 2


def test_report_axes_do_not_exaggerate_and_colours_follow_direction():
    """A -0.003 accuracy change gets an axis of at least +-0.05 (it fills 3% of the half-axis); a group's shared
    axis spans every value and at least 0.1; green/red only where better/worse is known."""
    assert report.change_span([-0.003]) == report.MIN_HALF_SPAN == 0.05
    assert report.change_span([-0.003, 0.3]) == pytest.approx(0.33) and report.change_span([0.99, -2]) == 1.0
    lo, hi = report.group_window([0.500, 0.497])
    assert hi - lo >= 0.1 - 1e-12 and lo < 0.497 < 0.5 < hi
    lo, hi = report.group_window([0.1, 0.6, -0.3, None])  # a group's large change still fits its axis
    assert lo < -0.3 and hi > 0.6 and hi - lo == pytest.approx(0.9 * 1.16)
    assert report.verdict(0.01, report.direction("zeroshot_top1")) == "better"
    assert report.verdict(-0.01, report.direction("i2t_recall@5")) == "worse"
    assert report.verdict(-0.01, report.direction("silhouette_euclidean")) == "neutral"  # direction not known
    assert report.verdict(None, 1) == report.verdict(0.0, 1) == "neutral"


# -- the HTML report in headless Chromium ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium; installed with apt-get when missing (the test fails, never skips, if that fails)."""
    exe = shutil.which("chromium")
    if exe is None:
        import fcntl

        # pytest-xdist workers may ask at once: one apt-get at a time (dpkg's lock refuses a second), the
        # others find it installed
        with open(os.path.join(tempfile.gettempdir(), "embedx-tests-chromium.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            exe = shutil.which("chromium") or _install_chromium()
    return exe


def _install_chromium() -> str:
    """``apt-get install chromium`` (after ``apt-get update`` when the first try fails); fails the test if it
    cannot."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    log = []
    for cmd in (install, ["apt-get", "update", "-q"], install):
        print("chromium missing: running", " ".join(cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        log.append(f"$ {' '.join(cmd)} -> exit {p.returncode}\n{p.stdout[-1500:]}{p.stderr[-1500:]}")
        print(log[-1], flush=True)
        if cmd is install and p.returncode == 0:
            break
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("the drift report test needs Chromium (/usr/bin/chromium) and `apt-get install chromium` "
                    "failed:\n" + "\n".join(log), pytrace=False)
    return exe


def _headless(exe, tmp_path, page, *extra):
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr",
            "--v=0", "--virtual-time-budget=5000", *extra, f"file://{page}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


# Injected by the test into a copy of the page, first thing in <head>: Chromium logs console.error and
# console.log alike (INFO:CONSOLE), so the level is caught in the page, with failed resource loads and exceptions.
_HOOK = """<script>(function () {
  var n = 0, root = document.documentElement;
  function note() { n += 1; root.setAttribute("data-page-errors", String(n)); }
  var ce = console.error;
  console.error = function () { note(); return ce.apply(console, arguments); };
  window.addEventListener("error", note, true);
  window.addEventListener("unhandledrejection", note);
  root.setAttribute("data-page-errors", "0");
})();</script>"""


def _dom(exe, tmp_path, page):
    """(DOM after load, body's data-images-ok, errors counted in the page, console lines Chromium logged)."""
    text = page.read_text()
    at = text.index("<head>") + 6 if "<head>" in text else text.index("<body>")
    checked = page.with_suffix(".checked.html")
    checked.write_text(text[:at] + _HOOK + text[at:])
    p = _headless(exe, tmp_path, checked, "--dump-dom")
    assert p.returncode == 0 and "<body" in p.stdout, (p.returncode, p.stderr[-2000:])
    ok = re.search(r'<body[^>]*data-images-ok="([^"]*)"', p.stdout)
    errs = re.search(r'<html[^>]*data-page-errors="([^"]*)"', p.stdout)
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return p.stdout, ok and ok.group(1), int(errs.group(1)) if errs else None, console


def test_report_renders_in_headless_chromium(tmp_path, rng, chromium):
    from matplotlib.image import imread

    # negative control: the checks below do notice a broken image and a script error
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA">'
                   '<script>console.error("x"); undefinedFunction();</script>' + report._CHECK + "</body></html>")
    _, ok, n_err, console = _dom(chromium, tmp_path, bad)
    assert ok == "no" and n_err >= 2 and any("Uncaught ReferenceError" in ln for ln in console), (ok, n_err, console)

    a, b = _pair(tmp_path, rng, 500, 6, 16)
    o = _pair(tmp_path, rng, 100, 3, 16, name="cars")
    page = tmp_path / "drift.html"
    res = D.compare(a.path, b.path, [f"{o[0].path}:{o[1].path}"], plot_sample=300)
    report.write(res, str(page))
    text = page.read_text()
    n_img = text.count("<img ")
    charts = text.count('class="measure-chart"')
    finite = [m for m, v in res.summary["delta"].items() if v is not None]
    groups = report.measure_groups(res.summary)
    assert charts == len(groups) == 3 and len(finite) > 5  # one chart per group of measures, on its shared axis
    assert n_img == charts + 4  # + movement, per-class, projection, forgetting
    dom, ok, n_err, console = _dom(chromium, tmp_path, page)
    assert ok == str(n_img), f"images did not all decode (data-images-ok={ok!r})"
    assert dom.count("<img ") == n_img
    assert n_err == 0 and not console, (n_err, console)  # no error in the page, nothing on its console at all
    for heading in ("What did fine-tuning do?", "What moved: image side and text side", "Every measure",
                    "2-D projection", "Per-class zero-shot accuracy", "Other tasks", "Stores and options"):
        assert heading in dom, heading
    for sec in ("provenance", "headline", "text-drift", "measures", "per-class", "projection", "forgetting"):
        assert f'id="{sec}"' in dom, sec
    head = dom[dom.index('id="headline"'):dom.index('id="text-drift"')]
    assert "task gain" in head and "change on other tasks" in head and "class prompts" in head
    gain = res.summary["headline"]["task_gain"]
    assert f"{gain:+.3f}" in head and ('class="value worse"' if gain < 0 else 'class="value better"') in head
    legend = dom[dom.index("projection-legend"):]
    assert all(f"</span>{n}</span>" in legend for n in res.summary["per_class"])  # every class named
    # better / worse only where the direction is known
    rows = re.findall(r'<tr class="measure-row"><td>([^<]+)<.*?<td>[^<]*</td><td>[^<]*</td><td class="(\w+)">', dom)
    assert {m.strip() for m, c in rows if c != "neutral"} <= {"zeroshot_top1", "zeroshot_top5",
                                                             "zeroshot_mean_per_class_recall"}
    assert {m.strip() for m, c in rows if c == "neutral"} >= {"acs", "gap", "iimm"}
    shot = tmp_path / "shot.png"
    p = _headless(chromium, tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    pix = imread(str(shot))[..., :3]
    assert pix.shape[0] >= 2000 and pix.std() > 0.05
    assert len(np.unique((pix.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 50  # plots, not a blank page
