"""Block sources and the streamed sums behind the transfer scores.

A :class:`Source` yields the image rows in blocks (a store through ``Store.iter_images``, or in-memory arrays
sliced the same way), so the store path never holds all N rows. :func:`sweep` reads one pass: each block is
upcast to float64, checked (NaN/inf or zero rows are errors naming the row), L2-normalized, stripped of
unlabelled rows (label -1) and sorted by class (a :class:`Block`), then handed to every accumulator of the pass.

:class:`Moments` holds the sums that most scores are functions of, over labelled rows x (unit norm) with labels
y and a shift s (the mean of the first block, for numerical safety; float64 throughout)::

    n_c        = #{i : y_i = c}                       class counts
    a_c        = sum_{y_i = c} (x_i - s)              shifted class sums
    P          = sum_i (x_i - s)(x_i - s)^T           shifted total scatter (d x d)
    q_c        = sum_{y_i = c} (x_i - s)**2           shifted per-class, per-dimension sums of squares

from which, with N = sum_c n_c, a = sum_c a_c and mu = s + a/N:
    class means      mu_c = s + a_c / n_c
    centered scatter Z^T Z = sum_i (x_i - mu)(x_i - mu)^T   = P - a a^T / N
    within scatter   W     = sum_c sum_{y_i=c} (x_i - mu_c)(..)^T = P - sum_c a_c a_c^T / n_c
    Gram             F^T F = sum_i x_i x_i^T            = P + s a^T + a s^T + N s s^T
    class variances  var_c = q_c / n_c - (a_c / n_c)**2 (population, ddof 0)
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
from scipy.linalg import blas

from embedx.errors import EmbedxError

BLOCK_BYTES = 32 << 20  # float64 bytes of one block: 8,192 rows at d = 512
LABEL_BLOCK = 1 << 20


def _row_error(what: str, i: int, norm: float) -> EmbedxError:
    reason = "contains NaN or inf" if not np.isfinite(norm) else "is all zeros (it has no direction)"
    return EmbedxError(f"{what} row {i} {reason}")


def unit_rows(x, what: str = "rows", start: int = 0) -> np.ndarray:
    """float64 L2-normalized copy of ``x``; NaN/inf and zero rows raise an error naming the row."""
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _row_error(what, i + start, norms[i])
    x /= norms[:, None]
    return x


class Block:
    """The labelled rows of one block: float64, unit norm, sorted by label; per-label segments."""

    __slots__ = ("start", "x", "y", "labels", "bounds", "_shifted")

    def __init__(self, start: int, x: np.ndarray, y: np.ndarray):
        self.start, self.x, self.y = start, x, y
        self.labels, first = np.unique(y, return_index=True)
        self.bounds = np.append(first, len(y))
        self._shifted = None

    def __len__(self) -> int:
        return len(self.y)

    def with_rows(self, x: np.ndarray) -> "Block":
        """A block of other rows (aligned with these) under the same labels."""
        b = Block.__new__(Block)
        b.start, b.x, b.y, b.labels, b.bounds, b._shifted = self.start, x, self.y, self.labels, self.bounds, None
        return b

    def shifted(self, shift: np.ndarray) -> np.ndarray:
        """x - shift (computed once per block and shift)."""
        if self._shifted is None or self._shifted[0] is not shift:
            self._shifted = (shift, self.x - shift)
        return self._shifted[1]

    def class_sums(self, rows: np.ndarray) -> np.ndarray:
        """Per-label sums of ``rows`` (aligned with ``self.x``), one row per entry of ``self.labels``
        (a loop over the segments: many times faster than ``np.add.reduceat`` along axis 0)."""
        b = self.bounds
        return np.stack([rows[b[k]:b[k + 1]].sum(axis=0) for k in range(len(self.labels))])

    def segments(self) -> Iterator[tuple[int, int, int]]:
        for k, lab in enumerate(self.labels):
            yield int(lab), int(self.bounds[k]), int(self.bounds[k + 1])


class Source:
    """Image rows, labels and class texts, read in blocks of whole chunks (about BLOCK_BYTES in float64)."""

    n_rows: int
    dim: int
    n_labels: int  # labels are 0..n_labels-1, or -1 (unlabelled)
    texts: np.ndarray | None  # class text rows (raw), or None

    def raw_blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def label_blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def block_rows(self, chunk: int = 1) -> int:
        rows = max(1, BLOCK_BYTES // (8 * self.dim))
        return chunk * max(1, rows // chunk)

    def label_counts(self) -> np.ndarray:
        """Rows per label (labels read alone: 4 bytes a row, in blocks)."""
        counts = np.zeros(self.n_labels, dtype=np.int64)
        for lab in self.label_blocks():
            lab = np.asarray(lab, dtype=np.int64)
            counts += np.bincount(lab[lab >= 0], minlength=self.n_labels)[: self.n_labels]
        return counts


class StoreSource(Source):
    def __init__(self, store):
        if store.paired:
            raise EmbedxError("transfer scores need class labels (this store is paired)")
        self.store = store
        self.n_rows, self.dim, self.n_labels = store.n_images, store.dim, store.n_texts
        self.texts = store.texts() if store.n_texts else None
        self.what = "images"

    def raw_blocks(self):
        rows = self.block_rows(self.store.chunk_rows)
        for start, block, lab in self.store.iter_images(block_rows=rows, with_labels=True, reuse=True):
            yield start, block, lab

    def label_blocks(self):
        for s in range(0, self.n_rows, LABEL_BLOCK):
            yield self.store.labels(s, s + LABEL_BLOCK)


class ArraySource(Source):
    """In-memory (or memory-mapped) arrays, sliced into blocks like a store."""

    def __init__(self, x, y, texts=None):
        x = np.asarray(x) if not hasattr(x, "shape") else x
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise EmbedxError(f"images must be a non-empty 2-D array (rows x dim), got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise EmbedxError(f"images must be numeric, got dtype {x.dtype}")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != x.shape[0]:
            raise EmbedxError(f"labels must be a 1-D array with one entry per image ({x.shape[0]}), got shape "
                              f"{y.shape}")
        if np.issubdtype(y.dtype, np.floating):
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                raise EmbedxError("labels must be whole numbers (class indices)")
        elif not np.issubdtype(y.dtype, np.integer):
            raise EmbedxError(f"labels must be integers, got dtype {y.dtype}")
        y = y.astype(np.int64)
        if texts is not None:
            texts = np.asarray(texts)
            if texts.ndim != 2 or texts.shape[0] == 0 or texts.shape[1] != x.shape[1]:
                raise EmbedxError(f"texts must be a (C, {x.shape[1]}) array, got shape {texts.shape}")
        n_labels = texts.shape[0] if texts is not None else int(max(y.max(initial=-1), -1)) + 1
        bad = (y < -1) | (y >= max(n_labels, 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            valid = f"0..{n_labels - 1}, or -1 for none" if n_labels else "-1 for none"
            raise EmbedxError(f"labels out of range: row {i} has label {y[i]} (valid: {valid})")
        self.x, self.y, self.texts = x, y, texts
        self.n_rows, self.dim, self.n_labels = x.shape[0], x.shape[1], n_labels
        self.what = "images"

    def raw_blocks(self):
        rows = self.block_rows()
        for s in range(0, self.n_rows, rows):
            yield s, self.x[s:s + rows], self.y[s:s + rows]

    def label_blocks(self):
        yield self.y


def scatter_matrix(d: int, *extra: int) -> np.ndarray:
    """Zeroed Fortran-ordered (d, d[, extra]) float64 accumulator(s) for :func:`syrk_update`."""
    return np.zeros((d, d, *extra), order="F")


def syrk_update(c: np.ndarray, rows: np.ndarray) -> None:
    """c += rows^T rows through BLAS dsyrk, in place, upper triangle only (``c`` Fortran-ordered d x d, ``rows``
    C-contiguous k x d). Several times faster than ``rows.T @ rows`` for the short per-class segments."""
    rows = np.ascontiguousarray(rows)
    r = blas.dsyrk(1.0, rows.T, beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
    if not np.shares_memory(r, c):  # the wrapper had to copy c
        c[...] = r


_controller = None


def single_threaded_blas():
    """Context: BLAS on one thread. Many short per-class updates run faster (and steadier when the cores are
    shared) without OpenBLAS's thread hand-offs."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController  # a scikit-learn dependency
        except ImportError:
            return contextlib.nullcontext()
        _controller = ThreadpoolController()  # after numpy and scipy.linalg are loaded: sees both OpenBLAS
    return _controller.limit(limits=1, user_api="blas")


def symmetric(c: np.ndarray) -> np.ndarray:
    """The full symmetric matrix of a :func:`syrk_update` accumulator (its upper triangle)."""
    return np.triu(c) + np.triu(c, 1).T


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)


def sweep(source: Source, accumulators, *, validate: bool = False, progress: bool = False,
          desc: str = "pass") -> float:
    """One pass over ``source``: every accumulator's ``update(block)`` sees each block; each accumulator's
    ``seconds`` grows by its own time. Returns the seconds spent reading and preparing the blocks."""
    prep = 0.0
    bar = _progress(source.n_rows, desc, progress)
    t0 = time.perf_counter()
    try:
        for start, raw, lab in source.raw_blocks():
            xb = np.asarray(raw, dtype=np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", xb, xb))
            if validate:
                bad = ~np.isfinite(norms) | (norms == 0)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise _row_error(source.what, start + i, norms[i])
            lab = np.asarray(lab, dtype=np.int64)
            keep = np.flatnonzero(lab >= 0)
            order = keep[np.argsort(lab[keep], kind="stable")]
            x = xb[order]  # a copy, never the caller's array
            x /= norms[order, None]
            block = Block(start, x, lab[order])
            prep += time.perf_counter() - t0
            if len(block):
                for acc in accumulators:
                    t = time.perf_counter()
                    acc.update(block)
                    acc.seconds += time.perf_counter() - t
            if bar is not None:
                bar.update(len(lab))
            t0 = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    return prep + (time.perf_counter() - t0)


class Moments:
    """First-pass sums: class counts and shifted class sums always; the shifted total scatter and per-class
    per-dimension sums of squares when asked for."""

    def __init__(self, n_labels: int, dim: int, *, scatter: bool = False, sumsq: bool = False):
        self.counts = np.zeros(n_labels, dtype=np.int64)
        self.sums = np.zeros((n_labels, dim))
        self.scatter = scatter_matrix(dim) if scatter else None  # upper triangle, see total_scatter()
        self.sumsq = np.zeros((n_labels, dim)) if sumsq else None
        self.shift: np.ndarray | None = None
        self.seconds = 0.0

    def update(self, b: Block) -> None:
        if self.shift is None:
            self.shift = b.x.mean(axis=0)
        xs = b.shifted(self.shift)
        self.counts[b.labels] += np.diff(b.bounds)
        self.sums[b.labels] += b.class_sums(xs)
        if self.scatter is not None:
            syrk_update(self.scatter, xs)
        if self.sumsq is not None:
            self.sumsq[b.labels] += b.class_sums(xs * xs)

    # -- derived (present classes only, in label order) --------------------------------------------------
    @property
    def present(self) -> np.ndarray:
        return np.flatnonzero(self.counts > 0)

    @property
    def n(self) -> np.ndarray:
        """Rows per present class (float64)."""
        return self.counts[self.present].astype(np.float64)

    @property
    def N(self) -> int:  # noqa: N802
        return int(self.counts.sum())

    @property
    def a(self) -> np.ndarray:
        """Shifted class sums of the present classes (K x d)."""
        return self.sums[self.present]

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.sums.sum(axis=0) / self.N

    @property
    def class_means(self) -> np.ndarray:
        return self.shift + self.a / self.n[:, None]

    def total_scatter(self) -> np.ndarray:
        """P = sum_i (x_i - s)(x_i - s)^T (C-ordered, symmetric)."""
        return np.ascontiguousarray(symmetric(self.scatter))

    def centered_scatter(self) -> np.ndarray:
        """sum_i (x_i - mu)(x_i - mu)^T."""
        t = self.sums.sum(axis=0)
        return _sym(self.total_scatter() - np.outer(t, t) / self.N)

    def within_scatter(self) -> np.ndarray:
        """sum_c sum_{y_i = c} (x_i - mu_c)(x_i - mu_c)^T."""
        a = self.a
        return _sym(self.total_scatter() - (a / self.n[:, None]).T @ a)

    def gram(self) -> np.ndarray:
        """F^T F = sum_i x_i x_i^T."""
        t, s = self.sums.sum(axis=0), self.shift
        return _sym(self.total_scatter() + np.outer(s, t) + np.outer(t, s) + self.N * np.outer(s, s))

    def class_variances(self) -> np.ndarray:
        """Per present class, per dimension population variance (K x d)."""
        n = self.n[:, None]
        m = self.a / n
        return np.maximum(self.sumsq[self.present] / n - m * m, 0.0)


def _sym(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2
