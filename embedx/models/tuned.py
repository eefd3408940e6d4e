"""The model being tuned: an open_clip model plus, for CLIP-Adapter, one feature adapter per modality.

:class:`TunedCLIP` encodes like open_clip (``encode_image`` / ``encode_text`` with ``normalize``), so an
:class:`embedx.models.encoder.Encoder` can hold it. Trainable parameters are named as in the open_clip model
(``visual.transformer.resblocks.0.attn.in_proj_weight``, peft's ``...q_proj.lora_A.default.weight``) and
``adapters.image.fc.0.weight`` for adapters: a full run's params file is an open_clip state dict.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedx.errors import EmbedxError

ADAPTER_RATIO = 0.2  # CLIP-Adapter: 0.2 * adapter(f) + 0.8 * f, then re-normalized (the authors' code)
_CLIP = "clip."


class Adapter(nn.Module):
    """CLIP-Adapter bottleneck: Linear(d, d/red, no bias), ReLU, Linear(d/red, d, no bias), ReLU."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TunedCLIP(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.adapters: nn.ModuleDict | None = None  # CLIP-Adapter: one per tuned tower ("image", "text")
        self.selection = None  # what embedx.models.methods.apply chose (a Selection)
        self.embed_dim = feature_dim(clip)

    def head(self, kind: str, feats: torch.Tensor, normalize: bool) -> torch.Tensor:
        """Tower output -> features: the adapter blend (if any) on the unnormalized features, then L2."""
        if self.adapters is not None and kind in self.adapters:
            feats = ADAPTER_RATIO * self.adapters[kind](feats) + (1 - ADAPTER_RATIO) * feats
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.head("image", self.clip.encode_image(pixels), normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.head("text", self.clip.encode_text(tokens), normalize)

    def logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """logit_scale.exp() * cos (+ logit_bias where the model has one), as open_clip's CLIP.forward."""
        out = self.clip.logit_scale.exp() * image_feats @ text_feats.T
        bias = getattr(self.clip, "logit_bias", None)
        return out + bias if bias is not None else out

    def text_tower_frozen(self) -> bool:
        """True when nothing before the text features trains, so they can be computed once."""
        return not any(p.requires_grad for n, p in self.clip.named_parameters() if not n.startswith("visual."))

    # -- what a run saves ----------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters (detached, CPU, contiguous), named as in the open_clip model."""
        return {_strip(n): p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the trainable parameters; its names must be exactly the trainable set."""
        params = {_strip(n): p for n, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise EmbedxError(f"saved parameters do not match the method's trainable set (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for n, p in params.items():
            if tuple(state[n].shape) != tuple(p.shape):
                raise EmbedxError(f"saved parameter {n} has shape {tuple(state[n].shape)}, the method's has "
                                  f"{tuple(p.shape)}")
            if not state[n].is_floating_point():
                raise EmbedxError(f"saved parameter {n} is {state[n].dtype}, not floating point")
            if not bool(torch.isfinite(state[n]).all()):
                raise EmbedxError(f"saved parameter {n} holds NaN or infinite values")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])


def _strip(name: str) -> str:
    return name[len(_CLIP):] if name.startswith(_CLIP) else name


def feature_dim(clip: nn.Module) -> int:
    """The embedding dimension of an open_clip model: the image tower's ``output_dim``, the text tower's, the
    text projection's width, else the width of one encoded blank image (timm image towers record none)."""
    for owner in (getattr(clip, "visual", None), getattr(clip, "text", None)):
        d = getattr(owner, "output_dim", None)
        if isinstance(d, int) and d > 0:
            return d
    for owner in (clip, getattr(clip, "text", None)):
        proj = getattr(owner, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
    size = getattr(getattr(clip, "visual", None), "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    p = next(clip.parameters())
    with torch.no_grad():
        return int(clip.encode_image(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype)).shape[-1])


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
