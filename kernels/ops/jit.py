"""numba kernels compiled once per installation: ``njit_cached`` is ``numba.njit(cache=True)`` where numba finds a
writable cache location, plain ``numba.njit`` (compiled in each process) where it finds none.

numba looks for a cache location, in order (``numba.core.caching``): ``NUMBA_CACHE_DIR`` when set; ``__pycache__``
beside the kernel's source file (an editable install: the checkout; a wheel: ``site-packages/embedx/kernels/ops``,
writable in a venv); the user's cache folder (``~/.cache/numba``, ``$XDG_CACHE_HOME``). A kernel's first call in
a fresh installation compiles it and writes the cache; later processes load it (an index keyed by the source
file's size and time, so an edit recompiles). A read-only install with no writable cache folder (set
``NUMBA_CACHE_DIR`` there) compiles in each process and says so in one debug line (logger ``embedx.kernels``).

Importing this module does not import numba: the ops that use it load their numba kernels on first use only, and
pick numpy below the size at which the numba runtime's start-up (about 0.5 s on a first call, even from the
cache) pays for itself.
"""
from __future__ import annotations

import logging

log = logging.getLogger("embedx.kernels")
_warned = False


def njit_cached(**options):
    """Decorator: ``numba.njit(cache=True, **options)``, or ``numba.njit(**options)`` with one debug line (once
    per process) when no cache location is writable."""
    from numba import njit

    def wrap(fn):
        global _warned
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available for file ..."
            if not _warned:
                _warned = True
                log.debug("numba kernels compile in each process: no writable cache location (%s); set "
                          "NUMBA_CACHE_DIR to a writable folder", e)
            return njit(**options)(fn)

    return wrap
