"""``embedx.transfer``, ``embedx.drift`` and ``embedx.embed`` are both API functions and modules.

Importing a submodule sets it as an attribute of its parent package, which would hide a function of the same name
(``embedx.transfer(...)`` would then be a module). So the module itself is made callable: its class is swapped for
one whose call is the API function the module names (``make_callable(__name__, function)``).
"""
from __future__ import annotations

import importlib
import sys
import types


class CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        function = self.__dict__["__api_function__"]
        if isinstance(function, str):  # "module:name", imported on the first call
            module, _, name = function.partition(":")
            function = self.__dict__["__api_function__"] = getattr(importlib.import_module(module), name)
        return function(*args, **kwargs)


def make_callable(module_name: str, function) -> None:
    """Let the module ``module_name`` (already in ``sys.modules``) be called as ``function`` (a function, or
    "module:name" to import on the first call)."""
    module = sys.modules[module_name]
    module.__dict__["__api_function__"] = function
    module.__class__ = CallableModule
