"""A store's inventory, recorded when it is finalized, and ``verify``, which recomputes it (``embedx verify``).

Two checksums per chunk file (or shard) of the committed rows:

  * ``arrays``: the crc32c of the file's bytes as stored (compressed or not; every array, ids and names too).
    ``verify`` recomputes them without decoding.
  * ``content``: the NH2 hash (``kernels.content_hash``) of the decoded values of the chunk's committed rows,
    for the numeric arrays (``CONTENT_ARRAYS``). Every read of whole chunks checks them as it goes
    (``Store.read_rows_into``), so a streaming pass never uses a chunk that was overwritten, swapped or
    taken from another store; at about 20 GB/s a core this costs a few per cent of a pass
    (bench/results/integrity.md).

Opening a store already refuses missing chunk files and arrays whose length disagrees with the commit marker
(``embedx.store``); the checksums catch what keeps the right size. Stores behind fsspec URLs (s3://, gs://, ...)
record and check the same inventory, the files read through fsspec (one request each).
The checksums themselves are computed in ``embedx.store.checksums`` (below ``store``, which records them at finalize).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedx.store import checksums
from embedx.store.checksums import (  # noqa: F401  (re-exported: the inventory's names)
    ALGORITHM,
    CONTENT_ALGORITHM,
    CONTENT_ARRAYS,
    _content_hashes,
    _crc32c,
    _read_unit,
    _threads,
    unit_hash,
)
from embedx.errors import StoreError
from embedx.rows import first_bad_row, refused
from embedx.fs.url import open_group
from embedx.store.reader import Store
from embedx.store.layout import ARRAYS, chunk_files, committed_rows, layout_problems, missing_files, read_meta, \
    units, writes_every_chunk


ROW_ARRAYS = ("images/embeddings", "texts/embeddings")  # rows that must pass embedx.rows (verify checks them)


def refused_rows(rows: np.ndarray, r0: int) -> tuple[int, str, int] | None:
    """(first row, why, how many rows) of a block (store rows ``r0``..) that :func:`embedx.rows.first_bad_row`
    refuses; None when every row is accepted. float16 rows: a finite nonzero row always has an acceptable norm,
    so the bits decide (about 1.5 GB/s a core; the norms of float16 rows converted run at a sixth of that) and
    only refused rows get a norm, for the reason; float32 rows: float32 norms, computed as import computes them
    (numpy, no torch: ``info`` and ``verify`` stay light)."""
    x = np.ascontiguousarray(rows)
    if x.dtype == np.float16:
        top = np.bitwise_and(x.view(np.uint16), 0x7FFF).max(axis=1)  # largest magnitude bits of each row
        bad = np.flatnonzero((top == 0) | (top >= 0x7C00))  # all zeros, or an inf/NaN exponent
        if not len(bad):
            return None
        i, why = first_bad_row(np.linalg.norm(x[bad].astype(np.float32), axis=1))
        return r0 + int(bad[i]), why, len(bad)
    with np.errstate(over="ignore"):  # a float32 overflow is a norm out of range, reported as such
        norms = np.sqrt((x * x).sum(axis=1, dtype=np.float32))
    bad = first_bad_row(norms)
    if bad is None:
        return None
    return r0 + bad[0], bad[1], int(refused(norms).sum())


def inventory(root: str, group, meta: dict, arrays) -> dict:
    """:func:`embedx.store.checksums.inventory` of the store being finalized at ``root``, read unchecked."""
    return checksums.inventory(root, group, meta, arrays, Store(root, allow_partial=True, verify_content=False))


def verify(path: str, files: bool = True, content: bool = True) -> dict:
    """Every check of a store at once: what opening it checks (``store.layout_problems``: array lengths against
    the commit marker, chunk files of the committed rows present); with ``files``, every chunk file's crc32c;
    with ``content``, every chunk's decoded rows against their NH2 hash (when recorded) and every embedding row
    against :mod:`embedx.rows` (a NaN, inf or zero row that a writer before the row checks committed, or an
    edit, is a problem: the first such row per array and their count). Returns {"ok",
    "problems": [one line each], "chunks_checked", "inventory": bool}; never raises on damage."""
    meta = read_meta(path)
    group = open_group(path, mode="r")
    found = list(layout_problems(str(path), meta, group))
    problems = [line for _, line in found]
    damaged = {name for name, _ in found}  # arrays already reported: not checksummed as well
    integrity = meta.get("integrity") or {}
    inv = integrity.get("arrays")
    if inv is None and meta.get("complete") and writes_every_chunk(meta):
        problems.append("the inventory of chunk checksums is missing from the store's attributes")
    bad_chunks = set()
    checked = 0
    for name in ARRAYS if files else ():
        if name in damaged:
            continue
        chunks = chunk_files(str(path), group[name], name, 0, committed_rows(meta, group, name))
        checked += len(chunks)
        want = None if inv is None else inv.get(name)
        if want is None:
            continue
        if len(want) != len(chunks):
            problems.append(f"{name}: the inventory lists {len(want)} chunks, the array has {len(chunks)}")
            damaged.add(name)
            continue
        gone = missing_files(str(path), name, [f for _, f, _, _ in chunks])  # reported by layout_problems
        present = [(k, f, r0, r1) for k, f, r0, r1 in chunks if f not in gone]
        with ThreadPoolExecutor(_threads()) as pool:
            crcs = list(pool.map(lambda c: _crc32c(c[1]), present))
        for (k, f, r0, r1), crc in zip(present, crcs):
            if crc != want[k]:
                bad_chunks.add((name, k))
                problems.append(f"{name} chunk {k} (rows {r0}..{r1}): checksum mismatch (overwritten, swapped or "
                                f"from another store)")
    recorded = (integrity.get("content") or {}).get("arrays") or {}
    bad_rows = {}  # embedding array -> [(first bad row, why, rows refused)] per unit, from the content pass
    if content and recorded and not found:
        store = Store(str(path), allow_partial=True, verify_content=False)
        for name, want in recorded.items():
            if name in damaged:
                continue
            arr = store.group[name]
            us = units(arr, store.committed(name))
            if len(want) != len(us):
                problems.append(f"{name}: the inventory lists {len(want)} chunk contents, the array has {len(us)}")
                continue
            checked += 0 if files else len(us)

            def one(u, name=name, arr=arr, want=want):
                k, r0, r1 = u
                try:
                    rows = _read_unit(store, name, arr, r0, r1)
                except StoreError as e:
                    return f"{name} chunk {k} (rows {r0}..{r1 - 1}): cannot be read ({e})"
                if name in ROW_ARRAYS:
                    bad_rows.setdefault(name, []).append(refused_rows(rows, r0))
                if unit_hash(rows) != want[k]:
                    return (f"{name} chunk {k} (rows {r0}..{r1 - 1}): content checksum mismatch (overwritten, "
                            f"swapped or from another store)")
                return None

            with ThreadPoolExecutor(_threads()) as pool:
                for (k, _, _), line in zip(us, pool.map(one, us)):
                    if line is not None and (name, k) not in bad_chunks:
                        problems.append(line)
    if content and not found:  # stores without content checksums: the rows are read for this check alone
        store = Store(str(path), allow_partial=True, verify_content=False)
        for name in ROW_ARRAYS:
            if name in bad_rows or name in damaged:
                continue
            arr = store.group[name]
            us = units(arr, store.committed(name))
            with ThreadPoolExecutor(_threads()) as pool:
                bad_rows[name] = list(pool.map(
                    lambda u, name=name, arr=arr: refused_rows(_read_unit(store, name, arr, u[1], u[2]), u[1]), us))
    for name in ROW_ARRAYS:
        parts = [p for p in bad_rows.get(name, ()) if p is not None]
        if parts:
            row, why, _ = min(parts)
            count = sum(p[2] for p in parts)
            problems.append(f"{name} row {row} {why} ({count} refused row{'s' * (count > 1)} in all): measures "
                            f"refuse such rows; re-embed or re-import the data")
    return {"ok": not problems, "problems": problems, "chunks_checked": checked,
            "inventory": inv is not None or bool(recorded)}
