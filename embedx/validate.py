"""Input validation, once, at the boundary of each entry point (the Python API and, through it, the CLI).

Errors are :class:`~embedx.errors.EmbedxError` with ``param`` naming the Python parameter at fault (``labels``,
``knn_k``, ...); the CLI maps a parameter to its flag in one place. What a row must be is
:mod:`embedx.rows` (finite, norm within [NORM_MIN, NORM_MAX]); :func:`rows` applies it to a block.
"""
from __future__ import annotations

import numpy as np

from embedx.errors import EmbedxError
from embedx.rows import first_bad_row


def error(param: str | None, message: str) -> EmbedxError:
    """An input error about the Python parameter ``param``."""
    return EmbedxError(message, param=param)


def names(value) -> list[str] | None:
    """Names as a list: one string (``"gap"``, or several comma-separated: ``"acs,gap"``) or a list/tuple of them,
    each stripped, blanks and repeats dropped; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return list(dict.fromkeys(v.strip() for v in items if isinstance(v, str) and v.strip()))


def matrix(a: np.ndarray, param: str) -> None:
    """``a`` is a non-empty 2-D numeric array (rows x dim)."""
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise error(param, f"{param} must be a non-empty 2-D array (rows x dim), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise error(param, f"{param} must be numeric, got dtype {a.dtype}")


def same_dim(x: np.ndarray, t: np.ndarray) -> None:
    if x.shape[1] != t.shape[1]:
        raise error("texts", f"dimension mismatch: images have d={x.shape[1]}, texts have d={t.shape[1]}")


def labels(y, n: int, n_classes: int | None) -> np.ndarray:
    """int64 class index per image, one per image, each in [-1, n_classes) (-1 = no label). With
    ``n_classes=None`` the classes are 0..max(y)."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise error("labels", f"labels must be a 1-D array with one entry per image ({n}), got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise error("labels", "labels must be whole numbers (class indices)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise error("labels", f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n_classes is None:
        n_classes = int(max(y.max(initial=-1), -1)) + 1
    bad = (y < -1) | (y >= max(n_classes, 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        valid = f"0..{n_classes - 1}, or -1 for none" if n_classes else "-1 for none"
        raise error("labels", f"labels out of range: row {i} has label {y[i]} (valid: {valid})")
    return y


def label_range(y: np.ndarray, n_classes: int) -> None:
    """Stored labels of a block lie in [-1, n_classes)."""
    if y.size and (y.max() >= n_classes or y.min() < -1):
        raise error("labels", f"image labels must lie in [-1, {n_classes}); found {y.min()}..{y.max()}")


def rows(norms: np.ndarray, what: str, start: int = 0) -> None:
    """Every row norm of a block (rows ``start``.. of ``what``) is acceptable (:func:`embedx.rows.first_bad_row`)."""
    bad = first_bad_row(norms)
    if bad is not None:
        raise error(what, f"{what} row {bad[0] + start} {bad[1]}")


def positive_int(value, param: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise error(param, f"{param} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_number(value, param: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
            or value <= 0:
        raise error(param, f"{param} must be a positive number, got {value!r}")
    return float(value)


def choice(value, param: str, options) -> str:
    if value not in options:
        raise error(param, f"{param} must be {' or '.join(map(str, options))}, got {value!r}")
    return value
