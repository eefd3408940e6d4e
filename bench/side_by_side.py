"""Two checkouts of embedx benchmarked side by side in one run: the same bench scripts, the same data, interleaved.

    .venv/bin/python bench/side_by_side.py --before /tmp/wt-before --after .            # ~25 min, quiet 2-core CPU
    .venv/bin/python bench/side_by_side.py --before OLD --after . --size smoke --out /tmp/sbs   # a quick check

Each checkout runs its own bench scripts with its own interpreter (``CHECKOUT/.venv/bin/python``, whose editable
install imports that checkout's embedx). Neither checkout is written to: each one's ``bench/*.py`` are copied,
unchanged, into a scratch folder (``SCRATCH/SIDE/bench/``) whose ``results/`` catches the JSON they save and whose
``_work`` links to one shared data folder (``--work``), so both sides read the same stores and dump; Python's byte
code and numba's cache go to per-side folders under it too (PYTHONPYCACHEPREFIX, NUMBA_CACHE_DIR).

Order of a run:
  1. prepare: the data every chosen benchmark needs is built once, by the *before* checkout's own builders (the
     stores users already have), then ``os.sync()``; each side then warms its caches on a tiny store (numba
     kernels compiled, byte code written), untimed.
  2. the units (``measures:a`` .. ``measures:d``, ``transfer``, ``dist``, ``dumps``, ``embed``) in that order, each
     run by both sides back to back, the side that goes first alternating (ABBA: before/after, after/before, ...)
     so load drift and cache state hit both; ``--rounds 2`` repeats the whole sequence.
  3. value probes where a benchmark does not record its values: ``dist`` (the in-process measures on its store,
     via ``embedx.measure``), ``dumps`` (``embedx import --from clip-retrieval`` of the dump: every array's
     SHA-256 and the store's metadata), ``embed`` (``embedx.embed`` of the same digits: the same digests). The
     probes use the public API and CLI only, so one code runs on both sides.

Compared: every recorded value (identical, or within ``--rtol``, else DIFFERENT) and every timing (min over the
bench's own repeats and the rounds; after / before). Written: OUT/redesign_side_by_side.{json,md} (OUT defaults
to the after checkout's bench/results). Sizes (``--size full``): measures (a)-(d) and dumps at their recorded
(fixed) sizes, transfer at its default, dist at 1,000,000 rows instead of 4,000,000 (its ``--rows``), embed on
256 digits instead of 512 (its ``--n``): about 25 minutes on the quiet 2-core CPU machine with the data already
built under ``--work`` (building it once adds about 3 minutes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import machine  # noqa: E402

# unit -> (script, args by size, the result name the script saves)
UNITS = {
    "measures:a": ("bench_measures.py", {"full": ["--only", "a"], "smoke": ["--only", "a"]}, "measures"),
    "measures:b": ("bench_measures.py", {"full": ["--only", "b"], "smoke": ["--only", "b"]}, "measures"),
    "measures:c": ("bench_measures.py", {"full": ["--only", "c"], "smoke": ["--only", "c"]}, "measures"),
    "measures:d": ("bench_measures.py", {"full": ["--only", "d"], "smoke": ["--only", "d"]}, "measures"),
    "transfer": ("bench_transfer.py", {"full": [], "smoke": ["--n", "20000", "--repeats", "2"]}, "transfer"),
    "dist": ("bench_dist.py", {"full": ["--rows", "1000000"], "smoke": ["--rows", "200000", "--repeats", "1"]},
             "dist"),
    "dumps": ("bench_dumps.py", {"full": [], "smoke": []}, "dumps"),
    "embed": ("bench_embed.py", {"full": ["--n", "256"], "smoke": ["--n", "64"]}, "embed_pipeline"),
}
SIZES = {  # what the table says about the sizes
    "measures:a": "N=20,000, d=512, C=100 (as recorded)",
    "measures:b": "20,000 + 100 points, d=512 (as recorded)",
    "measures:c": "1,000,000 x 512 fp16, C=1,000 (as recorded)",
    "measures:d": "20,000 and 200,000 pairs (as recorded)",
    "transfer": {"full": "N=100,000, d=512, C=100 (as recorded)", "smoke": "N=20,000 (recorded: 100,000)"},
    "dist": {"full": "1,000,000 x 512 fp16 (recorded: 4,000,000)", "smoke": "200,000 x 512 fp16, 1 round"},
    "dumps": "1,000,000 x 512 fp16 pairs (as recorded)",
    "embed": {"full": "256 digits, ViT-S-32-alt (recorded: 512)", "smoke": "64 digits (recorded: 512)"},
}
STREAM = ["acs", "iimm", "iimm_inter", "iimm_intra", "text_intra", "gap", "silhouette_cosine"]
ZEROSHOT = STREAM + ["zeroshot_top1", "zeroshot_top5"]
META_VARIES = {"created", "finished", "generation", "embedx_version"}  # differ between any two runs
NOISE = 0.10  # |after / before - 1| beyond this is flagged for a look


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def arg_value(args: list, flag: str, default):
    return type(default)(args[args.index(flag) + 1]) if flag in args else default


# ------------------------------------------------------------------------------------------------ sides ---
class Side:
    """One checkout: its interpreter, a scratch copy of its bench scripts, its environment."""

    def __init__(self, name: str, checkout: str, scratch: str, work: str):
        self.name, self.checkout = name, os.path.abspath(checkout)
        self.python = os.path.join(self.checkout, ".venv", "bin", "python")
        if not os.path.exists(self.python):
            sys.exit(f"{name}: no {self.python}")
        self.bench = os.path.join(scratch, name, "bench")
        os.makedirs(self.bench)
        for f in os.listdir(os.path.join(self.checkout, "bench")):
            if f.endswith(".py"):
                shutil.copy2(os.path.join(self.checkout, "bench", f), self.bench)
        os.symlink(work, os.path.join(self.bench, "_work"))
        self.results = os.path.join(self.bench, "results")
        os.makedirs(self.results)
        key = hashlib.sha256(self.checkout.encode()).hexdigest()[:8]
        cache = os.path.join(work, ".side_by_side_cache", f"{name}-{key}")
        venv = os.path.dirname(os.path.dirname(self.python))
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(VIRTUAL_ENV=venv, PATH=os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", ""),
                        PYTHONPYCACHEPREFIX=os.path.join(cache, "pycache"),
                        NUMBA_CACHE_DIR=os.path.join(cache, "numba"))
        self.rev = git_rev(self.checkout)

    def run(self, argv: list, timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
        """``argv`` in its own process group; past ``timeout`` the whole group (the script, its child processes,
        its Dask workers) is killed and the result has returncode -9 and the reason last in stderr."""
        p = subprocess.Popen(argv, cwd=cwd or self.checkout, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            err = (err or "") + f"\ntimed out after {timeout:.0f} s (process group killed)"
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the script's processes down too
            os.killpg(p.pid, signal.SIGKILL)
            raise
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def py(self, code: str, *args: str, timeout: float = 1800) -> dict:
        """Run ``code`` with this side's interpreter; it prints one JSON line last."""
        p = self.run([self.python, "-c", code, *args], timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{self.name}: {p.stderr.strip()[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def git_rev(path: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


# -------------------------------------------------------------------------------------------- prepare ---
PREPARE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
units, size = set(sys.argv[2].split(",")), json.loads(sys.argv[3])
import bench_measures as M
W = M.WORK
os.makedirs(W, exist_ok=True)
if units & {"measures:a", "measures:b"}:
    M.make_class_store(os.path.join(W, "iimm-20000.zarr"), 20_000, 100, 512)
if "measures:c" in units and not os.path.exists(os.path.join(W, "read-1000000x512.zarr")):
    from bench_store_read import build
    build(os.path.join(W, "read-1000000x512.zarr"), 1_000_000, 512)
if "measures:d" in units:
    M.make_paired_store(os.path.join(W, "paired-20000.zarr"), 20_000, 512)
    M.make_paired_store(os.path.join(W, "paired-200000.zarr"), 200_000, 512)
if "transfer" in units:
    import bench_transfer as T
    n, d, c = size["transfer"]
    T.make_store(os.path.join(W, f"transfer-{n}x{d}-c{c}.zarr"), n, d, c)
if "dist" in units:
    import bench_dist as D
    n = size["dist"]
    D.make_store(os.path.join(W, f"dist-{n}x512-c1000.zarr"), n, 512, 1000)
if "dumps" in units:
    import bench_dumps as U
    U.generate()
print(json.dumps({"ok": True}))
"""

WARM = r"""
import json, os, sys, tempfile
import numpy as np
import embedx
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    x, t, y = rng.standard_normal((600, 32)), rng.standard_normal((4, 32)), rng.integers(0, 4, 600)
    embedx.import_arrays(os.path.join(tmp, "w.zarr"), x, t, y)
    embedx.measure(os.path.join(tmp, "w.zarr"))
    embedx.transfer(os.path.join(tmp, "w.zarr"))
print(json.dumps({"ok": True}))
"""


# ---------------------------------------------------------------------------------------------- probes ---
DIGEST = r"""
import hashlib, json, sys
import numpy as np
import embedx
s = embedx.open(sys.argv[1])
def sha(a):
    a = a() if callable(a) else a
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.kind in "OTUS":  # strings: their text (a StringDType array's bytes hold pointers)
        return hashlib.sha256("\x00".join(map(str, a.tolist())).encode()).hexdigest()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() + f" {a.dtype} {a.shape}"
out = {"sha256": {k: sha(getattr(s, k)) for k in ("images", "texts", "labels", "ids", "text_names")},
       "meta": {k: v for k, v in s.meta.items() if k not in %r}}
print(json.dumps(out, default=str))
""" % (META_VARIES,)

MEASURE = r"""
import json, sys
import embedx
r = embedx.measure(sys.argv[1], sys.argv[2].split(","), progress=False)
v = {k: r[k] for k in sys.argv[2].split(",")}  # a Result (a mapping of the measures), or an older dict
print(json.dumps({k: float(v[k]) for k in v}))
"""

EMBED = r"""
import json, sys
import embedx
embedx.embed(sys.argv[1], "digits", "ViT-S-32-alt", "none", seed=0, device="cpu", batch_size=32,
             limit=int(sys.argv[2]), workers=0, overwrite=True)
print(json.dumps({"ok": True}))
"""


def probe(unit: str, side: Side, work: str, size: str) -> dict:
    """Values a benchmark does not record, the same public-API code on both sides."""
    if unit == "dist":
        rows = arg_value(UNITS["dist"][1][size], "--rows", 4_000_000)
        return side.py(MEASURE, os.path.join(work, f"dist-{rows}x512-c1000.zarr"), ",".join(ZEROSHOT))
    out = os.path.join(work, "side_by_side_probe.zarr")
    shutil.rmtree(out, ignore_errors=True)
    try:
        if unit == "dumps":
            p = side.run([os.path.join(os.path.dirname(side.python), "embedx"), "import", "--from", "clip-retrieval",
                          os.path.join(work, "dumps_cr"), "--model", "bench", "--out", out], 1800)
            if p.returncode != 0:
                raise RuntimeError(f"{side.name}: embedx import: {p.stderr.strip()[-2000:]}")
        elif unit == "embed":
            side.py(EMBED, out, str(arg_value(UNITS["embed"][1][size], "--n", 512)))
        else:
            return {}
        return side.py(DIGEST, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------------------- extraction ---
def dig(d, *keys):
    for k in keys:
        d = d[k]
    return d


def flat(prefix: str, obj) -> dict:
    """{path: leaf} of nested dicts and lists."""
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in flat(f"{prefix}.{k}" if prefix else str(k), v).items()}
    if isinstance(obj, list):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in flat(f"{prefix}[{i}]", v).items()}
    return {prefix: obj}


def extract(unit: str, r: dict, pr: dict) -> dict:
    """values: {name: value} compared across sides; timings: {name: [seconds...]} (min compared; the first is
    the headline); checks: {name: (value, bound)} each side must meet; control: timings of code that is not
    embedx's own (references, raw reads), a gauge of machine drift."""
    V, T, C, ctl = {}, {}, {}, set()
    if unit == "measures:a":
        a = r["a_iimm"]
        V = {"iimm embedx": a["embedx"]["value"], "iimm authors": a["authors"]["value"]}
        T = {"IIMM, embedx": [a["embedx"]["seconds"]], "IIMM, authors' blocked float64": [a["authors"]["seconds"]]}
        ctl = {"IIMM, authors' blocked float64"}
    elif unit == "measures:b":
        b = r["b_silhouette"]
        V = {"silhouette embedx": b["embedx"]["value"], "silhouette sklearn": b["sklearn"]["value"]}
        T = {"exact silhouette, embedx": [b["embedx"]["seconds"]],
             "sklearn silhouette_score": [b["sklearn"]["seconds"]]}
        C = {"embedx peak RSS MB < sklearn's": (b["embedx"]["peak_rss_mb"], b["sklearn"]["peak_rss_mb"])}
        ctl = {"sklearn silhouette_score"}
    elif unit == "measures:c":
        c = r["c_one_pass"]
        V = {**{f"one pass {k}": v for k, v in c["measures"].items()}, "zeroshot_top1": c["zeroshot_top1"]}
        T = {"one pass (7 measures)": c["pass_s"], "zero-shot top-1/top-5/per-class": c["zeroshot_s"],
             "Store.iter_images read": c["read_s"], "raw chunk reads (I/O floor)": c["chunk_read_s"]}
        C = {"peak RSS MB < 1500": (c["peak_rss_mb"], 1500)}
        ctl = {"raw chunk reads (I/O floor)"}
    elif unit == "measures:d":
        d = r["d_recall"]
        V = {**{f"20k embedx {k}": v for k, v in d["embedx_20k"]["values"].items()},
             **{f"20k dense {k}": v for k, v in d["dense_20k"]["values"].items()},
             **{f"200k embedx {k}": v for k, v in d["embedx_200k"]["values"].items()}}
        T = {"recall@k, 20,000 pairs, embedx": [d["embedx_20k"]["seconds"]],
             "recall@k, 200,000 pairs, embedx": [d["embedx_200k"]["seconds"]],
             "dense similarity + argsort, 20,000": [d["dense_20k"]["seconds"]]}
        C = {"200k peak RSS MB < 2000": (d["embedx_200k"]["peak_rss_mb"], 2000)}
        ctl = {"dense similarity + argsort, 20,000"}
    elif unit == "transfer":
        e, ref = r["embedx"], r["reference"]
        V = {**{f"streamed {k}": v for k, v in e["values"].items()},
             **{f"reference {k}": v for k, v in ref["values"].items()},
             "zeroshot_top1": ref["zeroshot_top1"]}
        T = {"all 8 scores streamed together": e["all_runs_s"],
             "each score alone (sum)": [sum(e["alone_s"].values())],
             **{f"{k} alone": [v] for k, v in e["alone_s"].items()},
             "references in memory (float64)": [ref["seconds"]]}
        C = {"all together < 60 s": (e["seconds"], 60)}
        ctl = {"references in memory (float64)"}
    elif unit == "dist":
        V = {f"in-process {k}": v for k, v in pr.items()}
        for c2 in sorted(r["runs_s"]["stream"], key=lambda c2: c2 != "cluster-2"):  # the headline: 2 workers
            for w in ("stream", "zeroshot"):
                T[f"{w} pass, {c2}"] = r["runs_s"][w][c2]
        T["cluster start, 1 worker"] = [r["cluster_start_s"]["1"]]
        T["cluster start, 2 workers"] = [r["cluster_start_s"]["2"]]
        o = r["overhead"]
        T.update({"2,000 no-op tasks (per task)": [o["noop_task_s"]],
                  "stream pass, 4 MiB tasks": [o["pass_4MiB_tasks_s"]],
                  "stream pass, 128 MiB tasks": [o["pass_128MiB_tasks_s"]]})
        for s2, rows in r["malloc"].items():
            T[f"zero-shot pass, 2 workers, malloc={s2}"] = [x["seconds"] for x in rows]
        for w, d in r["max_abs_diff_vs_in_process"].items():
            for c2, v in d.items():
                if c2 != "in-process":
                    C[f"|{c2} - in-process| {w} <= 1e-9"] = (v, 1e-9)
    elif unit == "dumps":
        V = {"rows imported": r["best"]["import"]["rows"], **probe_values(pr)}
        T = {"import --from clip-retrieval": [x["seconds"] for x in r["runs"]["import"]]}
        if r.get("cold"):
            T["import, cold page cache"] = [r["cold"]["import"]]
        T.update({"import: loading libraries": [x["startup_s"] for x in r["runs"]["import"]],
                  "raw read (np.load + copy)": [x["seconds"] for x in r["runs"]["raw"]],
                  "durable copy (write + sync)": [x["seconds"] for x in r["runs"]["copy"]]})
        if r.get("cold"):
            T["raw read, cold page cache"] = [r["cold"]["raw"]]
        C = {"import peak RSS MB <= 2 shards": (r["best"]["import"]["peak_rss_mb"], 2 * r["shard_mb"])}
        ctl = {"raw read (np.load + copy)", "durable copy (write + sync)", "raw read, cold page cache"}
    elif unit == "embed":
        V = {"n_images": r["n_images"], "default_workers": r["default_workers"], **probe_values(pr)}
        dflt = f"pipeline_workers{r['default_workers']}"
        T = {f"embed pipeline, {dflt.split('workers')[1]} workers (default)": r["seconds"][dflt]}
        T.update({f"embed pipeline, {k.split('workers')[1]} workers": v for k, v in r["seconds"].items()
                  if k.startswith("pipeline") and k != dflt})
        T["bare encode_image"] = r["seconds"]["bare"]
        C = {"default overhead <= 15% (medians)": (r["default_overhead"], 0.15)}
        ctl = {"bare encode_image"}
    return {"values": V, "timings": T, "checks": C, "control": sorted(ctl)}


def compact(pr: dict) -> dict:
    """A probe as saved: the array digests and one digest of the metadata (all of it is compared in the run)."""
    if "meta" not in pr:
        return pr
    meta = json.dumps(pr["meta"], sort_keys=True, default=str)
    return {**{k: v for k, v in pr.items() if k != "meta"}, "meta_sha256": hashlib.sha256(meta.encode()).hexdigest(),
            "meta_leaves": len(flat("", pr["meta"]))}


def probe_values(pr: dict) -> dict:
    out = {f"sha256 {k}": v for k, v in pr.get("sha256", {}).items()}
    out.update({f"meta {k}": v for k, v in flat("", pr.get("meta", {})).items()})
    return out


# -------------------------------------------------------------------------------------------- compare ---
def same(a, b, rtol: float) -> str:
    if a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        return "identical"
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool):
        rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
        return "within" if rel <= rtol else "DIFFERENT"
    return "DIFFERENT"


def compare(unit: str, before: list, after: list, rtol: float) -> dict:
    """``before``/``after``: the extracted runs of one unit (one per round)."""
    out = {"unit": unit}
    vb, va = before[0]["values"], after[0]["values"]
    verdicts, diffs = {}, []
    for k in sorted(set(vb) | set(va)):
        if k not in vb or k not in va:
            v = "missing on " + ("before" if k not in vb else "after")
        else:
            v = same(vb[k], va[k], rtol)
        verdicts[v] = verdicts.get(v, 0) + 1
        if v != "identical":
            diffs.append({"name": k, "before": vb.get(k), "after": va.get(k), "verdict": v})
    # every round must give the values of the first
    for side, runs in (("before", before), ("after", after)):
        for i, x in enumerate(runs[1:], 1):
            bad = [k for k in x["values"] if same(x["values"][k], runs[0]["values"].get(k), rtol) == "DIFFERENT"]
            if bad:
                diffs.append({"name": f"{side} round {i} vs round 0", "keys": bad, "verdict": "DIFFERENT"})
                verdicts["DIFFERENT"] = verdicts.get("DIFFERENT", 0) + 1
    out["values"] = {"n": len(set(vb) | set(va)), "verdicts": verdicts, "not_identical": diffs[:50],
                     "equal": not any(k.startswith(("DIFFERENT", "missing")) for k in verdicts)}
    timings = []
    for k in before[0]["timings"]:
        tb = [t for x in before for t in x["timings"].get(k, [])]
        ta = [t for x in after for t in x["timings"].get(k, [])]
        if not tb or not ta:
            continue
        ratio = min(ta) / min(tb) if min(tb) > 0 else float("nan")
        timings.append({"name": k, "before_s": min(tb), "after_s": min(ta), "ratio": ratio,
                        "before_runs": tb, "after_runs": ta, "control": k in before[0]["control"],
                        "spread": (max(max(tb) / min(tb), max(ta) / min(ta)) - 1
                                   if min(tb) > 0 and min(ta) > 0 else None),
                        "flag": None if abs(ratio - 1) <= NOISE else ("slower" if ratio > 1 else "faster")})
    out["timings"] = timings
    checks = []
    for side, runs in (("before", before), ("after", after)):
        for x in runs:
            for k, (v, bound) in x["checks"].items():
                checks.append({"side": side, "name": k, "value": v, "bound": bound, "ok": v <= bound})
    out["checks"] = checks
    return out


# ------------------------------------------------------------------------------------------------ main ---
def run_unit(unit: str, side: Side, size: str, timeout: float) -> dict:
    script, args, name = UNITS[unit]
    for f in os.listdir(side.results):
        os.remove(os.path.join(side.results, f))
    load = os.getloadavg()
    t = time.perf_counter()
    p = side.run([side.python, os.path.join(side.bench, script), *args[size]], timeout)
    wall = time.perf_counter() - t
    rec = {"unit": unit, "side": side.name, "args": args[size], "wall_s": wall, "load_before": load,
           "rc": p.returncode}
    path = os.path.join(side.results, f"{name}.json")
    if p.returncode != 0 or not os.path.exists(path):
        rec["error"] = (p.stderr.strip() or p.stdout.strip())[-3000:]
        return rec
    with open(path) as f:
        rec["result"] = json.load(f)
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="checkout of the code before (with its .venv)")
    ap.add_argument("--after", default=".", help="checkout of the code after (with its .venv)")
    ap.add_argument("--units", default=",".join(UNITS), help=f"comma-separated, of: {', '.join(UNITS)}")
    ap.add_argument("--size", choices=("full", "smoke"), default="full")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the interleaved sequence (min is compared)")
    ap.add_argument("--work", default=None, help="shared data folder [default: AFTER/bench/_work]")
    ap.add_argument("--out", default=None, help="folder of redesign_side_by_side.{json,md} [AFTER/bench/results]")
    ap.add_argument("--rtol", type=float, default=1e-9, help="values: relative tolerance beyond 'identical'")
    ap.add_argument("--timeout", type=float, default=2400,
                    help="seconds per bench script run (then its process group is killed and it counts as failed)")
    ap.add_argument("--prepare-only", action="store_true", help="build the data under --work and stop")
    ap.add_argument("--markdown-from", metavar="JSON", help="only rewrite the .md (to stdout) from a saved .json")
    a = ap.parse_args(argv)
    if a.markdown_from:
        with open(a.markdown_from) as f:
            print(markdown(json.load(f)))
        return {}
    if not a.before:
        ap.error("--before is required")
    units = [u for u in a.units.split(",") if u]
    bad = [u for u in units if u not in UNITS]
    if bad:
        sys.exit(f"unknown units {bad}; choose from {list(UNITS)}")
    after_root = os.path.abspath(a.after)
    work = os.path.abspath(a.work or os.path.join(after_root, "bench", "_work"))
    out = os.path.abspath(a.out or os.path.join(after_root, "bench", "results"))
    os.makedirs(work, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("side_by_side: terminated"))  # so the cleanup runs
    scratch = tempfile.mkdtemp(prefix="side_by_side-")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    try:
        sides = {"before": Side("before", a.before, scratch, work), "after": Side("after", after_root, scratch, work)}
        log(f"before {sides['before'].checkout} @ {sides['before'].rev}; after {after_root} @ "
            f"{sides['after'].rev}; work {work}; scratch {scratch}; load {load0[0]:.2f}")
        size_args = {"transfer": [arg_value(UNITS["transfer"][1][a.size], f, v) for f, v in
                                  (("--n", 100_000), ("--d", 512), ("--c", 100))],
                     "dist": arg_value(UNITS["dist"][1][a.size], "--rows", 4_000_000)}
        t = time.perf_counter()
        sides["before"].py(PREPARE, sides["before"].bench, ",".join(units), json.dumps(size_args), timeout=3600)
        os.sync()
        prepare_s = time.perf_counter() - t
        log(f"data ready in {prepare_s:.0f} s")
        if a.prepare_only:
            return {"prepare_s": prepare_s}
        for s in sides.values():
            try:
                s.py(WARM)
            except RuntimeError as exc:  # the runs will show what fails; the warm-up is only a convenience
                log(f"{s.name}: warm-up failed: {str(exc)[-500:]}")
        log("both sides warm")
        runs = {u: {"before": [], "after": []} for u in units}
        probes = {u: {} for u in units}
        k = 0
        for rnd in range(a.rounds):
            for u in units:
                order = ("before", "after") if k % 2 == 0 else ("after", "before")
                k += 1
                for name in order:
                    log(f"round {rnd} {u}: {name} ...")
                    rec = run_unit(u, sides[name], a.size, a.timeout)
                    rec["round"] = rnd
                    runs[u][name].append(rec)
                    log(f"round {rnd} {u}: {name} {'ok' if 'result' in rec else 'FAILED'} in {rec['wall_s']:.0f} s")
                if rnd == 0 and u in ("dist", "dumps", "embed"):
                    for name in order:
                        try:
                            probes[u][name] = probe(u, sides[name], work, a.size)
                        except Exception as exc:  # noqa: BLE001  (reported, the run goes on)
                            probes[u][name] = {"error": str(exc)[-2000:]}
                    log(f"{u}: value probes done")
        compared = {}
        for u in units:
            ok = {n: [x for x in runs[u][n] if "result" in x] for n in ("before", "after")}
            if not ok["before"] or not ok["after"] or any("error" in probes[u].get(n, {}) for n in ok):
                compared[u] = {"unit": u, "error": {n: [x.get("error") for x in runs[u][n] if "error" in x] +
                                                    ([probes[u][n]["error"]] if "error" in probes[u].get(n, {}) else [])
                                                    for n in ok}}
                continue
            ext = {n: [extract(u, x["result"], probes[u].get(n, {})) for x in ok[n]] for n in ok}
            compared[u] = compare(u, ext["before"], ext["after"], a.rtol)
            compared[u]["wall_s"] = {n: [x["wall_s"] for x in runs[u][n]] for n in ok}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    m = machine()
    res = {"benchmark": "redesign_side_by_side", "machine": m, "date": dt.datetime.now().isoformat(timespec="seconds"),
           "before": {"checkout": sides["before"].checkout, "rev": sides["before"].rev},
           "after": {"checkout": sides["after"].checkout, "rev": sides["after"].rev},
           "size": a.size, "rounds": a.rounds, "rtol": a.rtol, "units": units,
           "sizes": {u: SIZES[u] if isinstance(SIZES[u], str) else SIZES[u][a.size] for u in units},
           "load_average_start": load0, "load_average_end": os.getloadavg(),
           "max_load_before_a_run": max(x["load_before"][0] for u in units for n in runs[u] for x in runs[u][n]),
           "prepare_s": prepare_s, "total_s": time.perf_counter() - t0,
           "compared": compared, "probes": {u: {n: compact(x) for n, x in v.items()} for u, v in probes.items()},
           "runs": {u: {n: [{k2: v for k2, v in x.items()} for x in runs[u][n]] for n in runs[u]} for u in units}}
    try:
        from module_stats import stats
        res["modules"] = {n: stats(s.checkout) for n, s in sides.items()}
    except Exception as exc:  # noqa: BLE001
        res["modules"] = {"error": str(exc)}
    with open(os.path.join(out, "redesign_side_by_side.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    md = markdown(res)
    with open(os.path.join(out, "redesign_side_by_side.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {out}/redesign_side_by_side.{{json,md}}; total {res['total_s'] / 60:.1f} min")
    return res


LABELS = {"measures:a": "measures (a)", "measures:b": "measures (b)", "measures:c": "measures (c)",
          "measures:d": "measures (d)", "transfer": "transfer", "dist": "dist", "dumps": "dumps",
          "embed": "embed pipeline"}


def fmt_s(v: float) -> str:
    return f"{v * 1e3:.2f} ms" if v < 0.1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def markdown(res: dict) -> str:
    m = res["machine"]
    la = res["load_average_start"]
    head = (f"# Redesign (issue 23): benchmarks before and after, side by side\n\n"
            f"Before: `{res['before']['checkout']}` @ {res['before']['rev']}; after: `{res['after']['checkout']}` @ "
            f"{res['after']['rev']}.\n"
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_mib']} MiB, no GPU; {res['date']}. Load average at the "
            f"start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min), highest 1-min load before a run "
            f"{res['max_load_before_a_run']:.2f}. One run of `bench/side_by_side.py --size {res['size']}`: "
            f"{res['rounds']} interleaved round(s), each bench script run by both checkouts back to back (which goes "
            f"first alternates), same data, {res['total_s'] / 60:.0f} min in all ({res['prepare_s']:.0f} s building "
            f"the data).\n\n"
            f"Values: every value the benchmark records (plus digests of the stores `import` and `embed` write, and "
            f"the in-process measures on the dist store), compared exactly (tolerance {res['rtol']:g} relative). "
            f"Times: the benchmark's own timings, min over its repeats; after / before beyond +-{NOISE:.0%} is "
            f"marked.\n\n")
    rows = ["| benchmark | size | values equal? | case | before s | after s | after / before |",
            "|---|---|---|---|---|---|---|"]
    detail = ["| benchmark | timing | before s (runs) | after s (runs) | after / before |", "|---|---|---|---|---|"]
    fails = []
    for u in res["units"]:
        c = res["compared"][u]
        if "error" in c:
            rows.append(f"| {LABELS[u]} | {res['sizes'][u]} | FAILED | {json.dumps(c['error'])[:200]} | | | |")
            fails.append(u)
            continue
        v = c["values"]
        verd = ", ".join(f"{n} {k}" for k, n in sorted(v["verdicts"].items()))
        eq = ("yes" if v["equal"] else "**NO**") + f" ({verd})"
        missed = {}
        for x in c["checks"]:
            if not x["ok"]:
                missed.setdefault(x["name"], []).append(f"{x['side']} {x['value']:.3g}")
        if missed:
            eq += "; target missed: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in missed.items())
        if not v["equal"]:
            fails.append(u)
        heads = [t for t in c["timings"] if not t["control"]][:2] or c["timings"][:1]
        for i, t in enumerate(heads):
            flag = f" ({t['flag']})" if t["flag"] else ""
            first = (LABELS[u], res["sizes"][u], eq) if i == 0 else ("", "", "")
            rows.append(f"| {' | '.join(first)} | {t['name']} | {fmt_s(t['before_s'])} | {fmt_s(t['after_s'])} | "
                        f"**{t['ratio']:.2f}**{flag} |")
        for t in c["timings"]:
            runs = lambda xs: ", ".join(fmt_s(x) for x in xs) if len(xs) > 1 else fmt_s(xs[0])  # noqa: E731
            ctl = " (control)" if t["control"] else ""
            flag = f" ({t['flag']})" if t["flag"] else ""
            detail.append(f"| {LABELS[u]} | {t['name']}{ctl} | {runs(t['before_runs'])} | {runs(t['after_runs'])} | "
                          f"{t['ratio']:.2f}{flag} |")
    md = head + "\n".join(rows) + "\n"
    ctl = [t["ratio"] for u in res["units"] for t in res["compared"][u].get("timings", []) if t["control"]]
    if ctl:
        md += (f"\nControls (timings of code that is not embedx's own: the references, raw reads, the bare model "
               f"forward): after / before {min(ctl):.2f} to {max(ctl):.2f}, median {statistics.median(ctl):.2f}, "
               f"the machine's drift between the two sides.\n")
    md += "\nValues: " + ("equal in every benchmark." if not fails else f"**check {', '.join(fails)}**.") + "\n"
    md += "\n## Every timing\n\n" + "\n".join(detail) + "\n"
    walls = [f"{LABELS[u]} {' / '.join(fmt_s(sum(w)) for w in res['compared'][u]['wall_s'].values())}"
             for u in res["units"] if "wall_s" in res["compared"][u]]
    md += "\nScript wall time per side (before / after, s, data building excluded): " + "; ".join(walls) + ".\n"
    mods = res.get("modules", {})
    if "before" in mods and "after" in mods:
        from module_stats import table
        md += "\n## Modules (embedx/, kernels/, cli/)\n\n" + table(mods["before"], mods["after"]) + "\n"
    return md


if __name__ == "__main__":
    main()
