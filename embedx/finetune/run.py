"""Run directories: what a fine-tuning run saves, written atomically (reading a finished run: ``embedx.models``).

::

    RUN/
      config.json           model, pretrained, seed, method + options, data, templates, recipe, parameter
                            counts, metrics per epoch, best epoch, params file + sha256, complete
      params.safetensors    trainable parameters of the best epoch (a finished run holds only these two)
      best-NNN.safetensors  best epoch so far (while training)
      state-NNN.pt          resume state after epoch NNN: trainable parameters + optimizer (while training)

Every file is written to a temporary name, fsynced and renamed into place. ``config.json`` is the commit
marker: it is replaced last and names the files that hold the run; files it does not name are debris of a
killed write and are removed by the next start.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from embedx.store.atomic import atomic_write
from embedx.errors import EmbedxError
from embedx.models.factory import CONFIG, FORMAT, PARAMS, read_config  # noqa: F401  (FORMAT: the format this writes)

_OURS = ("best-", "state-", PARAMS)


def write_config(run: str, cfg: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
    atomic_write(os.path.join(run, CONFIG), write)


def save_params(path: str, state: dict[str, torch.Tensor], method: str) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors writes several in random (hash map) order, and the file's sha256 is recorded
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"embedx-finetune": method}))


def save_state(path: str, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_file(src: str, dst: str) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def clean(run: str, cfg: dict) -> None:
    """Remove run files that ``cfg`` does not name (superseded epochs, temporaries of killed writes)."""
    keep = {CONFIG, cfg.get("params"), cfg.get("state")}
    for name in os.listdir(run):
        if name not in keep and (name.startswith(_OURS) or ".tmp-" in name):
            os.remove(os.path.join(run, name))


def existing(run: str) -> dict | None:
    """The config of the run at ``run``; None when nothing (or an empty folder) is there. A folder holding
    something else is refused, so ``--overwrite`` never removes what is not a run."""
    if os.path.exists(run) and not os.path.isdir(run):
        raise EmbedxError(f"{run} exists and is not a folder")
    cfg = read_config(run) if os.path.isdir(run) else None
    if cfg is None and os.path.isdir(run) and any(".tmp-" not in n for n in os.listdir(run)):
        raise EmbedxError(f"{run} exists, is not empty and is not an embedx run; choose another out", param="out")
    return cfg


def start(run: str, replace: bool) -> None:
    """Make the run folder; ``replace`` removes the run there first."""
    if replace:
        shutil.rmtree(run)
    os.makedirs(run, exist_ok=True)
