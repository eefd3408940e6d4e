"""embedx: embedding analytics for contrastive vision-language models.

Importing embedx applies the torchvision import shim (see ``embedx._torchvision_shim``) before anything
else can import torchvision, so open_clip/timm/peft import cleanly on CPU-only torch builds.
"""
from embedx import _torchvision_shim

_torchvision_shim.apply()

__version__ = "0.1.0"

from embedx.errors import EmbedxError  # noqa: E402

__all__ = ["EmbedxError", "__version__"]
