"""Fine-tuning methods, peft-style: a registry from method name to its options and an apply function.

``apply(model, opts)`` changes a :class:`TunedCLIP` in place (adds LoRA layers or adapters where the
method needs them) and leaves ``requires_grad`` set on exactly the parameters the method trains. Adding a
method is one ``@method(...)`` function here. Trainable sets (DESIGN.md, "Fine-tuning methods"):

- ``full``: every parameter (logit_scale included).
- ``bitfit``: every bias inside the transformer blocks of both towers (attn in/out proj, ln_1, ln_2,
  mlp c_fc, c_proj), in the first ``train_blocks`` blocks of each tower (default all), as the authors'
  code selects them (``resblocks.{0..k-1}``).
- ``attention`` (A-CLIP): ``attn.in_proj_weight`` (stacked q, k, v) of those blocks; not biases, not
  out_proj.
- ``lora``: peft LoRA of rank ``rank`` on the q and v projections of every block of both towers.
- ``adapter`` (CLIP-Adapter): a d -> d/``reduction`` -> d bottleneck on image and on text features.

Each method also names its default optimizer and learning rate (:func:`recipe`), the values that train with
``embedx finetune`` left at its defaults. They were chosen on the offline path (the random-init
``embedx-tiny`` on scikit-learn digits, 2 epochs, batch 32, measured in ``bench/results/finetune_defaults.md``):
from random weights the papers' SGD (momentum 0.9) does not learn in a few epochs (at lr 1e-5 the loss stays
where it starts; at these rates it only reaches ln C at chance accuracy, ``finetune_defaults_sgd.md``), so every
default is Adam; the papers' SGD recipe is one ``--optimizer sgd --lr ...`` away.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from embedx.errors import EmbedxError
from embedx.models.lora import TOWERS, apply_lora
from embedx.models.tuned import Adapter, TunedCLIP

DEFAULTS = {"train_blocks": None, "rank": 4, "reduction": 4}  # rank, reduction: the authors' train.py defaults


OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Method:
    name: str
    options: tuple[str, ...]  # keys of DEFAULTS this method takes
    apply: Callable[[TunedCLIP, dict], None]
    optimizer: str  # default optimizer (one of OPTIMIZERS)
    lr: float  # default learning rate


METHODS: dict[str, Method] = {}


def method(name: str, options: tuple[str, ...] = (), *, optimizer: str, lr: float):
    """Register ``fn(model, opts)`` as method ``name`` taking ``options``, trained by default with
    ``optimizer`` at learning rate ``lr``."""
    def register(fn):
        METHODS[name] = Method(name, options, fn, optimizer, lr)
        return fn
    return register


def get(name: str) -> Method:
    if name not in METHODS:
        raise EmbedxError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def resolve_options(name: str, given: dict) -> dict:
    """The options ``name`` takes, from ``given`` (None = default). Every given value is validated
    (``--rank 0`` is always wrong), then one the method does not use is refused (:func:`check_given`)."""
    m = get(name)
    for key in DEFAULTS:
        v = given.get(key)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise EmbedxError(f"{key} must be a positive integer, got {v!r}", param=key)
    check_given(name, [k for k, v in given.items() if v is not None])
    return {k: given[k] if given.get(k) is not None else DEFAULTS[k] for k in m.options}


def check_given(name: str, given) -> None:
    """Refuse options (keys of DEFAULTS) in ``given`` that method ``name`` does not use: ``rank`` with
    ``bitfit`` would be silently ignored otherwise."""
    m = get(name)
    for key in given:
        if key in DEFAULTS and key not in m.options:
            users = [n for n, other in METHODS.items() if key in other.options]
            raise EmbedxError(f"{key} does not apply to method {name} (only to {' and '.join(users)}); leave it "
                              f"out", param=key)


def recipe(name: str, optimizer: str | None = None, lr: float | None = None) -> tuple[str, float]:
    """(optimizer, learning rate) for method ``name``: the given values, None = the method's default."""
    m = get(name)
    return (m.optimizer if optimizer is None else optimizer), (m.lr if lr is None else float(lr))


def apply(model: TunedCLIP, name: str, opts: dict) -> TunedCLIP:
    for p in model.parameters():
        p.requires_grad_(False)
    get(name).apply(model, opts)
    if not any(p.requires_grad for p in model.parameters()):
        raise EmbedxError(f"method {name} found no parameters to train in this model")
    return model


def _select_in_blocks(model: TunedCLIP, suffix: str, train_blocks: int | None) -> None:
    """Train the parameters ``<tower>.resblocks.<i>.<suffix>`` (regex) of the first ``train_blocks`` blocks
    (i < train_blocks; the authors' ``set_specified_train_layers``)."""
    depth = {}
    for tower in TOWERS:
        try:
            depth[tower] = len(model.clip.get_submodule(f"{tower}.resblocks"))
        except AttributeError:
            raise EmbedxError(f"bitfit and attention need open_clip's transformer towers; this model has no "
                              f"{tower}.resblocks") from None
    if train_blocks is not None and train_blocks > max(depth.values()):
        raise EmbedxError(param="train_blocks", message=f"train_blocks {train_blocks} exceeds the towers' depth "
                          f"({depth[TOWERS[0]]} image, {depth[TOWERS[1]]} text blocks)")
    rx = re.compile(rf"({'|'.join(map(re.escape, TOWERS))})\.resblocks\.(\d+)\.{suffix}")
    for name, p in model.clip.named_parameters():
        m = rx.fullmatch(name)
        if m and (train_blocks is None or int(m.group(2)) < train_blocks):
            p.requires_grad_(True)


@method("full", optimizer="adam", lr=1e-4)
def _full(model: TunedCLIP, opts: dict) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


@method("bitfit", ("train_blocks",), optimizer="adam", lr=1e-2)
def _bitfit(model: TunedCLIP, opts: dict) -> None:
    _select_in_blocks(model, r".*bias", opts["train_blocks"])


@method("attention", ("train_blocks",), optimizer="adam", lr=1e-3)
def _attention(model: TunedCLIP, opts: dict) -> None:
    _select_in_blocks(model, r"attn\.in_proj_weight", opts["train_blocks"])


@method("lora", ("rank",), optimizer="adam", lr=1e-2)
def _lora(model: TunedCLIP, opts: dict) -> None:
    apply_lora(model.clip, opts["rank"])
    for name, p in model.clip.named_parameters():
        p.requires_grad_(".lora_" in name)


@method("adapter", ("reduction",), optimizer="adam", lr=3e-3)
def _adapter(model: TunedCLIP, opts: dict) -> None:
    d, red = model.embed_dim, opts["reduction"]
    if red > d:
        raise EmbedxError(f"reduction {red} exceeds the feature dimension {d}", param="reduction")
    dev = next(model.clip.parameters()).device
    model.adapters = nn.ModuleDict({k: Adapter(d, red) for k in ("image", "text")}).to(dev)
