"""What checking every chunk as it is read costs (issue 11: "verify checksums during every streaming pass at a
cost you measure and report, target <= 5% of the pass").

Every store records, at finalize, the NH2 hash of each chunk's decoded rows (``kernels.content_hash``); every read
of a whole chunk recomputes it. Measured side by side in one process, alternating, on the stores of
bench_measures.py: each case opened with checking on (``Store(path)``) and off (``Store(path,
verify_content=False)``, the reads as before). Also: the hash's rate against google-crc32c on one 4 MiB chunk
(one thread), what finalize spends recording the inventory, and what ``embedx verify`` / ``embedx info`` take.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import save  # noqa: E402

WORK = os.path.join(HERE, "_work")


def _has_content(path: str) -> bool:
    from embedx.store import read_meta

    try:
        return bool((read_meta(path).get("integrity") or {}).get("content"))
    except Exception:
        return False


def _fresh(path: str, make) -> str:
    """The store at ``path``, rebuilt when it was written before content checksums existed."""
    import shutil

    if os.path.exists(path) and not _has_content(path):
        shutil.rmtree(path)
    if not os.path.exists(path):
        make(path)
    return path


def rates() -> dict:
    import google_crc32c

    from embedx.kernels.ops.content_hash import content_hash

    x = np.random.default_rng(0).standard_normal((4096, 512)).astype(np.float16)  # one default chunk, 4 MiB
    raw = x.tobytes()
    content_hash(x)
    out = {}
    for name, f in (("nh2", lambda: content_hash(x)), ("crc32c", lambda: google_crc32c.value(raw))):
        best = min(_timed(f, 20) for _ in range(7))
        out[name + "_gb_s"] = x.nbytes / best / 1e9
    return out


def _timed(f, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def side_by_side(path: str, run, rounds: int) -> dict:
    """``run(store)`` timed with checking on and off, alternating; min and median of each."""
    from embedx.store import Store

    on, off = [], []
    run(Store(path))  # warm: page cache, numba
    for _ in range(rounds):
        off.append(_timed(lambda: run(Store(path, verify_content=False))))
        s = Store(path)
        on.append(_timed(lambda: run(s)))
        assert s.chunks_verified()["images/embeddings"], "no chunk was checked"
    mins, meds = (min(on), min(off)), (statistics.median(on), statistics.median(off))
    return {"on_s": on, "off_s": off, "cost_min": mins[0] / mins[1] - 1, "cost_median": meds[0] / meds[1] - 1}


def centring_cost(path: str, rounds: int) -> dict:
    """(b) with the silhouette's rows normalized and centred in float64 (now) against plain float32 unit rows
    (before; swapped in for the comparison only), checking off in both, alternating."""
    from embedx.measures import compute, silhouette
    from embedx.measures.stream import normalized
    from embedx.store import Store

    now = silhouette._StorePoints.unit_rows

    def before(self, block, what, start):
        return normalized(block, what, start)

    on, off = [], []
    compute(Store(path, verify_content=False), ["silhouette_euclidean"])
    for _ in range(rounds):
        silhouette._StorePoints.unit_rows = before
        off.append(_timed(lambda: compute(Store(path, verify_content=False), ["silhouette_euclidean"])))
        silhouette._StorePoints.unit_rows = now
        on.append(_timed(lambda: compute(Store(path, verify_content=False), ["silhouette_euclidean"])))
    return {"on_s": on, "off_s": off, "cost_min": min(on) / min(off) - 1,
            "cost_median": statistics.median(on) / statistics.median(off) - 1}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    from bench_measures import ONE_PASS, ZEROSHOT, make_class_store, make_paired_store
    from bench_store_read import build

    from embedx.store import integrity
    from embedx.measures import compute
    from embedx.store import Store, read_meta
    import zarr

    os.makedirs(WORK, exist_ok=True)
    big = _fresh(os.path.join(WORK, "read-1000000x512.zarr"), lambda p: build(p, 1_000_000, 512))
    sil = _fresh(os.path.join(WORK, "iimm-20000.zarr"), lambda p: make_class_store(p, 20_000, 100, 512))
    pairs = _fresh(os.path.join(WORK, "paired-20000.zarr"), lambda p: make_paired_store(p, 20_000, 512))
    res = {"rates": rates()}
    res["c_one_pass"] = side_by_side(big, lambda s: compute(s, ONE_PASS), a.rounds)
    res["c_zeroshot"] = side_by_side(big, lambda s: compute(s, ZEROSHOT), 3)
    res["b_silhouette"] = side_by_side(sil, lambda s: compute(s, ["silhouette_euclidean"]), 3)
    res["b_centring"] = centring_cost(sil, 3)
    res["d_recall"] = side_by_side(pairs, lambda s: compute(s, [f"{w}_recall@{k}" for w in ("i2t", "t2i")
                                                                 for k in (1, 5, 10)]), 3)
    meta = read_meta(big)
    group = zarr.open_group(big, mode="r")
    t = time.perf_counter()
    integrity.inventory(big, group, meta, ("images/embeddings", "images/labels", "texts/embeddings"))
    inv_s = time.perf_counter() - t
    t = time.perf_counter()
    s = Store(big, verify_content=False)
    for name in integrity.CONTENT_ARRAYS:
        integrity._content_hashes(s, name, integrity._threads())
    content_s = time.perf_counter() - t
    res["finalize_inventory_s"] = {"crc32c_and_content": inv_s, "content_only": content_s}
    res["verify_s"] = _timed(lambda: integrity.verify(big))
    res["info_check_s"] = _timed(lambda: integrity.verify(big, files=False, content=True))
    r = res["rates"]
    rows = [f"| NH2 vs google-crc32c, one 4 MiB chunk, 1 thread | {r['nh2_gb_s']:.1f} GB/s | {r['crc32c_gb_s']:.1f} GB/s "
            f"| **{r['nh2_gb_s'] / r['crc32c_gb_s']:.1f}x** | — |"]
    for key, what, target in (("c_one_pass", "(c) one pass, 1,000,000 x 512 fp16, C = 1,000", "<= 5%"),
                              ("c_zeroshot", "(c) zero-shot on the same store", "<= 5%"),
                              ("b_silhouette", "(b) exact Euclidean silhouette, 20,000 + 100 x 512", "<= 5%"),
                              ("d_recall", "(d) recall@1/5/10 both ways, 20,000 pairs", "<= 5%")):
        c = res[key]
        rows.append(f"| {what} (min / median of {len(c['on_s'])}) | {min(c['on_s']):.3f} / "
                    f"{statistics.median(c['on_s']):.3f} s | {min(c['off_s']):.3f} / {statistics.median(c['off_s']):.3f} s "
                    f"| **{c['cost_min']:+.1%}** / {c['cost_median']:+.1%} | {target} |")
    c = res["b_centring"]
    rows.append(f"| (b) float64 centring of the silhouette's rows (checking off) | {min(c['on_s']):.3f} / "
                f"{statistics.median(c['on_s']):.3f} s | float32 unit rows (before): {min(c['off_s']):.3f} / "
                f"{statistics.median(c['off_s']):.3f} s | **{c['cost_min']:+.1%}** / {c['cost_median']:+.1%} | no measurable cost |")
    f = res["finalize_inventory_s"]
    rows.append(f"| finalize: inventory of the 1 GB store (crc32c of files + NH2 of contents) | {f['crc32c_and_content']:.2f} s "
                f"| NH2 part alone: {f['content_only']:.2f} s | — | — |")
    rows.append(f"| `embedx verify` (crc32c + decoded contents) / `embedx info` check (contents), same store | "
                f"{res['verify_s']:.2f} s | {res['info_check_s']:.2f} s | — | — |")
    md = ("| case | checking on | checking off (reads as before) | cost | target |\n|---|---|---|---|---|\n"
          + "\n".join(rows) + "\n\nChecking on: `Store(path)`, every read of a whole chunk hashes it (NH2, "
          "`kernels/ops/content_hash.py`) and compares with the hash recorded at finalize. Off: `Store(path, "
          "verify_content=False)`. Alternating rounds in one process, page cache warm; the pass uses every core "
          "(the hash runs in the reading threads). Costs are (on / off) - 1 of the min and of the median.")
    save("integrity", res, md)
    return res


if __name__ == "__main__":
    main()
