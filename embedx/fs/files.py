"""Where a dump lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``hf://``, ...), read through one
small set of calls, so ``embedx import --from ...`` scans and streams either the same way. Credentials and
endpoints come from the environment, as for stores (``embedx.fs.url``). Local or URL is decided by
:func:`embedx.fs.locations.location`; the functions here take and return path strings.

**Regular files only.** Every file a source or a dump reads is opened here (:func:`open_binary`,
:func:`read_capped`, :func:`parquet_source`) or checked here first (:func:`regular_size`): a local path or a
``file://`` URL must name a regular file (a FIFO would block the reader forever, ``/dev/zero`` would never end; a
FIFO, device, socket or folder is refused by a ``stat``, never opened), and another URL must be a file of its
filesystem. :class:`NotAFile` says what it is instead, in one line naming it. Reads of a whole file are capped
(:func:`read_capped`: an image file above ``IMAGE_CAP``, a small text or JSON file above ``SMALL_CAP``).
"""
from __future__ import annotations

import os
import stat as _stat

from embedx.errors import EmbedxError, one_line
from embedx.fs.locations import location

IMAGE_CAP = 256 << 20  # an image file (or tar member) above it is unreadable: counted and listed, never read
SMALL_CAP = 64 << 20  # a classes file, a caption member, an embedx.json: text, never this large


class NotAFile(EmbedxError, OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a folder; ``kind`` says which) or a file
    above a read cap. An :class:`EmbedxError` (one line, exit 2) where a listing meets it, and an ``OSError``, so
    that an image loader counts it as an unreadable image."""

    def __init__(self, path: str, kind: str, reason: str):
        super().__init__(f"{path} is {reason}")
        self.path, self.kind, self.reason = path, kind, reason

    def __reduce__(self):  # pickled whole (Dask workers, DataLoader workers): the constructor takes three args
        return (type(self), (self.path, self.kind, self.reason))

    def about(self, label: str) -> str:
        """The message with ``label`` (a shorter name) for the path."""
        return f"{label} is {self.reason}"


def _kind(mode: int) -> str | None:
    """None for a regular file, else what ``mode`` is (for messages)."""
    if _stat.S_ISREG(mode):
        return None
    for test, what in ((_stat.S_ISDIR, "a folder"), (_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISCHR, "a character device"),
                       (_stat.S_ISBLK, "a block device"), (_stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def local_path(p: str) -> str | None:
    """The path on this machine's disk of ``p``: ``p`` itself, or the path of a ``file://`` (fsspec local) URL;
    None for any other URL."""
    return location(p).local_path


def _refuse(p: str, kind: str):
    return NotAFile(p, kind, f"{kind}, not a regular file" if kind != "not a regular file" else kind)


def regular_size(p: str) -> int:
    """The size of the regular file ``p``, checked without opening it (a ``stat``; an fsspec ``info`` for a URL):
    :class:`NotAFile` for a FIFO, device, socket or folder, ``FileNotFoundError`` for nothing there."""
    loc = location(p)
    lp = loc.local_path
    if lp is not None:
        st = os.stat(lp)
        kind = _kind(st.st_mode)
        if kind:
            raise _refuse(p, kind)
        return st.st_size
    info = loc.info()
    if info.get("type") != "file":
        raise _refuse(p, "a folder" if info.get("type") == "directory" else "not a regular file")
    return int(info.get("size") or 0)


def file_problem(p: str) -> str | None:
    """None when ``p`` is a regular file, else why not (``no such file``, ``a FIFO, not a regular file``, ...)."""
    try:
        regular_size(p)
    except NotAFile as e:
        return e.reason
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror or one_line(e, 120)
    return None


def join(root: str, *parts: str) -> str:
    return location(root).join(*parts).path


def isdir(p: str) -> bool:
    return location(p).isdir()


def isfile(p: str) -> bool:
    return location(p).isfile()


def listdir(p: str) -> list[str]:
    """The names in folder ``p`` (not paths)."""
    return location(p).listdir()


def size(p: str) -> int:
    """The size of the regular file ``p`` (:func:`regular_size`: anything else is refused)."""
    return regular_size(p)


def open_binary(p: str, buffering: int = -1):
    """A seekable binary file object of the regular file ``p`` (fsspec's for a URL other than ``file://``, read in
    blocks of 8 MiB). Checked first (:func:`regular_size`), and a local file is then opened without blocking and
    checked again on the open descriptor, so a FIFO put in its place meanwhile is refused too, never waited on."""
    loc = location(p)
    lp = loc.local_path
    if lp is None:
        regular_size(p)
        return loc.open("rb", block_size=8 << 20)
    regular_size(p)
    fd = os.open(lp, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise _refuse(p, kind)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb", buffering=buffering)
        getattr(f, "raw", f).name = lp  # named by its path, as open() names it, not by the descriptor number
        return f
    except BaseException:
        os.close(fd)
        raise


def read_capped(p: str, cap: int, what: str = "a file") -> bytes:
    """The bytes of the regular file ``p``, at most ``cap`` of them: a larger one is refused (:class:`NotAFile`,
    ``kind`` "too large") before it is read, or, where its size is unknown up front, after ``cap + 1`` bytes."""
    n = regular_size(p)
    if n > cap:
        raise NotAFile(p, "too large", f"too large for {what} ({n:,} bytes; the cap is {_mib(cap)})")
    with open_binary(p) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise NotAFile(p, "too large", f"too large for {what} (over the {_mib(cap)} cap)")
    return data


def _mib(n: int) -> str:
    return f"{n >> 20} MiB"


def parquet_source(p: str):
    """What pyarrow's parquet reader takes for the regular file ``p`` (checked, :func:`regular_size`): a local
    path, or an open fsspec file for a URL."""
    if location(p).local:
        regular_size(p)
        return p
    return open_binary(p)


def rel(p: str, root: str) -> str:
    """``p`` relative to ``root`` (for messages and shard names)."""
    return location(root).rel(p)


def absolute(p: str) -> str:
    return location(p).absolute()


def basename(p: str) -> str:
    return location(p).basename()


def open_write(p: str):
    """A binary file object for writing ``p`` (fsspec's for URLs: uploaded when closed)."""
    return location(p).open("wb", block_size=64 << 20)


def makedirs(p: str) -> None:
    location(p).makedirs()


def exists(p: str) -> bool:
    return location(p).exists()


def remove_tree(p: str) -> None:
    """Remove the folder ``p`` and everything under it (missing: nothing to do)."""
    location(p).remove(ignore_errors=True)
