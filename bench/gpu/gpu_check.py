"""`make gpu-check`: every CUDA path of embedx checked and timed in one run of at most 8 minutes.

Parts, in this order, each in its own process with its own time budget (a slow part is stopped and the run goes
on; what it measured before that is kept, since every part writes its figures as it goes):

  correctness  tests/test_gpu.py (marker gpu) with the real Triton compiler: every kernel against float64 in
               fp32/fp16/bf16, edge cases and ties; `measure --device cuda` against the CPU result
  matmul       the ceilings of this run: dense torch matmul TFLOP/s (IEEE fp32, TF32, bf16, fp16), copy GB/s
  silhouette   exact Euclidean silhouette at 1,000,000 x 512 (fp16 clustered store made here, C = 1,000 texts):
               end-to-end and kernel seconds, TFLOP/s, share of the TF32 and bf16 matmul rates; the value on a
               100k-image subset against a float64 tiled torch reference; a sweep of kernel tile configs
  zeroshot     zero-shot accuracy at 1M x C = 1,000: counting on the device against the bare matmul of the same
               precision (share of the matmul rate), and `measure` end to end
  retrieval    recall@k on 1M pairs: embedx's rank-count sweep against dense matmul + topk (both directions)
               in the same run; FAISS GPU top-k when a faiss with GPU support is installed
  embed        ViT-B-32 (random init, bf16) on synthetic images, batch 256: the `embed` pipeline (DataLoader on
               this machine's cores, store writes) against the bare forward on device-resident batches
  finetune     one optimizer step per method (full, bitfit, attention, lora, adapter), ViT-B-32 bf16

Targets it reports against (measured, never asserted in unit tests): silhouette <= 10 s and >= 50% of the TF32
matmul rate; zero-shot >= 70% of the matmul rate; retrieval >= 2x dense matmul + topk; embed overhead <= 10%.

Without CUDA, ``--dry-run`` builds the same plan and runs every part at small sizes on the CPU (Triton under
the interpreter, the GPU's resident code paths switched on); tests/test_gpu_check.py runs it in `make test`.

  python bench/gpu/gpu_check.py [--out DIR] [--dry-run] [--parts a,b] [--total-budget S]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "gpu")
TOTAL_BUDGET_S = 480  # the whole run, wheel install included (bench/gpu/run.sh spends a few seconds of it)
RESERVE_S = 15        # kept for writing the report

# part -> (budget seconds on the GPU, what it does); the dry run gives each part the same budget
PARTS = {
    "correctness": (95, "kernel + measure tests, real Triton compiler"),
    "matmul": (15, "matmul and copy ceilings of this run"),
    "silhouette": (120, "exact Euclidean silhouette, 1M x 512"),
    "zeroshot": (35, "zero-shot accuracy, 1M x C=1,000"),
    "retrieval": (85, "recall@k on 1M pairs vs dense matmul + topk; FAISS GPU"),
    "embed": (55, "embed throughput vs bare forward, ViT-B-32 bf16"),
    "finetune": (45, "finetune step time per method, ViT-B-32 bf16"),
}

SIZES = {
    "full": {"matmul_n": 8192, "copy_mib": 2048, "sil_n": 1_000_000, "sil_c": 1000, "dim": 512,
             "sil_subset": 100_000, "zs_n": 1_000_000, "zs_c": 1000, "ret_n": 1_000_000, "ret_block": 4096,
             "model": "ViT-B-32", "embed_batch": 256, "embed_n": 256 * 40, "bare_iters": 20,
             "ft_batch": 128, "ft_steps": 10, "ft_classes": 10, "test_filter": None},
    "dry": {"matmul_n": 256, "copy_mib": 8, "sil_n": 1500, "sil_c": 10, "dim": 32, "sil_subset": 600,
            "zs_n": 3000, "zs_c": 20, "ret_n": 800, "ret_block": 256, "model": "embedx-tiny", "embed_batch": 16,
            "embed_n": 64, "bare_iters": 2, "ft_batch": 8, "ft_steps": 2, "ft_classes": 4,
            "test_filter": "ragged and float16 or cli"},
}

TARGETS = {
    "silhouette_seconds": ("silhouette", "end_to_end_seconds", "<=", 10.0, "exact Euclidean silhouette, 1M x 512 (s)"),
    "silhouette_tf32_share": ("silhouette", "share_of_tf32", ">=", 0.5, "silhouette share of the TF32 matmul rate"),
    "zeroshot_matmul_share": ("zeroshot", "share_of_matmul", ">=", 0.7, "zero-shot share of the matmul rate"),
    "retrieval_speedup": ("retrieval", "speedup_vs_dense", ">=", 2.0, "retrieval vs dense matmul + topk"),
    "embed_overhead": ("embed", "overhead", "<=", 0.10, "embed pipeline overhead over the bare forward"),
}


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------
def environment() -> dict:
    """Machine, driver and library versions, as this run sees them."""
    import numpy
    import torch

    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "numpy": numpy.__version__, "cpu": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), env["cpu"])
    except OSError:
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}", gpu_sms=p.multi_processor_count,
                   gpu_mem_gib=round(p.total_memory / 2 ** 30, 1))
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            env["nvidia_smi"] = f"unavailable: {e}"
    else:
        env["gpu"] = None
    return env


def plan(dry: bool, parts: list[str], total: float) -> dict:
    """The whole run on paper: sizes, per-part budgets (their sum fits ``total``) and commands."""
    budgets = {p: PARTS[p][0] for p in parts}
    return {"mode": "dry-run (CPU, small sizes)" if dry else "full (CUDA)", "total_budget_s": total,
            "reserve_s": RESERVE_S, "sum_of_part_budgets_s": sum(budgets.values()),
            "fits": sum(budgets.values()) + RESERVE_S <= total, "sizes": SIZES["dry" if dry else "full"],
            "parts": [{"name": p, "budget_s": budgets[p], "what": PARTS[p][1],
                       "command": [sys.executable, os.path.relpath(__file__, REPO), "--child", p]
                       + (["--dry-run"] if dry else [])} for p in parts],
            "targets": {k: {"part": v[0], "key": v[1], "op": v[2], "value": v[3], "what": v[4]}
                        for k, v in TARGETS.items()}}


def run_part(name: str, budget: float, dry: bool, scratch: str, out: str) -> dict:
    """``name`` in a child process (its own session, so the whole group can be stopped) within ``budget``."""
    rec_path = os.path.join(scratch, f"part-{name}.json")
    if os.path.exists(rec_path):
        os.remove(rec_path)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--scratch", scratch, "--out", out]
    if dry:
        cmd.append("--dry-run")
    log_path = os.path.join(scratch, f"part-{name}.log")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"stopped at its budget ({budget:.0f} s)"
    figures = {}
    if os.path.exists(rec_path):
        with open(rec_path) as f:
            figures = json.load(f)
    with open(log_path) as f:
        tail = f.read()[-3000:]
    return {"status": status, "seconds": round(time.perf_counter() - t0, 2), "budget_s": budget,
            "figures": figures, "log_tail": tail if status != "ok" else tail[-600:]}


def evaluate_targets(parts: dict, dry: bool) -> dict:
    """Each target: its value from the part's figures, met or missed (by how much); a dry run judges none."""
    out = {}
    for key, (part, fig, op, want, what) in TARGETS.items():
        got = parts.get(part, {}).get("figures", {}).get(fig)
        if not isinstance(got, (int, float)) or dry:
            out[key] = {"what": what, "target": f"{op} {want}", "value": got, "met": None,
                        "note": "dry run: CPU sizes, not judged" if dry else "not measured"}
            continue
        met = got <= want if op == "<=" else got >= want
        miss = None if met else (got / want if op == "<=" else want / max(got, 1e-12))
        out[key] = {"what": what, "target": f"{op} {want}", "value": got, "met": met,
                    "missed_by": None if met else f"{miss:.2f}x"}
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    gpu = env.get("gpu") or "no GPU (dry run on CPU)"
    lines = [f"# gpu-check ({report['plan']['mode']})", "",
             f"{gpu}; driver/clock/power: {env.get('nvidia_smi', '-')}; torch {env['torch']} (CUDA "
             f"{env.get('torch_cuda')}), triton {env.get('triton')}, Python {env['python']}, {env['cores']} cores "
             f"({env['cpu']}); {env['date']}. Total {report['seconds']:.0f} s of {report['plan']['total_budget_s']} s.",
             "", "| part | status | seconds | budget |", "|---|---|---|---|"]
    for name, p in report["parts"].items():
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.1f} | {p['budget_s']:.0f} |")
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    for t in report["targets"].values():
        v = t["value"]
        shown = "-" if v is None else f"{v:.3g}"
        met = t["note"] if t["met"] is None else "yes" if t["met"] else f"no (missed by {t['missed_by']})"
        lines.append(f"| {t['what']} | {shown} | {t['target']} | {met} |")
    lines += ["", "Figures per part:", ""]
    for name, p in report["parts"].items():
        flat = {k: v for k, v in p["figures"].items() if isinstance(v, (int, float, str, bool)) or v is None}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in flat.items())
        lines.append(f"- **{name}**: {shown or '-'}")
    return "\n".join(lines) + "\n"


def drive(args) -> int:
    t_start = time.perf_counter()
    parts = list(PARTS) if not args.parts else [p.strip() for p in args.parts.split(",")]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: torch sees no CUDA device; run with --dry-run (make gpu-check does that by itself)",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    scratch = args.scratch or tempfile.mkdtemp(prefix="embedx-gpu-check-")
    os.makedirs(scratch, exist_ok=True)
    the_plan = plan(args.dry_run, parts, args.total_budget)
    _write_json(os.path.join(args.out, "gpu_check_plan.json"), the_plan)
    print(f"gpu-check: {the_plan['mode']}, {len(parts)} parts, budgets {the_plan['sum_of_part_budgets_s']} s "
          f"+ {RESERVE_S} s reserve of {args.total_budget} s; scratch {scratch}", flush=True)
    report = {"plan": the_plan, "environment": environment(), "parts": {}}
    deadline = t_start + args.total_budget - args.spent - RESERVE_S
    for p in the_plan["parts"]:
        left = deadline - time.perf_counter()
        budget = min(p["budget_s"], left)
        if budget < 5:
            report["parts"][p["name"]] = {"status": "not run: out of time", "seconds": 0.0, "budget_s": budget,
                                          "figures": {}}
            continue
        res = run_part(p["name"], budget, args.dry_run, scratch, args.out)
        report["parts"][p["name"]] = res
        print(f"  {p['name']:<12} {res['status']:<34} {res['seconds']:7.1f} s", flush=True)
        if res["status"] != "ok":
            print("    " + "\n    ".join(res["log_tail"].strip().splitlines()[-8:]), flush=True)
    report["targets"] = evaluate_targets(report["parts"], args.dry_run)
    report["seconds"] = round(time.perf_counter() - t_start + args.spent, 1)
    _write_json(os.path.join(args.out, "gpu_check.json"), report)
    md = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md)
    print(md)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = [n for n, p in report["parts"].items() if p["status"] != "ok"]
    failed_tests = report["parts"].get("correctness", {}).get("figures", {}).get("failed")
    return 1 if bad or failed_tests else 0


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# the parts (each runs in a child process: ``--child NAME``)
# ---------------------------------------------------------------------------------------------------------------
class Record:
    """A part's figures, rewritten atomically after every ``put`` so a stopped part keeps what it measured."""

    def __init__(self, path: str):
        self.path, self.data = path, {}

    def put(self, **kw) -> None:
        self.data.update(kw)
        _write_json(self.path, self.data)
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

    from embedx.importer import import_arrays

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

    from embedx.importer import import_arrays

    path = os.path.join(scratch, f"paired-{n}x{d}.zarr")
    if os.path.exists(path):
        return path
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, device=dev, generator=g), dim=1)
    t = torch.nn.functional.normalize(x + 0.9 * torch.randn(n, d, device=dev, generator=g) / d ** 0.5, dim=1)
    tmp = tempfile.mkdtemp(dir=scratch)
    np.save(os.path.join(tmp, "p.npy"), torch.stack([x, t]).half().cpu().numpy())
    import_arrays(path, paired_array=f"{tmp}/p.npy")
    shutil.rmtree(tmp)
    return path


def part_correctness(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import re

    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
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


def part_silhouette(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import numpy as np
    import torch

    from embedx import kernels
    from embedx.importer import import_arrays
    from embedx.measures import compute, silhouette
    from embedx.store import Store

    dev = device_paths(dry)
    n, c, d = sz["sil_n"], sz["sil_c"], sz["dim"]
    t = time.perf_counter()
    path = class_store(scratch, n, c, d)
    rec.put(store_seconds=time.perf_counter() - t, n=n, c=c, dim=d)
    clock = KernelClock("cluster_distance_sums", dev)
    t = time.perf_counter()
    res = compute(Store(path), ["silhouette_euclidean"], device=str(dev))
    total = time.perf_counter() - t
    clock.close()
    flops = 2.0 * (n + c) ** 2 * d
    rates = _rates(scratch)
    rec.put(silhouette=res["silhouette_euclidean"], end_to_end_seconds=total, kernel_seconds=clock.seconds,
            kernel_calls=clock.calls, tflops=flops / clock.seconds / 1e12,
            share_of_tf32=(flops / clock.seconds / 1e12 / rates["tf32_tflops"]) if rates.get("tf32_tflops") else None,
            share_of_bf16=(flops / clock.seconds / 1e12 / rates["bf16_tflops"]) if rates.get("bf16_tflops") else None)

    # the value on a subset of the same pipeline against a float64 tiled torch reference
    m = min(sz["sil_subset"], n)
    s = Store(path)
    tmp = tempfile.mkdtemp(dir=scratch)
    np.save(f"{tmp}/x.npy", s.images(np.arange(m)))
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
        points = silhouette._ModalityPoints(Store(path), None)
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
    from embedx.measures.stream import _zeroshot_hits, normalized
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
    t_count = timed(lambda: _zeroshot_hits(x, y, texts, top1, top5, hit, step), dev, reps=5)
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
            share_of_fp32_peak=(flops / t_count / 1e12 / rates["fp32_ieee_tflops"]) if rates.get("fp32_ieee_tflops") else None)


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

    from embedx.embed import default_workers, embed_to_store
    from embedx.encoders import load_encoder

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
    t_host = timed(lambda: [enc.encode_images(host) for _ in range(sz["bare_iters"])], dev, reps=3) / (sz["bare_iters"] * b)
    rec.put(model=sz["model"], image_size=size, batch=b, bare_images_per_s=1 / t_bare,
            bare_with_transfers_images_per_s=1 / t_host)
    spec = f"synthetic:{n}:size={size}"
    per_workers = {}
    for w in sorted({default_workers(), max(1, (os.cpu_count() or 2) - 2)}):
        dst = os.path.join(scratch, "embed.zarr")
        t = time.perf_counter()
        embed_to_store(dst, spec, sz["model"], "none", batch_size=b, workers=w, progress=False, encoder=enc,
                       overwrite=True)
        sec = time.perf_counter() - t
        per_workers[str(w)] = n / sec
        shutil.rmtree(dst, ignore_errors=True)
        rec.put(pipeline_images_per_s=per_workers)
    best = max(per_workers.values())
    from embedx.encoders import split_preprocess

    rec.put(default_workers=default_workers(), normalize_on_device=dev.type == "cuda"
            and split_preprocess(enc.preprocess)[1] is not None, overhead=(1 / best) / t_bare - 1,
            overhead_default_workers=(1 / per_workers[str(default_workers())]) / t_bare - 1)


def part_finetune(rec: Record, sz: dict, dry: bool, scratch: str, out: str) -> None:
    import torch

    from embedx.finetune import METHODS, build
    from embedx.finetune import train
    from embedx.finetune.methods import resolve_options
    from embedx.finetune.model import count_params

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
        del enc, net, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def child(args) -> int:
    """Run one part in this process; its figures go to SCRATCH/part-NAME.json as they come."""
    import embedx.encoders  # noqa: F401  (the torchvision shim before anything imports torchvision)

    sz = SIZES["dry" if args.dry_run else "full"]
    rec = Record(os.path.join(args.scratch, f"part-{args.child}.json"))
    globals()[f"part_{args.child}"](rec, sz, args.dry_run, args.scratch, args.out)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="where gpu_check.json/.md, the plan and the test log go")
    ap.add_argument("--dry-run", action="store_true", help="the whole plan at small sizes on the CPU")
    ap.add_argument("--parts", default=None, help=f"a subset, comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole run")
    ap.add_argument("--spent", type=float, default=0.0, help="seconds already spent (the wheel install)")
    ap.add_argument("--scratch", default=None, help="scratch folder for the stores (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
