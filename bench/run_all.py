"""Run every benchmark and refresh bench/results/ (CPU machine: about 40 minutes, most of it the
200,000-pair retrieval memory check, the 1M-row store, the digits fine-tuning reproduction and the 30 runs of
the digits prediction report)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_codec  # noqa: E402
import bench_dist  # noqa: E402
import bench_dumps  # noqa: E402
import bench_embed  # noqa: E402
import bench_finetune_defaults  # noqa: E402
import bench_finetune_digits  # noqa: E402
import bench_measures  # noqa: E402
import bench_precision  # noqa: E402
import bench_integrity  # noqa: E402
import bench_predict_digits  # noqa: E402
import bench_sources  # noqa: E402
import bench_startup  # noqa: E402
import bench_store_read  # noqa: E402
import bench_transfer  # noqa: E402
from common import save  # noqa: E402


def profile() -> dict:
    """`embedx profile` at n = 4096, d = 512 -> bench/results/profile.{json,md}."""
    from embedx.profile import profile as run

    res = run(4096, 512, 10, "auto")
    r = res["roofline"]
    md = [f"Roofline measured in the same run: {r['matmul_gflops']:.0f} GFLOP/s (sgemm 4096^3), "
          f"{r['copy_gbs']:.1f} GB/s (copy). n = 4096, d = 512.\n",
          "| kernel | impl | time (ms) | GFLOP/s | GB/s | share of roofline | vs reference |", "|---|---|---|---|---|---|---|"]
    for k in res["kernels"]:
        md.append(f"| {k['kernel']} | {k['impl']} | {k['seconds'] * 1e3:.1f} | {k['gflops']:.1f} | {k['gbs']:.2f} | "
                  f"{k['roofline_share']:.0%} | {k['speedup_vs_reference']:.1f}x vs {k['reference']} |")
    save("profile", res, "\n".join(md))
    return res


if __name__ == "__main__":
    results = {"codec": bench_codec.main(), "store_read": bench_store_read.main([]), "embed": bench_embed.main([]),
               "measures": bench_measures.main([]), "precision": bench_precision.main([]), "integrity": bench_integrity.main([]), "profile": profile(), "finetune_digits": bench_finetune_digits.main([]),
               "finetune_defaults": bench_finetune_defaults.main([]),
               "transfer": bench_transfer.main([]), "predict_digits": bench_predict_digits.main([]), "dist": bench_dist.main([]), "sources": bench_sources.main(),
               "dumps": bench_dumps.main(),
               "startup": bench_startup.main(["--before-rev", bench_startup.ORIGINAL])}
    failed = [k for k, r in results.items() if r.get("pass") is False]
    failed += [f"measures:{k}" for k, r in results["measures"].items() if isinstance(r, dict) and r.get("pass") is False]
    print("targets met" if not failed else f"targets missed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)
