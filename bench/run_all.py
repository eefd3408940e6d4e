"""Run every benchmark and refresh bench/results/ (CPU machine: about 4 minutes)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_codec  # noqa: E402
import bench_embed  # noqa: E402
import bench_store_read  # noqa: E402

if __name__ == "__main__":
    results = {"codec": bench_codec.main(), "store_read": bench_store_read.main([]), "embed": bench_embed.main([])}
    failed = [k for k, r in results.items() if r.get("pass") is False]
    print("targets met" if not failed else f"targets missed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)
