"""embedx: embedding analytics for contrastive vision-language models.

The Python API (``embedx.api``): ``open``, ``measure``, ``transfer``, ``drift``, ``embed``, ``import_arrays``;
in-memory rows as ``ArrayRows``; array functions in ``embedx.metrics``; every score in ``embedx.registry``.
``embedx.transfer``, ``embedx.drift`` and ``embedx.embed`` are also the modules of those names, loaded on first
use and callable as the API functions (``embedx._callable``). ``import embedx`` stays light (no torch import);
the modules that use open_clip/timm/peft apply the torchvision import shim before importing them.
"""
from embedx import _lazy
from embedx.errors import EmbedxError
from embedx.version import __version__

__all__ = ["ArrayRows", "EmbedxError", "__version__", "drift", "embed", "import_arrays", "measure", "metrics",
           "open", "registry", "transfer"]
# PEP 562: everything else loads on first use (``import embedx`` imports no numpy, let alone torch)
__getattr__ = _lazy.exports(__name__, {
    "open": "embedx.api", "measure": "embedx.api", "import_arrays": "embedx.api", "ArrayRows": "embedx.rowsource",
    "metrics": "embedx.metrics", "registry": "embedx.engine.registry",
    "transfer": "embedx.transfer", "drift": "embedx.drift", "embed": "embedx.embed",
})
