"""Make ``import torchvision`` work when its C extension does not match the installed torch.

The registry's torchvision wheel is a CUDA build; beside the CPU torch wheel its ``_C`` extension fails
to load, after which ``torchvision/_meta_registrations.py`` dies with
``operator torchvision::nms does not exist``. open_clip, timm and peft import torchvision, so embedx
applies this shim before anything imports it: if the real extension loads, nothing is done; otherwise the
``torchvision::nms`` / ``torchvision::qnms`` schemas are defined (without kernels), which is enough for
the transforms embedx uses. Images are decoded with PIL, never with torchvision's io ops.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_applied = False
_library = None  # keep the torch.library.Library object alive


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    libs = []
    for location in spec.submodule_search_locations:
        libs += glob.glob(os.path.join(location, "_C*.so")) + glob.glob(os.path.join(location, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return True


def apply() -> None:
    """Idempotent. Must run before the first ``import torchvision``."""
    global _applied, _library
    if _applied or "torchvision" in sys.modules:
        _applied = True
        return
    _applied = True
    if _extension_loads():
        return
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        try:
            _library.define(schema)
        except RuntimeError:  # already defined by someone else
            pass
