"""What a stored embedding row must be, checked in one place by `import` and by every measure pass.

A row is accepted when, as stored (after the conversion to float16/float32), it is finite and its L2 norm lies in
[NORM_MIN, NORM_MAX]. Every measure L2-normalizes rows first, so the scale inside that range does not matter;
outside it float32 arithmetic cannot normalize the row exactly (squares underflow into subnormals or overflow),
and a number computed from it would be silently wrong. Any nonzero float16 row is inside the range.
"""
from __future__ import annotations

import numpy as np

NORM_MIN = 1e-15
NORM_MAX = 1e15


def refused(norms: np.ndarray) -> np.ndarray:
    """bool per row: its norm is not acceptable (non-finite, or outside [NORM_MIN, NORM_MAX])."""
    norms = np.asarray(norms)
    return ~np.isfinite(norms) | (norms < NORM_MIN) | (norms > NORM_MAX)


def first_bad_row(norms: np.ndarray):
    """(index, reason) of the first row whose norm is not acceptable, or None. A NaN/inf element, or a norm
    too large for float32 squares, makes the computed norm non-finite."""
    norms = np.asarray(norms)
    bad = refused(norms)
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    v = float(norms[i])
    if not np.isfinite(v):
        return i, f"contains NaN or inf (or its norm is beyond {NORM_MAX:g})"
    if v == 0:
        return i, "is all zeros (it has no direction and cannot be L2-normalized)"
    return i, (f"has norm {v:.3g}, outside [{NORM_MIN:g}, {NORM_MAX:g}] where float32 normalizes exactly; "
               f"rescale the rows (any scale inside gives the same measures)")


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """A uint64 hash of each row's bytes: identical rows get identical hashes (equal hashes are then checked)."""
    b = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
    pad = (-b.shape[1]) % 8
    if pad:
        b = np.pad(b, ((0, 0), (0, pad)))
    words = np.ascontiguousarray(b).view(np.uint64)
    mult = np.random.default_rng(0x5EED).integers(1, 2 ** 63, words.shape[1], dtype=np.uint64) | np.uint64(1)
    return (words * mult).sum(axis=1, dtype=np.uint64)  # wraps modulo 2^64, as meant


def groups_from_hashes(hashes: np.ndarray, fetch) -> list[np.ndarray]:
    """Groups (two or more, ascending) of identical rows, from their :func:`row_hashes`; ``fetch(idx)`` returns
    the rows ``idx`` to confirm each candidate group exactly (only rows sharing a hash are fetched)."""
    hashes = np.asarray(hashes)
    order = np.argsort(hashes, kind="stable")
    hs = hashes[order]
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
    sizes = np.diff(np.r_[starts, len(hs)])
    out = []
    for s0, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        idx = np.sort(order[s0:s0 + size])
        rows = np.ascontiguousarray(fetch(idx))
        keys = rows.reshape(len(rows), -1).view(np.dtype((np.void, rows.dtype.itemsize * rows[0].size))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        out += [idx[inverse.ravel() == g] for g in np.flatnonzero(counts > 1)]
    return sorted(out, key=lambda g: g[0])


def duplicate_groups(rows: np.ndarray) -> list[np.ndarray]:
    """Indices of rows that are identical, bit for bit, one int64 array per group of two or more (ascending).
    Identical class texts or captions score exactly the same against every query: their tie goes to the
    lowest index, as argmax and stable sorting break it."""
    rows = np.asarray(rows)
    if len(rows) < 2:
        return []
    return groups_from_hashes(row_hashes(rows), lambda idx: rows[idx])


def group_ids(groups: list[np.ndarray], n: int) -> np.ndarray:
    """int64 [n]: the group of each row (its position in ``groups``), -1 for rows in none."""
    gid = np.full(n, -1, np.int64)
    for k, g in enumerate(groups):
        gid[g] = k
    return gid
