"""``embedx predict``: every fit number against scipy/numpy references on random histories, predictors computed from
real stores, bad input as one line, the history writer, the plot and the JSON."""
import csv
import itertools
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.measures import compute
from embedx.predict import fit as F
from embedx.predict import predict
from embedx.predict.history import REQUIRED, append_row
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, run_embedx

TOL = dict(rel=1e-6, abs=1e-9)


# -- independent references ------------------------------------------------------------------------------------
def tau_b(x, y):
    """Kendall's tau-b by counting pairs (O(n^2)): (C - D) / sqrt((P - Tx)(P - Ty))."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            c += 1
        else:
            d += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


def loo_refit(x, y):
    """Leave-one-out errors by refitting without each row (numpy.polyfit)."""
    errs = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        b, a = np.polyfit(x[keep], y[keep], 1)
        errs.append(y[i] - (a + b * x[i]))
    return np.array(errs)


def pred_interval(x, y, x0, level=0.95):
    """Prediction interval from the design matrix: yhat +- t * s * sqrt(1 + x0' (X'X)^-1 x0) (numpy lstsq)."""
    X = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    n = len(x)
    s2 = float(np.sum((y - X @ beta) ** 2)) / (n - 2)
    v = np.array([1.0, x0])
    half = stats.t.ppf(0.5 + level / 2, n - 2) * math.sqrt(s2 * (1 + v @ np.linalg.inv(X.T @ X) @ v))
    yhat = float(v @ beta)
    return yhat, yhat - half, yhat + half


def check_fit(f, x, y):
    """Every number of ``f`` against scipy.stats.linregress / kendalltau and the references above."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ref = stats.linregress(x, y)
    kt = stats.kendalltau(x, y)
    assert f["error"] is None
    assert f["n"] == len(x)
    assert f["slope"] == pytest.approx(ref.slope, **TOL)
    assert f["intercept"] == pytest.approx(ref.intercept, **TOL)
    assert f["r"] == pytest.approx(ref.rvalue, **TOL)
    assert f["r2"] == pytest.approx(ref.rvalue ** 2, **TOL)
    assert f["p_value"] == pytest.approx(ref.pvalue, **TOL)
    assert f["stderr"] == pytest.approx(ref.stderr, **TOL)
    assert f["intercept_stderr"] == pytest.approx(ref.intercept_stderr, **TOL)
    assert f["kendall_tau"] == pytest.approx(kt.statistic, **TOL)
    assert f["kendall_tau"] == pytest.approx(tau_b(x, y), **TOL)
    assert f["kendall_p"] == pytest.approx(kt.pvalue, **TOL)
    b, a = np.polyfit(x, y, 1)
    assert f["residual_std"] == pytest.approx(math.sqrt(np.sum((y - a - b * x) ** 2) / (len(x) - 2)), **TOL)
    if any(np.ptp(np.delete(x, i)) == 0 for i in range(len(x))):  # a refit without row i has one x
        assert f["loo_rmse"] is None and f["loo_mae"] is None
        return
    e = loo_refit(x, y)
    assert f["loo_rmse"] == pytest.approx(math.sqrt(np.mean(e ** 2)), **TOL)
    assert f["loo_mae"] == pytest.approx(np.mean(np.abs(e)), **TOL)
    for x0 in (x.min() - 0.3, float(np.median(x)), x.max() + 1.0):
        p = F.predict(f, x0)
        assert (p["value"], p["lo"], p["hi"]) == pytest.approx(pred_interval(x, y, x0), **TOL)
        assert p["extrapolated"] == (x0 < x.min() or x0 > x.max())


# -- random histories --------------------------------------------------------------------------------------------
def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def cell(v):
    return "" if v is None else repr(float(v))


def random_history(path, rng, n, blanks=True, ties=False):
    """A history CSV with predictors a (related to the gain), b (noise) and c (related to forgetting); the
    arrays come back so the test can build its references without reading the file."""
    zs = rng.uniform(0.05, 0.95, n)
    a = rng.uniform(0.1, 0.5, n)
    if ties:
        a = np.round(a, 1)  # ties: tau-b and Kendall's p with ties
    gain_true = 0.2 + 1.5 * (a - 0.3) + 0.1 * rng.standard_normal(n)
    ft = np.clip(zs + gain_true * (1 - zs), 0.0, 1.0)
    ood = -0.05 * a + 0.01 * rng.standard_normal(n)
    b = rng.standard_normal(n)
    c = ood * 3 + 0.02 * rng.standard_normal(n)
    ood_l, b_l = list(ood), list(b)
    if blanks and n >= 6:
        ood_l[0] = None
        b_l[1] = None
        b_l[n - 1] = None
    methods = rng.choice(["lora", "full", "bitfit"], n)
    rows = [[f"task{i}", "ViT-B-32", methods[i], cell(zs[i]), cell(ft[i]), cell(ood_l[i]), cell(a[i]),
             cell(b_l[i]), cell(c[i])] for i in range(n)]
    write_csv(path, list(REQUIRED) + ["a", "b", "c"], rows)
    gain = (ft - zs) / (1 - zs)
    return {"zs": zs, "ft": ft, "gain": gain, "forgetting": ood_l, "a": list(a), "b": b_l, "c": list(c),
            "method": list(methods)}


def _pairs(h, m, o, keep=None):
    idx = [i for i in range(len(h["zs"])) if (keep is None or keep[i])
           and h[m][i] is not None and h[o][i] is not None]
    return np.array([h[m][i] for i in idx], float), np.array([h[o][i] for i in idx], float)


@pytest.mark.parametrize("n", [3, 4, 5, 7, 12, 25, 40])
def test_fits_equal_scipy_on_random_histories(tmp_path, rng, n):
    for ties in (False, True):
        h = random_history(tmp_path / "h.csv", rng, n, ties=ties)
        res = predict(str(tmp_path / "h.csv"))
        assert res["n_rows"] == n and res["predictors"] == ["a", "b", "c"]
        assert res["outcomes"] == ["gain", "forgetting"]
        for r, g in zip(res["rows"], h["gain"]):
            assert r["gain"] == pytest.approx(g, rel=1e-12)
        for m in ("a", "b", "c"):
            for o in ("gain", "forgetting"):
                x, y = _pairs(h, m, o)
                if np.ptp(x) == 0:  # ties can leave 3 equal values
                    assert "constant" in res["fits"][m][o]["error"]
                    continue
                check_fit(res["fits"][m][o], x, y)
        for o in ("gain", "forgetting"):
            r2 = [res["fits"][m][o]["r2"] for m in res["ranking"][o]]
            assert r2 == sorted(r2, reverse=True)
            assert set(res["ranking"][o]) == {m for m in "abc" if not res["fits"][m][o]["error"]}


def test_fit_direct_and_degenerate_cases(rng):
    for n in (3, 9, 30):
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        check_fit(F.fit(x, y), x, y)
    # dropping row 3 leaves a constant predictor: leave-one-out is undefined, the rest is a fit
    x, y = np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.3, 0.9])
    f = F.fit(x, y)
    ref = stats.linregress(x, y)
    assert f["slope"] == pytest.approx(ref.slope, **TOL) and f["p_value"] == pytest.approx(ref.pvalue, **TOL)
    assert f["loo_rmse"] is None and f["loo_mae"] is None
    # a perfect line: p = 0, a zero-width interval
    x = np.array([0.1, 0.2, 0.4, 0.7])
    f = F.fit(x, 2 * x + 1)
    assert f["r2"] == pytest.approx(1.0) and f["p_value"] == pytest.approx(stats.linregress(x, 2 * x + 1).pvalue, abs=1e-12)
    p = F.predict(f, 0.5)
    assert p["value"] == pytest.approx(2.0) and p["hi"] - p["lo"] == pytest.approx(0.0, abs=1e-9)
    for x, y, word in (([1, 1, 1, 1], [1, 2, 3, 4], "predictor is constant"),
                       ([1, 2, 3, 4], [5, 5, 5, 5], "outcome is constant"),
                       ([1, 2], [1, 2], "at least 3")):
        f = F.fit(x, y)
        assert word in f["error"] and f["slope"] is None and f["r2"] is None
        assert F.predict(f, 1.0) is None


def test_prediction_interval_coverage():
    """95% prediction intervals cover about 95% of new draws from a true line (seeded: deterministic)."""
    rng = np.random.default_rng(12345)
    hits, trials = 0, 1500
    for _ in range(trials):
        n = int(rng.integers(4, 15))
        x = rng.uniform(0, 1, n)
        y = 0.3 + 2.0 * x + 0.2 * rng.standard_normal(n)
        x0 = rng.uniform(-0.2, 1.2)
        y0 = 0.3 + 2.0 * x0 + 0.2 * rng.standard_normal()
        p = F.predict(F.fit(x, y), x0)
        hits += p["lo"] <= y0 <= p["hi"]
    # binomial sd at 1500 trials is 0.0056: a 4-sd band
    assert abs(hits / trials - 0.95) < 0.023, hits / trials


def test_where_filters_and_skipped_outcome(tmp_path, rng):
    h = random_history(tmp_path / "h.csv", rng, 30, blanks=False)
    for meth in ("lora", ["lora", "bitfit"]):
        vals = [meth] if isinstance(meth, str) else meth
        keep = [m in vals for m in h["method"]]
        if sum(keep) < 3:
            continue
        res = predict(str(tmp_path / "h.csv"), where=[f"method={v}" for v in vals])
        assert res["n_rows"] == sum(keep) and res["where"] == {"method": vals}
        assert {r["method"] for r in res["rows"]} <= set(vals)
        for m in ("a", "b"):
            x, y = _pairs(h, m, "gain", keep)
            check_fit(res["fits"][m]["gain"], x, y)
    # forgetting known for only 2 rows: skipped with a warning, gain still fitted
    rows = [[f"t{i}", "m", "full", "0.5", repr(0.5 + 0.04 * i), "-0.01" if i < 2 else "", repr(0.1 * i)]
            for i in range(5)]
    p = write_csv(tmp_path / "f.csv", list(REQUIRED) + ["iimm"], rows)
    res = predict(p)
    assert res["outcomes"] == ["gain"] and "forgetting" not in res["fits"]["iimm"]
    assert any("forgetting" in w for w in res["warnings"])
    with pytest.raises(EmbedxError, match="no column"):
        predict(p, where=["nope=1"])
    with pytest.raises(EmbedxError, match="unknown predictor"):
        predict(p, measures=["iimmm"])


# -- stores ------------------------------------------------------------------------------------------------------
def make_store(path, rng, n, c, d, spread):
    """A class store whose images cluster by class with a task-specific spread (so the measures vary)."""
    centers = rng.standard_normal((c, d))
    y = rng.integers(0, c, n)
    x = (centers[y] + spread * rng.standard_normal((n, d))).astype(np.float32)
    t = (centers + 0.5 * rng.standard_normal((c, d))).astype(np.float32)
    base = str(path)
    np.save(base + ".x.npy", x)
    np.save(base + ".t.npy", t)
    np.save(base + ".y.npy", y)
    import_arrays(base, images=base + ".x.npy", texts=base + ".t.npy", labels=base + ".y.npy", dtype="float32")
    return base


MEAS = ["iimm", "iimm_intra", "gap", "acs", "silhouette_euclidean"]


def test_predictors_from_stores_and_targets(tmp_path, rng):
    os.makedirs(tmp_path / "stores")
    stores = [make_store(tmp_path / "stores" / f"s{i}.zarr", rng, 50 + 10 * i, 3 + i % 3, 8, 0.3 + 0.4 * i)
              for i in range(5)]
    target = make_store(tmp_path / "target.zarr", rng, 70, 4, 8, 1.1)
    ref = {s: compute(Store(s), MEAS) for s in stores + [target]}
    # rows 0 and 5 share a store (same task, two methods); row 1 gives iimm in the CSV: the CSV wins
    plan = [(0, "full"), (1, "full"), (2, "lora"), (3, "lora"), (4, "full"), (0, "lora")]
    header = list(REQUIRED) + ["store", "iimm"]
    rows, given = [], 0.123456789
    for k, (i, meth) in enumerate(plan):
        rel = os.path.join("stores", f"s{i}.zarr") if i % 2 == 0 else stores[i]  # relative and absolute paths
        zs = 0.3 + 0.1 * i
        rows.append([f"task{i}", "M", meth, repr(zs), repr(zs + 0.05 * (k + 1)), repr(-0.01 * k), rel,
                     repr(given) if i == 1 else ""])
    hp = write_csv(tmp_path / "h.csv", header, rows)
    res = predict(hp, [target], measures=MEAS)
    assert res["predictors"] == MEAS
    for r, (i, _) in zip(res["rows"], plan):
        assert r["store"] == stores[i]
        for m in MEAS:
            want = given if (m == "iimm" and i == 1) else ref[stores[i]][m]
            assert r[m] == pytest.approx(want, abs=1e-12), (i, m)
    t = res["targets"][target]
    # the possible range of each outcome: gain <= 1 and >= -zs / (1 - zs) (zs: the target's zero-shot top-1)
    zs = compute(Store(target), ["zeroshot_top1"])["zeroshot_top1"]
    assert t["zeroshot_top1"] == zs and t["ranges"] == {"gain": [-zs / (1 - zs), 1.0], "forgetting": [-1.0, 1.0]}
    for m in MEAS:
        assert t["measures"][m] == pytest.approx(ref[target][m], abs=1e-12)
        xs = np.array([r[m] for r in res["rows"]])
        for o in ("gain", "forgetting"):
            ys = np.array([r[o] for r in res["rows"]])
            f = res["fits"][m][o]
            check_fit(f, xs, ys)
            p = t["predictions"][m][o]
            raw = pred_interval(xs, ys, ref[target][m])
            assert raw[0] == pytest.approx(f["slope"] * ref[target][m] + f["intercept"], **TOL)
            assert (p["value"], p["lo"], p["hi"]) == pytest.approx(tuple(np.clip(raw, *t["ranges"][o])), **TOL)
            assert p["clipped"] == (not np.allclose(np.clip(raw, *t["ranges"][o]), raw, rtol=0, atol=0))
            if p["clipped"]:
                u = p["unclipped"]
                assert (u["value"], u["lo"], u["hi"]) == pytest.approx(raw, **TOL)
    for o in ("gain", "forgetting"):
        assert t["best"][o] == res["ranking"][o][0]
    # the plot with targets (stars and interval bars) reads back as an image
    from matplotlib.image import imread
    from embedx.predict.plot import plot

    png = plot(res, str(tmp_path / "fit.png"))
    img = imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.01


def test_transfer_scores_from_stores(tmp_path, rng):
    """The default store predictors: the measures and embedx.transfer's scores, each computed once per store."""
    from embedx import transferability as transfer
    from embedx.predict import TRANSFER_SCORES

    assert set(TRANSFER_SCORES) == set(transfer.SCORES)
    stores = [make_store(tmp_path / f"s{i}.zarr", rng, 60, 3 + i % 2, 6, 0.4 + 0.3 * i) for i in range(4)]
    rows = [[f"task{i}", "M", "lora", repr(0.2 + 0.1 * i), repr(0.5 + 0.1 * i), "", os.path.basename(s), ""]
            for i, s in enumerate(stores)]
    hp = write_csv(tmp_path / "h.csv", list(REQUIRED) + ["store", "extra"], rows)
    res = predict(hp, logit_scale=50.0)
    from embedx.predict import DEFAULT_MEASURES, DEFAULT_TRANSFER

    assert res["predictors"] == ["extra"] + list(DEFAULT_MEASURES) + list(DEFAULT_TRANSFER)
    assert res["outcomes"] == ["gain"]  # no ood_delta at all
    assert "no fit" in " ".join(res["warnings"])  # the blank "extra" column
    for r, s in zip(res["rows"], stores):
        meas = compute(Store(s), list(DEFAULT_MEASURES))
        scores = transfer.compute(Store(s), scores=list(DEFAULT_TRANSFER), logit_scale=50.0)
        for m in DEFAULT_MEASURES:
            assert r[m] == pytest.approx(meas[m], abs=1e-12)
        for m in DEFAULT_TRANSFER:
            want = scores[m]
            assert (r[m] is None and not math.isfinite(want)) or r[m] == pytest.approx(want, rel=1e-9, abs=1e-12), m
    for m in list(DEFAULT_MEASURES) + list(DEFAULT_TRANSFER):
        pts = [(r[m], r["gain"]) for r in res["rows"] if r[m] is not None]
        if res["fits"][m]["gain"]["error"] is None:
            check_fit(res["fits"][m]["gain"], [p[0] for p in pts], [p[1] for p in pts])


# -- bad input, as the user sees it --------------------------------------------------------------------------------
GOOD = [["cars", "M", "lora", "0.5", "0.8", "-0.01", "0.3"], ["dtd", "M", "lora", "0.4", "0.6", "-0.02", "0.2"],
        ["svhn", "M", "lora", "0.3", "0.9", "-0.03", "0.4"]]
HEAD = list(REQUIRED) + ["iimm"]


@pytest.mark.parametrize("case", ["two_rows", "missing_columns", "zs_one", "non_numeric", "missing_file"])
def test_bad_input_is_one_line(tmp_path, case):
    p = str(tmp_path / "h.csv")
    if case == "two_rows":
        write_csv(p, HEAD, GOOD[:2])
        frags = ["2 row", "at least 3"]
    elif case == "missing_columns":
        write_csv(p, ["task", "model", "zs_acc", "iimm"], [r[:2] + [r[3], r[6]] for r in GOOD])
        frags = ["method", "ft_acc", "ood_delta"]
    elif case == "zs_one":
        write_csv(p, HEAD, GOOD[:2] + [["svhn", "M", "lora", "1", "1", "0", "0.4"]])
        frags = ["row 3", "svhn", "zs_acc = 1", "undefined"]
    elif case == "non_numeric":
        write_csv(p, HEAD, GOOD[:1] + [GOOD[1][:6] + ["high"]] + GOOD[2:])
        frags = ["row 2", "iimm", "high", "not a number"]
    else:
        p = str(tmp_path / "nope.csv")
        frags = ["nope.csv", "not found"]
    rc, out, err = run_embedx("predict", "--history", p)
    assert_one_line_error(rc, err, *frags)
    assert out == ""


def test_more_bad_input(tmp_path):
    p = str(tmp_path / "h.csv")
    cases = [
        (GOOD[:2] + [["svhn", "M", "lora", "30", "0.9", "0", "0.4"]], "not a percentage"),
        (GOOD[:2] + [["svhn", "M", "lora", "0.3", "", "0", "0.4"]], "ft_acc is missing"),
        (GOOD[:2] + [["svhn", "M", "lora", "0.3", "0.9", "0", "inf"]], "not a finite number"),
        (GOOD[:2] + [["svhn", "M", "lora", "0.3", "0.9", "0"]], "has 6 cells"),
        (GOOD[:2] + [["", "M", "lora", "0.3", "0.9", "0", "0.4"]], "task is blank"),
    ]
    for rows, frag in cases:
        write_csv(p, HEAD, rows)
        with pytest.raises(EmbedxError, match=frag):
            predict(p)
    write_csv(p, HEAD + ["gain"], [r + ["1"] for r in GOOD])
    with pytest.raises(EmbedxError, match="clash"):
        predict(p)
    write_csv(p, HEAD, GOOD + [["x", "M", "full", "0.1", "0.2", "0", "0.1"]])
    with pytest.raises(EmbedxError, match="1 row.*method=full"):
        predict(p, where=["method=full"])
    r = invoke("predict", "--history", p, "--where", "method")
    assert r.exit_code == 2 and "COLUMN=VALUE" in r.output


# -- the history writer --------------------------------------------------------------------------------------------
def read_back(p):
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    assert len({len(r) for r in rows}) == 1, rows  # rectangular
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def test_append_row(tmp_path):
    p = str(tmp_path / "h.csv")
    append_row(p, {"iimm": 0.1 + 0.2, "task": "cars", "model": "M", "method": "lora", "zs_acc": 0.5, "ft_acc": 0.8})
    head, rows = read_back(p)
    assert head == list(REQUIRED) + ["iimm"]
    assert rows == [{"task": "cars", "model": "M", "method": "lora", "zs_acc": "0.5", "ft_acc": "0.8",
                     "ood_delta": "", "iimm": repr(0.1 + 0.2)}]
    assert float(rows[0]["iimm"]) == 0.1 + 0.2  # exact round trip
    append_row(p, {"task": "dtd, textures", "model": "M", "method": "full", "zs_acc": np.float32(0.25),
                   "ft_acc": 0.75, "ood_delta": -0.02, "iimm": None})
    head, rows = read_back(p)
    assert [r["task"] for r in rows] == ["cars", "dtd, textures"] and rows[1]["iimm"] == ""
    assert float(rows[1]["zs_acc"]) == float(np.float32(0.25))
    # new columns: the file is rewritten with the union, old values kept, new cells blank
    append_row(p, {"task": "svhn", "model": "M", "method": "bitfit", "zs_acc": 0.3, "ft_acc": 0.9,
                   "ood_delta": -0.05, "gbc": -12.5, "store": "stores/svhn.zarr"})
    head, rows = read_back(p)
    assert head == list(REQUIRED) + ["store", "iimm", "gbc"]
    assert rows[0]["iimm"] == repr(0.1 + 0.2) and rows[0]["gbc"] == "" and rows[0]["store"] == ""
    assert rows[2]["gbc"] == "-12.5" and rows[2]["store"] == "stores/svhn.zarr" and rows[2]["iimm"] == ""
    assert sorted(os.listdir(tmp_path)) == ["h.csv"]  # no temporary or lock files left behind
    with pytest.raises(EmbedxError, match="lacks ft_acc"):
        append_row(p, {"task": "x", "model": "M", "method": "m", "zs_acc": 0.3})
    assert len(read_back(p)[1]) == 3
    # the written file is a history predict reads: 3 rows, gain from the written numbers
    res = predict(p, measures=["gbc"])  # row 3's gbc is in the file: its store (absent here) is not opened
    assert res["n_rows"] == 3 and res["rows"][2]["gain"] == pytest.approx((0.9 - 0.3) / 0.7)
    assert "at least 3" in res["fits"]["gbc"]["gain"]["error"]  # 1 value
    with pytest.raises(EmbedxError, match=r"row 3 \(task svhn\).*no store at"):
        predict(p, measures=["iimm"])  # now it must be computed from row 3's store


# -- the command: JSON, plot, table ------------------------------------------------------------------------------
def test_cli_json_plot_and_table(tmp_path, rng):
    from matplotlib.image import imread

    h = random_history(tmp_path / "h.csv", rng, 12)
    png, out = str(tmp_path / "fit.png"), str(tmp_path / "res.json")
    rc, stdout, err = run_embedx("predict", "--history", tmp_path / "h.csv", "--json", "--plot", png, "--out", out)
    assert rc == 0, err
    doc = json.loads(stdout)
    assert doc == json.load(open(out))
    assert set(doc) >= {"history", "n_rows", "where", "outcomes", "rows", "fits", "ranking", "targets"}
    import hashlib  # the provenance header: schema, the history file's content hash, the options

    assert doc["schema"] == "embedx.predict/1" and doc["options"]["silhouette"] == "exact"
    assert doc["stores"]["history"]["sha256"] == hashlib.sha256((tmp_path / "h.csv").read_bytes()).hexdigest()
    for m in ("a", "b", "c"):
        check_fit(doc["fits"][m]["gain"], *_pairs(h, m, "gain"))
    assert doc["rows"][0]["forgetting"] is None  # strict JSON: a blank ood_delta is null
    img = imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.01
    r = invoke("predict", "--history", tmp_path / "h.csv", "--measures", "a,c")
    assert r.exit_code == 0, r.output
    assert "gain ~ predictor" in r.output and "forgetting ~ predictor" in r.output and "LOO RMSE" in r.output
    assert " b " not in r.output


def test_output_paths_are_checked_before_the_work(tmp_path, rng):
    """A missing folder for --out or --plot is one error line before the history is even read (the history here
    does not exist: reaching it would give another error)."""
    for flag in ("--out", "--plot"):
        r = invoke("predict", "--history", tmp_path / "absent.csv", flag, tmp_path / "nodir" / "x.json")
        assert_one_line_error(r.exit_code, r.stderr, flag, "does not exist")
        assert "absent.csv" not in r.stderr


def test_append_row_concurrent_writers_lose_nothing(tmp_path):
    """Writers in parallel (threads, each with its own lock) - some adding columns - keep every row and value."""
    import threading

    p = str(tmp_path / "h.csv")

    def writer(w):
        for k in range(10):
            append_row(p, {"task": f"w{w}-{k}", "model": "M", "method": "m", "zs_acc": 0.5, "ft_acc": 0.5 + k / 100,
                           f"col{w}": float(w * 100 + k)})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head, rows = read_back(p)
    assert head[:6] == list(REQUIRED) and set(head[6:]) == {f"col{w}" for w in range(4)}
    assert sorted(r["task"] for r in rows) == sorted(f"w{w}-{k}" for w in range(4) for k in range(10))
    for r in rows:
        w, k = map(int, r["task"][1:].split("-"))
        assert float(r[f"col{w}"]) == w * 100 + k and all(r[f"col{v}"] == "" for v in range(4) if v != w)


def test_paired_stores_skip_transfer_scores_by_default(tmp_path, rng):
    """Caption (paired) stores have no class labels: the default transfer scores are missing, with a warning."""
    rows = []
    for i in range(3):
        x = rng.standard_normal((40, 6)).astype(np.float32)
        t = (x + (0.5 + i) * rng.standard_normal((40, 6))).astype(np.float32)
        np.save(tmp_path / f"x{i}.npy", x)
        np.save(tmp_path / f"t{i}.npy", t)
        import_arrays(str(tmp_path / f"p{i}.zarr"), images=str(tmp_path / f"x{i}.npy"),
                      texts=str(tmp_path / f"t{i}.npy"), paired=True, dtype="float32")
        rows.append([f"coco{i}", "M", "full", repr(0.3 + 0.1 * i), repr(0.6 + 0.05 * i), "", f"p{i}.zarr"])
    res = predict(write_csv(tmp_path / "h.csv", list(REQUIRED) + ["store"], rows))
    assert any("paired" in w for w in res["warnings"])
    for r, i in zip(res["rows"], range(3)):
        assert r["hscore"] is None and r["nce"] is None
        assert r["iimm"] == pytest.approx(compute(Store(str(tmp_path / f"p{i}.zarr")), ["iimm"])["iimm"], abs=1e-12)
    assert res["fits"]["hscore"]["gain"]["error"] and not res["fits"]["iimm"]["gain"]["error"]
    with pytest.raises(EmbedxError):  # asked for by name: the transfer module's own error, with the row
        predict(str(tmp_path / "h.csv"), measures=["hscore"])


def test_few_runs_warn_with_the_reason_and_intervals_stay_possible(tmp_path, rng):
    """Issue 26: 4 runs and several predictors: one warning giving the R² reached by chance (the critical R² of
    the slope's t test, from scipy), and every target interval inside the range the outcome can take, the
    clipping said in the table."""
    stores = [make_store(tmp_path / f"s{i}.zarr", rng, 40, 3, 6, 0.3 + 0.5 * i) for i in range(4)]
    target = make_store(tmp_path / "target.zarr", rng, 50, 3, 6, 3.0)
    rows = [[f"task{i}", "M", "lora", repr(0.3 + 0.05 * i), repr(0.9 + 0.02 * i), repr(-0.01 * i),
             os.path.basename(s), ""] for i, s in enumerate(stores)]
    hp = write_csv(tmp_path / "h.csv", list(REQUIRED) + ["store", "x"], rows)
    res = predict(hp, [target], measures=MEAS)
    t = stats.t.ppf(0.975, 2)
    assert res["caution"] == {"n_runs": 4, "min_runs": 10, "chance_r2": pytest.approx(t * t / (t * t + 2), rel=1e-12)}
    few = [w for w in res["warnings"] if w.startswith("only 4 runs")]
    assert len(few) == 1 and "R² ≥ 0.90 one time in 20" in few[0] and "ranking 5 predictors" in few[0]
    # the chance R² is the R² at which the slope's two-sided p-value is 0.05 (t = r sqrt((n-2) / (1-r²)))
    for n in (4, 7, 10):
        r2 = F.chance_r2(n)
        p = 2 * stats.t.sf(math.sqrt(r2 * (n - 2) / (1 - r2)), n - 2)
        assert p == pytest.approx(0.05, rel=1e-9), n
    assert F.chance_r2(10) == pytest.approx(0.3993, abs=1e-4) and F.chance_r2(2) is None
    zs = res["targets"][target]["zeroshot_top1"]
    lo_gain = -zs / (1 - zs)
    clipped = 0
    for m, by in res["targets"][target]["predictions"].items():
        for o, p in by.items():
            if p is None:
                continue
            a, b = (lo_gain, 1.0) if o == "gain" else (-1.0, 1.0)
            assert a - 1e-12 <= p["lo"] <= p["value"] <= p["hi"] <= b + 1e-12, (m, o, p)
            clipped += p["clipped"]
    assert clipped > 0  # with 4 runs (t = 4.30) some interval reaches past a gain of 1
    rc, out, err = run_embedx("predict", "--history", hp, "--target", target, "--measures", ",".join(MEAS))
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning: only 4 runs")]
    assert len(warn) == 1 and "add runs" in warn[0]
    assert "caution: 4 runs, below 10" in out and "(clipped to the possible range [" in out
    # 10 runs: no caution
    rows = [[f"task{i}", "M", "lora", repr(0.3 + 0.02 * i), repr(0.6 + 0.004 * i * i), repr(-0.01 * i), "",
             repr(0.1 * i + 0.01 * (i % 3))] for i in range(10)]
    res = predict(write_csv(tmp_path / "h10.csv", list(REQUIRED) + ["store", "x"], rows), measures=["x"])
    assert res["caution"] is None and not [w for w in res["warnings"] if "runs" in w]
