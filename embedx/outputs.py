"""Output paths checked before any work: a result computed for an hour must not fail on a missing folder."""
from __future__ import annotations

import os

from embedx.errors import EmbedxError
from embedx.fs.locations import location


def check_output_file(path: str | None, what: str = "output", param: str | None = None) -> None:
    """Raise a one-line :class:`EmbedxError` unless a file can be written at ``path`` (None: nothing to check):
    its folder exists and is writable, and ``path`` is not a folder. Nothing is created."""
    if not path or path == "-":
        return
    p = os.path.expanduser(str(path))
    if not location(p).local:
        return  # remote outputs are checked by their writer
    folder = os.path.dirname(os.path.abspath(p)) or "."
    if os.path.isdir(p):
        raise EmbedxError(f"{what} {path} is a folder; give a file name", param=param)
    if not os.path.isdir(folder):
        raise EmbedxError(f"{what} {path}: folder {os.path.dirname(p) or '.'} does not exist", param=param)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EmbedxError(f"{what} {path}: folder {os.path.dirname(p) or '.'} is not writable", param=param)
    if os.path.exists(p) and not os.access(p, os.W_OK):
        raise EmbedxError(f"{what} {path} exists and is not writable", param=param)


def check_output_dir(path: str | None, what: str = "output folder", param: str | None = None) -> None:
    """As :func:`check_output_file` for a folder to be created (or reused) at ``path``: its parent must exist and
    be writable, and ``path`` must not be a file."""
    if not path:
        return
    p = os.path.expanduser(str(path))
    if not location(p).local:
        return
    if os.path.isfile(p):
        raise EmbedxError(f"{what} {path} is a file; give a folder", param=param)
    parent = os.path.dirname(os.path.abspath(p.rstrip("/"))) or "."
    if not os.path.isdir(parent):
        raise EmbedxError(f"{what} {path}: folder {parent} does not exist", param=param)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EmbedxError(f"{what} {path}: folder {parent} is not writable", param=param)
