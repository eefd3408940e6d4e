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


def inventory(root: str, group, meta: dict, arrays) -> dict:
    """{"algorithm", "arrays": {name: [crc32c of chunk file k, ...]}} of the committed rows."""
    from embedx.store import chunk_files, committed_rows

    return {"algorithm": ALGORITHM,
            "arrays": {name: [_crc32c(f) for _, f, _, _ in chunk_files(root, group[name], name, 0,
                                                                         committed_rows(meta, group, name))]
                       for name in arrays}}


def verify(path: str) -> dict:
    """Every check of a store at once: what opening it checks (``store.layout_problems``: array lengths against
    the commit marker, chunk files of the committed rows present), and (when recorded) every chunk file's crc32c
    against the inventory. Returns {"ok", "problems": [one line each], "chunks_checked", "inventory": bool};
    never raises on damage."""
    import zarr

    from embedx.store import ARRAYS, chunk_files, committed_rows, layout_problems, read_meta, writes_every_chunk

    meta = read_meta(path)
    group = zarr.open_group(str(path), mode="r")
    found = list(layout_problems(str(path), meta, group))
    problems = [line for _, line in found]
    damaged = {name for name, _ in found}  # arrays already reported: not checksummed as well
    inv = (meta.get("integrity") or {}).get("arrays")
    if inv is None and meta.get("complete") and writes_every_chunk(meta):
        problems.append("the inventory of chunk checksums is missing from the store's attributes")
    checked = 0
    for name in ARRAYS:
        if name in damaged:
            continue
        files = chunk_files(str(path), group[name], name, 0, committed_rows(meta, group, name))
        checked += len(files)
        want = None if inv is None else inv.get(name)
        if want is None:
            continue
        if len(want) != len(files):
            problems.append(f"{name}: the inventory lists {len(want)} chunks, the array has {len(files)}")
            continue
        for k, f, r0, r1 in files:
            if os.path.isfile(f) and _crc32c(f) != want[k]:
                problems.append(f"{name} chunk {k} (rows {r0}..{r1}): checksum mismatch (overwritten, swapped or "
                                f"from another store)")
    return {"ok": not problems, "problems": problems, "chunks_checked": checked, "inventory": inv is not None}
