"""Where a path lives, decided once: :func:`location` makes a local path or an fsspec URL (``s3://``, ``gs://``,
``hf://``, ``memory://``, ``file://``, ...) into a :class:`Location`, and code asks that object instead of looking
at the string. It is the one place (with :mod:`embedx.fs.url`, which builds the filesystem behind a URL) where
"local or URL" is decided.

A :class:`LocalLocation` is a path on this machine's disk; a :class:`UrlLocation` is a path in an fsspec
filesystem, built on first use by :func:`embedx.fs.url.url_fs` (S3 timeouts and retries) and shared by every
request to it. Both answer the same questions (``exists``, ``isdir``, ``listdir``, ``open``, ``join``, ``remove``,
...) the way their storage answers them best: a ``stat`` per file on a disk, one fresh listing behind a URL.

**Capabilities** (:meth:`Location.can`) are the local fast paths a caller may take, never assumed from the string:

  ``preadv``   positional reads straight into a caller's buffer (``os.preadv``; several threads at once):
               direct chunk reads (``embedx.store.chunkio``), npy rows of a dump
  ``rename``   a folder staged beside its target and renamed into place (``rename(2)``, and Linux's
               ``renameat2(RENAME_EXCHANGE)`` over an old one: ``embedx.store.placement``); without it a store
               or an export is written in place, its metadata last
  ``flock``    an advisory writer lock the kernel drops when its holder dies (``fcntl.flock``)
  ``sync``     data made durable on demand before a commit marker (``os.sync``); an object is durable once stored
  ``fadvise``  read-ahead advice to the kernel (``posix_fadvise``)

A URL has none of them (a ``file://`` URL included: it stays a URL for stores; input readers read it through its
:attr:`Location.local_path`). Storage faults of a URL (no credentials, an endpoint that does not answer) become
one-line errors through :meth:`Location.fault` / :meth:`Location.faults`; a local path has none.
"""
from __future__ import annotations

import os
import posixpath
import shutil

from embedx.fs.url import is_url, storage_fault, storage_faults, url_fs

PREADV = "preadv"
RENAME = "rename"
FLOCK = "flock"
SYNC = "sync"
FADVISE = "fadvise"
CAPABILITIES = frozenset({PREADV, RENAME, FLOCK, SYNC, FADVISE})


def _local_capabilities() -> frozenset:
    try:
        import fcntl  # noqa: F401
        flock = {FLOCK}
    except ImportError:  # pragma: no cover - not on Linux
        flock = set()
    return frozenset({RENAME, *flock, *({PREADV} if hasattr(os, "preadv") else ()),
                      *({SYNC} if hasattr(os, "sync") else ()),
                      *({FADVISE} if hasattr(os, "posix_fadvise") else ())})


_LOCAL = _local_capabilities()


def location(path) -> "Location":
    """The :class:`Location` of ``path`` (a ``str`` or ``os.PathLike``; a Location is returned as it is): a
    :class:`UrlLocation` for ``PROTOCOL://...``, else a :class:`LocalLocation`."""
    if type(path) is not str:
        if isinstance(path, Location):
            return path
        path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return UrlLocation(path) if is_url(path) else LocalLocation(path)


class Location:
    """A local path or a URL, with what its storage can do (see the module docstring). ``path`` is the string as
    given (a URL keeps its protocol)."""

    __slots__ = ("path",)
    local: bool = False
    capabilities: frozenset = frozenset()

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __str__(self) -> str:
        return self.path

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self), self.path))

    def can(self, capability: str) -> bool:
        """Whether this location's storage has ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown filesystem capability {capability!r}; one of {', '.join(sorted(CAPABILITIES))}")
        return capability in self.capabilities

    # -- faults -------------------------------------------------------------------------------------------
    def fault(self, e: BaseException):
        """The one-line :class:`embedx.errors.StorageError` for ``e`` when it is a fault of the storage behind this
        URL (:func:`embedx.fs.url.storage_fault`); None for anything else, and always for a local path."""
        return None

    def faults(self):
        """A context in which a storage fault of this URL becomes a one-line StorageError naming it (nothing
        changes for a local path)."""
        return storage_faults(self.path)


class LocalLocation(Location):
    """A path on this machine's disk."""

    __slots__ = ()
    local = True
    capabilities = _LOCAL

    @property
    def local_path(self) -> str:
        """The path on this machine's disk: the path itself."""
        return self.path

    # -- names --------------------------------------------------------------------------------------------
    def join(self, *parts: str) -> "LocalLocation":
        return LocalLocation(os.path.join(self.path, *parts))

    def parent(self) -> "LocalLocation":
        """The folder holding this path (made absolute)."""
        return LocalLocation(os.path.dirname(os.path.abspath(self.path)))

    def resolve(self, other: str) -> str:
        """``other`` as a path or URL: itself when it is a URL or an absolute path, else joined onto this folder."""
        return other if is_url(other) or os.path.isabs(other) else os.path.join(self.path, other)

    def rel(self, p: str) -> str:
        """``p`` relative to this folder (for messages and shard names)."""
        return os.path.relpath(p, self.path)

    def absolute(self) -> str:
        return os.path.abspath(self.path)

    def basename(self) -> str:
        return os.path.basename(os.path.abspath(self.path).rstrip("/"))

    def expanduser(self) -> "LocalLocation":
        return LocalLocation(os.path.expanduser(self.path))

    # -- queries ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.path)

    def isdir(self) -> bool:
        return os.path.isdir(self.path)

    def isfile(self) -> bool:
        return os.path.isfile(self.path)

    def listdir(self) -> list[str]:
        """The names in this folder (not paths)."""
        return os.listdir(self.path)

    def files(self) -> list[str]:
        """The paths of the regular files in this folder."""
        return [os.path.join(self.path, f) for f in os.listdir(self.path) if os.path.isfile(os.path.join(self.path, f))]

    def glob(self) -> list[str]:
        """The regular files this glob pattern matches, sorted."""
        import glob

        return sorted(p for p in glob.glob(self.path) if os.path.isfile(p))

    def info(self) -> dict:
        """{"name", "size", "type" ("file", "directory" or "other"), "mode"} of a ``stat`` (follows links)."""
        import stat

        st = os.stat(self.path)
        kind = "file" if stat.S_ISREG(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "other"
        return {"name": self.path, "size": st.st_size, "type": kind, "mode": st.st_mode}

    def holds_anything(self) -> bool:
        """Something is at this path: a file, or a folder with entries (an empty folder counts as free)."""
        return os.path.exists(self.path) and (not os.path.isdir(self.path) or bool(os.listdir(self.path)))

    def presence(self):
        """A function telling whether a file (its path, under this folder) exists: a ``stat`` each."""
        return os.path.isfile

    def du(self) -> int:
        """Bytes of the files under this folder (0 when there is none; a file that vanishes meanwhile counts 0)."""
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total

    # -- data ---------------------------------------------------------------------------------------------
    def open(self, mode: str = "rb", block_size: int | None = None, **options):
        """The file opened with ``open()`` (``block_size`` and fsspec ``options`` are for URLs)."""
        return open(self.path, mode)

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of the file (fewer at its end)."""
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(max(stop - start, 0))

    # -- changes ------------------------------------------------------------------------------------------
    def makedirs(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def remove(self, ignore_errors: bool = False) -> None:
        """Remove the folder (and everything under it) or the file at this path; nothing when there is none."""
        if os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=ignore_errors)
        elif os.path.lexists(self.path):
            try:
                os.remove(self.path)
            except OSError:
                if not ignore_errors:
                    raise

    def invalidate(self) -> None:
        """Forget cached listings of this path (a disk keeps none)."""

    def sync(self) -> None:
        """Make the data written so far durable (``os.sync``)."""
        if SYNC in self.capabilities:
            os.sync()


class UrlLocation(Location):
    """A path in an fsspec filesystem (a URL), the filesystem built on first use by :func:`embedx.fs.url.url_fs`."""

    __slots__ = ("_fs",)
    local = False
    capabilities = frozenset()

    def __init__(self, path: str):
        self.path, self._fs = path, None

    def __getstate__(self):  # the filesystem is made again in each process
        return {"path": self.path}

    def __setstate__(self, state):
        self.path, self._fs = state["path"], None

    def _filesystem(self):
        """(fsspec filesystem, path within it)."""
        if self._fs is None:
            self._fs = url_fs(self.path)
        return self._fs

    @property
    def local_path(self) -> str | None:
        """The path on this machine's disk of a ``file://`` (fsspec local) URL; None for any other URL."""
        from fsspec.implementations.local import LocalFileSystem

        fs, q = self._filesystem()
        return q if isinstance(fs, LocalFileSystem) else None

    def fault(self, e: BaseException):
        return storage_fault(e, self.path)

    # -- names --------------------------------------------------------------------------------------------
    def join(self, *parts: str) -> "UrlLocation":
        return UrlLocation("/".join([self.path.rstrip("/"), *parts]))

    def parent(self) -> "UrlLocation":
        return UrlLocation(posixpath.dirname(self.path))

    def resolve(self, other: str) -> str:
        return other if is_url(other) or os.path.isabs(other) else posixpath.join(self.path, other)

    def rel(self, p: str) -> str:
        r = self.path.rstrip("/") + "/"
        return p[len(r):] if p.startswith(r) else p

    def absolute(self) -> str:
        return self.path.rstrip("/")

    def basename(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def expanduser(self) -> "UrlLocation":
        return self

    # -- queries ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        fs, q = self._filesystem()
        return bool(fs.exists(q))

    def isdir(self) -> bool:
        fs, q = self._filesystem()
        return bool(fs.isdir(q))

    def isfile(self) -> bool:
        fs, q = self._filesystem()
        return bool(fs.isfile(q))

    def listdir(self) -> list[str]:
        fs, q = self._filesystem()
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(q, detail=False)]

    def files(self) -> list[str]:
        """The URLs of the entries of this folder (one listing)."""
        fs, q = self._filesystem()
        return [fs.unstrip_protocol(f) for f in fs.ls(q, detail=False)]

    def glob(self) -> list[str]:
        """The URLs this glob pattern matches, sorted."""
        fs, q = self._filesystem()
        return [fs.unstrip_protocol(f) for f in sorted(fs.glob(q))]

    def info(self) -> dict:
        """fsspec's ``info`` ("name", "size", "type": "file" or "directory", ...)."""
        fs, q = self._filesystem()
        return fs.info(q)

    def holds_anything(self) -> bool:
        """Anything at this path or under it, from a fresh look (never fsspec's cached listing)."""
        fs, q = self._filesystem()
        _forget(fs, q)
        return bool(fs.exists(q))

    def presence(self):
        """A function telling whether a file (its URL, under this folder) exists: membership in one fresh listing
        of the folder (what exists, whatever is claimed)."""
        fs, folder = self._filesystem()
        _forget(fs, folder)
        have = {p.rstrip("/") for p in fs.find(folder)}
        return lambda f: fs._strip_protocol(f).rstrip("/") in have

    def du(self) -> int:
        fs, q = self._filesystem()
        _forget(fs, q)
        return int(sum(fs.du(q, total=False).values())) if fs.exists(q) else 0

    def missing_bucket(self) -> str | None:
        """The bucket (first part of the path) when it does not exist; None when it does or the URL has none."""
        fs, q = self._filesystem()
        bucket = q.strip("/").split("/")[0]
        if q.startswith("/") or not bucket or fs.exists(bucket):
            return None
        return bucket

    # -- data ---------------------------------------------------------------------------------------------
    def open(self, mode: str = "rb", block_size: int | None = None, **options):
        """fsspec's file object (written ones are uploaded when closed)."""
        fs, q = self._filesystem()
        if block_size is not None:
            options["block_size"] = block_size
        return fs.open(q, mode, **options)

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of the file in one ranged request (fewer at its end)."""
        fs, q = self._filesystem()
        return fs.cat_file(q, start=start, end=stop)

    # -- changes ------------------------------------------------------------------------------------------
    def makedirs(self) -> None:
        fs, q = self._filesystem()
        fs.makedirs(q, exist_ok=True)  # object stores: nothing to make

    def remove(self, ignore_errors: bool = False) -> None:
        """Remove everything at or under this URL (a fresh look first); nothing when there is none."""
        fs, q = self._filesystem()
        _forget(fs, q)
        if fs.exists(q):
            fs.rm(q, recursive=True)

    def invalidate(self) -> None:
        """Forget fsspec's cached listings of this path, of its parents and of everything under it (so the next
        look is fresh: a listing, and the ETags a read of a file checks, of what is there now)."""
        fs, q = self._filesystem()
        _forget(fs, q)

    def sync(self) -> None:
        """Nothing to do: an object is durable once stored."""


def _forget(fs, q: str) -> None:
    """Drop fsspec's cached listings of ``q``, its parents (``invalidate_cache``) and every folder under it: a
    listing (``find``) never replaces a cached one of a subfolder, so an object rewritten since it was listed
    would keep its old size and ETag there, and a read of it would fail its ETag check."""
    fs.invalidate_cache(q)
    cache = getattr(fs, "dircache", None)
    if cache:
        base = fs._strip_protocol(q).rstrip("/") + "/"
        for k in [k for k in list(cache) if str(k).startswith(base)]:
            cache.pop(k, None)
