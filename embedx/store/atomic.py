"""Atomic file replacement: readers (and a crash at any moment) see the old file or the new one, never a mix."""
from __future__ import annotations

import os
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, fsync it, rename it onto ``path``, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    """Make the renames in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is done
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """``data`` onto ``path`` atomically (see :func:`atomic_write`). A URL (s3://, gs://, ...) is written as one
    object through fsspec (object stores replace a whole object at once: readers see the old or the new one);
    its storage errors are one line (:meth:`Location.faults`)."""
    from embedx.fs.locations import location

    loc = location(path)
    if not loc.local:
        with loc.faults():
            bucket = loc.missing_bucket()
            if bucket:
                from embedx.errors import EmbedxError

                raise EmbedxError(f"cannot write {path}: bucket {bucket!r} does not exist")
            with loc.open("wb") as f:
                f.write(data)
        return

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
