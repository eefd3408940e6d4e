"""Start-up time of each command in a cold process (a fresh interpreter; the numba cache, built once per
installation, and the OS file cache warm: one untimed run of each command first), side by side with the code
before a change, runs interleaved so the load of a shared machine falls on both alike.

Issue 27's rows, on the 20,000 x 512, 100-class float32 store of bench_measures (a): the wall time of
``embedx measure STORE --metrics iimm --json`` (with its ``timings_s``), of ``info`` and of ``verify``, and the
authors' O(N^2) IIMM on the same store (one run) for the end-to-end speed-up. Then every command on a tiny store
(64 images x 16 dims, 4 classes) with the heavy modules it loads.

``--before-python PY``: the interpreter of a venv whose editable install is the code before (e.g. a
``git worktree add --detach /tmp/before main`` with a ``cp -al`` copy of a venv and ``pip install --no-deps -e .``
in it); ``--before-rev REV``: the code at git REV laid out on PYTHONPATH for this interpreter.
Target: ``measure --metrics iimm`` <= 1.0 s and >= 100x the authors end to end; ``info`` / ``verify`` <= 0.5 s;
``--help``, ``info``, ``verify`` and ``import`` load none of NO_MODELS + torch; ``measure`` and ``transfer``
none of the model stack.

    python bench/bench_startup.py [--runs 5] [--before-python PY | --before-rev REV] [--save-before]
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

HEAVY = ("torch", "open_clip", "timm", "peft", "faiss", "matplotlib", "sklearn", "scipy", "numba", "zarr", "triton")
MODEL_STACK = ("open_clip", "timm", "peft")
NO_MODELS = (*MODEL_STACK, "faiss", "matplotlib")
ALLOWED = {"--help": NO_MODELS + ("torch",), "info": NO_MODELS + ("torch",), "verify": NO_MODELS + ("torch",),
           "import": NO_MODELS + ("torch",), "measure": MODEL_STACK, "transfer": MODEL_STACK}  # forbidden imports
TORCH_NOTE = ("\nWhy torch still loads: every store open checks content checksums through `embedx.store.integrity`, which "
              "imports `embedx.kernels.ops.content_hash` (numba only); importing it runs `kernels/__init__.py`, which "
              "imports torch and every op. A lazy `kernels/__init__.py` (tried locally, not in this code) left "
              "`info` with numba, scipy and zarr only.")
ORIGINAL = "ef8a7e9"  # the last commit before issue 12's CLI split
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


NEUTRAL = tempfile.gettempdir()  # where the timed commands run
ISSUE_ROWS = {"measure --metrics iimm --json": ["measure", "{store}", "--metrics", "iimm", "--json"],
              "info": ["info", "{store}"], "verify": ["verify", "{store}"]}
GOALS = {"measure --metrics iimm --json": 1.0, "info": 0.5, "verify": 0.5}


def _code_at(rev: str, into: str) -> str:
    """The package as it was at git ``rev``, laid out importable (embedx/, embedx/cli, embedx/kernels) in ``into``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tar = subprocess.run(["git", "-C", repo, "archive", rev, "embedx", "cli", "kernels"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
    for sub in ("cli", "kernels"):
        os.replace(os.path.join(into, sub), os.path.join(into, "embedx", sub))
    return into


def _env(code: str | None, python: str = sys.executable) -> dict:
    """A version: its interpreter and environment (this checkout's package, or the one laid out at ``code``,
    first on the path)."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    return {"python": python, "env": env}


def _run(args: list[str], ver: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run([ver["python"], "-m", "embedx.cli.main", "-q", *args], capture_output=True, env=ver["env"],
                       cwd=NEUTRAL, text=True)  # not the checkout: ``-m`` puts the working directory first on sys.path
    return time.perf_counter() - t0, p.returncode, p.stdout


def _heavy(args: list[str], ver: dict) -> list[str]:
    p = subprocess.run([ver["python"], "-c", PROBE.format(heavy=HEAVY), "-q", *args], capture_output=True,
                       text=True, env=ver["env"], cwd=NEUTRAL)
    line = next((ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY ")), "HEAVY null")
    return json.loads(line[6:])


def _timings(out: str) -> dict:
    try:
        d = json.loads(out)
    except ValueError:
        return {}
    return {"timings_s": d.get("timings_s"), "iimm": d.get("iimm")} if isinstance(d, dict) else {}


def _measure(commands: dict, envs: dict, runs: int) -> dict:
    """{version: {command: seconds (median), exit, heavy_modules[, timings_s, iimm]}}; one untimed run of each
    first (numba's cache is built once per installation; the store's files in the OS cache), then the versions'
    runs interleave, so a shared machine's load falls on both alike."""
    out = {v: {} for v in envs}
    for name, args in commands.items():
        for ver in envs.values():
            _run(args, ver)
        times, rcs, extra = {v: [] for v in envs}, {}, {v: [] for v in envs}
        for _ in range(runs):
            for v, ver in envs.items():
                secs, rcs[v], stdout = _run(args, ver)
                times[v].append(secs)
                extra[v].append(_timings(stdout))
        for v, ver in envs.items():
            out[v][name] = {"seconds": round(statistics.median(times[v]), 3), "exit": rcs[v],
                            "heavy_modules": _heavy(args, ver)}
            tim = [e["timings_s"] for e in extra[v] if e.get("timings_s")]
            if tim:
                out[v][name]["timings_s"] = {k: round(statistics.median(t.get(k, float("nan")) for t in tim), 3)
                                             for k in tim[0]}
                out[v][name]["iimm"] = extra[v][-1]["iimm"]
        print(f"{name:<30} " + "  ".join(f"{v} {out[v][name]['seconds']:6.2f} s "
                                         f"[{' '.join(out[v][name]['heavy_modules'])}]" for v in envs), flush=True)
    return out


def _authors_seconds(store: str) -> float:
    """The authors' O(N^2) float64 IIMM on ``store`` (bench_measures' child: rows loaded first, not timed)."""
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_measures.py"),
                        "--child", "iimm_authors", store], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _issue_table(rows: dict, authors: dict, how: str) -> list[str]:
    vs = list(rows)
    md = [f"## Issue 27: cold start on the 20,000 x 512, 100-class float32 store ({how})\n",
          "| command | " + " | ".join(f"{v} wall (s)" for v in vs) + " | goal | " +
          " | ".join(f"{v}: timings_s, heavy modules" for v in vs) + " |",
          "|---|" + "---|" * (2 * len(vs) + 1)]
    for name in ISSUE_ROWS:
        cells = [f"{rows[v][name]['seconds']:.2f}" for v in vs]
        notes = []
        for v in vs:
            r = rows[v][name]
            tim = ", ".join(f"{k} {t:.3f}" for k, t in (r.get("timings_s") or {}).items())
            notes.append("; ".join(x for x in (tim, ", ".join(r["heavy_modules"]) or "-") if x))
        md.append(f"| `{name}` | " + " | ".join(cells) + f" | <= {GOALS[name]} s | " + " | ".join(notes) + " |")
    m = "measure --metrics iimm --json"
    md.append(f"\nThe authors' blocked O(N^2) float64 IIMM on the same rows (loaded first, not timed): "
              f"{authors['seconds']:.2f} s, so end to end (the whole cold `measure` process against their "
              "computation alone): " + ", ".join(f"{v} **{authors['seconds'] / rows[v][m]['seconds']:.0f}x**"
                                                 for v in vs) + " (goal >= 100x). IIMM: " +
              ", ".join(f"{v} {rows[v][m].get('iimm')!r}" for v in vs) + f", authors {authors['value']!r}.")
    return md


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before-rev", default=None,
                    help="Git revision to time side by side as 'before' (default: the saved before column).")
    ap.add_argument("--before-python", default=None,
                    help="Interpreter of a venv holding the code before (editable install), timed side by side.")
    ap.add_argument("--save-before", action="store_true",
                    help=f"Record this code's numbers as the 'before' column ({BEFORE}).")
    a = ap.parse_args(argv)
    load = os.getloadavg()[0]
    from bench_measures import WORK, make_class_store

    big = make_class_store(os.path.join(WORK, "iimm-20000.zarr"), 20_000, 100, 512)
    with tempfile.TemporaryDirectory() as tmp:
        store = _tiny_store(tmp)
        envs = {"after": _env(None)}
        if a.before_python:
            envs = {"before": _env(None, a.before_python), **envs}
        elif a.before_rev:
            envs = {"before": _env(_code_at(a.before_rev, tempfile.mkdtemp(dir=tmp))), **envs}
        issue = _measure({k: [x.format(store=big) for x in v] for k, v in ISSUE_ROWS.items()}, envs, a.runs)
        authors = _authors_seconds(big)
        got = _measure(_commands(tmp, store), envs, a.runs)
    rows = got["after"]
    if a.save_before:
        os.makedirs(RESULTS, exist_ok=True)
        with open(BEFORE, "w") as f:
            json.dump(rows, f, indent=2)
        return {"before": rows}
    before = got.get("before") or (json.load(open(BEFORE)) if os.path.exists(BEFORE) else {})
    how = (f"side by side with the venv of {a.before_python}, runs interleaved" if a.before_python else
           f"side by side with git {a.before_rev}, runs interleaved" if a.before_rev else
           "before: saved from an earlier run on the original code")
    before_rev = a.before_rev or (subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(a.before_python)),
                                                  "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
                                  .stdout.strip() if a.before_python else None)
    missed = {cmd: sorted(set(rows[cmd]["heavy_modules"]) & set(bad)) for cmd, bad in ALLOWED.items()}
    missed = {cmd: mods for cmd, mods in missed.items() if mods}
    m = "measure --metrics iimm --json"
    goals = {name: issue["after"][name]["seconds"] <= g for name, g in GOALS.items()}
    goals["end_to_end_100x"] = authors["seconds"] / issue["after"][m]["seconds"] >= 100
    res = {"pass": not missed and all(goals.values()), "goals": goals, "missed": missed, "runs": a.runs,
           "before_rev": before_rev,
           "load_average_at_start": load,
           "note": f"{os.cpu_count()}-core machine, 1-min load average {load:.2f} at the start; median wall time of `python -m embedx.cli.main -q CMD` "
                   f"in a fresh process; {how}",
           "issue27": {**issue, "authors_iimm": authors}, "before": before, "after": rows}
    md = [f"Median of {a.runs} cold processes (`python -m embedx.cli.main -q CMD`, each a fresh interpreter; one "
          f"untimed run first: numba's cache is per installation) per version; {os.cpu_count()} cores, 1-min load "
          f"average {load:.2f} at the start; before: git {before_rev}; after: this code.\n",
          *_issue_table(issue, authors, how),
          "\nGoals (after): " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in goals.items()) + ".",
          "\n## Every command on a tiny class store (64 x 16, 4 classes)\n",
          "| command | before (s) | after (s) | heavy modules before | heavy modules after |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        b = before.get(name, {})
        bs = f"{b['seconds']:.2f}" if b else "-"
        md.append(f"| `{name}` | {bs} | {r['seconds']:.2f} | {', '.join(b.get('heavy_modules', [])) or '-'} | "
                  f"{', '.join(r['heavy_modules']) or '-'} |")
    md.append("\nTarget: no torch, open_clip, timm, peft, faiss or matplotlib for `--help`, `info`, `verify`, "
              "`import`; no open_clip, timm or peft for `measure`, `transfer`: "
              + ("met." if not missed else "missed: " + "; ".join(f"`{c}` loads {', '.join(m)}"
                                                                    for c, m in missed.items()) + "."))
    if any("torch" in m for m in missed.values()):
        md.append(TORCH_NOTE)
    save("startup", res, "\n".join(md))
    return res


if __name__ == "__main__":
    main()
