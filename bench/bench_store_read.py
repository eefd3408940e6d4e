"""Iterating a 1,000,000 x 512 float16 store in blocks: peak RSS and throughput vs reading the same chunk
files directly (same codec, no embedx layer; embedx itself reads plain local chunk files with preadv and
goes through zarr otherwise). Each reader runs in its own fresh process, alternating, and the
best of REPEATS runs is kept (page cache warm for both). Target: peak RSS < 1 GB, zarr >= 70% of direct.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_child, save  # noqa: E402

N, D = 1_000_000, 512
REPEATS = 3

ZARR_READER = r"""
import json, sys, time
import numpy as np
from embedx.store import Store
s = Store(sys.argv[1])
t = time.perf_counter(); acc = 0.0; rows = 0
for start, block in s.iter_images(reuse=True):
    acc += float(block[0, 0]); rows += len(block)
dt = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": dt, "rows": rows, "peak_rss_mb": hwm / 1024}))
"""

DIRECT_READER = r"""
import json, os, sys, time
import numpy as np
import zarr
path = sys.argv[1]
arr = zarr.open_group(path, mode="r")["images/embeddings"]
n, d = arr.shape; cr = arr.chunks[0]; dtype = arr.dtype
codecs = arr.metadata.codecs
compressed = len(codecs) > 1
if compressed:
    import numcodecs
    dec = numcodecs.Zstd()  # only used when the store was written with a zstd codec
per_block = cr * max(1, (64 << 20) // (cr * d * dtype.itemsize))
t = time.perf_counter(); acc = 0.0; rows = 0
buf = np.empty((per_block, d), dtype=dtype)
for start in range(0, n, per_block):
    stop = min(start + per_block, n)
    for c0 in range(start, stop, cr):
        k = c0 // cr
        m = min(cr, n - c0)
        with open(os.path.join(path, "images", "embeddings", "c", str(k), "0"), "rb") as f:
            if compressed:
                raw = dec.decode(f.read())
                buf[c0 - start:c0 - start + m] = np.frombuffer(raw, dtype=dtype).reshape(-1, d)[:m]
            else:
                f.readinto(memoryview(buf[c0 - start:c0 - start + cr]).cast("B"))
    block = buf[: stop - start]
    acc += float(block[0, 0]); rows += len(block)
dt = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": dt, "rows": rows, "peak_rss_mb": hwm / 1024}))
"""


def build(path: str, n: int, d: int) -> float:
    from embedx.store import StoreWriter

    rng = np.random.default_rng(0)
    w = StoreWriter.create(path, n_rows=n, dim=d, n_texts=1000, dtype="float16", overwrite=True, background=False,
                           meta={"model": "synthetic", "dataset": "gaussian, L2-normalized", "mode": "classes"})
    w.write_texts(rng.standard_normal((1000, d)).astype(np.float32), [str(k) for k in range(1000)])
    spent = 0.0
    step = w.meta["chunk_rows"] * 16
    for s in range(0, n, step):
        e = min(s + step, n)
        x = rng.standard_normal((e - s, d), dtype=np.float32)
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        y, ids = rng.integers(0, 1000, e - s), [str(i) for i in range(s, e)]
        t = time.perf_counter()
        w.append(x, y, ids)
        w.commit(e)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    w.finalize()
    return spent + time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work"))
    ap.add_argument("--keep", action="store_true", help="keep the 1 GB store for other benchmarks")
    a = ap.parse_args(argv)
    path = os.path.join(a.dir, f"read-{a.n}x{D}.zarr")
    os.makedirs(a.dir, exist_ok=True)
    write_s = build(path, a.n, D)
    runs = {"zarr": [], "direct": []}
    for _ in range(REPEATS):
        runs["direct"].append(run_child(DIRECT_READER, path))
        runs["zarr"].append(run_child(ZARR_READER, path))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    gb = a.n * D * 2 / 1e9
    ratio = best["direct"]["seconds"] / best["zarr"]["seconds"]
    res = {"n": a.n, "d": D, "dtype": "float16", "store_gb": gb, "write_seconds": write_s, "runs": runs,
           "zarr_gb_s": gb / best["zarr"]["seconds"], "direct_gb_s": gb / best["direct"]["seconds"],
           "zarr_vs_direct_throughput": ratio, "zarr_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["zarr"]),
           "targets": {"peak_rss_mb_below": 1000, "throughput_ratio_at_least": 0.70}}
    res["pass"] = res["zarr_peak_rss_mb"] < 1000 and ratio >= 0.70
    md = f"""| reader | best of {REPEATS} (s) | GB/s | peak RSS (MB) |
|---|---|---|---|
| embedx `Store.iter_images(reuse=True)` | {best['zarr']['seconds']:.2f} | {res['zarr_gb_s']:.2f} | {res['zarr_peak_rss_mb']:.0f} |
| direct chunk files (no zarr) | {best['direct']['seconds']:.2f} | {res['direct_gb_s']:.2f} | {max(r['peak_rss_mb'] for r in runs['direct']):.0f} |

{a.n:,} x {D} float16 ({gb:.2f} GB), default codec and chunking, 64 MiB blocks, page cache warm.
embedx / direct throughput: **{ratio:.0%}** (target >= 70%); peak RSS **{res['zarr_peak_rss_mb']:.0f} MB** (target < 1000).
Writing it through `StoreWriter` (append + commit with ids and labels, data generation excluded) took {write_s:.1f} s ({gb / write_s:.2f} GB/s).\nPeak RSS is the reader process's own high-water mark (VmHWM), Python + zarr + numpy included."""
    save("store_read", res, md)
    if not a.keep:
        shutil.rmtree(path, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
