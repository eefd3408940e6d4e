"""The headline of a drift comparison: what fine-tuning did to the task and elsewhere, and which run did it.

  task_gain        zero-shot top-1 of AFTER - BEFORE on the task store (null when undefined: a paired store
                   gives i2t R@1 instead, a class store without labelled images has no accuracy)
  per_class        the best and worst class change, and how many classes gained / lost / stayed
  forgetting       the mean zero-shot top-1 change on the ``--others`` tasks (negative = forgotten)
  run              the finetune run AFTER was embedded with: the store's ``checkpoint`` record (path, method,
                   options, sha256) completed from the run's config.json when it is still there (model,
                   pretrained, trainable / total parameters, training data, epochs, lr, optimizer, ...)
"""
from __future__ import annotations

import math
import os

import numpy as np

from embedx.store import Store

RUN_FIELDS = ("model", "pretrained", "seed", "data", "limit", "epochs", "lr", "weight_decay", "optimizer",
              "batch_size", "val_fraction", "trainable_params", "total_params", "n_train", "n_val", "best_epoch",
              "best_val_acc", "zeroshot_val_acc")


def run_info(store: Store) -> dict | None:
    """The finetune run ``store`` was embedded with (None for a base model): the checkpoint record the store
    keeps, plus the run's config.json fields when the run folder is still there (``config_found``). A config.json
    that is there but tampered (not a run's, a key of the wrong type or range) is a one-line EmbedxError naming
    the key (:func:`embedx.models.factory.read_config`), never a value in the report."""
    ck = store.meta.get("checkpoint")
    if not isinstance(ck, dict):
        return None
    out = {k: ck.get(k) for k in ("path", "method", "options", "towers", "family", "rule", "sha256")}
    out.update({k: None for k in RUN_FIELDS})
    out["model"], out["pretrained"] = store.meta.get("model"), store.meta.get("pretrained")
    cfg = None
    path = ck.get("path")
    if path and os.path.isdir(str(path)):
        from embedx.models.factory import read_config

        cfg = read_config(str(path))
    out["config_found"] = cfg is not None
    if cfg is not None:
        out.update({k: cfg.get(k) for k in RUN_FIELDS if k in cfg})
        out["config_matches"] = cfg.get("params_sha256") == ck.get("sha256")  # the run was not retrained since
    return out


def task_accuracy(class_hits, mb: dict, ma: dict) -> tuple:
    """(before, after) accuracy on the task: class stores from the drift pass's per-class hits (exactly the
    measures' zero-shot top-1, whatever ``--metrics`` holds; None without a labelled image), paired stores the
    measured i2t R@1 (None when not measured)."""
    if class_hits is not None:
        hb, ha, counts = class_hits
        n = int(np.sum(counts))
        return (float(np.sum(hb) / n), float(np.sum(ha) / n)) if n else (None, None)
    acc = [m.get("zeroshot_top1") for m in (mb, ma)]
    return tuple(v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in acc)


def headline(a: Store, b: Store, acc: tuple, per_class: dict | None, forgetting: dict | None) -> dict:
    """The headline dict (module docstring) from the task accuracy before/after (:func:`task_accuracy`), the
    per-class rows and the forgetting of a comparison."""
    zb, za = acc
    out = {"task": a.meta.get("dataset") or os.path.basename(str(a.path).rstrip("/")),
           "task_split": a.meta.get("split"), "n_images": int(a.n_images),
           "accuracy": "image-to-caption R@1" if a.paired else "zero-shot top-1",
           "zeroshot_top1_before": zb, "zeroshot_top1_after": za,
           "task_gain": None if zb is None or za is None else float(za - zb),
           "per_class": None, "forgetting": None, "n_other_tasks": 0,
           "run": run_info(b), "before_run": run_info(a)}
    if per_class:
        rows = [(v["delta"], k) for k, v in per_class.items() if v["delta"] is not None]
        if rows:
            lo, hi = min(rows), max(rows)
            out["per_class"] = {"worst": {"class": lo[1], "delta": lo[0]}, "best": {"class": hi[1], "delta": hi[0]},
                                "gained": sum(d > 0 for d, _ in rows), "lost": sum(d < 0 for d, _ in rows),
                                "unchanged": sum(d == 0 for d, _ in rows), "classes": len(rows)}
    if forgetting:
        out["forgetting"] = forgetting["mean_delta"]
        out["n_other_tasks"] = len(forgetting["tasks"])
    return out
