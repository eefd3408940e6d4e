"""The LiT heads of ``embedx-lit``: the only trained parts (428 k parameters).

``image.weight`` [256, 1280] and ``image.bias`` [256] (``visual.head.proj``), ``text.weight`` [256, 384]
(``text.proj``) and ``logit_scale`` (a scalar: logits are ``exp(logit_scale) <u, v>``), float32 safetensors.
"""
from __future__ import annotations

import torch

from embedx.errors import EmbedxError

KEYS = {"image.weight": "visual.head.proj.weight", "image.bias": "visual.head.proj.bias",
        "text.weight": "text.proj.weight", "logit_scale": "logit_scale"}


def heads_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The heads of an ``embedx-lit`` model, under the file's names (contiguous float32 copies)."""
    sd = net.state_dict()
    return {k: sd[v].detach().float().contiguous().clone() for k, v in KEYS.items()}


def save_heads(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: tensors[k].detach().float().contiguous() for k in KEYS}, path,
              metadata={"model": "embedx-lit", "format": "1"})


def load_heads(net: torch.nn.Module, path: str) -> None:
    """Copy the heads file into ``net``; shapes must match."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise EmbedxError(f"the embedx-lit heads {path} are missing; reinstall embedx or retrain them: "
                          "python -m embedx.models.lit.train") from None
    sd = net.state_dict()
    with torch.no_grad():
        for k, target in KEYS.items():
            if k not in tensors or tensors[k].shape != sd[target].shape:
                raise EmbedxError(f"{path}: {k} is missing or has the wrong shape; it is not an embedx-lit heads file")
            net.get_parameter(target).copy_(tensors[k].reshape(sd[target].shape))
