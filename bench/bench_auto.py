"""`embedx measure` with defaults on a 300,000-row store (issue 27, deliverable 3), side by side in one run:

  before: `--silhouette exact` (the old default). Its silhouette's time is the projection the exact path itself
          prints from its first block pair (a full run is 20-40 min here); the command is then sent SIGINT, which
          also checks Ctrl-C: the finished measures printed, exit 130. The streaming measures' time is measured.
  after:  the default `--silhouette auto`: measured end to end (wall time of the CLI process), its sampled
          silhouette line with the 95% interval recorded.

Store: 300,000 images x 512 float16, 100 classes (+100 class texts: 300,100 points), gaussian clusters with a
modality offset. Results: bench/results/auto.md and auto.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import save  # noqa: E402

WORK = os.path.join(HERE, "_work")
EMBEDX = [sys.executable, "-m", "embedx.cli.main"]


def make_store(path: str, n: int, c: int, d: int, seed: int = 0) -> str:
    """n x d float16 images in blocks (no n x d float64 in memory), c class texts, labels; imported once."""
    from embedx.formats.arrays import import_arrays

    if os.path.exists(path):
        return path
    os.makedirs(WORK, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    xp = os.path.join(WORK, "auto_x.npy")
    x = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, 50_000):
        e = min(s + 50_000, n)
        x[s:e] = centers[y[s:e]] + 2.0 * rng.standard_normal((e - s, d), dtype=np.float32)
    x.flush()
    del x
    np.save(os.path.join(WORK, "auto_t.npy"), centers + 0.5 * rng.standard_normal((c, d)).astype(np.float32) + 1.0)
    np.save(os.path.join(WORK, "auto_y.npy"), y)
    import_arrays(path, images=xp, texts=os.path.join(WORK, "auto_t.npy"), labels=os.path.join(WORK, "auto_y.npy"),
                  dtype="float16")
    return path


def run_timed(args: list[str], stop_when=None, timeout: float = 900) -> dict:
    """The CLI in a subprocess: wall seconds, each stdout line with the second it came, stderr, exit code.
    ``stop_when(stderr_so_far)``: send SIGINT as soon as it holds."""
    t0 = time.perf_counter()
    p = subprocess.Popen(EMBEDX + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda: [out.append((time.perf_counter() - t0, ln)) for ln in p.stdout]),
               threading.Thread(target=lambda: [err.append(ln) for ln in p.stderr])]
    for r in readers:
        r.start()
    sent = None
    while p.poll() is None and time.perf_counter() - t0 < timeout:
        if stop_when is not None and sent is None and stop_when("".join(err)):
            sent = time.perf_counter() - t0
            p.send_signal(signal.SIGINT)
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
    p.wait()
    for r in readers:
        r.join()
    return {"wall_s": time.perf_counter() - t0, "rc": p.returncode, "sigint_at_s": sent,
            "stdout": [(round(t, 2), ln.rstrip("\n")) for t, ln in out], "stderr": "".join(err)}


def _projection_s(stderr: str) -> float | None:
    m = re.search(r"about ([\d.]+) (s|min|h) on this machine", stderr)
    if not m:
        return None
    return float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--c", type=int, default=100)
    ap.add_argument("--d", type=int, default=512)
    a = ap.parse_args(argv)
    path = make_store(os.path.join(WORK, f"auto_{a.n}x{a.d}.zarr"), a.n, a.c, a.d)

    before = run_timed(["measure", path, "--silhouette", "exact"],
                       stop_when=lambda err: "exact silhouette of" in err)
    streamed = [t for t, ln in before["stdout"] if ln.startswith("silhouette_cosine")]
    before_sil = _projection_s(before["stderr"])
    after = run_timed(["measure", path])
    as_json = run_timed(["measure", path, "--json"])  # the same default run: its JSON, timings per step
    doc = json.loads("\n".join(ln for _, ln in as_json["stdout"]))
    sil = next((ln for _, ln in after["stdout"] if ln.startswith("silhouette_euclidean")), "")
    hint = next((ln.strip() for _, ln in after["stdout"] if "--silhouette exact" in ln), "")
    first = next((t for t, ln in after["stdout"] if ln.startswith("acs")), None)
    res = {"n_images": a.n, "n_texts": a.c, "dim": a.d, "dtype": "float16",
           "before": {"command": "embedx measure S --silhouette exact", "streaming_measures_printed_s":
                      streamed[0] if streamed else None, "silhouette_projected_s": before_sil,
                      "sigint_at_s": before["sigint_at_s"], "rc_after_sigint": before["rc"],
                      "stderr_tail": before["stderr"][-600:],
                      "lines_printed": [ln for _, ln in before["stdout"]]},
           "after": {"command": "embedx measure S", "wall_s": after["wall_s"], "rc": after["rc"],
                     "first_measure_printed_s": first, "silhouette_line": sil, "exact_hint": hint,
                     "stdout": after["stdout"], "stderr_tail": after["stderr"][-600:]},
           "after_json": {"wall_s": as_json["wall_s"], "timings_s": doc["timings_s"],
                          "silhouette_method": doc.get("silhouette_method"), "estimates": doc.get("estimates")}}
    auto = (doc.get("estimates") or {}).get("silhouette_euclidean", {}).get("auto", {})
    total_before = (streamed[0] if streamed else 0) + before_sil if before_sil else before["wall_s"]
    how_before = (f"exact, projected {before_sil:.0f} s ({before_sil / 60:.0f} min) from its first block pair"
                  if before_sil else "exact, measured (finished: no projection printed)")
    whole_before = f"about {total_before / 60:.0f} min (projected)" if before_sil else f"{total_before:.1f} s measured"
    how_after = ("sampled, 2,000 points, with its 95% interval" if "sampled" in sil
                 else "exact (projected under the auto threshold)")
    md = f"""`embedx measure` with defaults, {a.n:,} x {a.d} float16 images + {a.c} class texts ({a.n + a.c:,} points),
side by side in one run (`python bench/bench_auto.py`; each command a fresh CLI process, wall time).

| | before: `--silhouette exact` (the old default) | after: default `--silhouette auto` |
|---|---|---|
| streaming measures printed | {streamed[0] if streamed else float('nan'):.1f} s | {first if first is not None else float('nan'):.1f} s |
| Euclidean silhouette | {how_before} | {how_after} |
| whole command | {whole_before} | **{after['wall_s']:.1f} s** measured (exit {after['rc']}) |

After, the same default command with `--json` ({as_json['wall_s']:.1f} s wall): `silhouette_method`
{doc.get('silhouette_method')}, the exact silhouette projected at {auto.get('projected_exact_s', float('nan')):.0f} s by auto from its
first block pair (threshold {auto.get('limit_s', float('nan')):.0f} s); seconds per step: {', '.join(f'{k} {v:.1f}' for k, v in doc['timings_s'].items())}.

After, the silhouette line as printed:

```
{sil}
{hint}
```

Before: SIGINT sent at {before['sigint_at_s'] or float('nan'):.1f} s (once the projection was printed) -> exit
{before['rc']}, the {len([ln for _, ln in before['stdout'] if ln and not ln.startswith(path)])} measures finished so far printed, and on stderr:
`{before['stderr'].strip().splitlines()[-1] if before['stderr'].strip() else ''}`.
"""
    save("auto", res, md)


if __name__ == "__main__":
    main()
