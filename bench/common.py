"""Shared helpers for the benchmarks: machine description, result files, peak RSS of a child process."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) // 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": None, "date": dt.date.today().isoformat()}


def save(name: str, result: dict, table_md: str) -> None:
    """bench/results/NAME.json (figures) and NAME.md (a short table)."""
    os.makedirs(RESULTS, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    m = result["machine"]
    head = f"# {name}\n\nMachine: {m['cpu']}, {m['cores']} cores, {m['mem_mib']} MiB, no GPU, {m['date']}.\n\n"
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(head + table_md.strip() + "\n")
    print(head + table_md)


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (so peak RSS is its own); it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def hwm_mb() -> float:
    """Peak RSS of this process so far (MB)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


def child_runner(script: str):
    """``child(name, *args)``: run ``script --child name args`` in a fresh interpreter (its own peak RSS) and
    return the JSON it prints last."""

    def child(name: str, *args: str) -> dict:
        p = subprocess.run([sys.executable, script, "--child", name, *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        return json.loads(p.stdout.strip().splitlines()[-1])

    return child
