"""Feedback on long work: a progress bar per pass (rows, rows/s, ETA) on a terminal, silence elsewhere.

``progress=None`` (the default everywhere) shows bars when stderr is a terminal; True/False force it.
``EMBEDX_PROGRESS=0`` turns them off. Notices (such as the cost estimate of an exact O(N^2) silhouette) are
warnings on the ``embedx`` logger.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("embedx")


def enabled(progress) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("EMBEDX_PROGRESS", "").strip() in ("0", "false", "no"):
        return False
    return sys.stderr.isatty()


class Bar:
    """A thread-safe row counter shown as a tqdm bar when enabled (no-op otherwise)."""

    def __init__(self, total: int, desc: str, on: bool, unit: str = "rows"):
        self._bar = None
        self._lock = threading.Lock()
        if on and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
                             smoothing=0.1, mininterval=0.5)

    def update(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def notice(message: str) -> None:
    """Tell the user something about the work ahead: a warning on the ``embedx`` logger (the CLI prints it as
    ``warning: ...`` on stderr; without a handler Python's last-resort handler prints it)."""
    log.warning(message)
