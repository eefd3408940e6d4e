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

The parts live in bench/gpu/parts.py. Without CUDA, ``--dry-run`` builds the same plan and runs every part at
small sizes on the CPU (Triton under the interpreter, the GPU's resident code paths switched on);
tests/test_gpu_check.py runs it in `make test`.

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

from parts import REPO, write_json

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
    "dry": {"matmul_n": 256, "copy_mib": 8, "sil_n": 600, "sil_c": 10, "dim": 32, "sil_subset": 300,
            "zs_n": 3000, "zs_c": 20, "ret_n": 800, "ret_block": 256, "model": "embedx-tiny", "embed_batch": 16,
            "embed_n": 64, "bare_iters": 2, "ft_batch": 8, "ft_steps": 2, "ft_classes": 4,
            "test_filter": "ragged"},  # the CLI device test (12 s) runs in the suite itself
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
    kv = report["parts"].get("silhouette", {}).get("figures", {}).get("kernel_variants")
    if kv:  # issue 27: the symmetric kernel and the 3xTF32 product against the plain float32 kernel
        lines += ["", f"Silhouette kernels on {kv['m']:,} float32 unit rows, d = {kv['d']} (effective rate 2 m^2 d):",
                  "", "| kernel | seconds | TFLOP/s | speed-up | max error of the sums | silhouette error |",
                  "|---|---|---|---|---|---|"]
        for name in ("plain_fp32", "symmetric_fp32", "symmetric_3xtf32"):
            v = kv[name]
            lines.append(f"| {name} | {v['seconds']:.4g} | {v['tflops_effective']:.3g} | {v['speedup']:.2f}x | "
                         f"{v['max_abs_err_sums']:.2e} | {v['silhouette_abs_err']:.2e} |")
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
    write_json(os.path.join(args.out, "gpu_check_plan.json"), the_plan)
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
    write_json(os.path.join(args.out, "gpu_check.json"), report)
    md = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md)
    print(md)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = [n for n, p in report["parts"].items() if p["status"] != "ok"]
    failed_tests = report["parts"].get("correctness", {}).get("figures", {}).get("failed")
    return 1 if bad or failed_tests else 0



def child(args) -> int:
    """Run one part in this process; its figures go to SCRATCH/part-NAME.json as they come."""
    import embedx.models.encoder  # noqa: F401  (the torchvision shim before anything imports torchvision)

    import parts

    sz = SIZES["dry" if args.dry_run else "full"]
    rec = parts.Record(os.path.join(args.scratch, f"part-{args.child}.json"))
    getattr(parts, f"part_{args.child}")(rec, sz, args.dry_run, args.scratch, args.out)
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
