"""A store's on-disk layout, read without opening it as a :class:`embedx.store.Store`: the metadata, the arrays, the
chunk (or shard) files that hold the committed rows, and what contradicts the commit marker.

The layer under ``store``, ``storepath`` and ``integrity``: it knows zarr's files, not how rows are read.
"""
from __future__ import annotations

import os
from typing import Iterator

import zarr

from embedx.errors import StoreError

SCHEMA = 1
ARRAYS = ("images/embeddings", "images/labels", "images/ids", "texts/embeddings", "texts/names")


def is_url(path: str) -> bool:
    return "://" in str(path)


def rows_per_file(arr) -> int:
    """Rows held by each chunk file (or shard file) of a row-chunked array."""
    return int((getattr(arr, "shards", None) or arr.chunks)[0])


def chunk_files(root: str, arr, name: str, start: int, stop: int) -> list[tuple[int, str, int, int]]:
    """(k, file, first row, last row) of each chunk (or shard) file holding rows ``start:stop`` of the array
    ``name`` of the local store at ``root``."""
    if stop <= start:
        return []
    per_file = rows_per_file(arr)
    folder = os.path.join(root, *name.split("/"))
    out = []
    for k in range(start // per_file, (stop - 1) // per_file + 1):
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        out.append((k, os.path.join(folder, *key.split("/")), k * per_file, min((k + 1) * per_file, stop) - 1))
    return out


def committed_rows(meta: dict, group, name: str) -> int:
    """Rows of array ``name`` that the commit marker vouches for."""
    if name.startswith("images/") or meta.get("mode") == "paired":
        return int(meta["rows_committed"])
    return int(group[name].shape[0]) if meta.get("texts_written") else 0


def writes_every_chunk(meta: dict) -> bool:
    """Stores made by this embedx write every chunk file (even one equal to the fill value), so a missing one is
    damage. Older stores may omit chunks of fill values (labels all -1): for them zarr's fill value stands."""
    return "inventory" in (meta.get("features") or [])


def layout_problems(root: str, meta: dict, group) -> Iterator[tuple[str, str]]:
    """(array, one line) for what contradicts the commit marker: broken array metadata, a row array shorter than
    ``rows_committed`` (or, in a complete store, of another length), a missing chunk file of committed rows
    (stores that write every chunk; local stores only)."""
    n = int(meta["rows_committed"])
    rows_arrays = ARRAYS if meta.get("mode") == "paired" else ARRAYS[:3]
    for name in ARRAYS:
        try:
            arr = group[name]
        except Exception as e:  # a missing or garbled array metadata file
            yield name, f"{name}: broken array metadata ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
            continue
        if name in rows_arrays and (arr.shape[0] < n or (meta.get("complete") and arr.shape[0] != n)):
            yield name, f"{name} has {arr.shape[0]} rows but the store records {n} committed rows"
            continue
        if is_url(root) or not writes_every_chunk(meta):
            continue
        for k, f, r0, r1 in chunk_files(root, arr, name, 0, committed_rows(meta, group, name)):
            if not os.path.isfile(f):
                yield name, f"{name} chunk {k} (rows {r0}..{r1}) is missing"


def read_meta(path: str) -> dict:
    """The ``embedx`` attributes of the store at ``path`` (complete or not); StoreError if it is none."""
    try:
        g = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, OSError):
        raise StoreError(f"no store at {path}") from None
    except (ValueError, KeyError) as e:
        raise StoreError(f"{path} is not a readable zarr store ({e})") from None
    meta = g.attrs.get("embedx")
    if not isinstance(meta, dict):
        raise StoreError(f"{path} is a zarr group but not an embedx store (no 'embedx' attributes)")
    if meta.get("schema") != SCHEMA:
        raise StoreError(f"{path} has store schema {meta.get('schema')!r}; this embedx reads schema {SCHEMA}")
    return dict(meta)


def units(arr, n: int) -> list[tuple[int, int, int]]:
    """(k, first row, stop row) of each chunk (or shard) of array ``arr`` holding its first ``n`` rows."""
    per = rows_per_file(arr)
    return [(k, k * per, min((k + 1) * per, n)) for k in range((n + per - 1) // per)]
