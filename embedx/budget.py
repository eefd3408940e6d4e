"""How much memory one computation may ask for: what a score whose algorithm needs C x C (or K x C, rows x C)
float64 memory is judged against before it allocates anything.

The budget is ``EMBEDX_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix: ``16G``) when set, else half the
machine's physical memory, and never more than the process's address-space limit (``RLIMIT_AS``) when one is set.
"""
from __future__ import annotations

import os
import re

from embedx.errors import EmbedxError

ENV = "EMBEDX_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_budget() -> int:
    """Bytes one computation may allocate (see the module docstring)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
        if not m or float(m.group(1)) <= 0:
            raise EmbedxError(f"{ENV}={raw!r} is not a size (bytes, or a number with K, M, G or T: 16G)")
        budget = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    else:
        try:
            budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError, AttributeError):
            budget = 8 << 30
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, soft)
    except (ImportError, ValueError, OSError):
        pass
    return int(budget)


def human_bytes(n: float) -> str:
    """``n`` bytes as B, KiB, MiB, GiB, TiB or PiB (powers of 1024), one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
