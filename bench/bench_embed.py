"""`embed` end to end vs the bare model forward on the same batches (same model, same batch size).

Pipeline = read + preprocess (DataLoader) + forward + class-text encoding + zarr writes and commits +
finalize. Bare = only ``model.encode_image`` on the already preprocessed batches. Runs alternate and the
median of REPEATS is kept. Target: pipeline overhead <= 15%.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402

from embedx.embedding.options import EncodeOptions, SourceOptions, WriteOptions  # noqa: E402
from embedx.embedding.serial import default_workers, embed_to_store  # noqa: E402
from embedx.models.encoder import load_encoder  # noqa: E402
from embedx.sources.catalog import digits_source  # noqa: E402

REPEATS = 3


def bare(enc, batches) -> float:
    t = time.perf_counter()
    for b in batches:
        enc.encode_images(b)
    return time.perf_counter() - t


def pipeline(enc, n, batch, workers, tmp) -> float:
    out = os.path.join(tmp, "s.zarr")
    t = time.perf_counter()
    embed_to_store(out, "digits", enc.name, seed=enc.seed, source=SourceOptions(limit=n),
                   encode=EncodeOptions(batch_size=batch, workers=workers), write=WriteOptions(overwrite=True),
                   progress=False, encoder=enc)
    dt = time.perf_counter() - t
    shutil.rmtree(out)
    return dt


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-S-32-alt")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args(argv)
    enc = load_encoder(a.model, "none", seed=0, device="cpu")
    src = digits_source()
    pixels = torch.stack([enc.preprocess(src.load(i)) for i in range(a.n)])
    batches = list(torch.split(pixels, a.batch_size))
    enc.encode_images(batches[0])  # warm-up
    worker_settings = sorted({0, 1, default_workers()})
    times = {"bare": []} | {f"pipeline_workers{w}": [] for w in worker_settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(REPEATS):
            times["bare"].append(bare(enc, batches))
            for w in worker_settings:
                times[f"pipeline_workers{w}"].append(pipeline(enc, a.n, a.batch_size, w, tmp))
    med = {k: statistics.median(v) for k, v in times.items()}
    default_key = f"pipeline_workers{default_workers()}"
    overhead = {k: med[k] / med["bare"] - 1 for k in med if k != "bare"}
    res = {"model": a.model, "n_images": a.n, "batch_size": a.batch_size, "torch_threads": torch.get_num_threads(),
           "seconds": times, "median_seconds": med, "overhead": overhead, "default_workers": default_workers(),
           "default_overhead": overhead[default_key], "target_overhead_at_most": 0.15}
    res["pass"] = res["default_overhead"] <= 0.15
    rows = [f"| bare `encode_image` on preprocessed batches | {med['bare']:.2f} | {a.n / med['bare']:.1f} | — |"]
    for k in overhead:
        mark = " (default)" if k == default_key else ""
        rows.append(f"| `embed` pipeline, {k.split('workers')[1]} DataLoader workers{mark} | {med[k]:.2f} | "
                    f"{a.n / med[k]:.1f} | {overhead[k]:+.1%} |")
    md = ("| run | median of %d (s) | images/s | overhead vs bare |\n|---|---|---|---|\n" % REPEATS + "\n".join(rows) +
          f"\n\n{a.model} (random init, seed 0), {a.n} digits images, batch {a.batch_size}, CPU, "
          f"{torch.get_num_threads()} torch threads. Pipeline = load + preprocess + forward + 10 class prompts + "
          f"zarr writes/commits + finalize.\nDefault-setting overhead: **{res['default_overhead']:+.1%}** (target <= 15%).")
    save("embed_pipeline", res, md)
    return res


if __name__ == "__main__":
    main()
