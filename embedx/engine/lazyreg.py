"""One mechanism under both registries (scores: ``embedx.engine.registry``; input kinds: ``embedx.engine.kinds``):
families of named entries, filled by the modules that implement them, which are imported on the first lookup."""
from __future__ import annotations

import importlib


class LazyRegistry:
    """``providers``: family -> the modules whose import registers that family's entries."""

    def __init__(self, providers: dict[str, tuple[str, ...]], what: str):
        self.providers, self.what = providers, what
        self._entries: dict[str, dict] = {f: {} for f in providers}
        self._loaded: set = set()

    def check_family(self, family: str) -> None:
        if family not in self.providers:
            raise ValueError(f"family must be one of {tuple(self.providers)}, got {family!r}")

    def add(self, family: str, name: str, entry, same) -> None:
        """Register ``entry`` as ``name``; registering another entry under a taken name (``same(old)`` false, where
        re-importing a module gives ``same(old)`` true) is a ValueError."""
        old = self._entries[family].get(name)
        if old is not None and not same(old):
            raise ValueError(f"{family} {self.what} {name!r} is registered twice")
        self._entries[family][name] = entry

    def remove(self, family: str, name: str) -> None:
        """Forget ``name`` (a plugin's or a test's registration); KeyError when it is not registered."""
        del self._entries[family][name]

    def entries(self, family: str) -> dict:
        """Every registered entry of ``family``, in registration order (its providers imported first)."""
        if family not in self._loaded:
            self._loaded.add(family)
            for mod in self.providers[family]:
                importlib.import_module(mod)
        return dict(self._entries[family])
