"""The study's grid as cells, each with a deterministic id, a folder and a marker written when it finishes.

Two kinds of cell:

  zeroshot  (model, task, base seed): embed the task's train and test splits with the base model, measure the
            train store (every measure, every transfer score) and the test store's zero-shot top-1. The base
            seed is the study seed when the model has random weights (pretrained = "none": the seed draws them),
            else 0 (pretrained weights do not depend on it), so pretrained models are embedded once.
  tuned     (model, task, method, seed): fine-tune, re-embed the task's test split and every other task's with
            the tuned model, compare with the zero-shot stores.

A cell's id is the first 16 hex digits of sha256 over its configuration as canonical JSON (sorted keys): the
same configuration is the same id in any study. ``cells/<kind>-<id>/done.json`` is written atomically
(``embedx.store.atomic``) when the cell has finished and holds its configuration and result; a rerun skips a
cell whose marker holds the same configuration and redoes (from scratch) a cell folder without one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from embedx.store.atomic import atomic_write_bytes
from embedx.studies.spec import Spec

MARKER = "done.json"


@dataclass(frozen=True)
class Cell:
    kind: str          # "zeroshot" | "tuned"
    id: str
    config: dict       # everything that determines the cell's result (canonical JSON of it gives the id)
    labels: dict       # model / task / method / seed labels for rows and progress

    @property
    def folder(self) -> str:
        return f"{self.kind}-{self.id}"

    def describe(self) -> str:
        return "/".join(str(self.labels[k]) for k in ("model", "task", "method", "seed") if k in self.labels)


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cell_id(config: dict) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def _make(kind: str, config: dict, labels: dict) -> Cell:
    config = json.loads(canonical({"kind": kind, **config}))  # tuples -> lists: what the marker stores
    return Cell(kind, cell_id(config), config, labels)


def base_seed(model, seed: int) -> int:
    return seed if model.pretrained == "none" else 0


def _task_cfg(t) -> dict:
    cfg = {"name": t.name, "train": t.train, "test": t.test, "templates": t.templates}
    if t.classnames is not None:  # only when given: the ids of studies without it stay as they were
        cfg["classnames"] = t.classnames
    return cfg


def _subset(spec: Spec) -> dict:
    """The subset keys of a cell's configuration (``per_class`` only when given, as for ``_task_cfg``)."""
    return {"limit": spec.limit, **({"per_class": spec.per_class} if spec.per_class is not None else {})}


def zeroshot_cell(spec: Spec, model, task, seed: int) -> Cell:
    cfg = {"model": model.name, "pretrained": model.pretrained, "seed": base_seed(model, seed),
           "task": _task_cfg(task), **_subset(spec), "batch_size": spec.batch_size}
    return _make("zeroshot", cfg, {"model": model.label, "task": task.name, "seed": cfg["seed"]})


def others_of(spec: Spec, task) -> list:
    return [t for t in spec.tasks if t.name in spec.others and t.name != task.name]


def tuned_cell(spec: Spec, model, task, method, seed: int) -> Cell:
    m = {"name": method.name, "epochs": method.epochs, "lr": method.lr, "optimizer": method.optimizer,
         "batch_size": method.batch_size, "weight_decay": method.weight_decay, "towers": method.towers,
         "options": dict(method.options)}
    cfg = {"model": model.name, "pretrained": model.pretrained, "seed": seed, "task": _task_cfg(task),
           "method": m, "others": [_task_cfg(o) for o in others_of(spec, task)], **_subset(spec),
           "batch_size": spec.batch_size,
           "zeroshot": {t.name: zeroshot_cell(spec, model, t, seed).id for t in [task, *others_of(spec, task)]}}
    return _make("tuned", cfg, {"model": model.label, "task": task.name, "method": method.label, "seed": seed})


def grid(spec: Spec) -> tuple[list[Cell], list[Cell]]:
    """(zero-shot cells, tuned cells) in a fixed order: models, tasks, methods, seeds as the file lists them;
    zero-shot cells shared by several seeds (pretrained models) appear once."""
    zs, seen, tuned = [], set(), []
    for model in spec.models:
        for task in spec.tasks:
            for seed in spec.seeds:
                c = zeroshot_cell(spec, model, task, seed)
                if c.id not in seen:
                    seen.add(c.id)
                    zs.append(c)
    for model in spec.models:
        for task in spec.tasks:
            for method in spec.methods:
                for seed in spec.seeds:
                    tuned.append(tuned_cell(spec, model, task, method, seed))
    return zs, tuned


def finished(cells_dir: str, cell: Cell) -> dict | None:
    """The marker of ``cell`` when it finished with this configuration, else None."""
    path = os.path.join(cells_dir, cell.folder, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if done.get("config") == cell.config else None


def start(cells_dir: str, cell: Cell) -> str:
    """A clean folder for ``cell`` (what an interrupted attempt left there is removed) -> its path."""
    folder = os.path.join(cells_dir, cell.folder)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def mark(cells_dir: str, cell: Cell, result: dict, seconds: float) -> dict:
    """Write ``cell``'s marker atomically (the cell counts as finished from here on) -> the marker."""
    done = {"id": cell.id, "kind": cell.kind, "config": cell.config, "labels": cell.labels, "result": result,
            "seconds": seconds}
    atomic_write_bytes(os.path.join(cells_dir, cell.folder, MARKER),
                       json.dumps(done, sort_keys=True, indent=1, allow_nan=False).encode())
    return done
