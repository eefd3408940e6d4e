"""The study's tables: ``results.parquet``/``.csv`` (one row per model x task x method x seed) and the papers'.

results: identity (study, model, model_name, pretrained, task, domain (the task's label, "" when not given),
  method, method_name, seed), the recipe (epochs,
  lr, optimizer, trainable_params, total_params), outcomes (zs_acc, ft_acc, gain, norm_gain, forgetting,
  n_others; :mod:`embedx.studies.run`), drift (displacement_mean, cka_linear, knn_overlap), the predictors of the
  task's zero-shot train store (every measure, every transfer score: :data:`PREDICTORS`), provenance
  (embedx_version, spec_sha256). The column set is fixed, so several studies' tables concatenate.

Paper A (tables/paperA_difficulty.csv): per model, across tasks, Spearman rho and Pearson r (scipy.stats, with
  p) of silhouette_euclidean, silhouette_cosine and acs against difficulty = 1 - zs_acc (zero-shot values
  averaged over seeds per task; needs >= 3 tasks, else null). tables/paperA_methods.csv: per model and method,
  mean and standard deviation of gain, norm_gain and forgetting over tasks and seeds.
Paper B (tables/paperB_fits.csv): per method and over all methods ("all"), and, when tasks carry domains, within
  each domain holding at least 3 tasks ("domain=D" over its methods, "domain=D/METHOD"), for every predictor x
  outcome (gain, norm_gain, forgetting): the OLS fit of ``embedx.predict.fit`` (R², slope, p; Kendall tau-b and p).
  tables/paperB_loto.csv: leave-one-task-out: for each task, fit outcome ~ iimm on the other tasks' rows, predict
  this task's rows with the 95% prediction interval; error = predicted - actual, inside = actual in the interval.
  tables/paperB_loto_summary.csv: per group and outcome, mean |error|, RMSE and interval coverage.
"""
from __future__ import annotations

import math
import os

import numpy as np

from embedx.engine import registry

ID = ("study", "model", "model_name", "pretrained", "task", "domain", "method", "method_name", "seed")
RECIPE = ("epochs", "lr", "optimizer", "trainable_params", "total_params")
OUTCOMES = ("gain", "norm_gain", "forgetting")
RESULT = ("zs_acc", "ft_acc", "gain", "norm_gain", "forgetting", "n_others", "displacement_mean", "cka_linear",
          "knn_overlap", "best_val_acc", "train_seconds", "n_train", "n_test")
PROVENANCE = ("embedx_version", "spec_sha256")
DIFFICULTY_MEASURES = ("silhouette_euclidean", "silhouette_cosine", "acs")
LOTO_PREDICTOR = "iimm"


def _measures() -> tuple[str, ...]:
    return tuple(n for n in registry.names("measure", defaults_only=True)
                 if not n.startswith(("zeroshot_", "i2t_", "t2i_")))


MEASURES = _measures()
TRANSFER = registry.names("transfer", defaults_only=True)
PREDICTORS = MEASURES + TRANSFER
COLUMNS = ID + RECIPE + RESULT + PREDICTORS + PROVENANCE


def _num(v):
    return float("nan") if v is None else v


def results(spec, zs_cells, tuned_cells, markers: dict):
    """The results DataFrame (columns :data:`COLUMNS`, one row per tuned cell, in grid order)."""
    import pandas as pd

    from embedx.version import __version__

    models = {m.label: m for m in spec.models}
    methods = {m.label: m for m in spec.methods}
    domains = {t.name: t.domain for t in spec.tasks}
    rows = []
    for cell in tuned_cells:
        r, lab = markers[cell.id]["result"], cell.labels
        z = markers[cell.config["zeroshot"][lab["task"]]]["result"]
        row = {"study": spec.name, "model": lab["model"], "model_name": models[lab["model"]].name,
               "pretrained": models[lab["model"]].pretrained, "task": lab["task"], "domain": domains[lab["task"]],
               "method": lab["method"],
               "method_name": methods[lab["method"]].name, "seed": int(lab["seed"]),
               "epochs": cell.config["method"]["epochs"], "lr": r["lr"], "optimizer": r["optimizer"],
               "trainable_params": r["trainable_params"], "total_params": r["total_params"],
               **{k: _num(r.get(k)) for k in RESULT if k not in ("n_others", "n_train", "n_test")},
               "n_others": len(r.get("others") or {}), "n_train": z["n_train"], "n_test": z["n_test"],
               **{k: _num(z["measures"].get(k)) for k in MEASURES},
               **{k: _num(z["transfer"].get(k)) for k in TRANSFER},
               "embedx_version": __version__, "spec_sha256": spec.sha256}
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for k in COLUMNS:
        if k not in ("study", "model", "model_name", "pretrained", "task", "domain", "method", "method_name",
                     "optimizer",
                     "embedx_version", "spec_sha256"):
            df[k] = df[k].astype("int64" if k in ("seed", "epochs", "trainable_params", "total_params", "n_others",
                                                  "n_train", "n_test") else "float64")
    return df


def _corr(x, y) -> dict:
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n_tasks": int(len(x)), "spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan,
           "pearson_p": math.nan}
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        s, p = stats.spearmanr(x, y)
        r, q = stats.pearsonr(x, y)
        out.update(spearman=float(s), spearman_p=float(p), pearson=float(r), pearson_p=float(q))
    return out


def paper_a(df):
    """(difficulty table, methods table): see the module doc."""
    import pandas as pd

    per_task = df.groupby(["model", "task"], sort=False)[["zs_acc", *DIFFICULTY_MEASURES]].mean().reset_index()
    per_task["difficulty"] = 1.0 - per_task["zs_acc"]
    diff = []
    for model, g in per_task.groupby("model", sort=False):
        for m in DIFFICULTY_MEASURES:
            diff.append({"model": model, "measure": m, **_corr(g[m], g["difficulty"])})
    agg = df.groupby(["model", "method"], sort=False)[list(OUTCOMES)].agg(["count", "mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    return pd.DataFrame(diff), agg.reset_index()


MIN_DOMAIN_TASKS = 3


def _groups(df):
    """("all", every row), (method, its rows), then per domain with >= MIN_DOMAIN_TASKS tasks:
    ("domain=D", its rows) and ("domain=D/METHOD", its rows of that method)."""
    yield "all", df
    for method, g in df.groupby("method", sort=False):
        yield method, g
    if "domain" not in df:
        return
    for domain, d in df[df["domain"] != ""].groupby("domain", sort=False):
        if d["task"].nunique() >= MIN_DOMAIN_TASKS:
            yield f"domain={domain}", d
            for method, g in d.groupby("method", sort=False):
                yield f"domain={domain}/{method}", g


def paper_b(df):
    """The fits table: one row per group x predictor x outcome (``embedx.predict.fit.fit``)."""
    import pandas as pd

    from embedx.predict.fit import fit

    rows = []
    for group, g in _groups(df):
        for outcome in OUTCOMES:
            for p in PREDICTORS:
                x, y = g[p].to_numpy(float), g[outcome].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                f = fit(x[ok], y[ok])
                rows.append({"group": group, "outcome": outcome, "predictor": p, "n": f["n"],
                             **{k: _num(f[k]) for k in ("r2", "kendall_tau", "kendall_p", "slope", "intercept",
                                                         "p_value", "r")}, "error": f["error"] or ""})
    return pd.DataFrame(rows)


def loto(df, predictor: str = LOTO_PREDICTOR):
    """(leave-one-task-out predictions, their summary) of gain and norm_gain from ``predictor``."""
    import pandas as pd

    from embedx.predict.fit import fit, predict

    rows = []
    for group, g in _groups(df):
        for outcome in ("gain", "norm_gain"):
            for task in g["task"].unique():
                train, held = g[g["task"] != task], g[g["task"] == task]
                x, y = train[predictor].to_numpy(float), train[outcome].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                f = fit(x[ok], y[ok])
                for _, r in held.iterrows():
                    p = predict(f, float(r[predictor]))
                    actual = float(r[outcome])
                    row = {"group": group, "outcome": outcome, "task": task, "model": r["model"],
                           "method": r["method"], "seed": int(r["seed"]), predictor: float(r[predictor]),
                           "actual": actual, "n_fit": f["n"], "predicted": math.nan, "lo": math.nan,
                           "hi": math.nan, "error": math.nan, "inside": None, "extrapolated": None,
                           "fit_error": f["error"] or ""}
                    if p is not None and math.isfinite(actual):
                        row.update(predicted=p["value"], lo=p["lo"], hi=p["hi"], error=p["value"] - actual,
                                   inside=bool(p["lo"] <= actual <= p["hi"]), extrapolated=p["extrapolated"])
                    rows.append(row)
    pred = pd.DataFrame(rows)
    summ = []
    if len(pred):
        for (group, outcome), g in pred.groupby(["group", "outcome"], sort=False):
            e = g["error"].to_numpy(float)
            e = e[np.isfinite(e)]
            summ.append({"group": group, "outcome": outcome, "n_predicted": int(len(e)),
                         "mae": float(np.mean(np.abs(e))) if len(e) else math.nan,
                         "rmse": float(np.sqrt(np.mean(e * e))) if len(e) else math.nan,
                         "coverage": float(g["inside"].dropna().astype(bool).mean()) if len(e) else math.nan})
    return pred, pd.DataFrame(summ, columns=["group", "outcome", "n_predicted", "mae", "rmse", "coverage"])


def _atomic_df(df, path: str, kind: str) -> None:
    from embedx.store.atomic import atomic_write

    if kind == "parquet":
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))
    else:
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def write(df, out: str) -> dict:
    """Write results.parquet/.csv and tables/*.csv under ``out`` -> {"results": path, "tables": {name: path}}."""
    diff, meth = paper_a(df)
    pred, summ = loto(df)
    tables = {"paperA_difficulty": diff, "paperA_methods": meth, "paperB_fits": paper_b(df),
              "paperB_loto": pred, "paperB_loto_summary": summ}
    os.makedirs(os.path.join(out, "tables"), exist_ok=True)
    res = os.path.join(out, "results.parquet")
    _atomic_df(df, res, "parquet")
    _atomic_df(df, os.path.join(out, "results.csv"), "csv")
    paths = {}
    for name, t in tables.items():
        paths[name] = os.path.join(out, "tables", f"{name}.csv")
        _atomic_df(t, paths[name], "csv")
    return {"results": res, "tables": paths, "frames": tables}
