"""What a path that is no store holds, and what would read it into one: the hint of "no store at X".

:func:`describe` looks at a local path only (a URL is never listed for a hint): a released dump folder (a kind of
``embedx.engine.kinds``' "dump" family: clip-retrieval, datacomp, an embedx export), an ``.npy`` array ((N, d):
image rows; (2, N, d): paired rows), an ``.npz`` archive, a Parquet file, or images (a kind of the "source" family,
or a folder of images): :class:`Hint` says what it is (``what``) and which reader makes a store of it (``reader``:
``"dump"``, ``"images"``, ``"paired_array"``, ``"npz"``, ``"parquet"`` or ``"embed"``, with ``arg``: the dump
format, the npz keys, the parquet columns, the source spec). The CLI turns a hint into the command to run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from embedx.errors import StoreError
from embedx.fs.locations import location


@dataclass(frozen=True)
class Hint:
    path: str
    what: str  # "a clip-retrieval dump folder"
    reader: str  # "dump" | "images" | "paired_array" | "npz" | "parquet" | "embed"
    arg: tuple = ()  # dump format / npz keys / parquet columns / source spec

    @property
    def sentence(self) -> str:
        """``it looks like WHAT, which an import reads into a store`` (or an embed, for images)."""
        how = "an embed encodes into a store" if self.reader == "embed" else "an import reads into a store"
        return f"it looks like {self.what}, which {how}"


class NoStoreError(StoreError):
    """No store at ``path``; ``hint``: what is there instead, when something an import or embed reads
    (:func:`describe`), named in the message."""

    def __init__(self, path: str, suffix: str = "", param=None):
        self.path, self.hint = path, describe(path)
        super().__init__(f"no store at {path}{suffix}" + (f": {self.hint.sentence}" if self.hint else ""), param)


def _few(items, n: int = 4) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _npy(path: str) -> Hint:
    import numpy as np

    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except Exception:
        return Hint(path, "a .npy file", "images")
    if len(shape) == 3 and shape[0] == 2:
        return Hint(path, f"a .npy array of paired rows {tuple(shape)}", "paired_array")
    return Hint(path, f"a .npy array of shape {tuple(shape)}", "images")


def _npz(path: str) -> Hint:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            keys = tuple(z.files)
    except Exception:
        keys = ()
    return Hint(path, f"a .npz archive (arrays: {_few(keys) or 'none readable'})", "npz", keys)


def _parquet(path: str) -> Hint:
    try:
        import pyarrow.parquet as pq

        import pyarrow as pa

        schema = pq.read_schema(path)
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                 or pa.types.is_fixed_size_list(f.type)]
        cols = tuple(lists + [n for n in schema.names if n not in lists])  # vector columns first: the likely rows
    except Exception:
        cols = ()
    return Hint(path, f"a Parquet file (columns: {_few(cols) or 'none readable'})", "parquet", cols)


def _kind(family: str, path: str):
    from embedx.engine import kinds

    found = kinds.recognise(family, path)
    return found[0] if len(found) == 1 else None


def describe(path: str) -> Hint | None:
    """What the local ``path`` holds, when it is something an import or an embed reads; None otherwise (a missing
    path, a URL, an unknown file)."""
    try:
        loc = location(str(path))
        if not loc.local:
            return None
        p = os.path.expanduser(loc.path)
        if not os.path.exists(p):
            return None
        low = p.lower()
        if os.path.isfile(p):
            if low.endswith(".npy"):
                return _npy(p)
            if low.endswith(".npz"):
                return _npz(p)
            if low.endswith(".parquet"):
                return _parquet(p)
            kind = _kind("source", p)
            if kind is not None:
                return Hint(path, f"a {kind.name}: data source", "embed", (f"{kind.name}:{path}",))
            return None
        if not os.path.isdir(p):
            return None
        dump = _kind("dump", p)
        if dump is not None:
            return Hint(path, f"a {dump.name} dump folder", "dump", (dump.name,))
        kind = _kind("source", p)
        if kind is not None:
            what = "a folder of class subfolders of images" if kind.name == "folder" else f"a {kind.name}: source"
            return Hint(path, what, "embed", (f"{kind.name}:{path}",))
        from embedx.sources.catalog import IMAGE_EXTENSIONS

        images = sum(1 for e in os.scandir(p) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        if images:
            return Hint(path, f"a folder of {images} images (an embed reads one subfolder per class)", "embed",
                        (f"folder:{path}",))
    except (OSError, ValueError):
        return None
    return None
