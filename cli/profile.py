"""``embedx profile``: each kernel's speed on this device against the measured roofline (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo, emit_json, table
from embedx.cli.options import device_option, json_option, verbosity_options


def _render(res: dict, n: int, dim: int) -> None:
    """One row per kernel: time, GFLOP/s, GB/s, share of the roofline, speed-up over the reference; columns
    padded to their widest cell (text left, numbers right) and separated by " | "."""
    r = res["roofline"]
    echo(f"device {res['device']} ({res['device_name']}, {res['threads']} threads): roofline "
         f"{r['matmul_gflops']:.0f} GFLOP/s matmul, {r['copy_gbs']:.1f} GB/s copy; n={n}, d={dim}\n")
    rows = [["kernel", "impl", "time", "GFLOP/s", "GB/s", "roofline", "reference"]]
    for row in res["kernels"]:
        ref = (f"{row['speedup_vs_reference']:.1f}x vs {row['reference']} ({row['reference_seconds'] * 1e3:.1f} ms)"
               if row["reference_seconds"] else "")
        rows.append([row["kernel"], row["impl"], f"{row['seconds'] * 1e3:.2f} ms", f"{row['gflops']:.1f}",
                     f"{row['gbs']:.2f}", f"{row['roofline_share']:.0%}", ref])
    for line in table(rows, right=(2, 3, 4, 5)):
        echo(line)


@click.command()
@click.option("--n", default=4096, show_default=True, help="Points (rows) per kernel call.")
@click.option("--d", "dim", default=512, show_default=True, help="Embedding dimension.")
@click.option("--k", default=10, show_default=True, help="k for the top-k kernel.")
@device_option()
@json_option("Print JSON (for bench/results/).")
@verbosity_options
def profile(n, dim, k, device, as_json):
    """Time each kernel on this device: achieved GFLOP/s and GB/s against the roofline measured in the
    same run (a large matmul, a large copy) and against the reference implementations."""
    from embedx.profile import profile as run_profile

    if n < 2 or dim < 1 or k < 1:
        raise click.BadParameter("--n must be >= 2, --d and --k >= 1")
    res = run_profile(n, dim, k, device)
    if as_json:
        emit_json(res, None, True)
        return
    _render(res, n, dim)
