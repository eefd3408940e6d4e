"""Chunk codec table on real CLIP embeddings: size on disk vs encode/decode speed, float16 and float32.

The default codec in embedx.store (DEFAULT_CODEC) is chosen from this table: embeddings are nearly
incompressible, so unless a codec saves at least 20% of the bytes, the fastest (no compression) wins.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402

from embedx.data import MODALITY_GAP_DIR  # noqa: E402
from embedx.store import CODECS  # noqa: E402

MIN_SAVING = 0.20


def _chunk(dtype: str) -> np.ndarray:
    # real rows: 500 CLIP ViT-B/16 image + 500 caption embeddings, and the random-init control (2000 x 512)
    a = [np.load(os.path.join(MODALITY_GAP_DIR, f)).reshape(-1, 512) for f in
         ("features_clip.npy", "features_clip_random.npy")]
    return np.concatenate(a).astype(dtype)


def _codec_bytes(name: str, arr: np.ndarray):
    import zarr

    c = CODECS[name]()
    g = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w")
    z = g.create_array("x", shape=arr.shape, chunks=arr.shape, dtype=arr.dtype,
                       compressors=None if c is None else [c])
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        z[:] = arr
    enc = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        z[:]
    dec = (time.perf_counter() - t0) / reps
    size = sum(len(v.to_bytes()) for k, v in g.store._store_dict.items() if "/c/" in k)
    return size, enc, dec


def main() -> dict:
    rows = []
    for dtype in ("float16", "float32"):
        arr = _chunk(dtype)
        raw = arr.nbytes
        for name in CODECS:
            size, enc, dec = _codec_bytes(name, arr)
            rows.append({"dtype": dtype, "codec": name, "ratio": size / raw, "saving": 1 - size / raw,
                         "write_mb_s": raw / enc / 1e6, "read_mb_s": raw / dec / 1e6})
    f16 = [r for r in rows if r["dtype"] == "float16"]
    best = max(f16, key=lambda r: r["saving"])
    chosen = best["codec"] if best["saving"] >= MIN_SAVING else max(f16, key=lambda r: r["read_mb_s"])["codec"]
    md = ["| dtype | codec | size vs raw | saved | write MB/s | read MB/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['dtype']} | {r['codec']} | {r['ratio']:.3f} | {r['saving']:.1%} | {r['write_mb_s']:.0f} "
                  f"| {r['read_mb_s']:.0f} |")
    md.append(f"\nData: 2,000 x 512 real rows (CLIP ViT-B/16 COCO image+caption embeddings and the random-init "
              f"control, Liang et al. 2022, MIT), one chunk, through zarr in memory.\nRule: the best saving is "
              f"{best['saving']:.1%} ({best['codec']}), below {MIN_SAVING:.0%}, so the default is the fastest "
              f"reader: **{chosen}**." if best["saving"] < MIN_SAVING else
              f"\nRule: {best['codec']} saves {best['saving']:.1%} (>= {MIN_SAVING:.0%}): default **{chosen}**.")
    md.append("float32 rows here compress only because the source vectors were saved through float16 (zero low "
              "mantissa bits); float32 output of a real model compresses like the float16 rows.")
    res = {"rows": rows, "chosen_default": chosen, "min_saving_rule": MIN_SAVING}
    save("codec", res, "\n".join(md))
    return res


if __name__ == "__main__":
    main()
