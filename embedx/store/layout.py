"""A store's on-disk layout, read without opening it as a :class:`embedx.store.Store`: the metadata, the arrays, the
chunk (or shard) files that hold the committed rows, and what contradicts the commit marker.

The layer under ``store``, ``storepath`` and ``integrity``: it knows zarr's files, not how rows are read.
"""
from __future__ import annotations

from typing import Iterator

import zarr

from embedx.errors import StorageError, StoreError, one_line
from embedx.fs.locations import location
from embedx.fs.url import open_group

SCHEMA = 1
ARRAYS = ("images/embeddings", "images/labels", "images/ids", "texts/embeddings", "texts/names")
CONTENT_ARRAYS = ("images/embeddings", "images/labels", "texts/embeddings")  # with a content hash per chunk
# Chunk (or shard) files of one array's committed rows: a store claiming more is refused before any listing of
# them (a forged zarr.json of 10^12 one-row chunks would otherwise take hours of stats and ever more memory).
# Writers refuse to make more (a million files of one array: --chunk-rows 1 on a million rows).
MAX_CHUNK_FILES = 1_000_000


def exists(path: str) -> bool:
    """True if a zarr group (complete or not) lives at ``path``."""
    try:
        open_group(path, mode="r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError, OSError):
        return False


def missing_files(root: str, name: str, files: list[str]) -> set[str]:
    """The ``files`` (chunk files of array ``name`` of the store at ``root``) that do not exist: a stat each on a
    local disk, one fresh listing of the array's folder behind a URL (never fsspec's cached listing)."""
    if not files:
        return set()
    present = file_presence(root, name)
    return {f for f in files if not present(f)}


def file_presence(root: str, name: str):
    """A function telling whether a chunk file of array ``name`` of the store at ``root`` exists: a stat on a local
    disk; behind a URL, membership in one fresh listing of the array's folder (what exists, whatever is claimed)."""
    return location(root).join(name).presence()


def rows_per_file(arr) -> int:
    """Rows held by each chunk file (or shard file) of a row-chunked array."""
    return int((getattr(arr, "shards", None) or arr.chunks)[0])


def chunk_files(root: str, arr, name: str, start: int, stop: int) -> list[tuple[int, str, int, int]]:
    """(k, file, first row, last row) of each chunk (or shard) file holding rows ``start:stop`` of the array
    ``name`` of the store at ``root`` (a local path, or a URL when ``root`` is one)."""
    return list(iter_chunk_files(root, arr, name, start, stop))


def iter_chunk_files(root: str, arr, name: str, start: int, stop: int) -> Iterator[tuple[int, str, int, int]]:
    """:func:`chunk_files`, one at a time (nothing held whatever the count)."""
    if stop <= start:
        return
    per_file = rows_per_file(arr)
    folder = location(root).join(*name.split("/"))
    for k in range(start // per_file, (stop - 1) // per_file + 1):
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        yield k, folder.join(*key.split("/")).path, k * per_file, min((k + 1) * per_file, stop) - 1


def chunk_count_problem(meta: dict, name: str, arr, n: int) -> str | None:
    """One line when the ``n`` committed rows of array ``name`` cannot be what the store holds, judged before any
    chunk is listed: more chunk files than :data:`MAX_CHUNK_FILES`, or another count than the store's inventory
    records. None when the count is plausible."""
    per = rows_per_file(arr)
    count = -(-n // per) if per > 0 else None
    layout = f"{n:,} committed rows in chunks of {per:,} row{'' if per == 1 else 's'}"
    if count is None or count > MAX_CHUNK_FILES:
        what = f"make {count:,} chunk files" if count is not None else "make no valid chunk grid"
        return (f"{name}: {layout} {what}, above the limit of {MAX_CHUNK_FILES:,} chunk files per array "
                f"(forged or damaged array metadata)")
    listed = ((meta.get("integrity") or {}).get("arrays") or {}).get(name)
    if isinstance(listed, list) and len(listed) != count:
        return f"{name}: the inventory lists {len(listed):,} chunks, the array has {count:,} ({layout})"
    return None


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
    (stores that write every chunk; behind a URL one listing per array)."""
    n = meta.get("rows_committed")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        yield ARRAYS[0], f"the store records {n!r} committed rows, not a row count (damaged metadata)"
        return
    rows_arrays = ARRAYS if meta.get("mode") == "paired" else ARRAYS[:3]
    for name in ARRAYS:
        try:
            arr = group[name]
        except Exception as e:  # a missing or garbled array metadata file
            yield name, f"{name}: broken array metadata ({type(e).__name__}: {one_line(e, 160)})"
            continue
        if name in rows_arrays and (arr.shape[0] < n or (meta.get("complete") and arr.shape[0] != n)):
            yield name, f"{name} has {arr.shape[0]} rows but the store records {n} committed rows"
            continue
        committed = committed_rows(meta, group, name)
        problem = chunk_count_problem(meta, name, arr, committed)
        if problem is not None:
            yield name, problem
            continue
        if not writes_every_chunk(meta):
            continue
        present = file_presence(root, name)
        for k, f, r0, r1 in iter_chunk_files(root, arr, name, 0, committed):  # streamed: a stat each, none kept
            if not present(f):
                yield name, f"{name} chunk {k} (rows {r0}..{r1}) is missing"


def check_reachable(path: str) -> None:
    """Behind a URL, a StoreError saying so when the location cannot be read at all (credentials refused, endpoint
    unreachable), before zarr (whose concurrent requests would report it as "no store" and leave the others'
    errors for the interpreter to print at exit). Nothing for a local path or a store that is merely absent."""
    loc = location(path)
    if loc.local:
        return
    try:
        loc.invalidate()
        loc.join("zarr.json").info()
    except FileNotFoundError:
        return
    except PermissionError as e:
        raise StoreError(f"{path}: access denied ({_why(e)}); check the credentials (for s3://: AWS_ACCESS_KEY_ID "
                         f"and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
    except Exception as e:  # an unreachable or silent endpoint, no credentials, an unknown protocol or backend
        fault = loc.fault(e)
        if fault is not None:
            raise fault from None
        raise StoreError(f"cannot reach {path} ({_why(e)})") from None


def _missing_bucket(path: str) -> str:
    """" (the bucket B does not exist)" for a URL whose bucket (first path part) is missing, else ""."""
    loc = location(path)
    if loc.local:
        return ""
    try:
        bucket = loc.missing_bucket()
    except Exception:
        return ""
    return f" (the bucket {bucket} does not exist)" if bucket else ""


def _why(e: Exception) -> str:
    text = one_line(getattr(e, "strerror", None) or e, 200)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_meta(path: str) -> dict:
    """The ``embedx`` attributes of the store at ``path`` (complete or not); StoreError if it is none."""
    check_reachable(path)
    try:
        g = open_group(path, mode="r")
    except StorageError:
        raise
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, OSError) as e:
        fault = location(path).fault(e)
        if fault is not None:
            raise fault from None
        from embedx.store.looks_like import NoStoreError

        raise NoStoreError(path, _missing_bucket(path)) from None
    except (ValueError, KeyError) as e:
        raise StoreError(f"{path} is not a readable zarr store ({e})") from None
    meta = g.attrs.get("embedx")
    if not isinstance(meta, dict):
        if _creation_interrupted(g):
            raise StoreError(f"{path} holds a store whose creation was interrupted (its arrays were made, its "
                             f"metadata never was); pass overwrite=True to start it afresh")
        raise StoreError(f"{path} is a zarr group but not an embedx store (no 'embedx' attributes)")
    if meta.get("schema") != SCHEMA:
        raise StoreError(f"{path} has store schema {meta.get('schema')!r}; this embedx reads schema {SCHEMA}")
    return dict(meta)


def _creation_interrupted(group, empty: bool = False) -> bool:
    """A zarr group without attributes holding nothing but (some of, at least one of: ``empty`` allows none) a
    store's arrays: what a writer killed while creating a store in place (behind a URL) leaves, before the
    metadata that makes it a store."""
    if dict(group.attrs):
        return False
    names = {name for name, _ in group.members(max_depth=None)}
    return names <= {"images", "texts", *ARRAYS} and (empty or bool(names & set(ARRAYS)))


def creation_interrupted(path: str) -> bool:
    """True if ``path`` holds what a store creation killed before its metadata leaves (``_creation_interrupted``,
    an empty group included); such a group holds no data, and ``--overwrite`` may replace it."""
    try:
        return _creation_interrupted(open_group(path, mode="r"), empty=True)
    except StorageError:
        raise
    except Exception:
        return False


def finish_hint(meta: dict) -> str:
    """What to do about an unfinished store: embed resumes when rerun; an import does not (imports write their
    whole input again): rerun it with ``overwrite=True``."""
    if meta.get("written_by") == "import":
        return "an interrupted import does not resume: rerun the import with overwrite=True"
    return "rerun the command that wrote it to resume"


def units(arr, n: int) -> list[tuple[int, int, int]]:
    """(k, first row, stop row) of each chunk (or shard) of array ``arr`` holding its first ``n`` rows."""
    per = rows_per_file(arr)
    return [(k, k * per, min((k + 1) * per, n)) for k in range((n + per - 1) // per)]
