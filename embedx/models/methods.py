"""Fine-tuning methods, peft-style: a registry from method name to its options, its rule and an apply function.

``apply(model, name, opts, towers)`` changes a :class:`TunedCLIP` in place (adds LoRA layers or adapters where the
method needs them) and leaves ``requires_grad`` set on exactly the parameters the method trains. One rule per
method, stated in the terms of :mod:`embedx.models.families` and so applied unchanged to every open_clip family
(DESIGN.md, "Fine-tuning methods", has the table of families x methods with counts):

- ``full``: every parameter of the chosen towers; with both towers every parameter of the model (the logit
  scale and CoCa's captioning decoder included).
- ``bitfit``: every bias inside the per-block modules of the chosen towers (``resblocks.N``, timm ``blocks.N``, the
  residual blocks of CNN towers, HF ``encoder.layer.N``), in the first ``train_blocks`` blocks of each tower
  (default all), as the authors' code selects them. Attention pools, final norms, projections and embeddings are not
  blocks.
- ``attention`` (A-CLIP): the q, k and v input-projection weights of every attention module in those blocks
  (``in_proj_weight``, a fused ``qkv.weight``, ``q_proj/k_proj/v_proj.weight`` or HF ``query/key/value.weight``);
  not biases, not the output projection.
- ``lora``: peft LoRA of rank ``rank`` on the q and v projections of every attention block of the chosen towers
  (fused projections split first, :mod:`embedx.models.lora`).
- ``adapter`` (CLIP-Adapter): a d -> d/``reduction`` -> d bottleneck on the features of each chosen tower.

``towers``: "both" (default), "image" or "text". A chosen tower where the rule finds nothing (attention on a CNN
image tower) is refused in one line that names the tower and the other choice, before any work.

Each method also names its default optimizer and learning rate (:func:`recipe`), the values that train with
``embedx finetune`` left at its defaults. They were chosen on the offline path (the random-init
``embedx-tiny`` on scikit-learn digits, 2 epochs, batch 32, measured in ``bench/results/finetune_defaults.md``):
from random weights the papers' SGD (momentum 0.9) does not learn in a few epochs (at lr 1e-5 the loss stays
where it starts; at these rates it only reaches ln C at chance accuracy, ``finetune_defaults_sgd.md``), so every
default is Adam; the papers' SGD recipe is one ``--optimizer sgd --lr ...`` away.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from embedx.errors import EmbedxError
from embedx.models.families import Tower, family, towers as find_towers
from embedx.models.lora import apply_lora
from embedx.models.tuned import Adapter, TunedCLIP

DEFAULTS = {"train_blocks": None, "rank": 4, "reduction": 4}  # rank, reduction: the authors' train.py defaults


OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Method:
    name: str
    options: tuple[str, ...]  # keys of DEFAULTS this method takes
    apply: Callable[[TunedCLIP, dict, list[Tower]], dict[str, str]]  # -> {tower: what it trains there}
    optimizer: str  # default optimizer (one of OPTIMIZERS)
    lr: float  # default learning rate
    rule: str  # the rule, one line


METHODS: dict[str, Method] = {}


TOWER_CHOICES = ("both", "image", "text")


def method(name: str, options: tuple[str, ...] = (), *, optimizer: str, lr: float, rule: str):
    """Register ``fn(model, opts, towers)`` as method ``name`` taking ``options``, trained by default with
    ``optimizer`` at learning rate ``lr``; ``fn`` marks what it trains and returns, per tower, what that is."""
    def register(fn):
        METHODS[name] = Method(name, options, fn, optimizer, lr, rule)
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


def check_towers(towers: str) -> str:
    if towers not in TOWER_CHOICES:
        raise EmbedxError(f"towers must be one of {', '.join(TOWER_CHOICES)}, got {towers!r}", param="towers")
    return towers


@dataclass(frozen=True)
class Selection:
    """What :func:`apply` chose: the model's family, its towers, and per chosen tower what the method trains
    there and how many parameters that is."""

    family: str
    towers: str
    layout: dict[str, str]  # tower -> its layout ("timm VisionTransformer, 12 blocks")
    what: dict[str, str]  # chosen tower -> what the method trains there
    counts: dict[str, int]  # chosen tower (and "other": outside both towers) -> trainable parameters

    @property
    def rule(self) -> str:
        """One line for records: ``image: ...; text: ...``."""
        return "; ".join(f"{t}: {w}" for t, w in self.what.items())

    def record(self) -> dict:
        return {"family": self.family, "towers": self.towers, "layout": self.layout, "rule": self.rule,
                "counts": self.counts}


def apply(model: TunedCLIP, name: str, opts: dict, towers: str = "both") -> Selection:
    """Apply method ``name`` with ``opts`` to the chosen ``towers`` of ``model``; -> the :class:`Selection`."""
    m = get(name)
    check_towers(towers)
    for p in model.parameters():
        p.requires_grad_(False)
    found = find_towers(model.clip)
    chosen = [found[t] for t in (("image", "text") if towers == "both" else (towers,))]
    what = m.apply(model, opts, chosen)
    counts = {t.name: sum(p.numel() for n, p in model.clip.named_parameters() if p.requires_grad and t.owns(n))
              for t in chosen}
    if model.adapters is not None:
        for k, a in model.adapters.items():
            counts[k] = counts.get(k, 0) + sum(p.numel() for p in a.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if total - sum(counts.values()):
        counts["other"] = total - sum(counts.values())
    for t in chosen:
        if not counts[t.name]:
            _refuse_empty(name, t, towers)
    sel = Selection(family(model.clip, found), towers, {t: found[t].describe() for t in found}, what, counts)
    model.selection = sel
    return sel


def _refuse_empty(name: str, tower: Tower, towers: str) -> None:
    other = "text" if tower.name == "image" else "image"
    way = (f"use towers='{other}' to tune the {other} tower alone" if towers == "both"
           else f"the other tower is towers='{other}'")
    raise EmbedxError(f"{name} finds nothing to train in the {tower.name} tower ({tower.describe()}); it trains "
                      f"{get(name).rule}: {way}", param="towers")


def _blocks(chosen: list[Tower], train_blocks: int | None) -> None:
    """Refuse ``train_blocks`` deeper than every chosen tower."""
    if train_blocks is not None and train_blocks > max(len(t.blocks) for t in chosen):
        depth = ", ".join(f"{len(t.blocks)} {t.name}" for t in chosen)
        raise EmbedxError(param="train_blocks", message=f"train_blocks {train_blocks} exceeds the towers' depth "
                          f"({depth} blocks)")


def _mark(model: TunedCLIP, names: set[str]) -> None:
    for n, p in model.clip.named_parameters():
        if n in names:
            p.requires_grad_(True)


def _of(k: int | None, t: Tower) -> str:
    n = len(t.blocks) if k is None else min(k, len(t.blocks))
    return f"{n} of {len(t.blocks)} {t.label} blocks"


@method("full", optimizer="adam", lr=1e-4, rule="every parameter")
def _full(model: TunedCLIP, opts: dict, chosen: list[Tower]) -> dict[str, str]:
    both = len(chosen) == 2
    for n, p in model.named_parameters():
        p.requires_grad_(both or any(t.owns(n.removeprefix("clip.")) for t in chosen))
    return {t.name: f"every parameter ({t.label})" for t in chosen}


@method("bitfit", ("train_blocks",), optimizer="adam", lr=1e-2, rule="the biases inside the blocks")
def _bitfit(model: TunedCLIP, opts: dict, chosen: list[Tower]) -> dict[str, str]:
    k = opts["train_blocks"]
    _blocks(chosen, k)
    names = set()
    for t in chosen:
        for n, _ in model.clip.named_parameters():
            i = t.block_of(n)
            if i is not None and (k is None or i < k) and n.rsplit(".", 1)[-1].endswith("bias"):
                names.add(n)
    _mark(model, names)
    return {t.name: f"biases in {_of(k, t)}" for t in chosen}


@method("attention", ("train_blocks",), optimizer="adam", lr=1e-3,
        rule="the q, k and v input-projection weights of attention blocks")
def _attention(model: TunedCLIP, opts: dict, chosen: list[Tower]) -> dict[str, str]:
    k = opts["train_blocks"]
    _blocks(chosen, k)
    names, what = set(), {}
    for t in chosen:
        atts = [a for i, block in enumerate(t.attention) if k is None or i < k for a in block]
        names.update(w for a in atts for w in a.weights)
        kinds = sorted({a.kind.label for a in atts})
        what[t.name] = (f"{' + '.join(kinds) or 'nothing'} of {len(atts)} attention module{'s' * (len(atts) != 1)} "
                        f"in {_of(k, t)}")
    _mark(model, names)
    return what


@method("lora", ("rank",), optimizer="adam", lr=1e-2, rule="LoRA on the q and v projections of attention blocks")
def _lora(model: TunedCLIP, opts: dict, chosen: list[Tower]) -> dict[str, str]:
    for t in chosen:
        if not t.has_attention:
            _refuse_empty("lora", t, "both" if len(chosen) == 2 else t.name)
    targets = apply_lora(model.clip, opts["rank"], chosen)
    for name, p in model.clip.named_parameters():
        p.requires_grad_(".lora_" in name)
    what = {}
    for t in chosen:
        n = sum(1 for x in targets if t.owns(x + ".weight"))
        b = sum(map(bool, t.attention))
        what[t.name] = f"rank-{opts['rank']} LoRA on {n} q/v layers in {b} {t.label} block{'s' * (b != 1)}"
    return what


@method("adapter", ("reduction",), optimizer="adam", lr=3e-3, rule="a bottleneck adapter on the features")
def _adapter(model: TunedCLIP, opts: dict, chosen: list[Tower]) -> dict[str, str]:
    d, red = model.embed_dim, opts["reduction"]
    if red > d:
        raise EmbedxError(f"reduction {red} exceeds the feature dimension {d}", param="reduction")
    dev = next(model.clip.parameters()).device
    model.adapters = nn.ModuleDict({t.name: Adapter(d, red) for t in chosen}).to(dev)
    return {t.name: f"adapter {d} -> {d // red} -> {d} on the {t.name} features" for t in chosen}
