"""Measures on a Dask cluster against in-process, side by side in one run, on a 4M x 512 fp16 class store.

What it records (bench/results/dist.{json,md}):
  * the measures pass in-process (threaded, every core), on a LocalCluster of 1 worker process and of 2 (one
    thread each), interleaved over REPEATS rounds (best and every run kept): the streaming measures alone
    (read-bound) and with zero-shot top-1/top-5 (compute-bound); every cluster result compared with in-process;
  * Dask's per-task overhead: no-op tasks through the 2-worker cluster, and the same pass cut into 4 MiB tasks
    against 128 MiB tasks;
  * the worker malloc setting: distributed's default environment (MALLOC_TRIM_THRESHOLD_ only) against embedx's
    (plus MALLOC_MMAP_THRESHOLD_), worker minor page faults and system time per pass;
  * a projection for 100M and 1B rows on 8, 64 and 512 workers from the measured per-GiB cost and per-task
    overhead (CPU), and from stated GPU rates (no GPU here: those rows are derived, not measured).

Run: .venv/bin/python bench/bench_dist.py [--rows 4000000] [--repeats 3]. The store (4 GiB) is built once under
bench/_work/. On this 2-core VM two worker processes share two cores with the scheduler and the client, so the
2-worker figure is an honest ceiling for this machine, not a scaling measurement.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work")
STREAM = ["acs", "iimm", "iimm_inter", "iimm_intra", "text_intra", "gap", "silhouette_cosine"]
ZEROSHOT = STREAM + ["zeroshot_top1", "zeroshot_top5"]
GIB = 1 << 30


def make_store(path: str, n: int, d: int, c: int) -> str:
    """A class store of ``n`` rows: Gaussian class centres plus noise, fp16, default 4 MiB chunks."""
    from embedx.store import Store, StoreWriter

    if os.path.exists(path):
        try:
            Store(path)
            return path
        except Exception:  # an unfinished build: start again
            import shutil

            shutil.rmtree(path)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    w = StoreWriter.create(path, n_rows=n, dim=d, n_texts=c, dtype="float16", background=True,
                           meta={"model": "synthetic", "dataset": "gaussian classes", "mode": "classes"})
    w.write_texts(centres + 0.5 * rng.standard_normal((c, d)).astype(np.float32), [f"class {k}" for k in range(c)])
    step = 1 << 17
    for s in range(0, n, step):
        e = min(s + step, n)
        y = rng.integers(0, c, e - s)
        x = centres[y] + 1.5 * rng.standard_normal((e - s, d)).astype(np.float32)
        w.append(x, y, [str(i) for i in range(s, e)])
        w.commit(e)
        print(f"\rbuilding {path}: {e:,}/{n:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    w.finalize()
    return path


def cluster(n_workers: int, malloc: str = "embedx"):
    """A LocalCluster started as ``--cluster local:N`` starts it (embedx's worker environment unless
    malloc="dask"): (ExitStack closing it, client, startup seconds)."""
    import contextlib

    from distributed import Client

    from embedx.engine.cluster import local_cluster

    os.environ["EMBEDX_DASK_MALLOC"] = malloc
    stack = contextlib.ExitStack()
    t = time.perf_counter()
    lc = stack.enter_context(local_cluster(n_workers))
    client = stack.enter_context(Client(lc))
    client.wait_for_workers(n_workers)
    return stack, client, time.perf_counter() - t


def worker_usage(client) -> dict:
    """Summed over the workers: user and system CPU seconds and minor page faults so far."""
    def usage():
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime, r.ru_minflt

    u = list(client.run(usage).values())
    return {"user_s": sum(x[0] for x in u), "sys_s": sum(x[1] for x in u), "minflt": sum(x[2] for x in u)}


def timed_pass(store, metrics, executor) -> tuple[float, dict]:
    from embedx.measures import compute

    t = time.perf_counter()
    r = compute(store, metrics, executor=executor, progress=False)
    return time.perf_counter() - t, dict(r)


def max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def noop(i):
    return i


def pairwise_rate(d: int) -> float:
    """GFLOP/s of the exact-silhouette kernel on one thread (2 b^2 d flops per b x b tile)."""
    import torch

    from embedx import kernels

    torch.set_num_threads(1)
    b = 2048
    x = torch.randn(b, d)
    lab = torch.randint(0, 2, (b,))
    kernels.cluster_distance_sums(x, x, lab, 2)
    t = time.perf_counter()
    kernels.cluster_distance_sums(x, x, lab, 2)
    dt = time.perf_counter() - t
    torch.set_num_threads(os.cpu_count() or 1)
    return 2 * b * b * d / dt / 1e9


def projection(gib_s_worker: dict, task_overhead_s: float, task_gib: float, cpu_gflops: float, d: int) -> list:
    """Projected wall seconds: streaming pass = bytes / (workers x per-worker GiB/s) + tasks x scheduler
    overhead (serial at the scheduler); exact silhouette = N^2 d flops (symmetric tiles) / (workers x rate)."""
    gpu_read_gib_s = 20.0      # assumed per-GPU-worker read rate (host->device, local NVMe); not measured here
    gpu_tflops = 500.0         # assumed dense fp16/bf16 pairwise rate per H100/H200 (research note C.2: 788 GEMM)
    rows = []
    for n in (100_000_000, 1_000_000_000):
        gib = n * d * 2 / GIB
        tasks = gib / task_gib
        flops = float(n) * n * d  # 2 n^2 d / 2 with symmetry
        for w in (8, 64, 512):
            sched = tasks * task_overhead_s
            rows.append({
                "rows": n, "workers": w, "tasks": int(round(tasks)),
                "cpu_stream_s": gib / (w * gib_s_worker["stream"]) + sched,
                "cpu_zeroshot_s": gib / (w * gib_s_worker["zeroshot"]) + sched,
                "cpu_silhouette_h": flops / (w * cpu_gflops * 1e9) / 3600,
                "gpu_stream_s": gib / (w * gpu_read_gib_s) + sched,
                "gpu_silhouette_h": flops / (w * gpu_tflops * 1e12) / 3600,
            })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    os.makedirs(WORK, exist_ok=True)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from embedx.engine.dask import TASK_BYTES, DaskExecutor
    from embedx.engine.executor import ThreadedExecutor
    from embedx.store import Store

    path = make_store(os.path.join(WORK, f"dist-{args.rows}x{args.dim}-c{args.classes}.zarr"), args.rows, args.dim,
                      args.classes)
    store = Store(path)
    gib = store.n_images * store.dim * store.dtype.itemsize / GIB
    clusters = {}
    for n in (1, 2):
        clusters[n] = cluster(n)
    configs = {"in-process": ThreadedExecutor(), "cluster-1": DaskExecutor(clusters[1][1]),
               "cluster-2": DaskExecutor(clusters[2][1])}
    runs = {w: {c: [] for c in configs} for w in ("stream", "zeroshot")}
    values = {w: {} for w in runs}
    for ex in configs.values():  # warm-up, not timed: numba compiles the pass kernel once per process
        timed_pass(store, ZEROSHOT, ex)
    for r in range(args.repeats):
        for work, metrics in (("stream", STREAM), ("zeroshot", ZEROSHOT)):
            for name, ex in configs.items():
                s, v = timed_pass(store, metrics, ex)
                runs[work][name].append(s)
                values[work].setdefault(name, v)
                print(f"round {r} {work:>8} {name:>10}: {s:7.2f} s", file=sys.stderr)
    agree = {w: {c: max_diff(values[w]["in-process"], values[w][c]) for c in configs} for w in runs}

    # per-task overhead on the 2-worker cluster
    client2 = clusters[2][1]
    k = 2000
    t = time.perf_counter()
    client2.gather(client2.map(noop, range(k), pure=False))
    noop_s = (time.perf_counter() - t) / k
    small = DaskExecutor(client2, task_bytes=4 << 20)
    timed_pass(store, STREAM, small)
    big = DaskExecutor(client2, task_bytes=TASK_BYTES)
    t_small = min(timed_pass(store, STREAM, small)[0] for _ in range(2))
    t_big = min(timed_pass(store, STREAM, big)[0] for _ in range(2))
    n_small, n_big = gib * 1024 / 4, gib * 1024 / 128
    overhead = {"noop_task_s": noop_s, "pass_4MiB_tasks_s": t_small, "pass_128MiB_tasks_s": t_big,
                "tasks_4MiB": int(round(n_small)), "tasks_128MiB": int(round(n_big)),
                "per_task_s_from_pass": (t_small - t_big) / (n_small - n_big)}
    for stack, _, _ in clusters.values():
        stack.close()

    # the worker malloc setting
    malloc = {}
    for setting in ("dask", "embedx", "dask", "embedx"):
        stack, client, _ = cluster(2, setting)
        ex = DaskExecutor(client)
        timed_pass(store, STREAM, ex)  # warm: model of steady state
        before = worker_usage(client)
        s, _ = timed_pass(store, ZEROSHOT, ex)
        after = worker_usage(client)
        row = {"seconds": s, **{k2: after[k2] - before[k2] for k2 in before}}
        malloc.setdefault(setting, []).append(row)
        print(f"malloc {setting}: {row}", file=sys.stderr)
        stack.close()
    os.environ.pop("EMBEDX_DASK_MALLOC", None)

    best = {w: {c: min(v) for c, v in runs[w].items()} for w in runs}
    per_worker = {w: gib / best[w]["cluster-1"] for w in runs}  # GiB/s one worker process sustains
    rate = pairwise_rate(args.dim)
    proj = projection(per_worker, max(overhead["per_task_s_from_pass"], noop_s), TASK_BYTES / GIB, rate, args.dim)
    result = {"rows": args.rows, "dim": args.dim, "classes": args.classes, "store_gib": gib,
              "cluster_start_s": {n: c[2] for n, c in clusters.items()}, "runs_s": runs, "best_s": best,
              "max_abs_diff_vs_in_process": agree, "overhead": overhead, "malloc": malloc,
              "per_worker_gib_s": per_worker, "pairwise_gflops_1_thread": rate, "projection": proj}

    def mrow(setting):
        r = malloc[setting]
        return (f"| {setting} | {min(x['seconds'] for x in r):.2f} | {np.mean([x['minflt'] for x in r]):,.0f} | "
                f"{np.mean([x['sys_s'] for x in r]):.2f} | {np.mean([x['user_s'] for x in r]):.2f} |")

    lines = [f"Store: {args.rows:,} x {args.dim} fp16, {args.classes:,} classes ({gib:.2f} GiB, 4 MiB chunks). "
             f"Cluster tasks: {TASK_BYTES >> 20} MiB. Best of {args.repeats} interleaved rounds; every run in "
             f"dist.json.", "",
             "| pass | in-process (2 threads) | LocalCluster 1 worker | LocalCluster 2 workers | max |cluster - in-process| |",
             "|---|---|---|---|---|"]
    for w, label in (("stream", "acs, iimm (+parts), text_intra, gap, silhouette_cosine"),
                     ("zeroshot", "the same + zero-shot top-1/top-5 (C = 1,000)")):
        b = best[w]
        lines.append(f"| {label} | {b['in-process']:.2f} s | {b['cluster-1']:.2f} s | {b['cluster-2']:.2f} s | "
                     f"{max(agree[w]['cluster-1'], agree[w]['cluster-2']):.1e} |")
    lines += ["", f"Cluster start-up (not in the pass times): 1 worker {clusters[1][2]:.1f} s, 2 workers "
                  f"{clusters[2][2]:.1f} s.", "",
              "Per-task overhead (2-worker cluster):", "",
              "| probe | result |", "|---|---|",
              f"| {k:,} no-op tasks | {noop_s * 1e3:.2f} ms per task |",
              f"| stream pass in {overhead['tasks_4MiB']:,} tasks of 4 MiB vs {overhead['tasks_128MiB']} of 128 MiB | "
              f"{t_small:.2f} s vs {t_big:.2f} s: {overhead['per_task_s_from_pass'] * 1e3:.2f} ms per extra task |",
              "", "Worker malloc setting (2 workers, the zero-shot pass, 2 runs each, worker totals per pass):", "",
              "| worker environment | best s | minor faults | sys s | user s |", "|---|---|---|---|---|",
              mrow("dask"), mrow("embedx"),
              "", "`dask` = distributed's default (`MALLOC_TRIM_THRESHOLD_=65536`); `embedx` adds "
                  "`MALLOC_MMAP_THRESHOLD_=134217728` (what `--cluster local` sets).", "",
              f"Projection (per worker: {per_worker['stream']:.2f} GiB/s streaming, {per_worker['zeroshot']:.2f} GiB/s "
              f"with zero-shot, measured on one worker process above; exact silhouette at {rate:.0f} GFLOP/s per CPU "
              f"worker thread, measured; GPU rows assume 20 GiB/s read and 500 TFLOP/s per GPU, not measured):", "",
              "| rows | workers | tasks | CPU stream | CPU + zero-shot | CPU exact silhouette | GPU stream | "
              "GPU exact silhouette |", "|---|---|---|---|---|---|---|---|"]
    for p in proj:
        lines.append(f"| {p['rows']:,} | {p['workers']} | {p['tasks']:,} | {p['cpu_stream_s']:.0f} s | "
                     f"{p['cpu_zeroshot_s']:.0f} s | {p['cpu_silhouette_h']:,.0f} h | {p['gpu_stream_s']:.1f} s | "
                     f"{p['gpu_silhouette_h']:.2f} h |")
    save("dist", result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
