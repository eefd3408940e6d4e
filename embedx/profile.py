"""``embedx profile``: time each kernel on this device against its reference and the measured roofline.

The roofline is measured in the same run: a large matmul (peak FLOP/s) and a large copy (memory GB/s).
Each kernel row reports achieved GFLOP/s and GB/s, the share of the roofline bound for its arithmetic
intensity, and the time of the reference implementation on the same inputs.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from embedx import kernels
from embedx.device import resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best(fn, dev, repeats: int = 3) -> float:
    fn()
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def roofline(dev: torch.device, n: int = 4096, copy_mb: int = 512) -> dict:
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    t = _best(lambda: a @ b, dev)
    src = torch.empty(copy_mb << 18, device=dev)  # float32: copy_mb MiB
    dst = torch.empty_like(src)
    tc = _best(lambda: dst.copy_(src), dev)
    return {"matmul_gflops": 2 * n ** 3 / t / 1e9, "copy_gbs": 2 * src.numel() * 4 / tc / 1e9,
            "matmul_shape": [n, n, n], "copy_mib": copy_mb}


def _row(name, impl, seconds, flops, nbytes, roof, ref_seconds=None, ref_name=None):
    gflops, gbs = flops / seconds / 1e9, nbytes / seconds / 1e9
    intensity = flops / max(nbytes, 1)
    bound = min(roof["matmul_gflops"], intensity * roof["copy_gbs"])  # roofline: FLOP/s ceiling at this intensity
    return {"kernel": name, "impl": impl, "seconds": seconds, "gflops": gflops, "gbs": gbs,
            "arithmetic_intensity": intensity, "roofline_share": gflops / bound if flops else gbs / roof["copy_gbs"],
            "reference": ref_name, "reference_seconds": ref_seconds,
            "speedup_vs_reference": (ref_seconds / seconds) if ref_seconds else None}


def profile(n: int = 4096, d: int = 512, k: int = 10, device: str = "auto", impls=None, seed: int = 0) -> dict:
    """Kernels at ``n`` points of dimension ``d``: cluster distance sums (n x n, 2 clusters), on the CPU the
    exact silhouette's block pair (n/2 x n/2, both reductions; GFLOP/s and share of the sgemm rate: its roofline
    share, the op being compute-bound), top-k (n queries
    x n gallery), retrieval rank counts (n x n), and the fused streaming sweep over an n x d float16 block (C = 100; one thread, as each
    thread of the pass runs it)."""
    dev = resolve_device(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dev)
    x = x / x.norm(dim=1, keepdim=True)
    lab = (torch.arange(n, device=dev) >= n // 2).long()
    roof = roofline(dev)
    if impls is None:
        impls = ["torch"] + (["triton"] if dev.type == "cuda" and kernels.triton is not None else [])
    rows = []
    flops_cd = 2.0 * n * n * d
    bytes_cd = 2.0 * n * d * 4 + n * 2 * 8

    def dense_cluster_sums():
        dist = torch.cdist(x.double(), x.double())
        return torch.stack([dist[:, lab == 0].sum(1), dist[:, lab == 1].sum(1)], 1)

    ref_t = _best(dense_cluster_sums, dev, repeats=1)
    rid = torch.arange(n, device=dev)
    for impl in impls:
        fn = kernels.cluster_distance_sums_torch if impl == "torch" else kernels.cluster_distance_sums_triton
        t = _best(lambda: fn(x, x, lab, 2, rid), dev)
        rows.append(_row("cluster_distance_sums", impl, t, flops_cd, bytes_cd, roof, ref_t, "dense float64 cdist + sums"))

    if dev.type == "cpu":  # the exact silhouette's block pair: every distance once, reduced both ways
        h = n // 2
        xa, xb, la, lb = x[:h], x[h:], lab[:h], lab[h:]
        flops_pair = 2.0 * h * (n - h) * d

        def dense_pair():
            dist = torch.cdist(xa.double(), xb.double())
            return (torch.stack([dist[:, lb == 0].sum(1), dist[:, lb == 1].sum(1)], 1),
                    torch.stack([dist[la == 0].sum(0), dist[la == 1].sum(0)], 1))

        ref_t = _best(dense_pair, dev, repeats=1)
        tiles_t = None
        for impl in ("tiles", "gemm"):  # the torch tiles, then sgemm tiles + the fused numba pass (the default)
            t = _best(lambda: kernels.cluster_distance_pair_sums_torch(xa, xb, la, lb, 2, impl=impl), dev)
            row = _row("silhouette block pair (I < J)", impl, t, flops_pair, n * d * 4.0 + n * 2 * 8, roof,
                       ref_t, "dense float64 cdist + both sums")
            row["share_of_sgemm"] = row["gflops"] / roof["matmul_gflops"]
            row["speedup_vs_tiles"] = tiles_t / t if tiles_t else None
            rows.append(row)
            tiles_t = t

    def dense_topk():
        return (x @ x.T).topk(k, dim=1).indices

    ref_t = _best(dense_topk, dev)
    for impl in impls:
        fn = kernels.topk_torch if impl == "torch" else kernels.topk_triton
        t = _best(lambda: fn(x, x, k), dev)
        rows.append(_row(f"topk(k={k})", impl, t, flops_cd, 2.0 * n * d * 4 + n * k * 8, roof, ref_t,
                         "dense similarity + torch.topk"))

    thr = (x * x.roll(1, 0)).sum(1)  # a positive per row: its neighbour row
    pos = torch.arange(n, device=dev).roll(-1)

    def dense_counts():
        sim = x @ x.T
        sim[pos, torch.arange(n, device=dev)] = -float("inf")
        return (sim > thr[:, None]).sum(1), (sim > thr[None, :]).sum(0)

    ref_t = _best(dense_counts, dev)
    for impl in impls:
        fn = kernels.rank_count_torch if impl == "torch" else kernels.rank_count_triton
        t = _best(lambda: fn(x, x, thr, thr, pos), dev)
        rows.append(_row("rank_count (retrieval)", impl, t, flops_cd, 2.0 * n * d * 4 + 2 * n * 8, roof, ref_t,
                         "dense similarity + comparisons"))

    if dev.type == "cpu":
        c = 100
        block = x.cpu().half().numpy()
        y = np.random.default_rng(seed).integers(0, c, n)
        vs = np.random.default_rng(seed + 1).standard_normal((2, d))
        acc = np.zeros((c + 1, d), np.float32)

        def stream():
            kernels.stream_stats(block, y, vs, c, acc)

        def reference_pass():
            xx = block.astype(np.float64)
            xx /= np.linalg.norm(xx, axis=1, keepdims=True)
            return xx.sum(0), xx @ vs.T, np.add.at(np.zeros((c, d)), y, xx)

        ref_t = _best(reference_pass, dev, repeats=1)
        t = _best(stream, dev)
        impl = "numba, 1 thread"
        rows.append(_row("stream_pass (O(N d) measures)", impl, t, 0, n * d * 2.0, roof, ref_t,
                         "numpy float64 normalize + sums"))
    return {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "n": n, "d": d, "roofline": roof, "kernels": rows}
