"""``embedx demo``: works offline on a fresh machine.

Imports the shipped real CLIP ViT-B/16 COCO image-caption embeddings and their random-init control
(Liang et al. 2022, MIT; see ``embedx/data/modality_gap/README.md``) into stores and computes every
measure of both, side by side.
"""
from __future__ import annotations

import os

from embedx.data import MODALITY_GAP_DIR
from embedx.formats.arrays import import_arrays
from embedx.measures import compute
from embedx.store import Store

DEMO_SETS = (
    ("clip", "features_clip.npy", "CLIP ViT-B/16 (OpenAI)"),
    ("random", "features_clip_random.npy", "ViT-B/16 CLIP, random init (control)"),
)
DATASET = "MS-COCO val2017 image/caption pairs (Liang et al. 2022, MIT)"


def run_demo(out_dir: str = "embedx-demo") -> list[dict]:
    """Import the shipped embeddings into ``out_dir`` and return one report row per store."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for key, fname, model in DEMO_SETS:
        path = os.path.join(out_dir, f"coco-{key}.zarr")
        import_arrays(path, paired_array=os.path.join(MODALITY_GAP_DIR, fname), overwrite=True,
                      model=model, dataset=DATASET)
        store = Store(path)
        measures = compute(store).to_dict(provenance=False)  # the measures, n_images, timings_s, ...
        rows.append({"name": key, "model": model, "info": store.info(), "measures": measures})
    return rows
