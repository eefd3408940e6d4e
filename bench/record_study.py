"""Run (or resume) the offline study and record it in bench/results/study/: the results table, the papers' tables,
study.html, a headless-Chromium screenshot of it, and summary.md (the figures the README quotes).

    python bench/record_study.py                       # bench/studies/lit-offline.toml -> bench/_work/study-lit
    python bench/record_study.py --spec S.toml --work DIR --out bench/results/study

The study itself is resumable (rerun continues); this script only copies what the study wrote and renders the
summary, so rerunning it after the study finished costs seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
COPY = ("results.parquet", "results.csv", "study.html", "STUDY.toml", "tables")


def screenshot(page: str, png: str, width: int = 1300, height: int = 3400) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("chromium is missing: apt-get install chromium")
    prof = os.path.join(os.path.dirname(png), ".chromium-profile")
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={prof}",
            "--virtual-time-budget=5000", f"--screenshot={png}", f"--window-size={width},{height}",
            "--hide-scrollbars", f"file://{os.path.abspath(page)}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=180)
    shutil.rmtree(prof, ignore_errors=True)
    if p.returncode != 0 or not os.path.exists(png):
        raise SystemExit(f"chromium failed: {p.stderr[-1500:]}")


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)
    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False))


def summary(out: str) -> str:
    df = pd.read_parquet(os.path.join(out, "results.parquet"))
    t = {n[:-4]: pd.read_csv(os.path.join(out, "tables", n)) for n in os.listdir(os.path.join(out, "tables"))}
    per_task = (df.groupby(["task", "domain"], sort=False)
                .agg(n_train=("n_train", "first"), n_test=("n_test", "first"), zs_acc=("zs_acc", "first"),
                     iimm=("iimm", "first"), acs=("acs", "first"), silhouette=("silhouette_euclidean", "first"),
                     mean_gain=("gain", "mean"), mean_forgetting=("forgetting", "mean")).reset_index())
    gain = df.pivot_table(index="task", columns="method", values="gain", sort=False).reset_index()
    forget = df.pivot_table(index="task", columns="method", values="forgetting", sort=False).reset_index()
    fits = t["paperB_fits"]
    key = fits[fits["predictor"].isin(["iimm", "acs", "silhouette_euclidean", "gap", "logme", "leep", "hscore"])
               & fits["outcome"].isin(["gain", "forgetting"])]
    key = key[["group", "outcome", "predictor", "n", "r2", "kendall_tau", "kendall_p", "slope"]]
    lines = [
        f"# Offline study: {df['study'].iloc[0]}",
        "",
        f"`embedx study bench/studies/lit-offline.toml` (recorded by `python bench/record_study.py`): "
        f"{df['model'].nunique()} model x {df['task'].nunique()} tasks x {df['method'].nunique()} methods x "
        f"{df['seed'].nunique()} seed = {len(df)} rows. embedx {df['embedx_version'].iloc[0]}, study file sha256 "
        f"`{df['spec_sha256'].iloc[0][:16]}`; {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, no GPU. Screenshot: `study.png` (headless Chromium, {os.path.basename(out)}/"
        f"study.html).",
        "",
        "## Zero-shot state per task (train split measures, test split top-1) and mean outcomes",
        "", _md(per_task), "",
        "## Gain (top-1 after - before, test split) per task and method", "", _md(gain), "",
        "## Forgetting (mean top-1 change on the other tasks; negative = forgotten)", "", _md(forget), "",
        "## Paper A: measures vs difficulty (1 - zero-shot top-1) across tasks", "", _md(t["paperA_difficulty"]), "",
        "## Paper A: gain and forgetting per method", "", _md(t["paperA_methods"]), "",
        "## Paper B: fits of a few predictors (all rows, per method, within a domain)", "", _md(key), "",
        "## Paper B: leave-one-task-out prediction of gain from IIMM", "", _md(t["paperB_loto_summary"]), "",
        f"Fine-tuning seconds per tuned cell (training only, 2 shared cores under other load): median "
        f"{df['train_seconds'].median():.0f} s, max {df['train_seconds'].max():.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=os.path.join(HERE, "studies", "lit-offline.toml"))
    ap.add_argument("--work", default=os.path.join(HERE, "_work", "study-lit"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "study"))
    a = ap.parse_args(argv)
    import embedx

    embedx.study(a.spec, a.work)  # resumes: finished cells are skipped, the tables and report are rewritten
    os.makedirs(a.out, exist_ok=True)
    for name in COPY:
        src, dst = os.path.join(a.work, name), os.path.join(a.out, name)
        if os.path.isdir(src):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    screenshot(os.path.join(a.out, "study.html"), os.path.join(a.out, "study.png"))
    with open(os.path.join(a.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary(a.out))
    print(f"recorded {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
