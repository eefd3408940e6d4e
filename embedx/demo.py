"""``embedx demo``: works offline on a fresh machine.

Imports the shipped real CLIP ViT-B/16 COCO image-caption embeddings and their random-init control
(Liang et al. 2022, MIT; see ``embedx/data/modality_gap/README.md``) into stores and reports on them.
"""
from __future__ import annotations

import os

import numpy as np

from embedx.data import MODALITY_GAP_DIR
from embedx.importer import import_arrays
from embedx.store import Store

DEMO_SETS = (
    ("clip", "features_clip.npy", "CLIP ViT-B/16 (OpenAI)"),
    ("random", "features_clip_random.npy", "ViT-B/16 CLIP, random init (control)"),
)
DATASET = "MS-COCO val2017 image/caption pairs (Liang et al. 2022, MIT)"


def pair_summary(store: Store) -> dict:
    """Streamed over row blocks: mean cosine of the paired rows (x_i . t_i after L2 normalization) and the
    centroid gap ||mean_i x_i - mean_i t_i|| of the normalized rows."""
    sx = np.zeros(store.dim)
    st = np.zeros(store.dim)
    cos = 0.0
    texts = store.group["texts/embeddings"]
    for start, x in store.iter_images(dtype=np.float64):
        t = texts[start:start + len(x)].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        sx += x.sum(0)
        st += t.sum(0)
        cos += float((x * t).sum())
    n = store.n_images
    return {"paired_cosine_mean": cos / n, "centroid_gap": float(np.linalg.norm(sx / n - st / n))}


def run_demo(out_dir: str = "embedx-demo") -> list[dict]:
    """Import the shipped embeddings into ``out_dir`` and return one report row per store."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for key, fname, model in DEMO_SETS:
        path = os.path.join(out_dir, f"coco-{key}.zarr")
        import_arrays(path, paired_array=os.path.join(MODALITY_GAP_DIR, fname), overwrite=True,
                      model=model, dataset=DATASET)
        store = Store(path)
        rows.append({"name": key, "model": model, **store.info(), **pair_summary(store)})
    return rows
