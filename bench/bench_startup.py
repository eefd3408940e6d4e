"""Start-up time of each command: median wall time of 5 runs of ``python -m embedx.cli.main CMD ...`` on a tiny
store (64 images x 16 dims, 4 classes) built in a temporary folder, and which heavy modules each command loads.

The work itself is milliseconds, so the time is almost all interpreter start and imports. The first run
(``--before FILE``) was recorded on the code before the CLI loaded its commands lazily; later runs keep that
column and add the new one.

    python bench/bench_startup.py [--runs 5] [--save-before]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, save  # noqa: E402

HEAVY = ("torch", "open_clip", "timm", "peft", "faiss", "matplotlib", "sklearn", "scipy", "numba", "zarr")
BEFORE = os.path.join(RESULTS, "startup_before.json")

# a module's run under runpy, reporting at exit which heavy top-level packages it imported
PROBE = ("import atexit, json, runpy, sys\n"
         "atexit.register(lambda: sys.stderr.write('HEAVY ' + json.dumps(sorted(m for m in {heavy!r} "
         "if m in sys.modules)) + '\\n'))\n"
         "sys.argv = ['embedx', *sys.argv[1:]]\n"
         "runpy.run_module('embedx.cli.main', run_name='__main__', alter_sys=True)\n")


def _tiny_store(tmp: str) -> str:
    """A class store from arrays: 64 images, 4 class prompts, labels (via the CLI: works on any version)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    t = rng.standard_normal((4, 16)).astype(np.float32)
    y = np.arange(64) % 4
    for name, a in (("x", x), ("t", t), ("y", y)):
        np.save(os.path.join(tmp, f"{name}.npy"), a)
    out = os.path.join(tmp, "tiny.zarr")
    subprocess.run([sys.executable, "-m", "embedx.cli.main", "-q", "import", "--images", f"{tmp}/x.npy",
                    "--texts", f"{tmp}/t.npy", "--labels", f"{tmp}/y.npy", "--out", out], check=True,
                   capture_output=True)
    return out


def _commands(tmp: str, store: str) -> dict[str, list[str]]:
    imp = ["import", "--images", f"{tmp}/x.npy", "--texts", f"{tmp}/t.npy", "--labels", f"{tmp}/y.npy",
           "--out", f"{tmp}/again.zarr", "--overwrite"]
    return {
        "--help": ["--help"],
        "info": ["info", store],
        "verify": ["verify", store],
        "import": imp,
        "measure": ["measure", store, "--json"],
        "transfer": ["transfer", store, "--json"],
        "drift": ["drift", store, store, "--json"],
        "embed --help": ["embed", "--help"],
        "finetune --help": ["finetune", "--help"],
        "predict --help": ["predict", "--help"],
    }


def _time(args: list[str], runs: int) -> tuple[float, int]:
    times, rc = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "embedx.cli.main", "-q", *args], capture_output=True)
        times.append(time.perf_counter() - t0)
        rc = p.returncode
    return statistics.median(times), rc


def _heavy(args: list[str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "-q", *args], capture_output=True,
                       text=True)
    line = next((ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY ")), "HEAVY null")
    return json.loads(line[6:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--save-before", action="store_true",
                    help=f"Record this code's numbers as the 'before' column ({BEFORE}).")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = _tiny_store(tmp)
        rows = {}
        for name, args in _commands(tmp, store).items():
            secs, rc = _time(args, a.runs)
            rows[name] = {"seconds": round(secs, 3), "exit": rc, "heavy_modules": _heavy(args)}
            print(f"{name:<16} {secs:6.2f} s  exit {rc}  {' '.join(rows[name]['heavy_modules'])}", flush=True)
    if a.save_before:
        os.makedirs(RESULTS, exist_ok=True)
        with open(BEFORE, "w") as f:
            json.dump(rows, f, indent=2)
        return {"before": rows}
    before = json.load(open(BEFORE)) if os.path.exists(BEFORE) else {}
    res = {"runs": a.runs, "note": "2-core Xeon VM shared with other jobs; median wall time of `python -m "
                                   "embedx.cli.main -q CMD` on a 64 x 16 class store",
           "before": before, "after": rows}
    md = ["Median of %d runs of `python -m embedx.cli.main -q CMD` on a tiny class store (64 x 16, 4 classes); "
          "2-core Xeon VM shared with other jobs. Before: commands imported eagerly; after: lazy command "
          "loading.\n" % a.runs,
          "| command | before (s) | after (s) | heavy modules before | heavy modules after |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        b = before.get(name, {})
        bs = f"{b['seconds']:.2f}" if b else "-"
        md.append(f"| `{name}` | {bs} | {r['seconds']:.2f} | {', '.join(b.get('heavy_modules', [])) or '-'} | "
                  f"{', '.join(r['heavy_modules']) or '-'} |")
    save("startup", res, "\n".join(md))
    return res


if __name__ == "__main__":
    main()
