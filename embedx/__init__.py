"""embedx: embedding analytics for contrastive vision-language models.

The Python API (``embedx.api``): ``open``, ``measure``, ``transfer``, ``drift``, ``embed``, ``import_arrays``;
in-memory rows as ``ArrayRows``; array functions in ``embedx.metrics``; every score in ``embedx.registry``.
``import embedx`` stays light (no torch import); the modules that use open_clip/timm/peft apply the torchvision
import shim (``embedx._torchvision_shim``) before importing them.
"""
__version__ = "0.1.0"

from embedx import metrics  # noqa: E402,F401
from embedx.api import drift, embed, import_arrays, measure, open, transfer  # noqa: E402,F401,A004
from embedx.engine import registry  # noqa: E402,F401
from embedx.errors import EmbedxError  # noqa: E402
from embedx.rowsource import ArrayRows  # noqa: E402

__all__ = ["ArrayRows", "EmbedxError", "__version__", "drift", "embed", "import_arrays", "measure", "metrics",
           "open", "registry", "transfer"]
