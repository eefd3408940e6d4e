"""What a stored embedding row must be, checked in one place by every writer (:func:`check_block`: `embed`, `import`,
`import --from`) and by every measure pass (:func:`first_bad_row`).

A row is accepted when, as stored (after the conversion to float16/float32), it is finite and its L2 norm lies in
[NORM_MIN, NORM_MAX]. Every measure L2-normalizes rows first, so the scale inside that range does not matter;
outside it float32 arithmetic cannot normalize the row exactly (squares underflow into subnormals or overflow),
and a number computed from it would be silently wrong. Any nonzero float16 row is inside the range.
"""
from __future__ import annotations

import numpy as np

from embedx.errors import EmbedxError

NORM_MIN = 1e-15
NORM_MAX = 1e15
FP16_MAX = float(np.finfo(np.float16).max)
STORE_REL_ERROR = 1e-3  # float16 rounds a row by at most 2^-11 of its norm, unless its values are subnormal
UNIT_TOL = 1e-2  # rows whose norms are all within this of 1 keep the store's "normalized" flag
CHECK_ROWS = 65536  # rows per float64 block of the general check (bounded memory for a memory-mapped array)


def check_block(x, what: str, dtype: str, offset: int = 0, norms=None, dim: int | None = None,
                dim_of: str = "the store") -> bool:
    """Whether the rows ``x`` (rows ``offset``.. of ``what``) may enter a store of ``dtype`` ("float16" |
    "float32"): a one-line EmbedxError naming the first row refused, else True if every row has unit norm (within
    UNIT_TOL), the store's "normalized" flag. Judged on the values as they will be stored:

      * a 2-D, non-empty, numeric array (of ``dim`` columns, when given: else "dimension mismatch");
      * float16 rows (stored exactly in either dtype; a finite nonzero float16 row always has a norm in range):
        finite (first NaN/inf row) and nonzero (first zero row), from float32 norms (``norms`` when the caller
        has them, e.g. from the pass that also sums the rows);
      * any other rows, in float64 blocks of CHECK_ROWS: finite; within the float16 range when stored as float16;
        a norm in [NORM_MIN, NORM_MAX] once converted; and a direction the conversion keeps (moved by at most
        STORE_REL_ERROR of the norm: float16 subnormals lose it).
    """
    if x.ndim != 2:
        raise EmbedxError(f"{what} must be a 2-D array (rows x dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise EmbedxError(f"dimension mismatch: {dim_of} have d={dim}, {what} have d={x.shape[1]}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise EmbedxError(f"{what} is empty (shape {x.shape})")
    if x.dtype == np.float16:
        return _check_float16(x, what, offset, norms)
    return _check_converted(x, what, dtype, offset)


def _check_float16(x: np.ndarray, what: str, offset: int, norms) -> bool:
    if norms is None:  # float32 norms (numpy: an import loads no torch), a block of rows at a time
        norms = np.empty(len(x), np.float32)
        for s in range(0, len(x), CHECK_ROWS):
            b = np.asarray(x[s:s + CHECK_ROWS], dtype=np.float32)
            norms[s:s + len(b)] = np.sqrt(np.einsum("ij,ij->i", b, b))
    norms = np.asarray(norms)
    nonfinite = ~np.isfinite(norms)  # a NaN/inf element (float32 squares of float16 values never overflow)
    if nonfinite.any():
        raise EmbedxError(f"{what} row {int(np.flatnonzero(nonfinite)[0]) + offset} contains NaN or inf "
                          f"({int(nonfinite.sum())} rows in all)")
    bad = first_bad_row(norms)
    if bad is not None:
        raise EmbedxError(f"{what} row {bad[0] + offset} {bad[1]}")
    return bool(len(norms) == 0 or np.abs(norms - 1).max() < UNIT_TOL)


def _check_converted(x, what: str, dtype: str, offset: int) -> bool:
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise EmbedxError(f"{what} must be numeric, got dtype {x.dtype}")
    unit = True
    for s in range(0, x.shape[0], CHECK_ROWS):
        raw = np.asarray(x[s:s + CHECK_ROWS], dtype=np.float64)
        bad = ~np.isfinite(raw).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad) + s + offset
            raise EmbedxError(f"{what} row {rows[0]} contains NaN or inf ({_count_nonfinite_rows(x)} rows "
                              f"in all)")
        if dtype == "float16" and np.abs(raw).max() > FP16_MAX:
            raise EmbedxError(f"{what} has values beyond the float16 range (|x| > {FP16_MAX:g}); "
                              f"use dtype='float32'", param="dtype")
        with np.errstate(over="ignore"):  # a float32 overflow is reported below as a norm out of range
            b = raw.astype(dtype).astype(np.float64)  # the values as stored
        norms = np.sqrt((b * b).sum(axis=1))
        bad = first_bad_row(norms)
        if bad is not None:
            raw_ok = first_bad_row(np.sqrt((raw[bad[0]:bad[0] + 1] ** 2).sum(axis=1))) is None
            stored = f" once stored as {dtype}" if raw_ok else ""
            raise EmbedxError(f"{what} row {bad[0] + s + offset}{stored} {bad[1]}")
        moved = np.sqrt(((b - raw) ** 2).sum(axis=1)) / np.sqrt((raw * raw).sum(axis=1))  # rows are nonzero here
        lossy = np.flatnonzero(moved > STORE_REL_ERROR)
        if len(lossy):
            i = int(lossy[0])
            raise EmbedxError(f"{what} row {i + s + offset} loses its direction when stored as {dtype} (it moves by "
                              f"{moved[i]:.2g} of its norm {np.sqrt((raw[i] ** 2).sum()):.3g}: its values fall below "
                              f"{dtype}'s normal range); L2-normalize the rows or use dtype='float32'", param="dtype")
        unit &= bool(np.abs(norms - 1).max() < UNIT_TOL)
    return unit


def _count_nonfinite_rows(x) -> int:
    n = 0
    for s in range(0, x.shape[0], CHECK_ROWS):
        b = np.asarray(x[s:s + CHECK_ROWS], dtype=np.float64)
        n += int((~np.isfinite(b).all(axis=1)).sum())
    return n


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
