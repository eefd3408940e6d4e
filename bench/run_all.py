"""Run every benchmark and refresh bench/results/ (CPU machine: about 30 minutes, most of it the
200,000-pair retrieval memory check and the 1M-row store)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_codec  # noqa: E402
import bench_embed  # noqa: E402
import bench_measures  # noqa: E402
import bench_store_read  # noqa: E402
from common import RESULTS, machine  # noqa: E402


def profile() -> dict:
    from embedx.profile import profile as run

    res = {"benchmark": "profile", "machine": machine(), **run(4096, 512, 10, "auto")}
    with open(os.path.join(RESULTS, "profile.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    results = {"codec": bench_codec.main(), "store_read": bench_store_read.main([]), "embed": bench_embed.main([]),
               "measures": bench_measures.main([]), "profile": profile()}
    failed = [k for k, r in results.items() if r.get("pass") is False]
    failed += [f"measures:{k}" for k, r in results["measures"].items() if isinstance(r, dict) and r.get("pass") is False]
    print("targets met" if not failed else f"targets missed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)
