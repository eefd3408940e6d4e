"""The model factory: the one place that turns (model name, pretrained weights, finetune checkpoint, seed,
device) into an :class:`embedx.encoders.Encoder`.

* ``model`` + ``pretrained`` (an open_clip tag, a local weights file, ``none``; or an ``hf-hub:`` model id) +
  ``seed`` (random weights and adapters are seeded): the open_clip model (:func:`embedx.encoders.load_encoder`).
* ``method`` + options on top: the base model wrapped in :class:`TunedCLIP` with the fine-tuning method
  applied (:func:`create_tuned`, what ``embedx finetune`` trains).
* ``checkpoint``: a finished ``embedx finetune`` run folder (``config.json`` names the base model, method,
  options and seed; the params file, checked against its recorded sha256, holds the trained parameters).

:func:`resolve_model` checks the names and reads the run without loading weights (``embed`` records them
and refuses a mismatching resume first); :meth:`ModelSpec.load` then builds the encoder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import torch

from embedx import tuning
from embedx.encoders import NO_WEIGHTS, Encoder, file_sha256, load_encoder
from embedx.errors import EmbedxError
from embedx.tunedclip import TunedCLIP

CONFIG = "config.json"  # a run folder's commit marker (embedx.finetune.run writes it)
PARAMS = "params.safetensors"
FORMAT = 1  # config.json["embedx_run"]


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


def read_run(run: str) -> dict:
    """A finished run's config, with ``params_path``; checks the params file against its recorded sha256."""
    if not os.path.isdir(run):
        raise EmbedxError(f"no finetune run at {run}")
    cfg = read_config(run)
    if cfg is None:
        raise EmbedxError(f"no finetune run at {run} (no {CONFIG})")
    if cfg.get("diverged"):
        d = cfg["diverged"]
        raise EmbedxError(f"{run} is a fine-tuning run that diverged at epoch {d.get('epoch')} ({d.get('what')}); "
                          f"retrain it with a lower --lr and --overwrite")
    if not cfg.get("complete"):
        raise EmbedxError(f"{run} is unfinished ({len(cfg.get('history', []))} of {cfg.get('epochs')} epochs); "
                          f"rerun the same `embedx finetune` command to finish it")
    path = os.path.join(run, cfg["params"])
    if not os.path.isfile(path):
        raise EmbedxError(f"{run} has no {cfg['params']}")
    if file_sha256(path) != cfg["params_sha256"]:
        raise EmbedxError(f"{path} does not match the sha256 recorded in {CONFIG}; the run was modified")
    return {**cfg, "path": os.path.abspath(run), "params_path": path}


def load_params(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def create_tuned(model: str, pretrained: str, method: str, opts: dict, seed: int = 0,
                 device: str = "auto") -> Encoder:
    """The base open_clip model (seeded) wrapped in :class:`TunedCLIP` with ``method`` applied. Random base
    weights (``pretrained`` none) bring no warning that the model is untrained: fine-tuning trains them."""
    enc = load_encoder(model, pretrained, seed=seed, device=device, warn_random=False)
    net = TunedCLIP(enc.model)
    torch.manual_seed(seed)  # LoRA / adapter initialization
    tuning.apply(net, method, opts)
    return replace(enc, model=net)


def load_tuned(run: str | dict, device: str = "auto") -> Encoder:
    """An :class:`Encoder` holding the tuned model of a finished run: the base model of its config, the
    method applied, its trained parameters loaded (adapters act on the features), in eval mode."""
    cfg = read_run(run) if isinstance(run, str) else run
    enc = create_tuned(cfg["model"], cfg["pretrained"], cfg["method"], cfg["options"], cfg["seed"], device)
    if cfg.get("pretrained_sha256") and enc.checkpoint_sha256 != cfg["pretrained_sha256"]:
        raise EmbedxError(f"the base checkpoint {cfg['pretrained']} changed since the run was trained")
    enc.model.load_trainable(load_params(cfg["params_path"]))
    enc.model.eval()
    return enc


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`resolve_model` settled: the names a store records, and the finetune run when tuned."""

    model: str
    pretrained: str  # "none" for random weights, "hf-hub" for hub ids, else a tag or a weights file
    seed: int
    pretrained_sha256: str | None = None  # of a local weights file
    run: dict | None = None  # the finished finetune run's config (read_run), or None

    @property
    def checkpoint(self) -> dict | None:
        """The store's record of the finetune run: path, method, options, sha256 of its params file."""
        if self.run is None:
            return None
        return {"path": self.run["path"], "method": self.run["method"], "options": self.run["options"],
                "sha256": self.run["params_sha256"]}

    def load(self, device: str = "auto") -> Encoder:
        """The encoder: the tuned model of the run, or the open_clip model with its weights."""
        if self.run is not None:
            return load_tuned(self.run, device=device)
        return load_encoder(self.model, self.pretrained, seed=self.seed, device=device)


def _checkpoint_run(checkpoint: str, model: str | None, pretrained: str | None) -> dict:
    """The config of a finished finetune run; ``model``/``pretrained`` must agree with it."""
    run = read_run(checkpoint)
    if pretrained and pretrained.strip().lower() in NO_WEIGHTS:
        pretrained = "none"
    for key, asked in (("model", model), ("pretrained", pretrained)):
        if asked and asked != run[key]:
            raise EmbedxError(f"--{key} {asked} disagrees with the checkpoint, which tunes {key} {run[key]!r} "
                              f"(leave --{key} out with --checkpoint)")
    return run


def resolve_model(model: str | None, pretrained: str | None = "none", *, checkpoint: str | None = None,
                  seed: int = 0) -> ModelSpec:
    """Check the names and read the checkpoint run (its model, pretrained and seed win); loads no weights."""
    run = None
    if checkpoint:
        run = _checkpoint_run(checkpoint, model, pretrained)
        model, pretrained, seed = run["model"], run["pretrained"], run["seed"]
    elif not model:
        raise EmbedxError("--model is required (or --checkpoint RUN)")
    pretrained = (pretrained or "none").strip()
    sha = None
    if model.startswith("hf-hub:"):
        pretrained = "hf-hub"  # the weights come with the hub id
    elif os.path.isfile(pretrained):
        sha = file_sha256(pretrained)
    elif pretrained.lower() in NO_WEIGHTS:
        pretrained = "none"
    return ModelSpec(model, pretrained, seed, sha, run)


def create_encoder(model: str | None, pretrained: str | None = "none", *, checkpoint: str | None = None,
                   seed: int = 0, device: str = "auto") -> Encoder:
    """The encoder for ``model`` with ``pretrained`` weights, or for the finetune run ``checkpoint``."""
    return resolve_model(model, pretrained, checkpoint=checkpoint, seed=seed).load(device)
