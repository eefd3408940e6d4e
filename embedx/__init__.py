"""embedx: embedding analytics for contrastive vision-language models.

The Python API (``embedx.api``): ``open``, ``measure``, ``transfer``, ``drift``, ``embed``, ``import_arrays``, ``study``
(plain functions with their signatures); each call's scores as a ``Result`` (a mapping: ``pd.DataFrame([r1, r2])``);
``Store``; in-memory rows as ``ArrayRows``; array functions in ``embedx.metrics``; every score in
``embedx.registry``; bad input raises ``EmbedxError`` (a ``ValueError``). ``dir(embedx)`` lists this API
(``__all__``); the internal modules stay importable by name. ``import embedx`` stays light (no numpy, no torch): names
load on first use, and the modules that use open_clip/timm/peft apply the torchvision import shim first.
"""
from embedx import _lazy
from embedx.errors import EmbedxError
from embedx.version import __version__

__all__ = ["ArrayRows", "EmbedxError", "Result", "Store", "__version__", "drift", "embed", "import_arrays", "measure",
           "metrics", "open", "registry", "study", "transfer"]
# PEP 562: everything else loads on first use (``import embedx`` imports no numpy, let alone torch)
__dir__ = _lazy.public(__all__)  # dir(embedx): the public API, not the submodules imported so far
__getattr__ = _lazy.exports(__name__, {
    "open": "embedx.api", "measure": "embedx.api", "import_arrays": "embedx.api", "ArrayRows": "embedx.rowsource",
    "Store": "embedx.store.reader", "Result": "embedx.engine.result",
    "metrics": "embedx.metrics", "registry": "embedx.engine.registry",
    "transfer": "embedx.transferability.api", "drift": "embedx.drift_analysis.api", "embed": "embedx.embedding.serial",
    "study": "embedx.studies.run",
})
