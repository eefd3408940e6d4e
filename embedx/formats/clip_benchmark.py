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

``model`` and ``pretrained`` are always strings, as CLIP_benchmark's ``build`` needs them (it joins them into
``model_fullname``): the store's recorded model and weights (a fine-tuned store: its checkpoint's path); a store
embedded by embedx without weights: ``"none"`` (open_clip's random initialisation, its seed in ``embedx``); a value
nobody recorded (``embedx import`` without ``--model``/``--pretrained``): the placeholder ``"unknown"``, listed by
:func:`placeholders` so the CLI can say so.
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
    model, pretrained = names(meta)
    out = {"dataset": meta.get("dataset") or os.path.basename(str(store.path).rstrip("/")),
           "model": model, "pretrained": pretrained, "task": task(paired), "metrics": metrics,
           "language": language}
    if header is not None:
        out["embedx"] = header
    return out


UNKNOWN = "unknown"


def names(meta: dict) -> tuple[str, str]:
    """(model, pretrained) as strings for the layout (see the module docstring for the placeholders)."""
    model = meta.get("model") or UNKNOWN
    pretrained = meta.get("pretrained")
    ck = meta.get("checkpoint")
    if isinstance(ck, dict) and ck.get("path"):
        pretrained = ck["path"]
    if not pretrained:
        pretrained = "none" if meta.get("written_by") != "import" and meta.get("model") else UNKNOWN
    return str(model), str(pretrained)


def placeholders(meta: dict) -> list[str]:
    """The fields written as ``"unknown"`` because the store does not record them (``model``, ``pretrained``)."""
    return [k for k, v in zip(("model", "pretrained"), names(meta)) if v == UNKNOWN and not meta.get(k)]
