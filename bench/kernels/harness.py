"""One harness for the kernel benchmarks (one ``bench_<op>.py`` per op in kernels/), in the style of Liger-Kernel's
benchmarks: a sweep over N, d, C (where the op has classes) and dtype, each point timed for every implementation
(reference / torch / triton, or what the op has), warm-up runs then the median of repeats; a CSV and a plot per op.

An op's script gives ``setup(impl, point, rng, device) -> fn`` (``fn()`` runs the op once on prepared inputs) and
calls :func:`main`. Triton runs only where CUDA is available: on a CPU machine it is skipped and the output says
so (its CPU path, the Triton interpreter, is for tests, not timing). ``--quick`` runs a small sweep in seconds.

Output: ``bench/results/kernels/<op>.csv`` (one row per point and implementation) and ``<op>.png``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "kernels")
FIELDS = ["op", "impl", "n", "d", "c", "dtype", "device", "threads", "median_ms", "min_ms", "repeats", "note"]


@dataclass(frozen=True)
class Point:
    """One sweep point: N rows, d dimensions, C classes (0 where the op has none), the input dtype."""

    n: int
    d: int
    c: int
    dtype: str


def sweep(quick: bool, classes: bool, n=None, d=None, c=None, dtypes=("float32", "float16")) -> list[Point]:
    """The grid N x d x C x dtype (C only where the op has classes)."""
    n = n or ([512, 2048] if quick else [1024, 4096, 16384])
    d = d or ([64] if quick else [64, 512])
    c = (c or ([10] if quick else [10, 100])) if classes else [0]
    return [Point(*p) for p in itertools.product(n, d, c, dtypes)]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_fn(fn, device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (device synchronized)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def run(op: str, impls: list[str], setup, points: list[Point], *, warmup: int = 1, repeats: int = 5,
        max_n: dict | None = None, seed: int = 0) -> list[dict]:
    """Time every implementation at every point. ``max_n[impl]``: the largest N it is run at (a slow reference)."""
    import torch

    device = "cuda" if cuda_available() else "cpu"
    threads = torch.get_num_threads()
    rows = []
    for p, impl in itertools.product(points, impls):
        row = {"op": op, "impl": impl, **asdict(p), "device": device, "threads": threads, "median_ms": "", "min_ms": "",
               "repeats": 0, "note": ""}
        if impl == "triton" and device != "cuda":
            row["note"] = "skipped: no CUDA device (Triton is timed on a GPU only)"
        elif max_n and impl in max_n and p.n > max_n[impl]:
            row["note"] = f"skipped: N > {max_n[impl]} for {impl}"
        else:
            fn = setup(impl, p, np.random.default_rng(seed), device)
            ts = time_fn(fn, device, warmup, repeats)
            row.update(median_ms=round(1e3 * statistics.median(ts), 4), min_ms=round(1e3 * min(ts), 4),
                       repeats=repeats)
        rows.append(row)
        shown = f"{row['median_ms']:>10} ms" if row["repeats"] else f"{'-':>13}"
        print(f"{op:<16} {impl:<10} N={p.n:<7} d={p.d:<5} C={p.c:<5} {p.dtype:<8} {shown}  {row['note']}", flush=True)
    return rows


def write_csv(op: str, rows: list[dict], out_dir: str = RESULTS) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{op}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def plot(op: str, rows: list[dict], out_dir: str = RESULTS) -> str:
    """Median time against N, one panel per (d, C), one line per implementation and dtype (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["repeats"]]
    panels = sorted({(r["d"], r["c"]) for r in timed})
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, (d, c) in zip(axes[0], panels):
        for impl, dtype in sorted({(r["impl"], r["dtype"]) for r in timed}):
            pts = sorted((r["n"], r["median_ms"]) for r in timed
                         if (r["d"], r["c"], r["impl"], r["dtype"]) == (d, c, impl, dtype))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{impl} {dtype}")
        title = f"{op}: d={d}" + (f", C={c}" if c else "")
        ax.set(xscale="log", yscale="log", xlabel="N", ylabel="median ms", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{op}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(op: str, impls: list[str], setup, *, classes: bool, argv=None, note: str = "", max_n: dict | None = None,
         **grid) -> list[dict]:
    """The CLI of one op's benchmark: ``python bench/kernels/bench_<op>.py [--quick] [--out DIR]``."""
    ap = argparse.ArgumentParser(description=f"Benchmark kernels.{op}: " + ", ".join(impls))
    ap.add_argument("--quick", action="store_true", help="a small sweep (seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per point (median reported)")
    ap.add_argument("--out", default=RESULTS, help="folder for <op>.csv and <op>.png")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's); 1 on a machine shared with other jobs")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    print(f"# {op} on {platform.processor() or platform.machine()}, "
          f"{'CUDA' if cuda_available() else 'CPU only: triton skipped (no CUDA device)'}"
          + (f"; {note}" if note else ""))
    points = sweep(a.quick, classes, **grid)
    rows = run(op, impls, setup, points, repeats=a.repeats or (3 if a.quick else 7), max_n=max_n)
    print("wrote", write_csv(op, rows, a.out), "and", plot(op, rows, a.out))
    return rows
