"""The model factory: the one place that turns (model name, pretrained weights, finetune checkpoint, seed,
device) into an :class:`embedx.models.encoder.Encoder`.

* ``model`` + ``pretrained`` (an open_clip tag, a local weights file, ``none``; or an ``hf-hub:`` model id) +
  ``seed`` (random weights and adapters are seeded): the open_clip model (:func:`embedx.models.encoder.load_encoder`).
* ``method`` + options on top: the base model wrapped in :class:`TunedCLIP` with the fine-tuning method
  applied (:func:`create_tuned`, what ``embedx finetune`` trains).
* ``checkpoint``: a finished ``embedx finetune`` run folder (``config.json`` names the base model, method,
  options and seed; the params file, checked against its recorded sha256, holds the trained parameters).

:func:`resolve_model` checks the names and reads the run without loading weights (``embed`` records them
and refuses a mismatching resume first); :meth:`ModelSpec.load` then builds the encoder.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace

import torch

from embedx.models import methods as tuning
from embedx.models.encoder import NO_WEIGHTS, Encoder, file_sha256, load_encoder
from embedx.errors import EmbedxError, one_line
from embedx.models.tuned import TunedCLIP

CONFIG = "config.json"  # a run folder's commit marker (embedx.finetune.run writes it)
PARAMS = "params.safetensors"
FORMAT = 1  # config.json["embedx_run"]


CONFIG_MAX_BYTES = 16 << 20  # a run's config.json is a few KiB (class names, templates, one row per epoch)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _file_name(v) -> bool:
    """A plain file name inside the run folder: no folder part, no '..', not absolute."""
    return (isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v and "\0" not in v
            and not os.path.isabs(v))


def _options(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and (v[k] is None or _is_int(v[k]) and v[k] >= 1)
                                       for k in v)


def _history(v) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, dict) and _is_int(e.get("epoch")) and e["epoch"] >= 1
        and all(e[k] is None or _is_num(e[k]) for k in e if k not in ("epoch", "step_loss"))
        and (isinstance(e.get("step_loss", []), list) and all(_is_num(x) for x in e.get("step_loss", [])))
        for e in v)


def _nullable(check):
    return lambda v: v is None or check(v)


# every key a run's config.json may hold -> (its check, what the check demands); a key is checked when present
CONFIG_SCHEMA = {
    "model": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "pretrained": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "pretrained_sha256": (_nullable(lambda v: isinstance(v, str)), "a string or null"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "method": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "options": (_options, "an object of positive integers (or null)"),
    "towers": (lambda v: v in tuning.TOWER_CHOICES, "one of " + ", ".join(tuning.TOWER_CHOICES)),
    "selection": (lambda v: isinstance(v, dict), "an object"),
    "data": (lambda v: isinstance(v, str), "a string"),
    "dataset_sha256": (_nullable(lambda v: isinstance(v, str)), "a string or null"),
    "limit": (_nullable(lambda v: _is_int(v) and v >= 1), "an integer >= 1 or null"),
    "classnames": (_str_list, "a list of strings"),
    "templates": (_str_list, "a list of strings"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _is_num(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    "optimizer": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "val_fraction": (lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "trainable_params": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "total_params": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "n_train": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "n_val": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "zeroshot_val_loss": (_nullable(_is_num), "a finite number or null"),
    "zeroshot_val_acc": (_nullable(lambda v: _is_num(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
    "history": (_history, "a list of epoch records (epoch: an integer >= 1, step_loss: a list of finite "
                "numbers, the rest finite numbers or null)"),
    "best_epoch": (_nullable(lambda v: _is_int(v) and v >= 1), "an integer >= 1 or null"),
    "best_val_acc": (_nullable(lambda v: _is_num(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
    "params": (_nullable(_file_name), "a file name inside the run folder (no folder part, no '..') or null"),
    "params_sha256": (_nullable(lambda v: isinstance(v, str)), "a string or null"),
    "state": (_nullable(_file_name), "a file name inside the run folder (no folder part, no '..') or null"),
    "complete": (lambda v: isinstance(v, bool), "true or false"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "finished": (lambda v: isinstance(v, str), "a string"),
    "embedx_version": (lambda v: isinstance(v, str), "a string"),
}


def check_config(cfg: dict, path: str) -> dict:
    """``cfg`` when every key of :data:`CONFIG_SCHEMA` it holds has the type and range the schema demands; else
    a one-line EmbedxError naming the first key at fault (a tampered config.json never reaches a report)."""
    for key, (ok, what) in CONFIG_SCHEMA.items():
        if key in cfg and not ok(cfg[key]):
            got = repr(cfg[key])
            got = got if len(got) <= 60 else got[:57] + "..."
            raise EmbedxError(f"{path}: {key} must be {what}, got {got}; the run folder was modified")
    return cfg


def read_config(run: str) -> dict | None:
    """The run's config, or None when ``run`` holds none; EmbedxError when it is not an embedx run or a key has
    the wrong type or range (:func:`check_config`)."""
    path = os.path.join(run, CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        if os.path.getsize(path) > CONFIG_MAX_BYTES:
            raise EmbedxError(f"{path} is {os.path.getsize(path):,} bytes, over the {CONFIG_MAX_BYTES:,} a run's "
                              "config holds; it is not an embedx run config")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except EmbedxError:  # a ValueError too: a storage fault or a cap, already one line
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise EmbedxError(f"{path} is unreadable ({one_line(e, 200)})") from None
    if not isinstance(cfg, dict):
        raise EmbedxError(f"{path} is not a JSON object; {run} is not an embedx finetune run")
    if cfg.get("embedx_run") != FORMAT:
        raise EmbedxError(f"{run} is not an embedx finetune run (format {FORMAT})")
    return check_config(cfg, path)


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
                          f"retrain it with a lower lr and overwrite=True")
    if not cfg.get("complete"):
        raise EmbedxError(f"{run} is unfinished ({len(cfg.get('history', []))} of {cfg.get('epochs')} epochs); "
                          f"rerun the same `embedx finetune` command to finish it")
    for key in ("params", "params_sha256"):
        if not cfg.get(key):
            raise EmbedxError(f"{os.path.join(run, CONFIG)}: a finished run names its {key}; the run folder was "
                              "modified")
    path = os.path.join(run, cfg["params"])
    if not os.path.isfile(path):
        raise EmbedxError(f"{run} has no {cfg['params']}")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(run):  # a link out of the run folder
        raise EmbedxError(f"{path} points outside the run folder {run}; the run folder was modified")
    if file_sha256(path) != cfg["params_sha256"]:
        raise EmbedxError(f"{path} does not match the sha256 recorded in {CONFIG}; the run was modified")
    return {**cfg, "path": os.path.abspath(run), "params_path": path}


def load_params(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a run's params file; a one-line EmbedxError when it is no readable safetensors file."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError (and ValueError) on a garbled file
        raise EmbedxError(f"{path} is not a readable safetensors file ({one_line(e, 160)}); "
                          "the run folder was modified") from None


def check_options_against_params(cfg: dict) -> None:
    """Before a model is built from a run's options: the LoRA rank the config claims must be the rank of the
    LoRA matrices in its params file (read from the file's header only), so a tampered ``options.rank`` cannot
    make the model allocate more than the file holds."""
    rank = (cfg.get("options") or {}).get("rank")
    if rank is None:
        return
    from safetensors import safe_open

    path = cfg["params_path"]
    try:
        with safe_open(path, "pt") as f:
            ranks = sorted({f.get_slice(k).get_shape()[0] for k in f.keys() if ".lora_A." in k})
    except OSError:
        raise
    except Exception as e:  # a garbled header
        raise EmbedxError(f"{path} is not a readable safetensors file ({one_line(e, 160)}); "
                          "the run folder was modified") from None
    if ranks != [rank]:
        raise EmbedxError(f"{os.path.join(cfg['path'], CONFIG)}: options.rank = {rank} disagrees with the LoRA "
                          f"matrices in {path} (rank {', '.join(map(str, ranks)) or 'none'}); the run folder was "
                          "modified")


def create_tuned(model: str, pretrained: str, method: str, opts: dict, seed: int = 0,
                 device: str = "auto", towers: str = "both") -> Encoder:
    """The base open_clip model (seeded) wrapped in :class:`TunedCLIP` with ``method`` applied to ``towers``
    (``model.selection`` says what it trains). Random base weights (``pretrained`` none) bring no warning that the
    model is untrained: fine-tuning trains them."""
    tuning.check_towers(towers)
    enc = load_encoder(model, pretrained, seed=seed, device=device, warn_random=False)
    net = TunedCLIP(enc.model)
    torch.manual_seed(seed)  # LoRA / adapter initialization
    tuning.apply(net, method, opts, towers)
    return replace(enc, model=net)


def load_tuned(run: str | dict, device: str = "auto") -> Encoder:
    """An :class:`Encoder` holding the tuned model of a finished run: the base model of its config, the
    method applied, its trained parameters loaded (adapters act on the features), in eval mode."""
    cfg = read_run(run) if isinstance(run, str) else run
    check_options_against_params(cfg)
    enc = create_tuned(cfg["model"], cfg["pretrained"], cfg["method"], cfg["options"], cfg["seed"], device,
                       cfg.get("towers", "both"))
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
        sel = self.run.get("selection") or {}
        return {"path": self.run["path"], "method": self.run["method"], "options": self.run["options"],
                "towers": self.run.get("towers", "both"), "family": sel.get("family"), "rule": sel.get("rule"),
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
            raise EmbedxError(f"{key}={asked!r} disagrees with the checkpoint, which tunes {run[key]!r}: leave it "
                              f"out with a checkpoint", param=key)
    return run


def resolve_model(model: str | None, pretrained: str | None = "none", *, checkpoint: str | None = None,
                  seed: int = 0) -> ModelSpec:
    """Check the names and read the checkpoint run (its model, pretrained and seed win); loads no weights."""
    run = None
    if checkpoint:
        run = _checkpoint_run(checkpoint, model, pretrained)
        model, pretrained, seed = run["model"], run["pretrained"], run["seed"]
    elif not model:
        raise EmbedxError("model is required (or checkpoint=RUN)", param=("model", "checkpoint"))
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
