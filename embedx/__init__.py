"""embedx: embedding analytics for contrastive vision-language models.

The Python API (``embedx.api``): ``open``, ``measure``, ``transfer``, ``drift``, ``embed``, ``import_arrays``;
in-memory rows as ``ArrayRows``; array functions in ``embedx.metrics``; every score in ``embedx.registry``.
``embedx.transfer``, ``embedx.drift`` and ``embedx.embed`` are also the modules of those names, loaded on first
use and callable as the API functions (``embedx._callable``). ``import embedx`` stays light (no torch import);
the modules that use open_clip/timm/peft apply the torchvision import shim before importing them.
"""
from embedx import _lazy, metrics  # noqa: E402,F401
from embedx.api import import_arrays, measure, open  # noqa: E402,F401,A004
from embedx.engine import registry  # noqa: E402,F401
from embedx.errors import EmbedxError  # noqa: E402
from embedx.rowsource import ArrayRows  # noqa: E402
from embedx.version import __version__  # noqa: E402

__all__ = ["ArrayRows", "EmbedxError", "__version__", "drift", "embed", "import_arrays", "measure", "metrics",
           "open", "registry", "transfer"]
__getattr__ = _lazy.exports(__name__, {m: f"embedx.{m}" for m in ("transfer", "drift", "embed")})  # (PEP 562)
