"""``embedx study`` on a real tiny open_clip model and digits: rows and columns, gain against numpy from the
stores, kill and resume, a changed or bad STUDY.toml, the tables against scipy, the report, concatenation."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import embedx
from embedx.errors import EmbedxError
from embedx.studies import cells as C, run as R, spec as S, tables as T
from tests.conftest import assert_one_line_error, run_embedx
from tests.test_drift import chromium  # noqa: F401  (the fixture: Debian's chromium, installed when missing)

TOML = """
[study]
name = "tiny-digits"
seeds = [0]
per_class = 12
limit = 30

[[models]]
name = "embedx-tiny"

[[tasks]]
name = "d012"
train = "digits:train:classes=0,1,2"
test = "digits:test:classes=0,1,2"
classnames = ["nought", "one", "two"]

[[tasks]]
name = "d345"
train = "digits:train:classes=3,4,5"
test = "digits:test:classes=3,4,5"
templates = ["a drawing of the digit {}."]

[[methods]]
name = "lora"
lr = 0.01
options = { rank = 2 }

[[methods]]
name = "bitfit"
lr = 0.01
"""
VOLATILE = ["train_seconds"]  # wall-clock time: the one column that differs between equal runs


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    spec = d / "STUDY.toml"
    spec.write_text(TOML)
    res = embedx.study(spec, d / "out", progress=False)
    return d, spec, res


def _top1(store) -> np.ndarray:
    """Zero-shot top-1 hits in float64 numpy: argmax of cosine(image, class prompt) == label."""
    x = store.images().astype(np.float64)
    t = store.texts().astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return (np.argmax(x @ t.T, axis=1) == store.labels()).astype(np.float64)


def test_results_rows_and_columns(done):
    d, spec, res = done
    df = pd.read_parquet(res.info["results"])
    assert list(df.columns) == list(T.COLUMNS)
    assert len(df) == res.info["rows"] == 4 and res.info["cells"] == 6 and res.info["ran"] == 6
    # the Result: the table itself, paper B's headline as its tables give it (CSV: 1e-12), --json's info
    assert res.kind == "study" and isinstance(res, embedx.Result)
    pd.testing.assert_frame_equal(res.table.reset_index(drop=True), df)
    fits = pd.read_csv(res.info["tables"]["paperB_fits"])
    for p in T.PREDICTORS:
        for outcome in ("gain", "forgetting"):
            want = fits[(fits["group"] == "all") & (fits["outcome"] == outcome) & (fits["predictor"] == p)]["r2"]
            np.testing.assert_allclose(res[f"r2_{outcome}_{p}"], float(want.iloc[0]), rtol=1e-12)  # NaN == NaN
    assert res.to_dict() == res.info
    assert sorted(zip(df["task"], df["method"])) == [("d012", "bitfit"), ("d012", "lora"), ("d345", "bitfit"),
                                                     ("d345", "lora")]
    assert set(df["embedx_version"]) == {embedx.__version__}
    assert set(df["spec_sha256"]) == {S.load(str(spec)).sha256}
    assert set(df["model_name"]) == {"embedx-tiny"} and set(df["pretrained"]) == {"none"}
    assert (df["n_train"] == 30).all() and (df["n_test"] == 30).all() and (df["n_others"] == 1).all()
    assert df[list(T.PREDICTORS)].notna().all().all()
    csv = pd.read_csv(os.path.join(d, "out", "results.csv"))
    assert list(csv.columns) == list(T.COLUMNS) and len(csv) == 4
    np.testing.assert_allclose(csv["gain"], df["gain"])


def test_study_headline_against_scipy(rng):
    """``run.headline`` of the papers' tables made from a synthetic results table: each R² equals scipy's
    linregress r² on the rows, the leave-one-task-out coverage/MAE the fraction/mean recomputed from the rows."""
    from scipy import stats

    n_tasks, methods = 6, ("full", "lora")
    rows = []
    for t in range(n_tasks):
        for m in methods:
            r = {"task": f"t{t}", "method": m, "domain": "", "model": "m", "seed": 0}
            r.update({p: float(rng.normal()) for p in T.PREDICTORS})
            r.update(gain=0.3 * r["iimm"] + 0.1 * float(rng.normal()), norm_gain=float(rng.normal()),
                     forgetting=float(rng.normal()))
            rows.append(r)
    df = pd.DataFrame(rows)
    pred, summ = T.loto(df)
    h = R.headline({"paperB_fits": T.paper_b(df), "paperB_loto_summary": summ})
    for p in ("iimm", T.PREDICTORS[0], T.PREDICTORS[-1]):
        for outcome in ("gain", "forgetting"):
            want = stats.linregress(df[p].to_numpy(float), df[outcome].to_numpy(float)).rvalue ** 2
            assert h[f"r2_{outcome}_{p}"] == pytest.approx(want, rel=1e-9)
    g = pred[(pred["group"] == "all") & (pred["outcome"] == "gain")]
    assert h["loto_mae_gain"] == pytest.approx(float(np.mean(np.abs(g["predicted"] - g["actual"]))))
    inside = (g["lo"] <= g["actual"]) & (g["actual"] <= g["hi"])
    assert h["loto_coverage_gain"] == pytest.approx(float(inside.mean())) and 0 < h["loto_coverage_gain"] <= 1



def test_gain_and_forgetting_from_the_stores(done):
    """gain, norm_gain and forgetting recomputed with numpy from the zero-shot and tuned test stores."""
    d, spec, _ = done
    sp = S.load(str(spec))
    zs, tuned = C.grid(sp)
    df = pd.read_parquet(os.path.join(d, "out", "results.parquet"))
    cells = os.path.join(d, "out", "cells")
    for cell, (_, row) in zip(tuned, df.iterrows()):
        assert (cell.labels["task"], cell.labels["method"]) == (row["task"], row["method"])
        z = cell.config["zeroshot"]
        before = _top1(embedx.open(os.path.join(cells, f"zeroshot-{z[row['task']]}", "test.zarr"))).mean()
        after = _top1(embedx.open(os.path.join(cells, cell.folder, "test.zarr"))).mean()
        assert row["zs_acc"] == pytest.approx(before, abs=1e-12)
        assert row["ft_acc"] == pytest.approx(after, abs=1e-12)
        assert row["gain"] == pytest.approx(after - before, abs=1e-12)
        assert row["norm_gain"] == pytest.approx((after - before) / (1 - before), abs=1e-12)
        (other,) = [t for t in z if t != row["task"]]
        ob = _top1(embedx.open(os.path.join(cells, f"zeroshot-{z[other]}", "test.zarr"))).mean()
        oa = _top1(embedx.open(os.path.join(cells, cell.folder, "other-0.zarr"))).mean()
        assert row["forgetting"] == pytest.approx(oa - ob, abs=1e-12)


def test_stores_hold_the_task_classnames_and_the_class_balanced_subset(done):
    """per_class = 12 then limit = 30: the first 12 of each class in the source's order, then the first 30 of
    those (brute force over the source's labels); d012's class names are the file's, d345's the source's."""
    from embedx.sources.catalog import parse_source

    d, spec, _ = done
    zs, _ = C.grid(S.load(str(spec)))
    for cell in zs:
        t = cell.config["task"]
        for split in ("train", "test"):
            src = parse_source(t[split])
            kept, n = [], {}
            for i, lab in enumerate(src.labels.tolist()):
                if n.get(lab, 0) < 12:
                    kept.append(i)
                    n[lab] = n.get(lab, 0) + 1
            s = embedx.open(os.path.join(d, "out", "cells", cell.folder, f"{split}.zarr"))
            assert [str(i) for i in s.ids()] == [src.ids[i] for i in kept[:30]]
            names = [str(n) for n in s.text_names()]
            assert names == (["nought", "one", "two"] if t["name"] == "d012" else src.classnames)


def test_fits_equal_scipy(done):
    d, _, _ = done
    df = pd.read_parquet(os.path.join(d, "out", "results.parquet"))
    fits = pd.read_csv(os.path.join(d, "out", "tables", "paperB_fits.csv"))
    checked = 0
    for _, f in fits[fits["group"] == "all"].iterrows():
        x, y = df[f["predictor"]].to_numpy(float), df[f["outcome"]].to_numpy(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert isinstance(f["error"], str) and f["error"]
            continue
        lr = stats.linregress(x, y)
        tau = stats.kendalltau(x, y)
        assert f["r2"] == pytest.approx(lr.rvalue ** 2, abs=1e-9)
        assert f["slope"] == pytest.approx(lr.slope, rel=1e-9)
        assert f["kendall_tau"] == pytest.approx(tau.statistic, abs=1e-12)
        assert f["kendall_p"] == pytest.approx(tau.pvalue, abs=1e-12)
        checked += 1
    assert checked > 0
    # per method: 2 rows each -> no fit, a reason instead of numbers
    per = fits[fits["group"] == "lora"]
    assert len(per) == len(T.PREDICTORS) * len(T.OUTCOMES) and per["r2"].isna().all()


def _synthetic(n_tasks=5, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tasks):
        iimm, sil, acs, zs = rng.uniform(0.2, 0.8, 4)
        for m in ("lora", "full"):
            rows.append({"model": "m", "task": f"t{t}", "method": m, "seed": 0, "zs_acc": zs, "iimm": iimm,
                         "silhouette_euclidean": sil, "silhouette_cosine": sil ** 2, "acs": acs,
                         "gain": 0.5 - 0.4 * iimm + rng.normal(0, 0.05), "norm_gain": rng.uniform(),
                         "forgetting": rng.normal(0, 0.1)})
    return pd.DataFrame(rows)


def test_paper_a_equals_scipy():
    df = _synthetic()
    diff, meth = T.paper_a(df)
    per = df.groupby("task")[["zs_acc", "silhouette_euclidean", "acs"]].mean()
    for m in ("silhouette_euclidean", "acs"):
        r = diff[diff["measure"] == m].iloc[0]
        assert r["n_tasks"] == 5
        assert r["spearman"] == pytest.approx(stats.spearmanr(per[m], 1 - per["zs_acc"]).statistic, abs=1e-12)
        assert r["pearson"] == pytest.approx(stats.pearsonr(per[m], 1 - per["zs_acc"]).statistic, abs=1e-12)
        assert r["pearson_p"] == pytest.approx(stats.pearsonr(per[m], 1 - per["zs_acc"]).pvalue, abs=1e-12)
    lora = meth[meth["method"] == "lora"].iloc[0]
    assert lora["gain_mean"] == pytest.approx(df[df["method"] == "lora"]["gain"].mean())
    assert lora["forgetting_std"] == pytest.approx(df[df["method"] == "lora"]["forgetting"].std())


def test_fits_within_each_domain_equal_scipy():
    """Domains of >= 3 tasks get their own fits (over their rows, and per method); smaller ones none."""
    rng = np.random.default_rng(3)
    df = _synthetic(n_tasks=7)
    for p in T.PREDICTORS:
        if p not in df:
            df[p] = rng.uniform(size=len(df))
    df["domain"] = df["task"].map({"t0": "a", "t1": "a", "t2": "a", "t3": "a", "t4": "b", "t5": "b", "t6": ""})
    fits = T.paper_b(df)
    assert set(fits["group"]) == {"all", "lora", "full", "domain=a", "domain=a/lora", "domain=a/full"}
    for group, rows in (("domain=a", df[df["domain"] == "a"]),
                        ("domain=a/full", df[(df["domain"] == "a") & (df["method"] == "full")])):
        f = fits[(fits["group"] == group) & (fits["predictor"] == "iimm") & (fits["outcome"] == "gain")].iloc[0]
        lr = stats.linregress(rows["iimm"], rows["gain"])
        assert f["n"] == len(rows) and f["r2"] == pytest.approx(lr.rvalue ** 2, abs=1e-9)
        assert f["kendall_tau"] == pytest.approx(stats.kendalltau(rows["iimm"], rows["gain"]).statistic, abs=1e-12)


def test_leave_one_task_out_equals_scipy():
    """Each held-out task predicted from a linregress fit on the other tasks, with the t prediction interval."""
    df = _synthetic()
    pred, summ = T.loto(df)
    g = pred[(pred["group"] == "all") & (pred["outcome"] == "gain")]
    assert len(g) == len(df)
    for _, r in g.iterrows():
        train = df[df["task"] != r["task"]]
        lr = stats.linregress(train["iimm"], train["gain"])
        n = len(train)
        yhat = lr.intercept + lr.slope * r["iimm"]
        resid = train["gain"] - (lr.intercept + lr.slope * train["iimm"])
        s = math.sqrt((resid ** 2).sum() / (n - 2))
        sxx = ((train["iimm"] - train["iimm"].mean()) ** 2).sum()
        half = stats.t.ppf(0.975, n - 2) * s * math.sqrt(1 + 1 / n + (r["iimm"] - train["iimm"].mean()) ** 2 / sxx)
        assert r["predicted"] == pytest.approx(yhat, abs=1e-12)
        assert (r["lo"], r["hi"]) == (pytest.approx(yhat - half, abs=1e-12), pytest.approx(yhat + half, abs=1e-12))
        assert r["error"] == pytest.approx(yhat - r["actual"], abs=1e-12)
    s = summ[(summ["group"] == "all") & (summ["outcome"] == "gain")].iloc[0]
    assert s["mae"] == pytest.approx(np.abs(g["error"]).mean())
    assert s["coverage"] == pytest.approx(g["inside"].astype(bool).mean())


def test_report_references_the_figures(done):
    d, _, res = done
    page = open(res.info["report"], encoding="utf-8").read()
    for fid in ("fig-iimm-gain", "fig-forgetting", "fig-ranking"):
        assert f'id="{fid}"' in page
    assert page.count('src="data:image/png;base64,') == 3
    assert "d012" in page and "Kendall" in page


def test_report_renders_in_headless_chromium(done, tmp_path, chromium):
    """study.html in Debian's Chromium: every figure decodes, nothing on the console, the sections are there, and
    a screenshot is a page of plots (the drift report's checks, tests/test_drift.py)."""
    import shutil

    from matplotlib.image import imread

    from tests.test_drift import _dom, _headless

    exe = chromium
    _, _, res = done
    page = tmp_path / "study.html"
    shutil.copy(res.info["report"], page)
    dom, ok, n_err, console = _dom(exe, tmp_path, page)
    assert ok == "3" and n_err == 0 and not console, (ok, n_err, console)
    for heading in ("IIMM vs gain per method", "Forgetting per method", "Paper A", "Paper B",
                    "Within one image domain", "leave-one-task-out"):
        assert heading in dom, heading
    shot = tmp_path / "shot.png"
    p = _headless(exe, tmp_path, page, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    pix = imread(str(shot))[..., :3]
    assert pix.std() > 0.05 and len(np.unique((pix.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 50


def test_kill_and_resume_gives_the_same_results(done, tmp_path):
    """A study killed after its first finished cell continues on rerun and ends with the same table."""
    d, spec, _ = done
    out = tmp_path / "out"
    code = f"import embedx; embedx.study({str(spec)!r}, {str(out)!r}, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TRITON_INTERPRET="1"))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list((out / "cells").glob("*/done.json")) if (out / "cells").exists() else []:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_marked = len(list((out / "cells").glob("*/done.json")))
    assert 1 <= n_marked < 6 and not (out / "results.parquet").exists()
    res = embedx.study(spec, out, progress=False)
    assert res.info["skipped"] == n_marked and res.info["ran"] == 6 - n_marked
    a = pd.read_parquet(res.info["results"]).drop(columns=VOLATILE)
    b = pd.read_parquet(os.path.join(d, "out", "results.parquet")).drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(a, b)
    # several studies' tables concatenate into one with the same columns
    both = pd.concat([pd.read_parquet(res.info["results"]), pd.read_parquet(os.path.join(d, "out", "results.parquet"))],
                     ignore_index=True)
    assert list(both.columns) == list(T.COLUMNS) and len(both) == 8
    assert both.dtypes.equals(pd.read_parquet(res.info["results"]).dtypes)


def test_cluster_run_equals_in_process(done, tmp_path):
    """embedx study --cluster local:2 (the real CLI, one cell per Dask task): the same table as in-process."""
    d, spec, _ = done
    rc, out, err = run_embedx("study", spec, "--out", tmp_path / "c", "--cluster", "local:2", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["ran"] == 6 and "6/6 cells done" in err
    a = pd.read_parquet(res["results"]).drop(columns=VOLATILE)
    b = pd.read_parquet(os.path.join(d, "out", "results.parquet")).drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(a, b)


def test_changed_file_is_refused_unless_overwrite(done, tmp_path):
    d, spec, _ = done
    changed = tmp_path / "STUDY.toml"
    changed.write_text(TOML.replace("lr = 0.01\noptions", "lr = 0.02\noptions"))
    out = os.path.join(d, "out")
    with pytest.raises(EmbedxError) as e:
        embedx.study(changed, out, progress=False)
    assert e.value.param == "overwrite" and "\n" not in str(e.value) and "overwrite=True" in str(e.value)
    rc, _, err = run_embedx("study", changed, "--out", out)
    assert rc == 2
    assert_one_line_error(rc, err, "--overwrite")
    # --overwrite starts over: the old study's outputs are removed before any cell runs (checked on a copy)
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    R._state(str(copy), S.load(str(changed)), overwrite=True)
    assert os.listdir(copy / "cells") == [] and not (copy / "results.parquet").exists()
    assert json.loads((copy / "study.json").read_text())["spec_sha256"] == S.load(str(changed)).sha256
    # the unchanged file is accepted and runs nothing
    res = embedx.study(spec, out, progress=False)
    assert res.info["ran"] == 0 and res.info["skipped"] == 6


@pytest.mark.parametrize("text, key", [
    ("[study]\nbogus = 1\n" + TOML.split("[study]")[1].split("\n", 1)[1], "study.bogus"),
    (TOML.replace('name = "lora"', 'name = "lorax"'), "methods[0].name"),
    (TOML.replace("options = { rank = 2 }", "options = { rnak = 2 }"), "methods[0].options.rnak"),
    (TOML.replace("seeds = [0]", "seeds = [0, -1]"), "study.seeds"),
    (TOML.replace("limit = 30", "limit = 0"), "study.limit"),
    (TOML.replace('test = "digits:test:classes=0,1,2"\n', ""), "tasks[0].test"),
    (TOML.replace("[[models]]\nname", "[[models]]\nnmae"), "models[0].nmae"),
    (TOML.replace('seeds = [0]', 'seeds = [0]\nothers = ["nope"]'), "study.others"),
    (TOML.replace('name = "d345"', 'name = "d012"'), "tasks.name"),
    (TOML.replace('["a drawing of the digit {}."]', '["no slot"]'), "tasks[1].templates"),
    (TOML.replace("per_class = 12", "per_class = 0"), "study.per_class"),
    (TOML.replace('classnames = ["nought", "one", "two"]', 'classnames = ["nought"]'), "tasks[0].classnames"),
    (TOML.replace('classnames = ["nought", "one", "two"]', 'classnames = ["a", "a", "b"]'), "tasks[0].classnames"),
    (TOML.replace('classnames = ["nought", "one", "two"]', 'domain = ""'), "tasks[0].domain"),
    ("[[models]\n", "not valid TOML"),
])
def test_bad_file_is_one_line(tmp_path, text, key):
    p = tmp_path / "STUDY.toml"
    p.write_text(text)
    with pytest.raises(EmbedxError) as e:
        embedx.study(p, tmp_path / "out", progress=False)
    assert key in str(e.value) and "\n" not in str(e.value) and e.value.param == "spec_path"
    assert not (tmp_path / "out").exists()


def test_cli_bad_file_exit_2(tmp_path):
    p = tmp_path / "STUDY.toml"
    p.write_text(TOML.replace("epochs", "x") + "\n[[methods]]\nname = \"full\"\nepoch = 1\n")
    rc, _, err = run_embedx("study", p, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "methods[2].epoch")
    assert rc == 2


def test_cell_ids_are_deterministic():
    a = S.parse(TOML)
    b = S.parse(TOML.replace('name = "tiny-digits"', 'name = "renamed"'))
    assert [c.id for c in C.grid(a)[1]] == [c.id for c in C.grid(b)[1]]
    c = S.parse(TOML.replace("lr = 0.01\noptions", "lr = 0.02\noptions"))
    ids_a, ids_c = [x.id for x in C.grid(a)[1]], [x.id for x in C.grid(c)[1]]
    # grid order d012/lora, d012/bitfit, d345/lora, d345/bitfit: only the lora cells changed
    assert [x == y for x, y in zip(ids_a, ids_c)] == [False, True, False, True]
    assert [x.id for x in C.grid(a)[0]] == [x.id for x in C.grid(c)[0]]
