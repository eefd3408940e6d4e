"""embedx: embedding analytics for contrastive vision-language models.

``embedx`` itself stays light (no torch import); the modules that use open_clip/timm/peft apply the
torchvision import shim (``embedx._torchvision_shim``) before importing them.
"""
__version__ = "0.1.0"

from embedx.errors import EmbedxError  # noqa: E402

__all__ = ["EmbedxError", "__version__"]
