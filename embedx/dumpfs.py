"""Where a dump lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``hf://``, ...), read through one
small set of calls, so ``embedx import --from ...`` scans and streams either the same way. Credentials and
endpoints come from the environment, as for stores (``embedx.storelayout.url_fs``)."""
from __future__ import annotations

import os

from embedx.storelayout import is_url, url_fs


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_url(root) else os.path.join(root, *parts)


def isdir(p: str) -> bool:
    if is_url(p):
        fs, q = url_fs(p)
        return bool(fs.isdir(q))
    return os.path.isdir(p)


def isfile(p: str) -> bool:
    if is_url(p):
        fs, q = url_fs(p)
        return bool(fs.isfile(q))
    return os.path.isfile(p)


def listdir(p: str) -> list[str]:
    """The names in folder ``p`` (not paths)."""
    if is_url(p):
        fs, q = url_fs(p)
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(q, detail=False)]
    return os.listdir(p)


def size(p: str) -> int:
    if is_url(p):
        fs, q = url_fs(p)
        return int(fs.size(q))
    return os.path.getsize(p)


def open_binary(p: str):
    """A seekable binary file object (fsspec's for URLs, read in blocks of 8 MiB)."""
    if is_url(p):
        fs, q = url_fs(p)
        return fs.open(q, "rb", block_size=8 << 20)
    return open(p, "rb")


def parquet_source(p: str):
    """What pyarrow's parquet reader takes for ``p``: the path, or an open fsspec file for a URL."""
    return open_binary(p) if is_url(p) else p


def rel(p: str, root: str) -> str:
    """``p`` relative to ``root`` (for messages and shard names)."""
    if is_url(root):
        r = root.rstrip("/") + "/"
        return p[len(r):] if p.startswith(r) else p
    return os.path.relpath(p, root)


def absolute(p: str) -> str:
    return p.rstrip("/") if is_url(p) else os.path.abspath(p)


def basename(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1] if is_url(p) else os.path.basename(os.path.abspath(p).rstrip("/"))


def open_write(p: str):
    """A binary file object for writing ``p`` (fsspec's for URLs: uploaded when closed)."""
    if is_url(p):
        fs, q = url_fs(p)
        return fs.open(q, "wb", block_size=64 << 20)
    return open(p, "wb")


def makedirs(p: str) -> None:
    if is_url(p):
        fs, q = url_fs(p)
        fs.makedirs(q, exist_ok=True)  # object stores: nothing to make
    else:
        os.makedirs(p, exist_ok=True)


def exists(p: str) -> bool:
    if is_url(p):
        fs, q = url_fs(p)
        return bool(fs.exists(q))
    return os.path.exists(p)


def remove_tree(p: str) -> None:
    """Remove the folder ``p`` and everything under it (missing: nothing to do)."""
    if is_url(p):
        fs, q = url_fs(p)
        if fs.exists(q):
            fs.rm(q, recursive=True)
    else:
        import shutil

        shutil.rmtree(p, ignore_errors=True)
