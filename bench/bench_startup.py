"""Start-up time of each command: median wall time of 5 runs of ``python -m embedx.cli.main CMD ...`` on a tiny
store (64 images x 16 dims, 4 classes) built in a temporary folder, and which heavy modules each command loads.

The work itself is milliseconds, so the time is almost all interpreter start and imports. ``--before-rev REV``
times the code at git REV (before issue 12: ef8a7e9) side by side, runs interleaved, so the load of a shared
machine falls on both alike; without it the 'before' column is the one ``--save-before`` recorded on the
original code. Target (``pass``): ``--help``, ``info``, ``verify`` and
``import`` load none of NO_MODELS + torch; ``measure`` and ``transfer`` none of the model stack.

    python bench/bench_startup.py [--runs 5] [--before-rev ef8a7e9] [--save-before]
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


def _code_at(rev: str, into: str) -> str:
    """The package as it was at git ``rev``, laid out importable (embedx/, embedx/cli, embedx/kernels) in ``into``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tar = subprocess.run(["git", "-C", repo, "archive", rev, "embedx", "cli", "kernels"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
    for sub in ("cli", "kernels"):
        os.replace(os.path.join(into, sub), os.path.join(into, "embedx", sub))
    return into


def _env(code: str | None) -> dict:
    """This checkout's package, or the one laid out at ``code`` (first on the path)."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str], env: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "embedx.cli.main", "-q", *args], capture_output=True, env=env,
                       cwd=NEUTRAL)  # not the checkout: ``-m`` puts the working directory first on sys.path
    return time.perf_counter() - t0, p.returncode


def _heavy(args: list[str], env: dict) -> list[str]:
    p = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "-q", *args], capture_output=True,
                       text=True, env=env, cwd=NEUTRAL)
    line = next((ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY ")), "HEAVY null")
    return json.loads(line[6:])


def _measure(commands: dict, envs: dict, runs: int) -> dict:
    """{version: {command: seconds (median), exit, heavy_modules}}; the versions' runs interleave, so a
    shared machine's load falls on both alike."""
    out = {v: {} for v in envs}
    for name, args in commands.items():
        times, rcs = {v: [] for v in envs}, {}
        for _ in range(runs):
            for v, env in envs.items():
                secs, rcs[v] = _run(args, env)
                times[v].append(secs)
        for v, env in envs.items():
            out[v][name] = {"seconds": round(statistics.median(times[v]), 3), "exit": rcs[v],
                            "heavy_modules": _heavy(args, env)}
        print(f"{name:<16} " + "  ".join(f"{v} {out[v][name]['seconds']:6.2f} s "
                                         f"[{' '.join(out[v][name]['heavy_modules'])}]" for v in envs), flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before-rev", default=None,
                    help="Git revision to time side by side as 'before' (default: the saved before column).")
    ap.add_argument("--save-before", action="store_true",
                    help=f"Record this code's numbers as the 'before' column ({BEFORE}).")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = _tiny_store(tmp)
        envs = {"after": _env(None)}
        if a.before_rev:
            envs = {"before": _env(_code_at(a.before_rev, tempfile.mkdtemp(dir=tmp))), **envs}
        got = _measure(_commands(tmp, store), envs, a.runs)
    rows = got["after"]
    if a.save_before:
        os.makedirs(RESULTS, exist_ok=True)
        with open(BEFORE, "w") as f:
            json.dump(rows, f, indent=2)
        return {"before": rows}
    before = got.get("before") or (json.load(open(BEFORE)) if os.path.exists(BEFORE) else {})
    how = (f"side by side with git {a.before_rev}, runs interleaved" if a.before_rev else
           "before: saved from an earlier run on the original code")
    missed = {cmd: sorted(set(rows[cmd]["heavy_modules"]) & set(bad)) for cmd, bad in ALLOWED.items()}
    missed = {cmd: mods for cmd, mods in missed.items() if mods}
    res = {"pass": not missed, "missed": missed, "runs": a.runs, "before_rev": a.before_rev,
           "note": "2-core Xeon VM shared with other jobs; median wall time of `python -m embedx.cli.main -q CMD` "
                   f"on a 64 x 16 class store; {how}",
           "before": before, "after": rows}
    md = [f"Median of {a.runs} runs of `python -m embedx.cli.main -q CMD` on a tiny class store (64 x 16, 4 "
          f"classes); 2-core Xeon VM shared with other jobs; {how}. Before: the code before issue 12; after: "
          "this code.\n",
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
