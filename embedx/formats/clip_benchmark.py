"""Measures in the result layout of LAION-AI/CLIP_benchmark (``clip_benchmark eval ... --output result.json``).

CLIP_benchmark writes one JSON object per (dataset, model, task)::

  {"dataset": ..., "model": ..., "pretrained": ..., "task": "zeroshot_classification" | "zeroshot_retrieval",
   "metrics": {...}, "language": "en"}

with, for zeroshot_classification, ``acc1``, ``acc5`` (None below 5 classes) and ``mean_per_class_recall``
(sklearn's balanced accuracy: the mean top-1 recall over the classes present), and for zeroshot_retrieval
``image_retrieval_recall@k`` (text queries ranking the images: our t2i) and ``text_retrieval_recall@k`` (image
queries ranking the texts: our i2t). Our values are the same definitions (``embedx.measures``); undefined -> None.
Where the numbers came from goes under the extra key ``embedx`` (``embedx.provenance``), so the layout's own
keys stay as CLIP_benchmark's readers expect them.
"""
from __future__ import annotations

import math
import os

from embedx.measures.scores import KS

CLASSIFICATION = {"acc1": "zeroshot_top1", "acc5": "zeroshot_top5",
                  "mean_per_class_recall": "zeroshot_mean_per_class_recall"}
RETRIEVAL = {**{f"image_retrieval_recall@{k}": f"t2i_recall@{k}" for k in KS},
             **{f"text_retrieval_recall@{k}": f"i2t_recall@{k}" for k in KS}}


def task(paired: bool) -> str:
    return "zeroshot_retrieval" if paired else "zeroshot_classification"


def measures_needed(paired: bool) -> list[str]:
    """The embedx measures the layout of a paired (retrieval) or class (classification) store is built from."""
    return list((RETRIEVAL if paired else CLASSIFICATION).values())


def _value(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


def result(values: dict, store, header: dict | None = None, language: str = "en") -> dict:
    """CLIP_benchmark's result object for the measures ``values`` of ``store`` (an ``embedx.store.Store``);
    ``header``: the ``embedx.provenance`` header, kept under ``embedx``."""
    meta = store.meta
    paired = bool(store.paired)
    mapping = RETRIEVAL if paired else CLASSIFICATION
    metrics = {theirs: _value(values.get(ours)) for theirs, ours in mapping.items()}
    if not paired and store.n_texts < 5:
        metrics["acc5"] = None  # as CLIP_benchmark: no top-5 below 5 classes
    ck = meta.get("checkpoint")
    pretrained = meta.get("pretrained")
    if isinstance(ck, dict) and ck.get("path"):
        pretrained = ck["path"]
    out = {"dataset": meta.get("dataset") or os.path.basename(str(store.path).rstrip("/")),
           "model": meta.get("model"), "pretrained": pretrained, "task": task(paired), "metrics": metrics,
           "language": language}
    if header is not None:
        out["embedx"] = header
    return out
