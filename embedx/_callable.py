"""``embedx.transfer``, ``embedx.drift`` and ``embedx.embed`` are both API functions and modules.

Importing a submodule sets it as an attribute of its parent package, which would hide the function of the same
name (``embedx.transfer(...)`` would then be a module). The module's class is swapped for one whose call is the
API function (``embedx.api.<name>``), so ``embedx.transfer(...)`` works whatever was imported before.
"""
from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from embedx import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let the module ``module_name`` (already in ``sys.modules``) be called as its API function."""
    sys.modules[module_name].__class__ = CallableModule
