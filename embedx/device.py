"""Device names: ``auto`` (CUDA when torch sees one, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""
from __future__ import annotations

from embedx.errors import EmbedxError


def resolve_device(device: str = "auto"):
    """The torch device named by ``device``; EmbedxError for an unknown name or CUDA without a CUDA device.
    Imports torch (this module does not)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EmbedxError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedxError(f"device={device!r} asked for, but torch sees no CUDA device")
    return dev


def worker_device(cfg):
    """``cfg`` (a dataclass with ``device`` and ``device_request``) with the device resolved on this process: a
    cluster worker with a GPU takes it for "auto", one without runs on its CPU."""
    import dataclasses

    dev = resolve_device(getattr(cfg, "device_request", None) or "auto")
    return cfg if dev == cfg.device else dataclasses.replace(cfg, device=dev)
