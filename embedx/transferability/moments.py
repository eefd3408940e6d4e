"""Block sources and the streamed sums behind the transfer scores.

Rows come from a ``RowSource`` (``embedx.rowsource``: a store, or in-memory arrays) in blocks of whole chunks, so
a store is never held in memory whole. :func:`sweep` reads one pass: each block is
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

Every accumulator is :class:`Mergeable`: its sums over disjoint blocks add. :func:`sweep` fixes the shift from
the first block with labelled rows, then the executor's tasks fold one block each into empty copies, merged in
its fixed tree (``embedx.engine.executor``): in one process or on a cluster, the same float64 additions in the
same order.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Iterator

import numpy as np
from scipy.linalg import blas

from embedx import validate
from embedx.engine.progress import Bar, enabled

BLOCK_BYTES = 32 << 20  # float64 bytes of one block: 8,192 rows at d = 512
RUN_BYTES = 128 << 20   # stored bytes of one run of blocks: a pass's item (a task, on a cluster)
LABEL_BLOCK = 1 << 20


def unit_rows(x, what: str = "rows", start: int = 0) -> np.ndarray:
    """float64 L2-normalized copy of ``x``; rows ``embedx.rows`` refuses (NaN/inf, zero) are errors naming the row."""
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    validate.rows(norms, what, start)
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


def block_rows(source) -> int:
    """Rows per transfer block: about BLOCK_BYTES of float64 rows, in whole chunks of the source."""
    chunk = source.chunk_rows
    return chunk * max(1, max(1, BLOCK_BYTES // (8 * source.dim)) // chunk)


def n_labels(source) -> int:
    """Labels are 0..n_labels-1 (or -1): the class texts of a class source, else 0..max(label)."""
    if source.n_texts:
        return source.n_texts
    top = -1
    for s in range(0, source.n_images, LABEL_BLOCK):
        top = max(top, int(source.labels(s, s + LABEL_BLOCK).max(initial=-1)))
    return top + 1


def label_counts(source, n: int) -> np.ndarray:
    """Rows per label 0..n-1 (labels read alone, 4 bytes a row, in blocks; out-of-range labels are errors)."""
    counts = np.zeros(n, dtype=np.int64)
    for s in range(0, source.n_images, LABEL_BLOCK):
        lab = np.asarray(source.labels(s, s + LABEL_BLOCK), dtype=np.int64)
        validate.label_range(lab, n)
        counts += np.bincount(lab[lab >= 0], minlength=n)[:n]
    return counts


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


def prepare(start: int, raw: np.ndarray, lab: np.ndarray, check: bool) -> Block:
    """The :class:`Block` of raw rows ``start..`` with labels ``lab``: float64, checked (``check``: a bad row is
    the one-line error naming it), unit norm, unlabelled rows dropped, sorted by label."""
    xb = np.asarray(raw, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", xb, xb))
    if check:
        validate.rows(norms, "images", start)
    lab = np.asarray(lab, dtype=np.int64)
    keep = np.flatnonzero(lab >= 0)
    order = keep[np.argsort(lab[keep], kind="stable")]
    x = xb[order]  # a copy, never the caller's array
    x /= norms[order, None]
    return Block(start, x, lab[order])


# -- the pass as tasks ------------------------------------------------------------------------------------------
class _Zeros:
    """A zero array still to be made (what a task is sent instead of the zeros themselves)."""

    __slots__ = ("shape", "dtype", "order")

    def __init__(self, a: np.ndarray):
        self.shape, self.dtype = a.shape, a.dtype
        self.order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"

    def make(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype, order=self.order)


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous == b.flags.c_contiguous
            and a.flags.f_contiguous == b.flags.f_contiguous)


class Mergeable:
    """An accumulator whose ``ADDITIVE`` fields (arrays, numbers, or nested Mergeables; None = unused) are sums
    over rows, so partials over disjoint blocks add up: ``fresh()`` is an empty copy keeping every other field
    (the fixed parameters: shift, classifier, class groups), ``merge(other)`` a new copy holding the sums of
    both. ``fresh()`` of a ``spec()`` (the copy a task is sent: zeros not yet made, references trimmed by
    ``light()``) makes the zeros where the task runs."""

    ADDITIVE: tuple = ()

    def light(self):
        """A copy without what tasks do not read (default: this object)."""
        return self

    def _copy(self, each):
        out = copy.copy(self)
        for f in self.ADDITIVE:
            setattr(out, f, each(getattr(self, f)))
        out.seconds = 0.0
        return out

    def fresh(self):
        def zero(v):
            if v is None:
                return None
            if isinstance(v, Mergeable):
                return v.fresh()
            if isinstance(v, _Zeros):
                return v.make()
            if isinstance(v, np.ndarray):
                return np.zeros_like(v)
            return type(v)(0)

        return self._copy(zero)

    def spec(self):
        def blank(v):
            if isinstance(v, Mergeable):
                return v.spec()
            return _Zeros(v) if isinstance(v, np.ndarray) else v

        return self.light()._copy(blank)

    def merge(self, other):
        out = copy.copy(self)
        for f in self.ADDITIVE:
            a, b = getattr(self, f), getattr(other, f)
            setattr(out, f, a if b is None else b if a is None else a.merge(b) if isinstance(a, Mergeable)
                    else a + b)
        out.seconds = self.seconds + other.seconds
        return out

    def take_sums(self, other) -> None:
        """Hold this object's sums plus ``other``'s (a pass's merged partial, of the same fields), computed into
        ``other``'s arrays (``b + a`` is ``a + b`` exactly) which this object then holds: its own arrays, zeros no
        pass has written, are only read (untouched pages take no memory), so a pass's sums are never held twice.
        ``other`` is used up."""
        self._add(other, take=True)

    def absorb(self, other) -> None:
        """Add ``other``'s sums into this object, in place (arrays keep their identity and memory order)."""
        self._add(other, take=False)

    def _add(self, other, take: bool) -> None:
        """The one loop of :meth:`absorb` and :meth:`take_sums`: ``take`` adds into ``other``'s writable arrays of
        the same layout and keeps them; anything else adds in place."""
        for f in self.ADDITIVE:
            a, b = getattr(self, f), getattr(other, f)
            if b is None:
                continue
            if isinstance(a, Mergeable):
                if take:
                    a.take_sums(b)
                else:
                    a.absorb(b)
            elif isinstance(a, np.ndarray):
                if take and _same_layout(a, b) and b.flags.writeable:
                    b += a
                    setattr(self, f, b)
                else:
                    a += b
            else:
                setattr(self, f, b if a is None else a + b)
        self.seconds += other.seconds


def read_raw(src, start: int, stop: int) -> np.ndarray:
    """Image rows ``start:stop`` as ``iter_images`` yields them: the stored dtype (in-memory rows: their own)."""
    from embedx.rowsource import ArrayRows

    dtype = src.x.dtype if isinstance(src, ArrayRows) else src.dtype
    return src.read_images_into(start, np.empty((stop - start, src.dim), dtype))


def _merge_parts(a, b):
    """Merge two task results (accumulators, first bad row, seconds reading and preparing): the lower bad row
    wins, else the sums add."""
    if a[1] is not None or b[1] is not None:
        return None, min(x[1] for x in (a, b) if x[1] is not None), a[2] + b[2]
    return [x.merge(y) for x, y in zip(a[0], b[0])], None, a[2] + b[2]


def _merge_parts_into(a, b):
    """:func:`_merge_parts` with ``a``'s accumulators taking the sums in place (the same additions)."""
    if a[1] is not None or b[1] is not None:
        return _merge_parts(a, b)
    for x, y in zip(a[0], b[0]):
        x.absorb(y)
    return a[0], None, a[2] + b[2]


def run_task(rng: tuple[int, int], ref, block: int, specs: list, check: bool):
    """A task: rows ``rng`` (a run of whole blocks) of the source ``ref`` (``embedx.rowsource.resolve``), block by
    block (block starts are multiples of ``block``; the next block is read meanwhile) prepared (:func:`prepare`)
    and folded into ``[s.fresh() for s in specs]`` -> (accumulators, None, seconds reading and preparing), or
    (None, (row, reason), seconds) at the first bad row (``check``)."""
    from concurrent.futures import ThreadPoolExecutor

    from embedx.engine.executor import scratch
    from embedx.rowsource import ArrayRows, resolve
    from embedx.rows import first_bad_row

    src = resolve(ref)
    dtype = src.x.dtype if isinstance(src, ArrayRows) else src.dtype
    starts = list(range(rng[0], rng[1], block))

    def read(k: int):
        start, stop = starts[k], min(starts[k] + block, rng[1])
        buf = scratch("transfer rows", stop - start, src.dim, dtype)  # the reader's: prepare copied the last
        return src.read_images_into(start, buf), src.labels(start, stop)

    accs = [s.fresh() for s in specs]
    prep = 0.0
    with ThreadPoolExecutor(1, thread_name_prefix="embedx-reader") as pool:
        nxt = pool.submit(read, 0)
        for k, start in enumerate(starts):
            t0 = time.perf_counter()
            raw, lab = nxt.result()
            if check:
                xb = np.asarray(raw, dtype=np.float64)
                bad = first_bad_row(np.sqrt(np.einsum("ij,ij->i", xb, xb)))
                del xb  # not held beside prepare's copies
                if bad is not None:
                    return None, (start + bad[0], bad[1]), prep + time.perf_counter() - t0
            b = prepare(start, raw, lab, False)
            nxt = pool.submit(read, k + 1) if k + 1 < len(starts) else None  # raw is no longer read
            prep += time.perf_counter() - t0
            if len(b):
                for acc in accs:
                    t = time.perf_counter()
                    acc.update(b)
                    acc.seconds += time.perf_counter() - t
    return accs, None, prep


def sweep(source, accumulators, *, check: bool = False, progress=None, desc: str = "pass", executor=None) -> float:
    """One pass over the image rows of ``source`` (a ``RowSource``) in blocks of :func:`block_rows` rows, cut into
    runs of about RUN_BYTES of stored rows (whole blocks): the ``executor`` (default: in-process) runs
    :func:`run_task` on every run (one at a time in-process: the float64 BLAS takes every core), each folding its
    blocks into empty copies of the ``accumulators`` (which must be :class:`Mergeable`), merges them in its fixed
    tree, and the sums are added into ``accumulators`` (:meth:`Mergeable.take_sums`); each accumulator's
    ``seconds`` grows by its own time. A run, not a block, is the item so that a pass holds few copies of the
    accumulators (one per level of the merge tree, and the run being folded; TransRate's may be 1 GiB). Fixed
    parameters set from the data are set first: each accumulator's ``prime(block)`` (Moments' shift) sees the first
    block with labelled rows, read here. ``check``: refuse bad rows (the first pass does; the error names the first
    one). Returns the seconds spent reading and preparing the blocks."""
    from embedx.engine.executor import resolve, row_units

    executor = resolve(executor)
    t0 = time.perf_counter()
    n, block = source.n_images, block_rows(source)
    primers = [a for a in accumulators if getattr(a, "needs_prime", lambda: False)()]
    for start, stop in row_units(n, block) if primers else ():
        b = prepare(start, read_raw(source, start, stop), source.labels(start, stop), check)
        if len(b):
            for a in primers:
                a.prime(b)
            break
    run_bytes = block * source.dim * np.dtype(source.dtype).itemsize
    runs = row_units(n, block * max(1, RUN_BYTES // run_bytes))
    if not runs:
        return time.perf_counter() - t0
    prime = time.perf_counter() - t0
    with Bar(n, f"transfer {desc}", enabled(progress)) as bar:
        accs, bad, prep = executor.map_reduce(run_task, runs, _merge_parts, executor.ref(source), block,
                                              [a.spec() for a in accumulators], check, bar=bar,
                                              sizes=[b - a for a, b in runs], parallel=False,
                                              item_bytes=(runs[0][1] - runs[0][0]) * source.dim *
                                              np.dtype(source.dtype).itemsize, merge_into=_merge_parts_into)
    if bad is not None:
        raise validate.error("images", f"images row {bad[0]} {bad[1]}")
    for a, part in zip(accumulators, accs):
        a.take_sums(part)
    return prime + prep


class Moments(Mergeable):
    """First-pass sums: class counts and shifted class sums always; the shifted total scatter and per-class
    per-dimension sums of squares when asked for. The shift is fixed by the first block seen (``prime``)."""

    ADDITIVE = ("counts", "sums", "scatter", "sumsq")

    def __init__(self, n_labels: int, dim: int, *, scatter: bool = False, sumsq: bool = False):
        self.counts = np.zeros(n_labels, dtype=np.int64)
        self.sums = np.zeros((n_labels, dim))
        self.scatter = scatter_matrix(dim) if scatter else None  # upper triangle, see total_scatter()
        self.sumsq = np.zeros((n_labels, dim)) if sumsq else None
        self.shift: np.ndarray | None = None
        self.seconds = 0.0

    def needs_prime(self) -> bool:
        return self.shift is None

    def prime(self, b: Block) -> None:
        """s = the mean of the first block (with labelled rows) this pass sees."""
        if self.shift is None:
            self.shift = b.x.mean(axis=0)

    def update(self, b: Block) -> None:
        self.prime(b)
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
