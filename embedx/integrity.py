"""A store's inventory: the crc32c of every chunk file of its committed rows, recorded when it is finalized, and
``verify``, which recomputes them (``embedx verify``).

Opening a store already refuses missing chunk files and arrays whose length disagrees with the commit marker
(``embedx.store``); the inventory also catches what keeps the right size: garbage written over a chunk, two
chunk files swapped, a chunk from another store. Checksums are of the files' bytes as stored (compressed or
not), so verifying never decodes. Local stores only (a URL store records no inventory).
"""
from __future__ import annotations

import os

ALGORITHM = "crc32c"


def _crc32c(path: str) -> int:
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            c.update(block)
    return int.from_bytes(c.digest(), "big")


def chunk_files(root: str, arr, name: str, rows: int) -> list[tuple[int, str, int, int]]:
    """(k, file, first row, last row) of every chunk (or shard) file holding rows ``0:rows`` of array ``name``."""
    per_file = int((getattr(arr, "shards", None) or arr.chunks)[0])
    folder = os.path.join(root, *name.split("/"))
    out = []
    for k in range(0, (rows + per_file - 1) // per_file):
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        out.append((k, os.path.join(folder, *key.split("/")), k * per_file, min((k + 1) * per_file, rows) - 1))
    return out


def committed_rows(meta: dict, group, name: str) -> int:
    """Rows of ``name`` that the commit marker vouches for."""
    if name.startswith("images/") or meta.get("mode") == "paired":
        return int(meta["rows_committed"])
    return int(group[name].shape[0]) if meta.get("texts_written") else 0


def inventory(root: str, group, meta: dict, arrays) -> dict:
    """{"algorithm", "arrays": {name: [crc32c of chunk file k, ...]}} of the committed rows."""
    return {"algorithm": ALGORITHM,
            "arrays": {name: [_crc32c(f) for _, f, _, _ in chunk_files(root, group[name], name,
                                                                         committed_rows(meta, group, name))]
                       for name in arrays}}


def verify(path: str) -> dict:
    """Every check of a store at once: the array lengths against the commit marker, every chunk file of the
    committed rows present, and (when recorded) every chunk file's crc32c against the inventory. Returns
    {"ok", "problems": [one line each], "chunks_checked", "inventory": bool}; never raises on damage."""
    import zarr

    from embedx.store import ARRAYS, read_meta

    meta = read_meta(path)
    group = zarr.open_group(str(path), mode="r")
    problems, checked = [], 0
    inv = (meta.get("integrity") or {}).get("arrays")
    strict = "inventory" in (meta.get("features") or [])  # older stores may omit chunks of fill values
    if inv is None and meta.get("complete") and "inventory" in (meta.get("features") or []):
        problems.append("the inventory of chunk checksums is missing from the store's attributes")
    names = ARRAYS if meta.get("mode") == "paired" else ARRAYS[:3]
    n = int(meta["rows_committed"])
    for name in ARRAYS:
        try:
            arr = group[name]
        except Exception as e:  # broken array metadata
            problems.append(f"{name}: broken array metadata ({type(e).__name__})")
            continue
        if name in names and (arr.shape[0] < n or (meta.get("complete") and arr.shape[0] != n)):
            problems.append(f"{name}: {arr.shape[0]} rows, but {n} committed rows are recorded")
            continue
        want = None if inv is None else inv.get(name)
        files = chunk_files(str(path), arr, name, committed_rows(meta, group, name))
        if want is not None and len(want) != len(files):
            problems.append(f"{name}: the inventory lists {len(want)} chunks, the array has {len(files)}")
            want = None
        for k, f, r0, r1 in files:
            checked += 1
            if not os.path.isfile(f):
                if strict:
                    problems.append(f"{name} chunk {k} (rows {r0}..{r1}): missing")
            elif want is not None and _crc32c(f) != want[k]:
                problems.append(f"{name} chunk {k} (rows {r0}..{r1}): checksum mismatch (overwritten, swapped or "
                                f"from another store)")
    return {"ok": not problems, "problems": problems, "chunks_checked": checked, "inventory": inv is not None}
