"""Measures engine vs the references, side by side in one run (each timed case in its own process, so
peak RSS is its own VmHWM). CPU machine. Targets from the measures issue:

  (a) IIMM, N=20,000, d=512, C=100: >= 100x faster than the authors' blocked O(N^2) float64 NumPy
      algorithm (mit-ll/IIMM metrics.py: inter() in 10,000-row blocks + uniformity_image()), same value 1e-6
  (b) exact Euclidean silhouette, 20,000 images + 100 texts, d=512: >= 2x faster than
      sklearn.metrics.silhouette_score (float64), lower peak memory; its rate (N^2 d flops: each of the N^2/2
      distances once, 2d flops) >= 60% of the sgemm rate measured in the same run (issue 27). ``--before REV``
      also times the code of git revision REV (exported to bench/_work, run from it) in the same run,
      alternating with this tree and the sgemm.
  (c) 1,000,000 x 512 fp16 store, C=1,000: the O(N d) measures in one pass within 1.5x of just reading the
      store, peak RSS < 1.5 GB; zero-shot accuracy >= 70% of the machine's matmul rate
  (d) recall@k on 20,000 paired rows >= 2x faster than dense similarity + argsort; 200,000 paired rows with
      peak RSS < 2 GB
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
ONE_PASS = ["acs", "iimm_inter", "iimm_intra", "iimm", "text_intra", "gap", "silhouette_cosine"]
ZEROSHOT = ["zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"]


child = child_runner(__file__)


# ---------------------------------------------------------------------------------------------- data ---
def class_data(n, c, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    x = (centers[y] + 2.0 * rng.standard_normal((n, d))).astype(np.float32)
    t = (centers + 0.5 * rng.standard_normal((c, d)) + 1.0).astype(np.float32)  # a shared offset: a modality gap
    return x, t, y


def make_class_store(path, n, c, d, dtype="float32"):
    from embedx.formats.arrays import import_arrays

    if os.path.exists(path):
        return path
    x, t, y = class_data(n, c, d)
    os.makedirs(WORK, exist_ok=True)
    for k, v in (("x", x), ("t", t), ("y", y)):
        np.save(os.path.join(WORK, f"{k}.npy"), v)
    import_arrays(path, images=os.path.join(WORK, "x.npy"), texts=os.path.join(WORK, "t.npy"),
                  labels=os.path.join(WORK, "y.npy"), dtype=dtype)
    return path


def make_paired_store(path, n, d):
    from embedx.store import StoreWriter

    if os.path.exists(path):
        return path
    rng = np.random.default_rng(1)
    w = StoreWriter.create(path, n_rows=n, dim=d, dtype="float16", background=False,
                           meta={"model": "synthetic", "dataset": "paired gaussian", "mode": "paired"})
    step = 65536
    for s in range(0, n, step):
        e = min(s + step, n)
        x = rng.standard_normal((e - s, d)).astype(np.float32)
        t = x + 1.6 * rng.standard_normal((e - s, d)).astype(np.float32)
        w.append(x, None, [str(i) for i in range(s, e)], text_emb=t, text_names=[""] * (e - s))
        w.commit(e)
    w.finalize()
    return path


# ------------------------------------------------------------------------------------------- children ---
def read_chunks(s):
    """The I/O floor of the pass: every chunk read into a per-thread buffer, as many threads as the pass uses,
    nothing computed."""
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, min(os.cpu_count() or 1, 16))
    starts = list(range(0, s.n_images, s.chunk_rows))

    def work(part):
        buf = np.empty((s.chunk_rows, s.dim), s.dtype)
        for st in part:
            s.read_images_into(st, buf[: min(s.chunk_rows, s.n_images - st)])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [starts[t::threads] for t in range(threads)]))


def run_child(name, args):
    from embedx.measures import compute
    from embedx.store import Store

    if name == "iimm_embedx":
        s = Store(args[0])
        t = time.perf_counter()
        v = compute(s, ["iimm"])["iimm"]
        return {"seconds": time.perf_counter() - t, "value": v}
    if name == "iimm_authors":
        s = Store(args[0])
        x, tx, y = s.images(dtype=np.float32), s.texts(dtype=np.float32), s.labels()
        t = time.perf_counter()
        from embedx.measures.reference import authors_iimm

        v = authors_iimm(x, tx, y)
        return {"seconds": time.perf_counter() - t, "value": v}
    if name == "sil_embedx":  # first call (kernels compiled or loaded from their cache), then warm
        import embedx

        s = Store(args[0])
        t = time.perf_counter()
        v = compute(s, ["silhouette_euclidean"])["silhouette_euclidean"]
        first = time.perf_counter() - t
        t = time.perf_counter()
        v = compute(s, ["silhouette_euclidean"])["silhouette_euclidean"]
        warm = time.perf_counter() - t
        n = s.n_images + s.n_texts
        return {"seconds": first, "warm_seconds": warm, "value": v, "peak_rss_mb": hwm_mb(),
                "gflops": n * n * s.dim / warm / 1e9, "code": os.path.dirname(embedx.__file__)}
    if name == "sgemm":
        import torch

        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        a @ b
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return {"gflops": 2 * 4096 ** 3 / best / 1e9, "threads": torch.get_num_threads()}
    if name == "sil_sklearn":
        from sklearn.metrics import silhouette_score

        s = Store(args[0])
        x, tx = s.images(dtype=np.float64), s.texts(dtype=np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        tx /= np.linalg.norm(tx, axis=1, keepdims=True)
        base = hwm_mb()
        t = time.perf_counter()
        v = silhouette_score(np.vstack([x, tx]), [1] * len(x) + [0] * len(tx), metric="euclidean")
        return {"seconds": time.perf_counter() - t, "value": float(v), "peak_rss_mb": hwm_mb(), "rss_before_mb": base}
    if name == "onepass":
        s = Store(args[0])
        import torch

        reads, chunk_reads, passes, zs = [], [], [], []
        for _ in range(5):  # alternate: block read, chunk read, one pass
            t = time.perf_counter()
            for _, b in s.iter_images(reuse=True):
                pass
            reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            read_chunks(s)
            chunk_reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = compute(s, ONE_PASS)
            passes.append(time.perf_counter() - t)
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        a @ b
        mm = []
        for _ in range(3):  # matmul rate and zero-shot alternate too
            t = time.perf_counter()
            a @ b
            mm.append(time.perf_counter() - t)
            t = time.perf_counter()
            z = compute(s, ZEROSHOT)
            zs.append(time.perf_counter() - t)
        rate = 2 * 4096 ** 3 / min(mm)
        zs_flops = 2 * s.n_images * s.n_texts * s.dim
        return {"read_s": reads, "chunk_read_s": chunk_reads, "pass_s": passes, "zeroshot_s": zs,
                "matmul_gflops": rate / 1e9, "zeroshot_gflops": zs_flops / min(zs) / 1e9, "peak_rss_mb": hwm_mb(),
                "threads": os.cpu_count(), "measures": {k: r[k] for k in ONE_PASS},
                "zeroshot_top1": z["zeroshot_top1"]}
    if name == "recall_embedx":
        s = Store(args[0])
        t = time.perf_counter()
        r = compute(s, ["i2t_recall@1", "i2t_recall@5", "i2t_recall@10", "t2i_recall@1", "t2i_recall@5",
                        "t2i_recall@10"])
        return {"seconds": time.perf_counter() - t, "values": {k: r[k] for k in r if "recall" in k},
                "peak_rss_mb": hwm_mb()}
    if name == "recall_dense":
        s = Store(args[0])
        x, tx = s.images(dtype=np.float32), s.texts(dtype=np.float32)
        t = time.perf_counter()
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        tx /= np.linalg.norm(tx, axis=1, keepdims=True)
        sim = x @ tx.T
        out = {}
        for side, m in (("i2t", sim), ("t2i", sim.T)):
            order = np.argsort(-m, axis=1)
            rank = np.argmax(order == np.arange(len(m))[:, None], axis=1)
            for k in (1, 5, 10):
                out[f"{side}_recall@{k}"] = float((rank < k).mean())
        return {"seconds": time.perf_counter() - t, "values": out, "peak_rss_mb": hwm_mb()}
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------- main ---
def export_revision(rev: str) -> str:
    """``git archive`` of ``rev``'s embedx/, kernels/ and cli/ laid out as the installed package (kernels and cli
    inside embedx, as pyproject's package-dir maps them) under bench/_work; the folder to put first on
    PYTHONPATH."""
    import subprocess
    import tarfile
    import io

    root = os.path.dirname(HERE)
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = os.path.join(WORK, f"rev-{sha}")
    if not os.path.exists(os.path.join(dest, "embedx", "kernels")):
        tar = subprocess.run(["git", "archive", sha, "embedx", "kernels", "cli"], cwd=root, capture_output=True,
                             check=True).stdout
        src = dest + "-src"
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(src)
        os.makedirs(dest, exist_ok=True)
        os.rename(os.path.join(src, "embedx"), os.path.join(dest, "embedx"))
        os.rename(os.path.join(src, "kernels"), os.path.join(dest, "embedx", "kernels"))
        os.rename(os.path.join(src, "cli"), os.path.join(dest, "embedx", "cli"))
    return dest


def child_at(pkg: str | None, name: str, *args: str) -> dict:
    """:func:`child` with the package at ``pkg`` (from :func:`export_revision`) first on the path."""
    import subprocess

    env = dict(os.environ)
    if pkg:
        env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, *args], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--before", help="git revision to time beside this tree in case (b), e.g. main")
    ap.add_argument("--rounds", type=int, default=3, help="case (b): alternating rounds (best of each)")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(run_child(a.child[0], a.child[1:])))
        return None
    os.makedirs(WORK, exist_ok=True)
    only = set(a.only.split(","))
    res = {}
    if "a" in only:
        p = make_class_store(os.path.join(WORK, "iimm-20000.zarr"), 20_000, 100, 512)
        e, r = child("iimm_embedx", p), child("iimm_authors", p)
        e = min([e, child("iimm_embedx", p)], key=lambda z: z["seconds"])
        res["a_iimm"] = {"embedx": e, "authors": r, "speedup": r["seconds"] / e["seconds"],
                         "abs_diff": abs(e["value"] - r["value"]), "pass": r["seconds"] / e["seconds"] >= 100
                         and abs(e["value"] - r["value"]) <= 1e-6}
        res["a_iimm"]["md"] = [f"| (a) IIMM, N=20,000, d=512, C=100 | {e['seconds']:.3f} s | authors' blocked O(N^2) float64: "
                    f"{r['seconds']:.2f} s | **{res['a_iimm']['speedup']:.0f}x**, |diff| {res['a_iimm']['abs_diff']:.1e} "
                    f"| >= 100x, 1e-6 |"]
    if "b" in only:
        p = make_class_store(os.path.join(WORK, "iimm-20000.zarr"), 20_000, 100, 512)
        before = export_revision(a.before) if a.before else None
        runs = {"after": [], "before": [], "sgemm": []}
        for _ in range(a.rounds):  # alternating, each in its own process: the ratios share the machine's state
            runs["sgemm"].append(child("sgemm"))
            if before:
                runs["before"].append(child_at(before, "sil_embedx", p))
            runs["after"].append(child("sil_embedx", p))
        e = min(runs["after"], key=lambda z: z["warm_seconds"])
        b = min(runs["before"], key=lambda z: z["warm_seconds"]) if before else None
        gemm = max(z["gflops"] for z in runs["sgemm"])
        r = child("sil_sklearn", p)
        out = {"embedx": e, "sklearn": r, "speedup": r["seconds"] / e["warm_seconds"],
               "abs_diff": abs(e["value"] - r["value"]), "sgemm_gflops": gemm,
               "share_of_sgemm": e["gflops"] / gemm, "runs": runs}
        out["pass"] = (out["speedup"] >= 2 and e["peak_rss_mb"] < r["peak_rss_mb"] and out["abs_diff"] <= 1e-5
                       and out["share_of_sgemm"] >= 0.6)
        md = [f"| (b) exact Euclidean silhouette, 20,000 + 100 points, d=512 | {e['warm_seconds']:.2f} s warm "
              f"({e['seconds']:.2f} s first call), {e['peak_rss_mb']:.0f} MB | sklearn silhouette_score (float64): "
              f"{r['seconds']:.2f} s, {r['peak_rss_mb']:.0f} MB | **{out['speedup']:.1f}x**, |diff| "
              f"{out['abs_diff']:.1e} | >= 2x, less memory |",
              f"| (b) its rate: N^2 d = {20_100 ** 2 * 512:.2e} flop | **{e['gflops']:.0f} GFLOP/s** | sgemm 4096^3 "
              f"in the same run: {gemm:.0f} GFLOP/s | **{out['share_of_sgemm']:.0%}** of sgemm | >= 60% |"]
        if b:
            out.update(before=b, before_rev=a.before, before_share_of_sgemm=b["gflops"] / gemm,
                       before_abs_diff=abs(b["value"] - r["value"]))
            md.append(f"| (b) the same, code before (`{a.before}`), alternating in the same run | "
                      f"{b['warm_seconds']:.2f} s warm, {b['gflops']:.0f} GFLOP/s | sgemm: {gemm:.0f} GFLOP/s | "
                      f"{out['before_share_of_sgemm']:.0%} of sgemm; now **{b['warm_seconds'] / e['warm_seconds']:.2f}x** "
                      f"faster, values differ by {abs(b['value'] - e['value']):.1e} | — |")
        out["md"] = md
        res["b_silhouette"] = out
    if "c" in only:
        from bench_store_read import build

        p = os.path.join(WORK, "read-1000000x512.zarr")
        if not os.path.exists(p):
            build(p, 1_000_000, 512)
        o = child("onepass", p)
        ratio = min(o["pass_s"]) / min(o["read_s"])
        floor_ratio = min(o["pass_s"]) / min(o["chunk_read_s"])
        zs_share = o["zeroshot_gflops"] / o["matmul_gflops"]
        res["c_one_pass"] = {**o, "pass_over_read": ratio, "pass_over_chunk_read": floor_ratio,
                             "zeroshot_share_of_matmul": zs_share,
                             "pass": ratio <= 1.5 and o["peak_rss_mb"] < 1500 and zs_share >= 0.7}
        res["c_one_pass"]["md"] = [
            f"| (c) acs, iimm (+parts), text_intra, gap, silhouette_cosine on 1,000,000 x 512 fp16, C=1,000 "
            f"| one pass {min(o['pass_s']):.3f} s, peak RSS {o['peak_rss_mb']:.0f} MB | read only: "
            f"`Store.iter_images` {min(o['read_s']):.3f} s; raw chunk reads on {o['threads']} threads (I/O floor) "
            f"{min(o['chunk_read_s']):.3f} s | **{ratio:.2f}x** the read ({floor_ratio:.2f}x the I/O floor) "
            f"| <= 1.5x, < 1.5 GB |",
            f"| (c) zero-shot top-1/top-5/per-class on the same store | {min(o['zeroshot_s']):.2f} s, "
            f"{o['zeroshot_gflops']:.0f} GFLOP/s | sgemm 4096^3: {o['matmul_gflops']:.0f} GFLOP/s | "
            f"**{zs_share:.0%}** of matmul | >= 70% |"]
    if "d" in only:
        p = make_paired_store(os.path.join(WORK, "paired-20000.zarr"), 20_000, 512)
        e, r = child("recall_embedx", p), child("recall_dense", p)
        diff = max(abs(e["values"][k] - r["values"][k]) for k in r["values"])
        p2 = make_paired_store(os.path.join(WORK, "paired-200000.zarr"), 200_000, 512)
        big = child("recall_embedx", p2)
        res["d_recall"] = {"embedx_20k": e, "dense_20k": r, "speedup": r["seconds"] / e["seconds"], "max_diff": diff,
                           "embedx_200k": big, "pass": r["seconds"] / e["seconds"] >= 2 and diff == 0
                           and big["peak_rss_mb"] < 2000}
        res["d_recall"]["md"] = [f"| (d) recall@1/5/10 both ways, 20,000 pairs | {e['seconds']:.2f} s, {e['peak_rss_mb']:.0f} MB | "
                    f"dense similarity + argsort: {r['seconds']:.2f} s, {r['peak_rss_mb']:.0f} MB | "
                    f"**{res['d_recall']['speedup']:.1f}x**, same values | >= 2x |",
                                 f"| (d) recall@k, 200,000 pairs | {big['seconds']:.1f} s, peak RSS **{big['peak_rss_mb']:.0f} MB** "
                    f"| dense: 160 GB of similarities | — | < 2 GB |"]
    old_path = os.path.join(HERE, "results", "measures.json")
    if os.path.exists(old_path):  # keep the cases not rerun (--only)
        with open(old_path) as f:
            old = json.load(f)
        res = {**{k: v for k, v in old.items() if k.endswith(("_iimm", "_silhouette", "_one_pass", "_recall"))}, **res}
    res = dict(sorted(res.items()))
    rows = [line for v in res.values() for line in v.get("md", [])]
    md = ("| case | embedx | reference | result | target |\n|---|---|---|---|---|\n" + "\n".join(rows) +
          "\n\nEach timed case runs in its own process (peak RSS = its VmHWM, Python and libraries included). "
          "Synthetic data: Gaussian class centres with noise and a shared text offset (a), (b); 1M Gaussian rows "
          "with 1,000 classes (c); paired rows t = x + noise (d). CPU only: no GPU was lent to this task.")
    save("measures", res, md)
    return res


if __name__ == "__main__":
    main()
