"""Where an open_clip model keeps its two contrastive towers, their blocks and their attention: found by structure.

Every family open_clip builds (CLIP, CoCa, SigLIP, EVA-02-CLIP, ConvNeXt-CLIP, CLIP ResNets, MobileCLIP, CLIP with a
Hugging Face text tower) is one model with two contrastive towers:

* the **image tower** ``visual``;
* the **text tower** ``text`` (CoCa, SigLIP, EVA-02, MobileCLIP: ``CustomTextCLIP``), or, for ``CLIP``, the top-level
  modules that are not ``visual`` (``token_embedding``, ``transformer``, ``ln_final``, ``text_projection``).

CoCa's captioning decoder (``text_decoder``) and the logit scale/bias belong to neither tower.

Each tower is one :data:`TOWER_KINDS` entry: how to recognise it, and the pattern of its per-block modules (relative
to the tower). The blocks are numbered in model order (stage by stage for staged CNNs), so "the first K blocks" means
the same thing in every family. Attention inside a block is found by the module's structure, one
:data:`ATTENTION_KINDS` entry per way of writing the q, k and v input projections. The fine-tuning methods
(:mod:`embedx.models.methods`) state their rules in these terms, once, for every family; supporting a new tower layout
is one more :data:`TOWER_KINDS` entry, not a new code path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from embedx.errors import EmbedxError

TOWER_NAMES = ("image", "text")
OUTSIDE = ("logit_scale", "logit_bias")  # top-level parameters of neither tower
DECODER = "text_decoder."  # CoCa's captioning decoder: not a contrastive tower


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _cls(module: nn.Module | None) -> str:
    return type(module).__name__


@dataclass(frozen=True)
class TowerKind:
    """One tower layout: ``matches(tower)`` recognises it; ``blocks`` full-matches its block module names."""

    label: str  # how the layout is named in records (the class name is added)
    matches: Callable[[nn.Module], bool]
    blocks: str  # regex, relative to the tower, of the per-block modules
    core: Callable[[nn.Module], nn.Module] = lambda m: m  # the module whose class names the tower


# The tower layouts open_clip builds. The first entry whose ``matches`` holds wins.
TOWER_KINDS: tuple[TowerKind, ...] = (
    TowerKind("open_clip", lambda m: _has(m, "transformer.resblocks"), r"transformer\.resblocks\.\d+"),
    TowerKind("timm", lambda m: _has(m, "trunk.blocks"), r"trunk\.blocks\.\d+", lambda m: m.trunk),
    TowerKind("timm", lambda m: _has(m, "trunk.stages"), r"trunk\.stages\.\d+\.blocks\.\d+", lambda m: m.trunk),
    TowerKind("open_clip", lambda m: _has(m, "layer1") and _has(m, "attnpool"), r"layer[1-4]\.\d+"),
    TowerKind("Hugging Face", lambda m: _has(m, "transformer.encoder.layer"), r"transformer\.encoder\.layer\.\d+",
              lambda m: m.transformer),
)


# -- attention inside a block -------------------------------------------------------------------------------------
def _linear(module: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def _mha_weights(m: nn.MultiheadAttention) -> tuple[str, ...]:
    return ("in_proj_weight",) if m.in_proj_weight is not None else ("q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class AttentionKind:
    """One way of writing attention's q, k, v input projections.

    ``weights(m)``: the q, k and v input-projection weights (names relative to the attention module), what A-CLIP
    trains. ``lora``: the q and v Linear layers (relative names) LoRA wraps once :func:`embedx.models.lora` has split
    fused projections (``split``: the kind it becomes, None when the layers are already separate)."""

    label: str
    matches: Callable[[nn.Module], bool]
    weights: Callable[[nn.Module], tuple[str, ...]]
    lora: tuple[str, str]
    split: bool


ATTENTION_KINDS: tuple[AttentionKind, ...] = (
    AttentionKind("in_proj_weight", lambda m: isinstance(m, nn.MultiheadAttention), _mha_weights,
                  ("q_proj", "v_proj"), True),
    AttentionKind("qkv.weight", lambda m: _linear(m, "qkv"), lambda m: ("qkv.weight",), ("qkv.q_proj", "qkv.v_proj"),
                  True),
    AttentionKind("q_proj/k_proj/v_proj.weight", lambda m: _linear(m, "q_proj", "k_proj", "v_proj"),
                  lambda m: ("q_proj.weight", "k_proj.weight", "v_proj.weight"), ("q_proj", "v_proj"), False),
    AttentionKind("query/key/value.weight", lambda m: _linear(m, "query", "key", "value"),
                  lambda m: ("query.weight", "key.weight", "value.weight"), ("query", "value"), False),
)


@dataclass(frozen=True)
class Attention:
    """An attention module inside a block: its full name, its kind and the module."""

    name: str
    kind: AttentionKind
    module: nn.Module = field(repr=False, compare=False)

    @property
    def weights(self) -> list[str]:
        return [f"{self.name}.{w}" for w in self.kind.weights(self.module)]


def attention_in(block: nn.Module, prefix: str) -> list[Attention]:
    """The attention modules of ``block`` (full names under ``prefix``), outermost first; one inside another found
    attention module is part of it."""
    found: list[Attention] = []
    for name, m in block.named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if any(full.startswith(a.name + ".") for a in found):
            continue
        kind = next((k for k in ATTENTION_KINDS if k.matches(m)), None)
        if kind is not None:
            found.append(Attention(full, kind, m))
    return found


# -- towers ------------------------------------------------------------------------------------------------------
@dataclass
class Tower:
    """One contrastive tower of a model: ``prefix`` of its parameter names ("" for CLIP's top-level text tower)."""

    name: str  # "image" | "text"
    prefix: str
    kind: TowerKind
    label: str  # e.g. "timm VisionTransformer"
    blocks: list[str]  # full module names of the per-block modules, in model order
    attention: list[list[Attention]]  # per block

    def owns(self, param: str) -> bool:
        if self.prefix:
            return param.startswith(self.prefix)
        return not (param.startswith(("visual.", DECODER)) or param in OUTSIDE)

    def block_of(self, param: str) -> int | None:
        """The index of the block holding parameter ``param``, or None (outside every block)."""
        for i, b in enumerate(self.blocks):
            if param.startswith(b + "."):
                return i
        return None

    @property
    def has_attention(self) -> bool:
        return any(self.attention)

    def describe(self) -> str:
        n = sum(1 for a in self.attention if a)
        att = f", {n} with attention" if n and n != len(self.blocks) else ("" if n else ", none with attention")
        return f"{self.label}, {len(self.blocks)} blocks{att}"


def _tower(clip: nn.Module, name: str) -> Tower:
    if name == "image":
        module, prefix = getattr(clip, "visual", None), "visual."
    elif isinstance(getattr(clip, "text", None), nn.Module):
        module, prefix = clip.text, "text."
    else:
        module, prefix = clip, ""
    if module is None:
        raise EmbedxError(f"{_cls(clip)} has no {name} tower")
    kind = next((k for k in TOWER_KINDS if k.matches(module)), None)
    if kind is None:
        raise EmbedxError(f"the {name} tower of this model ({_cls(module)}) has a layout embedx does not know; add a "
                          f"TowerKind entry for it (embedx/models/families.py)")
    rx = re.compile(kind.blocks)
    base = prefix.rstrip(".")
    blocks = [f"{base}.{n}" if base else n for n, _ in module.named_modules() if n and rx.fullmatch(n)]
    if not blocks:
        raise EmbedxError(f"the {name} tower of this model ({_cls(module)}) has no blocks matching {kind.blocks}")
    attention = [attention_in(clip.get_submodule(b), b) for b in blocks]
    label = f"{kind.label} {_cls(kind.core(module))}" if prefix else "open_clip TextTransformer"  # CLIP: top level
    return Tower(name, prefix, kind, label, blocks, attention)


def towers(clip: nn.Module) -> dict[str, Tower]:
    """{"image": Tower, "text": Tower} of an open_clip model."""
    return {n: _tower(clip, n) for n in TOWER_NAMES}


# -- the family a model belongs to (a label for records; the rules never branch on it) ----------------------------
FAMILIES: tuple[tuple[str, Callable[[nn.Module, dict], bool]], ...] = (
    ("CoCa", lambda clip, t: _cls(clip) == "CoCa"),
    ("SigLIP", lambda clip, t: getattr(clip, "logit_bias", None) is not None),
    ("EVA-02-CLIP", lambda clip, t: t["image"].label == "timm Eva"),
    ("MobileCLIP", lambda clip, t: t["image"].label == "timm FastVit"),
    ("ConvNeXt-CLIP", lambda clip, t: t["image"].label == "timm ConvNeXt"),
    ("CLIP ResNet", lambda clip, t: t["image"].label == "open_clip ModifiedResNet"),
    ("CLIP (Hugging Face text tower)", lambda clip, t: t["text"].kind.label == "Hugging Face"),
    ("CLIP", lambda clip, t: t["image"].label == "open_clip VisionTransformer"),
)


def family(clip: nn.Module, found: dict[str, Tower] | None = None) -> str:
    """The family label of an open_clip model (the first :data:`FAMILIES` entry that holds)."""
    found = found or towers(clip)
    return next((name for name, test in FAMILIES if test(clip, found)),
                f"{found['image'].label} + {found['text'].label}")
