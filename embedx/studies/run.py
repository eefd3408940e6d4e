"""Run a study: every zero-shot cell, then every tuned cell, skipping finished ones; then the tables and report.

Per tuned cell (model m, task t, method k, seed s), with acc = zero-shot top-1 on a test split:

  gain        = acc_after(t) - acc_before(t)
  norm_gain   = gain / (1 - acc_before(t))          (docs/DESIGN.md "Prediction"; null when acc_before = 1)
  forgetting  = mean over the other tasks o of acc_after(o) - acc_before(o)   (negative = forgotten; null
                without other tasks)

acc_before comes from the zero-shot cell's test store, acc_after from the same split re-embedded with the
tuned model (``embedx embed --checkpoint``); both through ``embedx.drift``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

from embedx.engine.result import Result
from embedx.errors import EmbedxError
from embedx.store.atomic import atomic_write_bytes
from embedx.studies import cells as C
from embedx.studies.spec import Spec, load

STATE = "study.json"
TENSORBOARD = "tensorboard"  # a tuned cell's event files (STUDY.toml: tensorboard = true), beside its run/
OUTPUTS = ("cells", "results.parquet", "results.csv", "tables", "study.html", STATE, "STUDY.toml")


def _clean(v):
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _embed(out, data, model, pretrained, seed, task: dict, spec: Spec, checkpoint=None) -> None:
    from embedx.embedding.serial import embed

    embed(out, data, model, pretrained, checkpoint=checkpoint, seed=seed, templates=_list(task["templates"]),
          classnames=_list(task.get("classnames")), limit=spec.limit, per_class=spec.per_class,
          batch_size=spec.batch_size, progress=False, overwrite=True)


def _list(v):
    return list(v) if v else None


def run_zeroshot(folder: str, cell: C.Cell, spec: Spec) -> dict:
    """Embed train and test with the base model; every measure and transfer score of train; test's top-1."""
    from embedx.api import measure
    from embedx.transferability.api import transfer

    c, t = cell.config, cell.config["task"]
    for split in ("train", "test"):
        _embed(os.path.join(folder, f"{split}.zarr"), t[split], c["model"], c["pretrained"], c["seed"], t, spec)
    m = measure(os.path.join(folder, "train.zarr"), silhouette="exact")  # not auto: the same values on any machine
    measures = {k: v for k, v in m.items() if not k.startswith("zeroshot_")}
    scores = dict(transfer(os.path.join(folder, "train.zarr")))
    test = measure(os.path.join(folder, "test.zarr"), ["zeroshot_top1"])
    return _clean({"zs_acc": test["zeroshot_top1"], "train_zs_acc": m.get("zeroshot_top1"),
                   "measures": measures, "transfer": scores, "n_train": m.info["n_images"],
                   "n_test": test.info["n_images"]})


def run_tuned(folder: str, cell: C.Cell, spec: Spec, cells_dir: str) -> dict:
    """Fine-tune, re-embed the task's test split and each other task's, compare with the zero-shot stores."""
    from embedx.drift_analysis.api import drift
    from embedx.finetune.train import finetune

    c, t, k = cell.config, cell.config["task"], cell.config["method"]
    zs = {name: os.path.join(cells_dir, f"zeroshot-{i}", "test.zarr") for name, i in c["zeroshot"].items()}
    run = os.path.join(folder, "run")
    t0 = time.perf_counter()
    cfg = finetune(run, t["train"], c["model"], c["pretrained"], k["name"], **k["options"], towers=k["towers"],
                   templates=_list(t["templates"]), classnames=_list(t.get("classnames")), seed=c["seed"],
                   epochs=k["epochs"], lr=k["lr"], weight_decay=k["weight_decay"], optimizer=k["optimizer"],
                   batch_size=k["batch_size"], limit=spec.limit, per_class=spec.per_class, overwrite=True,
                   progress=False, log_dir=os.path.join(folder, TENSORBOARD) if spec.tensorboard else None)
    train_s = time.perf_counter() - t0
    after = os.path.join(folder, "test.zarr")
    _embed(after, t["test"], None, None, c["seed"], t, spec, checkpoint=run)
    pairs = []
    for o in c["others"]:
        a = os.path.join(folder, f"other-{len(pairs)}.zarr")
        _embed(a, o["test"], None, None, c["seed"], o, spec, checkpoint=run)
        pairs.append((o["name"], zs[o["name"]], a))
    d = drift(zs[t["name"]], after, others=pairs).to_dict()
    before, after_acc = d["before"]["zeroshot_top1"], d["after"]["zeroshot_top1"]
    gain = after_acc - before
    f = d.get("forgetting") or {}
    return _clean({
        "zs_acc": before, "ft_acc": after_acc, "gain": gain,
        "norm_gain": gain / (1.0 - before) if before < 1.0 else None,
        "forgetting": f.get("mean_delta"),
        "others": {n: v["delta"] for n, v in (f.get("tasks") or {}).items()},
        "displacement_mean": d["displacement_mean"], "cka_linear": d["cka_linear"],
        "knn_overlap": d["knn_overlap"], "trainable_params": cfg["trainable_params"],
        "total_params": cfg["total_params"], "lr": cfg["lr"], "optimizer": cfg["optimizer"],
        "best_val_acc": cfg.get("best_val_acc"), "train_seconds": train_s})


def _state(out: str, spec: Spec, overwrite: bool) -> None:
    """Refuse a changed study file in an existing folder unless ``overwrite`` (which starts it over)."""
    from embedx.version import __version__

    path = os.path.join(out, STATE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("spec_sha256") != spec.sha256:
            if not overwrite:
                was = str(old.get("spec_sha256"))[:12]
                raise EmbedxError(f"{out} holds another study (its file changed: sha256 {was} there, "
                                  f"{spec.sha256[:12]} now): rerun with overwrite=True to start it over, or "
                                  f"choose another out folder", param="overwrite")
            for name in OUTPUTS:
                p = os.path.join(out, name)
                shutil.rmtree(p) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    elif os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise EmbedxError(f"{out} exists and is not a study folder: choose another out folder", param="out")
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    with open(spec.path, "rb") as f:
        atomic_write_bytes(os.path.join(out, "STUDY.toml"), f.read())
    atomic_write_bytes(path, json.dumps({"name": spec.name, "spec_sha256": spec.sha256, "spec_path": spec.path,
                                         "embedx_version": __version__}, indent=1).encode())


def run_cell(out: str, cell: C.Cell, spec: Spec) -> dict:
    """Run one cell into its folder and mark it finished -> the marker (a cell already finished is skipped)."""
    cells_dir = os.path.join(out, "cells")
    done = C.finished(cells_dir, cell)
    if done is not None:
        return done
    folder = C.start(cells_dir, cell)
    t0 = time.perf_counter()
    res = run_zeroshot(folder, cell, spec) if cell.kind == "zeroshot" else run_tuned(folder, cell, spec, cells_dir)
    return C.mark(cells_dir, cell, res, time.perf_counter() - t0)


def _cell_task(cell: C.Cell, out: str, spec: Spec) -> dict:
    """One cell as one Dask task (the worker writes its marker into ``out``, which it must see)."""
    return run_cell(out, cell, spec)


def _phase(cells: list, out: str, spec: Spec, executor, on_done) -> None:
    """Run the unfinished ``cells`` (in-process one after another, or one Dask task each); ``on_done(cell,
    marker, ran)`` is called in grid order as each finishes."""
    cells_dir = os.path.join(out, "cells")
    todo = []
    for cell in cells:
        was = C.finished(cells_dir, cell)
        if was is not None:
            on_done(cell, was, False)
        else:
            todo.append(cell)
    if executor is None:
        for cell in todo:
            on_done(cell, run_cell(out, cell, spec), True)
    else:
        for cell, marker in zip(todo, executor.map(_cell_task, todo, out, spec)):
            on_done(cell, marker, True)


def study(spec_path, out, overwrite: bool = False, cluster=None, progress: bool = True):
    """Run the study declared in ``spec_path`` (STUDY.toml, see ``embedx.studies.spec``) into folder ``out``
    -> an :class:`embedx.Result` (kind "study"): its scores are paper B's headline over every row
    (``r2_<outcome>_<predictor>``: the R² of the OLS fit outcome ~ predictor, for gain and forgetting, every
    predictor; ``loto_coverage_gain``/
    ``loto_mae_gain``: the leave-one-task-out IIMM intervals' coverage and mean |error|), ``.table`` the results
    table (a pandas DataFrame, one row per model x task x method x seed), ``.tables`` the papers' tables, and
    ``.info`` {"results": path of results.parquet, "rows", "tables": {name: path}, "report": path of
    study.html, "cells": total, "ran": cells run now, "skipped": cells already finished} (``to_dict()``: info).

    Resumable: a rerun skips finished cells (their markers); a changed file is refused unless ``overwrite``
    (which removes the folder's study outputs and starts over). ``cluster``: "local[:N]" or "tcp://HOST:PORT"
    (embedx[dist]): each cell is one Dask task (zero-shot cells first, then tuned cells; GPU workers where
    dask-cuda sees GPUs); the workers must see ``out`` and the data. Results equal the in-process ones."""
    from embedx.engine.cluster import connect
    from embedx.studies import report, tables

    spec = load(str(spec_path))
    if spec.tensorboard:
        from embedx.finetune.events import writer_class

        writer_class()  # a missing tensorboard package is one line before any work
    out = os.path.abspath(str(out))
    _state(out, spec, overwrite)
    zs, tuned = C.grid(spec)
    total = len(zs) + len(tuned)
    markers, count = {}, {"ran": 0, "skipped": 0, "i": 0}
    t_start = time.perf_counter()

    def on_done(cell, marker, ran):
        markers[cell.id] = marker
        count["i"] += 1
        count["ran" if ran else "skipped"] += 1
        if progress:
            rate = (f", {(time.perf_counter() - t_start) / count['ran']:.1f} s per cell" if count["ran"] else "")
            print(f"study: {count['i']}/{total} cells done ({cell.kind} {cell.describe()}"
                  f"{'' if ran else ', already finished'}){rate}", file=sys.stderr, flush=True)

    with connect(cluster) as executor:
        _phase(zs, out, spec, executor, on_done)
        _phase(tuned, out, spec, executor, on_done)
    df = tables.results(spec, zs, tuned, markers)
    paths = tables.write(df, out)
    paths["report"] = report.write(df, paths, os.path.join(out, "study.html"), spec)
    info = {"results": paths["results"], "rows": len(df), "tables": paths["tables"], "report": paths["report"],
            "cells": total, "ran": count["ran"], "skipped": count["skipped"]}
    res = Result(headline(paths["frames"]), info=info, kind="study", document=info,
                 provenance={"schema": "embedx.study/1", "spec_sha256": spec.sha256})
    res.table, res.tables = df, paths["frames"]
    return res


def headline(frames: dict) -> dict:
    """Paper B over every row ("all"): {r2_<outcome>_<predictor>} for gain and forgetting, and the
    leave-one-task-out coverage and mean |error| of the gain (NaN where a fit was impossible)."""
    out = {}
    fits = frames["paperB_fits"]
    for outcome in ("gain", "forgetting"):
        for _, r in fits[(fits["group"] == "all") & (fits["outcome"] == outcome)].iterrows():
            out[f"r2_{outcome}_{r['predictor']}"] = float(r["r2"])
    summ = frames["paperB_loto_summary"]
    row = summ[(summ["group"] == "all") & (summ["outcome"] == "gain")]
    out["loto_coverage_gain"] = float(row["coverage"].iloc[0]) if len(row) else float("nan")
    out["loto_mae_gain"] = float(row["mae"].iloc[0]) if len(row) else float("nan")
    return out
