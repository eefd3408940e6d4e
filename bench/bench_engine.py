"""The planner engine against the code before it (issue 12), side by side in one run on the same stores.

Each case runs in a fresh process of each code version, alternating old / new, ``--repeats`` times; the table
keeps the best and the median of each and the ratio new / old. The old version is a checkout of the commit
before the engine (``git worktree add /tmp/old ef8a7e9`` + a virtualenv that imports embedx from it), named by
``--old-python``. Cases: the measures benchmarks (a)-(d) of ``bench_measures.py`` and the transfer benchmark
(every score, one run) of ``bench_transfer.py``, on the stores those scripts build in ``bench/_work``.

    python bench/bench_engine.py --old-python /work/wt-old/.venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work")
RESULTS = os.path.join(HERE, "results")
ONE_PASS = ["acs", "iimm_inter", "iimm_intra", "iimm", "text_intra", "gap", "silhouette_cosine"]
ZEROSHOT = ["zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"]
RECALL = [f"{s}_recall@{k}" for s in ("i2t", "t2i") for k in (1, 5, 10)]
TRANSFER = ["hscore", "gbc", "gbc_diagonal", "transrate", "logme", "sfda", "leep", "nce"]

CASES = {  # name: (store, what, names); what: "measure" or "transfer"
    "(a) iimm, 20,000 x 512, C=100": ("iimm-20000.zarr", "measure", ["iimm"]),
    "(b) exact Euclidean silhouette, 20,000 + 100": ("iimm-20000.zarr", "measure", ["silhouette_euclidean"]),
    "(c) one pass, 1,000,000 x 512 fp16, C=1,000": ("read-1000000x512.zarr", "measure", ONE_PASS),
    "(c) zero-shot, same store": ("read-1000000x512.zarr", "measure", ZEROSHOT),
    "(d) recall@k both ways, 20,000 pairs": ("paired-20000.zarr", "measure", RECALL),
    "transfer: every score, 100,000 x 512, C=100": ("transfer-100000x512-c100.zarr", "transfer", TRANSFER),
}

CHILD = r"""
import json, sys, time
import embedx.models.encoder  # the torchvision shim, as the CLI applies it
from embedx.store import Store
path, what, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
s = Store(path)
if what == "measure":
    from embedx.measures import compute
    compute(s, names)  # warm: numba, page cache
    t = time.perf_counter(); r = compute(Store(path), names); dt = time.perf_counter() - t
    values = {k: r[k] for k in names}
else:
    from embedx.transferability import compute
    compute(s, names)
    t = time.perf_counter(); r = compute(Store(path), names); dt = time.perf_counter() - t
    values = {k: r[k] for k in names}
print(json.dumps({"seconds": dt, "values": values}))
"""


def run(python: str, store: str, what: str, names) -> dict:
    env = dict(os.environ, EMBEDX_PROGRESS="0")
    p = subprocess.run([python, "-c", CHILD, store, what, ",".join(names)], capture_output=True, text=True, env=env,
                       cwd="/tmp")
    if p.returncode:
        raise SystemExit(f"{python} failed on {store}: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-python", required=True, help="python of a checkout of the code before the engine")
    ap.add_argument("--new-python", default=sys.executable)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="substring of the case names to run")
    a = ap.parse_args(argv)
    rows = []
    for name, (store, what, names) in CASES.items():
        if a.only and a.only not in name:
            continue
        path = os.path.join(WORK, store)
        if not os.path.isdir(path):
            print(f"skip {name}: {path} missing (run bench_measures.py / bench_transfer.py first)")
            continue
        old, new = [], []
        for _ in range(a.repeats):  # alternate: the machine's drift hits both alike
            old.append(run(a.old_python, path, what, names))
            new.append(run(a.new_python, path, what, names))
        diff = max(abs(o - n) for o, n in zip(old[0]["values"].values(), new[0]["values"].values())
                   if o is not None and n is not None and o == o and n == n)
        t_old, t_new = [r["seconds"] for r in old], [r["seconds"] for r in new]
        row = {"case": name, "old_s": t_old, "new_s": t_new, "ratio_best": min(t_new) / min(t_old),
               "ratio_median": statistics.median(t_new) / statistics.median(t_old), "max_abs_diff": diff}
        rows.append(row)
        print(f"{name}: old {min(t_old):.3f} s, new {min(t_new):.3f} s (best; x{row['ratio_best']:.3f}), "
              f"median x{row['ratio_median']:.3f}, |diff| {diff:.1e}", flush=True)
    sys.path.insert(0, HERE)
    from common import machine as describe

    m = describe()
    machine = f"{m.get('cpu', platform.machine())}, {os.cpu_count()} cores"
    with open(os.path.join(RESULTS, "engine.json"), "w") as f:
        json.dump({"machine": machine, "repeats": a.repeats, "rows": rows}, f, indent=1)
    lines = ["# engine (issue 12): the planner vs the code before it", "",
             f"Machine: {machine}, no GPU. Each case: a fresh process per run, old and new alternating, "
             f"{a.repeats} runs each; times exclude start-up and a warm-up call.", "",
             "| case | before (best / median) | planner (best / median) | ratio best | ratio median | max abs diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {min(r['old_s']):.3f} / {statistics.median(r['old_s']):.3f} s | "
                     f"{min(r['new_s']):.3f} / {statistics.median(r['new_s']):.3f} s | {r['ratio_best']:.3f} | "
                     f"{r['ratio_median']:.3f} | {r['max_abs_diff']:.1e} |")
    with open(os.path.join(RESULTS, "engine.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
