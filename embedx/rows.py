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


def first_bad_row(norms: np.ndarray):
    """(index, reason) of the first row whose norm is not acceptable, or None. A NaN/inf element, or a norm
    too large for float32 squares, makes the computed norm non-finite."""
    norms = np.asarray(norms)
    bad = ~np.isfinite(norms) | (norms < NORM_MIN) | (norms > NORM_MAX)
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


def duplicate_groups(rows: np.ndarray) -> list[np.ndarray]:
    """Indices of rows that are identical, bit for bit, one int64 array per group of two or more (ascending).
    Identical class texts or captions score exactly the same against every query: their tie goes to the
    lowest index, as argmax and stable sorting break it."""
    rows = np.ascontiguousarray(rows)
    if len(rows) < 2:
        return []
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    return [np.flatnonzero(inverse == g) for g in np.flatnonzero(counts > 1)]
