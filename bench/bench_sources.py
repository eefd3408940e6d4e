"""``wds:`` and ``parquet:`` read + decode throughput vs the same images from a folder (issue 14), side by side.

N JPEG images (256 x 256, quality 90, ~43 KiB each: the size class of img2dataset shards resized to 256)
written once as a class folder, as WebDataset shards (jpg + cls members) and as a Parquet file of image bytes.
For each source: the listing / index time (``parse_source``) and ``load(i)`` (read + decode to RGB, what the
embed's loaders do per item) over all items in order, in one process, page cache warm, sources alternating, best of
REPEATS. Target: ``wds:`` at least at parity with the folder.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import save  # noqa: E402

REPEATS = 3


def build(root: str, n: int, per_shard: int) -> dict:
    from PIL import Image
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    folder, shards = os.path.join(root, "folder"), os.path.join(root, "shards")
    for c in ("a", "b"):
        os.makedirs(os.path.join(folder, c))
    os.makedirs(shards)
    blobs, total = [], 0
    tf = None
    for i in range(n):
        arr = np.kron(np.roll(base, i, axis=0), np.ones((4, 4, 1), np.uint8))  # smooth-ish 256 x 256 content
        arr = (arr.astype(np.int16) + rng.integers(-8, 8, arr.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        total += len(data)
        c = "ab"[i % 2]
        with open(os.path.join(folder, c, f"{i:07d}.jpg"), "wb") as f:
            f.write(data)
        if i % per_shard == 0:
            if tf:
                tf.close()
            tf = tarfile.open(os.path.join(shards, f"{i // per_shard:05d}.tar"), "w")
        for ext, payload in (("jpg", data), ("cls", str(i % 2).encode())):
            info = tarfile.TarInfo(f"{i:07d}.{ext}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        blobs.append(data)
    tf.close()
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": ["ab"[i % 2] for i in range(n)]}),
                   os.path.join(root, "images.parquet"), row_group_size=1000)
    with open(os.path.join(root, "names.txt"), "w") as f:
        f.write("a\nb\n")
    return {"mean_jpeg_bytes": total / n, "n_shards": -(-n // per_shard)}


def measure(spec: str, classes: str | None) -> dict:
    from embedx.sources.catalog import parse_source

    t = time.perf_counter()
    src = parse_source(spec, classes=classes)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(src)):
        src.load(i)
    load_s = time.perf_counter() - t
    return {"items": len(src), "index_s": index_s, "load_s": load_s, "img_per_s": len(src) / load_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--per-shard", type=int, default=1000)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="embedx-bench-sources-")
    try:
        t = time.perf_counter()
        made = build(root, args.n, args.per_shard)
        print(f"built {args.n} images in {time.perf_counter() - t:.1f} s", flush=True)
        names = os.path.join(root, "names.txt")
        specs = {"folder": (f"folder:{root}/folder", None),
                 "wds": (f"wds:{root}/shards/{{00000..{made['n_shards'] - 1:05d}}}.tar", names),
                 "parquet": (f"parquet:{root}/images.parquet", None)}
        runs: dict = {k: [] for k in specs}
        for _ in range(REPEATS):
            for k, (spec, classes) in specs.items():
                runs[k].append(measure(spec, classes))
                print(k, runs[k][-1], flush=True)
        best = {k: {"items": v[0]["items"], "index_s": min(r["index_s"] for r in v),
                    "load_s": min(r["load_s"] for r in v)} for k, v in runs.items()}
        for b in best.values():
            b["img_per_s"] = b["items"] / b["load_s"]
        f = best["folder"]["img_per_s"]
        res = {"n": args.n, "per_shard": args.per_shard, "repeats": REPEATS, **made, "best": best, "runs": runs,
               "wds_vs_folder": best["wds"]["img_per_s"] / f, "parquet_vs_folder": best["parquet"]["img_per_s"] / f}
        md = [f"{args.n} JPEGs of 256 x 256 (mean {made['mean_jpeg_bytes'] / 1024:.1f} KiB), {made['n_shards']} "
              f"shards of {args.per_shard}; one process, read + decode to RGB in order, page cache warm, best of "
              f"{REPEATS}.", "",
              "| source | listing / index (s) | read + decode (s) | images/s | vs folder |", "|---|---|---|---|---|"]
        for k, b in best.items():
            md.append(f"| {k}: | {b['index_s']:.3f} | {b['load_s']:.2f} | {b['img_per_s']:.0f} | "
                      f"{b['img_per_s'] / f:.2f}x |")
        md += ["", "Target: wds: at least at parity with folder: (read + decode). The index is one pass over the tar "
               "headers (seeks past the image bytes; reads only the cls/txt members)."]
        save("sources", res, "\n".join(md))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
