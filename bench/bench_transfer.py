"""Transfer scores streamed from a store vs the in-memory float64 references, side by side in one run (each side
in its own process, so peak RSS is its own VmHWM). CPU machine. Target from the transfer-scores issue:

  a float16 store of N = 100,000, d = 512, C = 100: every score (hscore, gbc, gbc_diagonal, transrate, logme, sfda,
  leep, nce) streamed from the store, all together in under 60 s on the 2-core CPU machine; each value equal to
  the float64 reference (embedx.transferability.reference, every row in memory) on the same stored values.

Synthetic clustered data (not real embeddings): Gaussian class centres (std 0.006 per dimension) plus a shared
offset, isotropic noise of norm about 1 around them, class prompts near the centres minus the offset (a modality
gap); about 58% zero-shot top-1 accuracy (recorded in the results), so no score is saturated.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import child_runner, hwm_mb, save  # noqa: E402

WORK = os.path.join(HERE, "_work")
SCORES = ("hscore", "gbc", "gbc_diagonal", "transrate", "logme", "sfda", "leep", "nce")


child = child_runner(__file__)


def make_store(path: str, n: int, d: int, c: int, seed: int = 0) -> str:
    from embedx.formats.arrays import import_arrays

    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    centers = 0.006 * rng.standard_normal((c, d))
    y = rng.integers(0, c, n)
    x = (0.05 * common + centers[y] + rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    t = (centers + 0.003 * rng.standard_normal((c, d)) - 0.05 * common).astype(np.float32)
    os.makedirs(WORK, exist_ok=True)
    stem = os.path.join(WORK, "transfer")
    for k, v in (("x", x), ("t", t), ("y", y)):
        np.save(f"{stem}.{k}.npy", v)
    import_arrays(path, images=f"{stem}.x.npy", texts=f"{stem}.t.npy", labels=f"{stem}.y.npy", dtype="float16",
                  dataset="synthetic clusters (bench_transfer)")
    for k in ("x", "t", "y"):
        os.remove(f"{stem}.{k}.npy")
    return path


def run_child(name, args):
    from embedx.store import Store

    s = Store(args[0])
    if name == "stream":
        from embedx import transferability as T

        runs = []
        for _ in range(int(args[1])):
            t = time.perf_counter()
            r = T.compute(s, SCORES)
            runs.append({"seconds": time.perf_counter() - t, "values": dict(r), "score_seconds": r.timings})
        peak = hwm_mb()
        alone = {}
        for k in SCORES:  # each score on its own: its own passes over the store
            t = time.perf_counter()
            T.compute(s, [k])
            alone[k] = time.perf_counter() - t
        best = min(runs, key=lambda z: z["seconds"])
        return {**best, "all_runs_s": [z["seconds"] for z in runs], "alone_s": alone, "peak_rss_mb": peak,
                "block_rows": T.moments.block_rows(s), "chunk_rows": s.chunk_rows}
    if name == "reference":
        from embedx.transferability import reference as R

        t = time.perf_counter()
        x, y, tx = s.images().astype(np.float64), s.labels(), s.texts().astype(np.float64)
        load = time.perf_counter() - t
        values, secs = {}, {}
        for k in SCORES:
            t = time.perf_counter()
            values[k] = R.compute(x, y, tx, [k])[k]
            secs[k] = time.perf_counter() - t
        peak = hwm_mb()
        lab = y >= 0  # the data's difficulty: zero-shot top-1 accuracy of argmax_c x^.t^_c
        zs = np.argmax(R.normalize(x[lab]) @ R.normalize(tx).T, axis=1)
        return {"values": values, "score_seconds": secs, "load_s": load, "seconds": load + sum(secs.values()),
                "peak_rss_mb": peak, "zeroshot_top1": float((zs == y[lab]).mean())}
    raise ValueError(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--c", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="all-scores runs of the streamed side (best is kept)")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(run_child(a.child[0], a.child[1:])))
        return None
    path = make_store(os.path.join(WORK, f"transfer-{a.n}x{a.d}-c{a.c}.zarr"), a.n, a.d, a.c)
    load = os.getloadavg()
    e = child("stream", path, str(a.repeats))
    r = child("reference", path)
    rel = {k: abs(e["values"][k] - r["values"][k]) / max(abs(r["values"][k]), 1e-300) for k in SCORES}
    res = {"case": {"n": a.n, "d": a.d, "c": a.c, "dtype": "float16", "data": "synthetic clusters",
                    "path": os.path.relpath(path, os.path.dirname(HERE))},
           "load_average_before": load, "embedx": e, "reference": r, "rel_diff": rel,
           "max_rel_diff": max(rel.values()), "total_s": e["seconds"],
           "speedup_vs_reference": r["seconds"] / e["seconds"],
           "pass": e["seconds"] < 60 and max(rel.values()) < 1e-6}
    sec = e["score_seconds"]
    rows = [f"| {k} | {e['values'][k]:.6g} | {sec[k]:.2f} | {e['alone_s'][k]:.2f} | {r['score_seconds'][k]:.2f} | "
            f"{rel[k]:.1e} |" for k in SCORES]
    md = (f"Case: a float16 store of N = {a.n:,} images, d = {a.d}, C = {a.c} classes (synthetic clustered data: "
          f"Gaussian class centres, a shared offset, prompts near the centres; zero-shot top-1 accuracy "
          f"{r['zeroshot_top1']:.0%}). "
          f"Streamed from the store in blocks of {e['block_rows']} rows (chunks of {e['chunk_rows']}), float64 "
          f"compute, against the in-memory float64 references of `embedx.transferability.reference` (every row in "
          f"memory, the authors' algorithms) on the same stored values.\n\n"
          "| score | value | streamed, all together: own s | streamed alone: s | reference: s | rel. diff |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
          f"| **all 8 together** | | **{e['seconds']:.2f} s** (best of {len(e['all_runs_s'])}: "
          f"{', '.join(f'{v:.2f}' for v in e['all_runs_s'])}; {sec['shared']:.2f} s of it reading and shared sums) "
          f"| {sum(e['alone_s'].values()):.2f} | {r['seconds']:.2f} (incl. {r['load_s']:.2f} s loading) | "
          f"max {max(rel.values()):.1e} |\n\n"
          f"Peak RSS: streamed {e['peak_rss_mb']:.0f} MB, reference {r['peak_rss_mb']:.0f} MB (each its own process, "
          f"Python and libraries included). Target: all scores together < 60 s on this 2-core CPU machine: "
          f"**{'met' if res['pass'] else 'MISSED'}** ({e['seconds']:.1f} s, {res['speedup_vs_reference']:.1f}x "
          f"faster than the references). \"Own s\" is each score's own work in the shared run (its sums, extra "
          f"passes and final algebra); \"alone\" runs that score by itself, its passes over the store included. "
          f"Load average before the run: {load[0]:.2f}.")
    save("transfer", res, md)
    return res


if __name__ == "__main__":
    main()
