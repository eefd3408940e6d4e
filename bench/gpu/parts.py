"""The parts of `make gpu-check` (bench/gpu/gpu_check.py runs each in its own process): each takes a Record, the
sizes, the dry-run flag, the scratch folder and the output folder, and writes its figures as it measures them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_json(path: str, obj) -> None:
    """``obj`` as JSON at ``path``, replaced atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


class Record:
    """A part's figures, rewritten atomically after every ``put`` so a stopped part keeps what it measured."""

    def __init__(self, path: str):
        self.path, self.data = path, {}

    def put(self, **kw) -> None:
        self.data.update(kw)
        write_json(self.path, self.data)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()), flush=True)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, reps: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` (device synchronized)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


class KernelClock:
    """Wraps a kernel dispatch function of ``embedx.kernels`` to add up its synchronized wall time."""

    def __init__(self, name: str, dev):
        from embedx import kernels

        self.kernels, self.name, self.dev, self.seconds, self.calls = kernels, name, dev, 0.0, 0
        self.inner = getattr(kernels, name)

        def timed_call(*a, **kw):
            sync(dev)
            t = time.perf_counter()
            out = self.inner(*a, **kw)
            sync(dev)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out

        setattr(kernels, name, timed_call)

    def close(self) -> None:
        setattr(self.kernels, self.name, self.inner)


def device_paths(dry: bool):
    """The device the parts run on; on the dry run the CPU with the GPU's own code paths switched on."""
    import torch

    if not dry:
        return torch.device("cuda")
    from embedx.measures import retrieval, silhouette

    os.environ["EMBEDX_KERNEL"] = "triton"
    for mod in (silhouette, retrieval):
        mod.resident_budget = lambda dev: 1 << 40
        mod.resident_rows = lambda dev: 256
    return torch.device("cpu")


def class_store(scratch: str, n: int, c: int, d: int, seed: int = 0) -> str:
    """A clustered fp16 class store (made once per run, shared by the parts): C class centres, images around
    them (2% unlabelled), one noisy text per class. Generated on the device, written through the importer."""
    import numpy as np
    import torch

    from embedx.formats.arrays import import_arrays

    path = os.path.join(scratch, f"class-{n}x{d}-c{c}.zarr")
    if os.path.exists(path):
        return path
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=dev).manual_seed(seed)
    centres = torch.randn(c, d, device=dev, generator=g)
    y = torch.randint(0, c, (n,), device=dev, generator=g)
    x = (centres[y] + 1.5 * torch.randn(n, d, device=dev, generator=g)).half()
    t = (centres + 0.8 * torch.randn(c, d, device=dev, generator=g)).half()
    y = torch.where(torch.rand(n, device=dev, generator=g) < 0.02, -1, y)
    tmp = tempfile.mkdtemp(dir=scratch)
    for k, arr in (("x", x), ("t", t), ("y", y.int())):
        np.save(os.path.join(tmp, f"{k}.npy"), arr.cpu().numpy())
    import_arrays(path, images=f"{tmp}/x.npy", texts=f"{tmp}/t.npy", labels=f"{tmp}/y.npy")
    shutil.rmtree(tmp)
    return path


def paired_store(scratch: str, n: int, d: int, seed: int = 1) -> str:
    """An fp16 paired store: unit images and their noisy captions."""
    import numpy as np
    import torch

    from embedx.formats.arrays import import_arrays

    path = os.path.join(scratch, f"paired-{n}x{d}.zarr")
    if os.path.exists(path):
        return path
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, device=dev, generator=g), dim=1)
    # captions at cosine ~0.22 to their image: about as many strangers as positives score above it at d = 512,
    # so recall@1 is far from 1 and the column counts are not all zero (as with real captions)
    t = torch.nn.functional.normalize(x + 4.5 * torch.randn(n, d, device=dev, generator=g) / d ** 0.5, dim=1)
    tmp = tempfile.mkdtemp(dir=scratch)
    np.save(os.path.join(tmp, "p.npy"), torch.stack([x, t]).half().cpu().numpy())
    import_arrays(path, paired_array=f"{tmp}/p.npy")
    shutil.rmtree(tmp)
    return path


def part_correctness(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import re

    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or cuda", "-p", "no:cacheprovider", "tests/test_gpu.py",
           "tests/kernels"]
    if sz["test_filter"]:
        cmd += ["-k", sz["test_filter"]]
    env = dict(os.environ)
    env.pop("EMBEDX_KERNEL", None)
    if dry:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # the real compiler
        env["EMBEDX_TEST_DEVICE"] = "cuda"
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    with open(os.path.join(out, "gpu_check_tests.log"), "w") as f:
        f.write(p.stdout + p.stderr)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped|deselected)",
                                               p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "")}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", p.stdout, re.M)
    rec.put(passed=counts.get("passed", 0), failed=counts.get("failed", 0) + counts.get("error", 0)
            + counts.get("errors", 0), skipped=counts.get("skipped", 0), exit_code=p.returncode,
            seconds=round(time.perf_counter() - t, 2), failures=failures[:30])
    if p.returncode != 0:
        raise SystemExit(f"correctness: pytest exit {p.returncode}; see gpu_check_tests.log")


def part_matmul(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import torch

    dev = device_paths(dry)
    n = sz["matmul_n"]
    flops = 2.0 * n ** 3
    for name, dtype, tf32 in (("fp32_ieee", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            t = timed(lambda: a @ b, dev, reps=10, warmup=3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        rec.put(**{f"{name}_tflops": flops / t / 1e12})
    src = torch.randn(sz["copy_mib"] << 18, device=dev)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), dev, reps=10, warmup=2)
    rec.put(copy_gbs=2 * src.numel() * 4 / t / 1e9, matmul_n=n)


def _rates(scratch: str) -> dict:
    path = os.path.join(scratch, "part-matmul.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def silhouette_float64(points, labels, n_clusters: int, tile: int = 8192) -> float:
    """sklearn's silhouette in float64 on the device, tiled: per-cluster distance sums of every point."""
    import torch

    sizes = torch.bincount(labels, minlength=n_clusters).double()
    onehot = torch.nn.functional.one_hot(labels, n_clusters).double()
    vals = []
    for r0 in range(0, len(points), tile):
        d = torch.cdist(points[r0:r0 + tile], points)
        d[torch.arange(len(d)), torch.arange(r0, r0 + len(d))] = 0.0
        s = d @ onehot
        own = labels[r0:r0 + len(d)]
        ar = torch.arange(len(d))
        a = s[ar, own] / (sizes[own] - 1).clamp(min=1)
        means = s / sizes[None, :]
        means[ar, own] = float("inf")
        b = means.min(1).values
        v = (b - a) / torch.maximum(a, b)
        vals.append(torch.where(sizes[own] <= 1, torch.zeros_like(v), torch.nan_to_num(v)))
    return float(torch.cat(vals).mean())


def kernel_variants(dev, m: int, d: int, dry: bool) -> dict:
    """The silhouette kernels on ``m`` float32 unit rows (2 clusters, sorted) against the plain float32 kernel
    (one-sided, IEEE FMAs): the symmetric kernel (tiles I <= J) in IEEE float32 and in 3xTF32 split precision.
    Per variant: seconds, effective TFLOP/s (2 m^2 d), speed-up over the plain kernel, and the largest error of
    the per-cluster sums and of the silhouette against float64 on the device."""
    import torch

    from embedx import kernels

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(m, d, generator=g)
    pts[: m // 2] += 0.5  # two separated clusters, sorted
    pts = (pts / pts.norm(dim=1, keepdim=True)).to(dev)
    lab = (torch.arange(m) >= m // 2).long().to(dev)
    ids = torch.arange(m, device=dev)
    p64 = pts.double()
    ref = torch.zeros(m, 2, dtype=torch.float64, device=dev)
    for r0 in range(0, m, 4096):
        dist = torch.cdist(p64[r0:r0 + 4096], p64)
        dist[torch.arange(len(dist)), torch.arange(r0, r0 + len(dist))] = 0.0
        ref[r0:r0 + 4096] = torch.stack([dist[:, lab == 0].sum(1), dist[:, lab == 1].sum(1)], 1)

    def score(s):
        sizes = torch.bincount(lab, minlength=2).double()
        ar = torch.arange(m, device=dev)
        a = s[ar, lab] / (sizes[lab] - 1)
        b = s[ar, 1 - lab] / sizes[1 - lab]
        return float(((b - a) / torch.maximum(a, b)).mean())

    variants = {"plain_fp32": lambda: kernels.cluster_distance_sums_triton(pts, pts, lab, 2, ids, 0),
                "symmetric_fp32": lambda: kernels.cluster_distance_sums_sym_triton(pts, lab, 2, precision="ieee"),
                "symmetric_3xtf32": lambda: kernels.cluster_distance_sums_sym_triton(pts, lab, 2,
                                                                                      precision="tf32x3")}
    out, base = {"m": m, "d": d}, None
    for name, fn in variants.items():
        sec = timed(fn, dev, reps=1 if dry else 3, warmup=0 if dry else 1)
        got = fn()
        base = base or sec
        out[name] = {"seconds": sec, "tflops_effective": 2.0 * m * m * d / sec / 1e12, "speedup": base / sec,
                     "max_abs_err_sums": float((got - ref).abs().max()),
                     "silhouette_abs_err": abs(score(got) - score(ref))}
    return out


def part_silhouette(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import numpy as np
    import torch

    from embedx import kernels
    from embedx.formats.arrays import import_arrays
    from embedx.measures import compute, silhouette
    from embedx.store import Store

    dev = device_paths(dry)
    n, c, d = sz["sil_n"], sz["sil_c"], sz["dim"]
    t = time.perf_counter()
    path = class_store(scratch, n, c, d)
    rec.put(store_seconds=time.perf_counter() - t, n=n, c=c, dim=d)
    clocks = [KernelClock("cluster_distance_sums", dev), KernelClock("cluster_distance_sums_sym_triton", dev)]
    t = time.perf_counter()
    res = compute(Store(path), ["silhouette_euclidean"], device=str(dev))
    total = time.perf_counter() - t
    for clock in clocks:
        clock.close()
    ksec = max(sum(cl.seconds for cl in clocks), 1e-9)
    flops = 2.0 * (n + c) ** 2 * d  # every ordered pair: the symmetric kernel's rate is an effective one
    rates = _rates(scratch)
    rec.put(silhouette=res["silhouette_euclidean"], end_to_end_seconds=total, kernel_seconds=ksec,
            kernel_calls={cl.name: cl.calls for cl in clocks}, tflops=flops / ksec / 1e12,
            share_of_tf32=(flops / ksec / 1e12 / rates["tf32_tflops"]) if rates.get("tf32_tflops") else None,
            share_of_bf16=(flops / ksec / 1e12 / rates["bf16_tflops"]) if rates.get("bf16_tflops") else None)
    rec.put(kernel_variants=kernel_variants(dev, min(sz["sil_subset"], 256 if dry else 32768), d, dry))

    # the value on a subset of the same pipeline against a float64 tiled torch reference
    m = min(sz["sil_subset"], n)
    s = Store(path)
    tmp = tempfile.mkdtemp(dir=scratch)
    np.save(f"{tmp}/x.npy", s.read_images_into(0, np.empty((m, d), s.dtype)))
    np.save(f"{tmp}/t.npy", s.texts())
    np.save(f"{tmp}/y.npy", s.labels(0, m))
    sub = os.path.join(scratch, f"class-subset-{m}.zarr")
    import_arrays(sub, images=f"{tmp}/x.npy", texts=f"{tmp}/t.npy", labels=f"{tmp}/y.npy", overwrite=True)
    got = compute(Store(sub), ["silhouette_euclidean"], device=str(dev))["silhouette_euclidean"]
    t = time.perf_counter()
    pts = torch.from_numpy(np.vstack([np.load(f"{tmp}/x.npy"), np.load(f"{tmp}/t.npy")])).to(dev).double()
    pts = pts / pts.norm(dim=1, keepdim=True)
    lab = torch.cat([torch.ones(m, dtype=torch.long), torch.zeros(c, dtype=torch.long)]).to(dev)
    ref = silhouette_float64(pts, lab, 2)
    rec.put(subset_n=m, subset_silhouette=got, subset_reference_float64=ref, subset_abs_error=abs(got - ref),
            subset_reference_seconds=time.perf_counter() - t, subset_within_1e5=abs(got - ref) <= 1e-5)
    shutil.rmtree(tmp)

    # tile configs of the fused kernel on one resident row block against every column (the tuning record)
    if dev.type == "cuda":
        points = silhouette._ModalityPoints(Store(path))
        pts, scale, lab, _ = silhouette._resident(points, dev)
        rows = min(len(pts), silhouette.resident_rows(dev))
        sweep = {}
        for cfg in ({"BM": 128, "BN": 128, "BK": 64, "num_warps": 8, "num_stages": 3},
                    {"BM": 128, "BN": 64, "BK": 64, "num_warps": 4, "num_stages": 4},
                    {"BM": 64, "BN": 128, "BK": 64, "num_warps": 4, "num_stages": 4},
                    {"BM": 128, "BN": 256, "BK": 64, "num_warps": 8, "num_stages": 3},
                    {"BM": 256, "BN": 128, "BK": 64, "num_warps": 8, "num_stages": 3}):
            key = "x".join(str(cfg[k]) for k in ("BM", "BN", "BK", "num_warps", "num_stages"))
            try:
                sec = timed(lambda: kernels.cluster_distance_sums_triton(
                    pts[:rows], pts, lab, 2, torch.arange(rows, device=dev), 0, x_scale=scale[:rows], y_scale=scale,
                    config=cfg), dev, reps=3, warmup=1)
                sweep[key] = 2.0 * rows * len(pts) * d / sec / 1e12
            except Exception as e:  # a config that does not compile here is a finding, not a crash
                sweep[key] = f"failed: {type(e).__name__}: {str(e)[:120]}"
            rec.put(config_tflops=sweep)


def part_zeroshot(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import torch

    from embedx.measures import compute
    from embedx.measures.stream import zeroshot_hits, normalized
    from embedx.store import Store

    dev = device_paths(dry)
    n, c, d = sz["zs_n"], sz["zs_c"], sz["dim"]
    path = class_store(scratch, n, c, d)
    s = Store(path)
    keys = ["zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"]
    t = time.perf_counter()
    res = compute(s, keys, device=str(dev))
    rec.put(end_to_end_seconds=time.perf_counter() - t, zeroshot_top1=res["zeroshot_top1"], n=n, c=c)
    t = time.perf_counter()
    cpu = compute(s, keys, device="cpu")
    rec.put(cpu_end_to_end_seconds=time.perf_counter() - t,
            max_abs_diff_vs_cpu=max(abs(cpu[k] - res[k]) for k in keys))

    # on the device: counting against the bare matmul of the same precision (IEEE fp32) and blocking
    y = torch.from_numpy(s.labels()).long().to(dev)
    keep = y >= 0
    x = torch.from_numpy(s.images()).to(dev)[keep].float()
    y = y[keep]
    texts = normalized(s.texts(), "texts").to(dev)
    step = 65536 if dev.type == "cuda" else 1024
    hit = torch.empty(min(step, len(x)), c, device=dev)
    top1 = torch.zeros(c, dtype=torch.long, device=dev)
    top5 = torch.zeros_like(top1)
    t_count = timed(lambda: zeroshot_hits(x, y, texts, top1, top5, hit, step), dev, reps=5)
    out_buf = torch.empty(min(step, len(x)), c, device=dev)

    def bare():
        for z0 in range(0, len(x), step):
            xb = x[z0:z0 + step]
            torch.mm(xb, texts.T, out=out_buf[:len(xb)])

    t_mm = timed(bare, dev, reps=5)
    flops = 2.0 * len(x) * c * d
    rates = _rates(scratch)
    rec.put(count_seconds=t_count, matmul_seconds=t_mm, share_of_matmul=t_mm / t_count,
            count_tflops=flops / t_count / 1e12,
            share_of_fp32_peak=(flops / t_count / 1e12 / rates["fp32_ieee_tflops"])
            if rates.get("fp32_ieee_tflops") else None)


def part_retrieval(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import numpy as np
    import torch

    from embedx.measures import retrieval
    from embedx.store import Store

    dev = device_paths(dry)
    n, d = sz["ret_n"], sz["dim"]
    t = time.perf_counter()
    path = paired_store(scratch, n, d)
    rec.put(store_seconds=time.perf_counter() - t, n=n)
    s = Store(path)
    clock = KernelClock("rank_count", dev)
    t = time.perf_counter()
    got = retrieval.recall_at_k_streamed(s, device=str(dev))
    total = time.perf_counter() - t
    clock.close()
    rec.put(end_to_end_seconds=total, sweep_seconds=clock.seconds, sweep_tflops=2.0 * n * n * d / clock.seconds / 1e12,
            **{k.replace("@", "_at_"): v for k, v in got.items()})

    # dense baseline: normalized fp16 rows, S = Q T^T per row block, topk both ways (running top-k per text)
    k = max(retrieval.KS)
    q = torch.nn.functional.normalize(torch.from_numpy(s.images()).to(dev).float(), dim=1).half()
    tt = torch.nn.functional.normalize(torch.from_numpy(s.texts()).to(dev).float(), dim=1).half()
    blk = sz["ret_block"]

    def dense():
        i2t = torch.empty(n, k, dtype=torch.long, device=dev)
        best_v = torch.full((k, n), -float("inf"), device=dev, dtype=torch.float16)
        best_i = torch.zeros((k, n), dtype=torch.long, device=dev)
        for r0 in range(0, n, blk):
            sim = q[r0:r0 + blk] @ tt.T
            i2t[r0:r0 + len(sim)] = sim.topk(k, dim=1).indices
            v, i = sim.topk(min(k, len(sim)), dim=0)
            cat_v, cat_i = torch.cat([best_v, v]), torch.cat([best_i, i + r0])
            top = cat_v.topk(k, dim=0).indices
            best_v, best_i = cat_v.gather(0, top), cat_i.gather(0, top)
        return i2t, best_i.T

    t = time.perf_counter()
    i2t, t2i = dense()
    sync(dev)
    t_dense = time.perf_counter() - t
    ar = torch.arange(n, device=dev)[:, None]
    dense_rec = {f"dense_i2t_recall_at_{kk}": float((i2t[:, :kk] == ar).any(1).float().mean()) for kk in retrieval.KS}
    dense_rec.update({f"dense_t2i_recall_at_{kk}": float((t2i[:, :kk] == ar).any(1).float().mean())
                      for kk in retrieval.KS})
    rec.put(dense_seconds=t_dense, speedup_vs_dense=t_dense / clock.seconds,
            end_to_end_speedup_vs_dense=t_dense / total, **dense_rec)
    del i2t, t2i

    try:
        import faiss
    except ImportError:
        rec.put(faiss="not installed")
        return
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        rec.put(faiss=f"faiss {faiss.__version__} has no GPU support here (carry a faiss GPU build to time it)")
        return
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, d)
    index.add(np.ascontiguousarray(tt.float().cpu().numpy()))
    qs = np.ascontiguousarray(q.float().cpu().numpy())
    t = time.perf_counter()
    _, idx = index.search(qs, k)
    t_faiss = time.perf_counter() - t
    rec.put(faiss=faiss.__version__, faiss_gpu_i2t_seconds=t_faiss,
            faiss_i2t_recall_at_1=float((idx[:, 0] == np.arange(n)).mean()))


def part_embed(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import torch

    from embedx.embedding.options import EncodeOptions, WriteOptions
    from embedx.embedding.serial import default_workers, embed_to_store
    from embedx.models.encoder import load_encoder

    dev = device_paths(dry)
    enc = load_encoder(sz["model"], "none", seed=0, device=str(dev))
    size = enc.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    b, n = sz["embed_batch"], sz["embed_n"]
    px = torch.randn(b, 3, size, size, device=dev)

    def bare():
        with torch.no_grad(), enc.amp:
            for _ in range(sz["bare_iters"]):
                enc.model.encode_image(px, normalize=True)

    t_bare = timed(bare, dev, reps=3) / (sz["bare_iters"] * b)  # seconds per image
    host = px.cpu().pin_memory() if dev.type == "cuda" else px.cpu()
    t_host = timed(lambda: [enc.encode_images(host) for _ in range(sz["bare_iters"])], dev,
                   reps=3) / (sz["bare_iters"] * b)
    rec.put(model=sz["model"], image_size=size, batch=b, bare_images_per_s=1 / t_bare,
            bare_with_transfers_images_per_s=1 / t_host)
    spec = f"synthetic:{n}:size={size}"
    per_workers = {}
    for w in sorted({default_workers(), max(1, (os.cpu_count() or 2) - 2)}):
        dst = os.path.join(scratch, "embed.zarr")
        t = time.perf_counter()
        embed_to_store(dst, spec, sz["model"], "none", encode=EncodeOptions(batch_size=b, workers=w),
                       write=WriteOptions(overwrite=True), progress=False, encoder=enc)
        sec = time.perf_counter() - t
        per_workers[str(w)] = n / sec
        shutil.rmtree(dst, ignore_errors=True)
        rec.put(pipeline_images_per_s=per_workers)
    best = max(per_workers.values())
    from embedx.models.encoder import split_preprocess

    rec.put(default_workers=default_workers(), normalize_on_device=dev.type == "cuda"
            and split_preprocess(enc.preprocess)[1] is not None, overhead=(1 / best) / t_bare - 1,
            overhead_default_workers=(1 / per_workers[str(default_workers())]) / t_bare - 1)


def part_finetune(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import torch

    from embedx.finetune import METHODS, build
    from embedx.finetune import train
    from embedx.models.methods import resolve_options
    from embedx.models.tuned import count_params

    dev = device_paths(dry)
    steps = {}
    for method in METHODS:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        enc = build(sz["model"], "none", method, resolve_options(method, {}), seed=0, device=str(dev))
        net = enc.model
        size = net.clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        c = sz["ft_classes"]
        tokens = enc.tokenizer([f"a photo of a class {k}." for k in range(c)]).to(dev)
        base = None
        if net.text_tower_frozen():
            with torch.no_grad(), enc.amp:
                base = net.clip.encode_text(tokens)
        opt = train._optimizer("sgd", [p for p in net.parameters() if p.requires_grad], 1e-5, 1e-4)
        x = torch.randn(sz["ft_batch"], 3, size, size, device=dev)
        y = torch.randint(0, c, (sz["ft_batch"],), device=dev)
        net.train()
        sec = timed(lambda: [train.train_step(net, enc, opt, x, y, tokens, c, base) for _ in range(sz["ft_steps"])],
                    dev, reps=3) / sz["ft_steps"]
        trainable, total = count_params(net)
        steps[method] = {"ms_per_step": sec * 1e3, "images_per_s": sz["ft_batch"] / sec, "trainable": trainable,
                         "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None}
        rec.put(model=sz["model"], batch=sz["ft_batch"], steps=steps,
                **{f"{method}_ms_per_step": sec * 1e3})
        enc = net = opt = None  # free this model before the next is built
        if dev.type == "cuda":
            torch.cuda.empty_cache()
