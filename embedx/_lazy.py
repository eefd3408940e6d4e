"""Lazy re-exports for package ``__init__``s (PEP 562): a name is imported from its module on first use, so
importing a package (or one of its light modules, such as a registry of scores) does not import torch."""
from __future__ import annotations

import importlib
import importlib.util


def exports(package: str, names: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that resolves each of ``names`` (name -> module) on first use: the
    module's attribute ``name``, or the module itself when its last part is ``name`` (a lazily loaded module). Any
    other submodule of ``package`` is imported when first named (``embedx.store.layout`` after ``import embedx``)."""

    def __getattr__(name: str):
        if name in names:
            module = importlib.import_module(names[name])
            value = module if names[name].rpartition(".")[2] == name else getattr(module, name)
            setattr(importlib.import_module(package), name, value)
            return value
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule not imported yet
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def public(names: list[str]):
    """A module ``__dir__`` (PEP 562) listing ``names`` (the package's ``__all__``): ``dir(package)`` and tab
    completion show the public API, not the submodules imported so far."""

    def __dir__() -> list[str]:
        return sorted(names)

    return __dir__
