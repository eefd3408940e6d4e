"""Which implementation an op runs on a device: Triton on CUDA when it is installed, torch otherwise;
``EMBEDX_KERNEL=torch|triton`` forces one."""
from __future__ import annotations

import os

import torch

from embedx.kernels.ops.cluster_distance import triton


def backend_for(device: torch.device) -> str:
    forced = os.environ.get("EMBEDX_KERNEL")
    if forced in ("torch", "triton"):
        return forced
    return "triton" if device.type == "cuda" and triton is not None else "torch"
