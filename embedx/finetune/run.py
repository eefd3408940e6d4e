"""Run directories: what a fine-tuning run saves, written atomically, and how a finished run is loaded.

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

from embedx.atomic import atomic_write
from embedx.encoders import Encoder, file_sha256
from embedx.errors import EmbedxError

CONFIG = "config.json"
PARAMS = "params.safetensors"
FORMAT = 1  # config.json["embedx_run"]
_OURS = ("best-", "state-", PARAMS)


def write_config(run: str, cfg: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
    atomic_write(os.path.join(run, CONFIG), write)


def read_config(run: str) -> dict | None:
    """The run's config, or None when ``run`` holds none; EmbedxError when it is not an embedx run."""
    path = os.path.join(run, CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise EmbedxError(f"{path} is unreadable ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("embedx_run") != FORMAT:
        raise EmbedxError(f"{run} is not an embedx finetune run (format {FORMAT})")
    return cfg


def save_params(path: str, state: dict[str, torch.Tensor], method: str) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors writes several in random (hash map) order, and the file's sha256 is recorded
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"embedx-finetune": method}))


def load_params(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


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
        raise EmbedxError(f"{run} exists, is not empty and is not an embedx run; choose another --out")
    return cfg


def start(run: str, replace: bool) -> None:
    """Make the run folder; ``replace`` removes the run there first."""
    if replace:
        shutil.rmtree(run)
    os.makedirs(run, exist_ok=True)


def read_run(run: str) -> dict:
    """A finished run's config, with ``params_path``; checks the params file against its recorded sha256."""
    if not os.path.isdir(run):
        raise EmbedxError(f"no finetune run at {run}")
    cfg = read_config(run)
    if cfg is None:
        raise EmbedxError(f"no finetune run at {run} (no {CONFIG})")
    if not cfg.get("complete"):
        raise EmbedxError(f"{run} is unfinished ({len(cfg.get('history', []))} of {cfg.get('epochs')} epochs); "
                          f"rerun the same `embedx finetune` command to finish it")
    path = os.path.join(run, cfg["params"])
    if not os.path.isfile(path):
        raise EmbedxError(f"{run} has no {cfg['params']}")
    if file_sha256(path) != cfg["params_sha256"]:
        raise EmbedxError(f"{path} does not match the sha256 recorded in {CONFIG}; the run was modified")
    return {**cfg, "path": os.path.abspath(run), "params_path": path}


def load_tuned(run: str | dict, device: str = "auto") -> Encoder:
    """An :class:`Encoder` holding the tuned model of a finished run: the base model of its config, the
    method applied, its trained parameters loaded (adapters act on the features), in eval mode."""
    from embedx.finetune.train import build

    cfg = read_run(run) if isinstance(run, str) else run
    enc = build(cfg["model"], cfg["pretrained"], cfg["method"], cfg["options"], cfg["seed"], device)
    if cfg.get("pretrained_sha256") and enc.checkpoint_sha256 != cfg["pretrained_sha256"]:
        raise EmbedxError(f"the base checkpoint {cfg['pretrained']} changed since the run was trained")
    enc.model.load_trainable(load_params(cfg["params_path"]))
    enc.model.eval()
    return enc
