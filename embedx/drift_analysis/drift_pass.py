"""Drift statistics of two aligned stores (the same samples in the same order), in one streamed pass.

With x_i, y_i the L2-normalized image rows of BEFORE and AFTER (N rows, float32 compute, float64 sums):

  displacement  delta_i = |y_i - x_i|; all N kept (float32) so that p50/p95 are exact. Its mean bounds the
                1-Wasserstein distance between the empirical distributions: pairing i <-> i is a coupling.
  linear CKA    with Xc = X - mean(X):  CKA = |Xc'Yc|_F^2 / (|Xc'Xc|_F |Yc'Yc|_F)  (Kornblith et al. 2019),
                from the streamed float64 sums  Sx, Sy, X'X, X'Y, Y'Y:  Xc'Yc = X'Y - Sx Sy'/N.
  kNN overlap   mean over queries q of |N_k^X(q) & N_k^Y(q)| / k, N_k = the k rows of highest cosine to q
                (q itself excluded): exact top-k streamed over blocks by embedx.kernels.knn_stream (the FAISS
                provider on the CPU; ties at the k-th score as kernels.knn documents).
  per class     zero-shot top-1 hits per class: the true class is top-1 when no class scores strictly
                higher (embedx.kernels.zeroshot_hits, as embedx.measures counts them).

The O(N d) part (displacements, CKA sums, per-class hits) runs on the executor (``embedx.engine.executor``: in
one process, or a cluster) as tasks of one block each (:func:`sums_task`), merged in its fixed tree; the driver
meanwhile streams the kNN database blocks for the sampled queries and keeps the plot rows (and, reading every
row in order, names the first bad row).
"""
from __future__ import annotations

from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np
import torch

from embedx import kernels
from embedx.engine.progress import Bar, enabled
from embedx.errors import EmbedxError
from embedx.measures.stream import normalized
from embedx.rows import duplicate_groups
from embedx.store import Store

BLOCK_BYTES = 8 << 20  # stored bytes per block and store (whole chunks): bounds the working memory


@dataclass
class CkaSums:
    """float64 sums of two aligned row sets; ``merge`` is addition (blocks can come in any order)."""

    n: int = 0
    sx: np.ndarray = None
    sy: np.ndarray = None
    xx: np.ndarray = None
    xy: np.ndarray = None
    yy: np.ndarray = None

    def add(self, x: torch.Tensor, y: torch.Tensor, sub_rows: int = 4096) -> None:
        for s0 in range(0, len(x), sub_rows):  # float64 copies of sub_rows rows at a time
            xs, ys = x[s0:s0 + sub_rows].double(), y[s0:s0 + sub_rows].double()
            parts = [p.numpy() for p in (xs.sum(0), ys.sum(0), xs.T @ xs, xs.T @ ys, ys.T @ ys)]
            if self.sx is None:
                self.sx, self.sy, self.xx, self.xy, self.yy = parts
            else:
                for name, p in zip(("sx", "sy", "xx", "xy", "yy"), parts):
                    getattr(self, name).__iadd__(p)
            self.n += len(xs)

    def merge(self, o: "CkaSums") -> "CkaSums":
        """The sums of both row sets (a new object)."""
        if self.sx is None or o.sx is None:
            return o if self.sx is None else self
        return CkaSums(self.n + o.n, self.sx + o.sx, self.sy + o.sy, self.xx + o.xx, self.xy + o.xy,
                       self.yy + o.yy)

    def cka(self) -> float:
        """Linear CKA from the sums; NaN when either side has no variance."""
        n = self.n
        cxx = self.xx - np.outer(self.sx, self.sx) / n
        cxy = self.xy - np.outer(self.sx, self.sy) / n
        cyy = self.yy - np.outer(self.sy, self.sy) / n
        den = np.linalg.norm(cxx) * np.linalg.norm(cyy)
        return float(np.linalg.norm(cxy) ** 2 / den) if den > 0 else float("nan")


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_q & b_q| / k per query row (neighbour-id arrays Q x k, no repeats within a row)."""
    return (a[:, :, None] == b[:, None, :]).any(2).sum(1) / a.shape[1]


def sample_rows(n: int, size: int | None, seed: int) -> np.ndarray:
    """All rows when ``size`` is None or >= n, else a sorted uniform sample without replacement."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


@dataclass
class PassResult:
    displacement: np.ndarray                       # N float32
    cka: float
    knn_overlap: float
    knn_queries: int
    knn_k: int
    class_hits: tuple | None = None                # (hits_before, hits_after, counts) per class
    plot: dict = field(default_factory=dict)       # normalized sampled rows: images_before/after


def _hits(x: torch.Tensor, y: np.ndarray, texts: torch.Tensor, c: int, groups) -> np.ndarray:
    """Per-class zero-shot top-1 hits, counted as ``measure`` counts them (ties to the lowest index)."""
    keep = np.flatnonzero(y >= 0)
    top1, top5 = torch.zeros(c, dtype=torch.long), torch.zeros(c, dtype=torch.long)
    if len(keep):
        xl = x if len(keep) == len(x) else x[torch.from_numpy(keep)]
        hit = torch.empty(min(kernels.zs_rows(c), len(keep)), c)
        kernels.zeroshot_hits(xl.float(), torch.from_numpy(y[keep].astype(np.int64)), texts, top1, top5, hit,
                              groups=groups)
    return top1.numpy()


@dataclass
class _Classes:
    """What per-class hits need (class stores): the normalized texts of each side and their tie groups."""

    texts: list
    groups: list
    c: int


def _classes(a: Store, b: Store) -> _Classes | None:
    if a.paired:
        return None
    texts = [normalized(s.texts(np.float32), f"{s.path} texts") for s in (a, b)]
    groups = [[torch.from_numpy(g) for g in duplicate_groups(t.numpy())] for t in texts]
    return _Classes(texts, groups, a.n_texts)


@dataclass
class SumsPart:
    """Displacements of rows start.., CKA sums and per-class hits (before, after) of consecutive blocks."""

    start: int
    disp: np.ndarray
    sums: CkaSums
    hits: list | None

    def merge(self, o: "SumsPart") -> "SumsPart":
        """``o`` holds the rows right after these (the merge tree keeps consecutive order)."""
        hits = None if self.hits is None else [h + g for h, g in zip(self.hits, o.hits)]
        return SumsPart(self.start, np.concatenate([self.disp, o.disp]), self.sums.merge(o.sums), hits)


def _fold(part: SumsPart, xs: list, start: int, cls: _Classes | None, labels: np.ndarray | None) -> None:
    """Fold one block of normalized rows (before, after; global rows start..; ``labels`` theirs) into ``part``."""
    stop = start + len(xs[0])
    part.disp[start - part.start:stop - part.start] = torch.linalg.vector_norm(xs[1] - xs[0], dim=1).numpy()
    part.sums.add(*xs)
    if cls is not None:
        for j, x in enumerate(xs):
            part.hits[j] += _hits(x, labels, cls.texts[j], cls.c, cls.groups[j])


def _empty(start: int, stop: int, cls: _Classes | None) -> SumsPart:
    hits = None if cls is None else [np.zeros(cls.c, np.int64), np.zeros(cls.c, np.int64)]
    return SumsPart(start, np.empty(stop - start, np.float32), CkaSums(), hits)


def sums_task(rng: tuple[int, int], refs: tuple, cls: _Classes | None) -> SumsPart:
    """A task: rows ``rng`` (one block) of both stores (``embedx.rowsource.resolve``) -> their :class:`SumsPart`."""
    from embedx.engine.executor import scratch
    from embedx.rowsource import resolve

    a, b = (resolve(r) for r in refs)
    start, stop = rng
    part = _empty(start, stop, cls)
    raw = []
    for j, s in enumerate((a, b)):
        x = s.read_images_into(start, scratch(f"drift pass rows {j}", stop - start, s.dim, s.dtype))
        if x.dtype != np.float32:
            f = scratch(f"drift pass float32 rows {j}", stop - start, s.dim, np.float32)
            np.copyto(f, x)
            x = f
        raw.append(x)
    _fold(part, [normalized(raw[0], f"{a.path} images", start), normalized(raw[1], f"{b.path} images", start)],
          start, cls, None if cls is None else a.labels(start, stop))
    return part


def drift_pass(a: Store, b: Store, *, knn_k: int = 10, knn_rows: np.ndarray | None = None,
               plot_rows: np.ndarray | None = None, block_rows: int | None = None,
               knn_provider: str = "auto", progress=None, executor=None) -> PassResult:
    """One pass over the image rows of both stores: displacements, CKA sums, kNN top-k (``knn_provider``: see
    ``embedx.kernels.ops.knn``), per-class hits. The ``executor`` (default: in-process) runs the displacements,
    CKA sums and hits as tasks of one block each (:func:`sums_task`, one at a time in-process: the float64
    products take every core) merged in its fixed tree, while this thread streams the kNN database blocks and
    keeps the plot rows (reading every row in order, it names the first bad row)."""
    from concurrent.futures import ThreadPoolExecutor

    from embedx.engine.executor import resolve, row_units

    executor = resolve(executor)
    n = a.n_images
    if n < 2:
        raise EmbedxError("drift needs at least 2 images")
    k = min(knn_k, n - 1)
    knn_rows = np.arange(n) if knn_rows is None else np.asarray(knn_rows)
    plot_rows = np.zeros(0, np.int64) if plot_rows is None else np.asarray(plot_rows)
    block_rows = block_rows or a.block_rows(BLOCK_BYTES)
    heaps = [kernels.knn_stream(normalized(s.images(knn_rows, np.float32), f"{s.path} images").numpy(), k,
                                exclude=knn_rows, provider=knn_provider) for s in (a, b)]
    cls = _classes(a, b)
    labels = None if cls is None else a.labels()
    units = row_units(n, block_rows)
    pool = ThreadPoolExecutor(1, thread_name_prefix="embedx-drift-tasks")
    tasks = pool.submit(executor.map_reduce, sums_task, units, SumsPart.merge, (executor.ref(a), executor.ref(b)),
                        cls, parallel=False, item_bytes=2 * block_rows * a.dim * a.dtype.itemsize)  # both stores
    pool.shutdown(wait=False)
    plot = [[], []]
    its = [s.iter_images(block_rows=block_rows, dtype=np.float32, reuse=True) for s in (a, b)]
    bar = Bar(n, "drift pass", enabled(progress))
    try:
        for (start, xa), (_, xb) in zip(*its):
            bar.update(len(xa))
            stop = start + len(xa)
            xs = [normalized(xa, f"{a.path} images", start), normalized(xb, f"{b.path} images", start)]
            sel = plot_rows[(plot_rows >= start) & (plot_rows < stop)] - start
            for j, x in enumerate(xs):
                heaps[j].add(x.numpy(), start)
                plot[j].append(x[torch.from_numpy(sel)].numpy().copy())
    except Exception:
        tasks.cancel()
        wait([tasks])  # no task of this pass outlives it (a bad row stops the tasks there too)
        raise
    finally:
        bar.close()
    whole = tasks.result()
    res = [h.result() for h in heaps]
    out = PassResult(displacement=whole.disp, cka=whole.sums.cka(), knn_overlap=float(overlap(*res).mean()),
                     knn_queries=len(knn_rows), knn_k=k,
                     plot={"images_before": np.concatenate(plot[0]), "images_after": np.concatenate(plot[1])})
    if cls is not None:
        lab = labels[labels >= 0]
        out.class_hits = (whole.hits[0], whole.hits[1], np.bincount(lab, minlength=cls.c))
    return out


def project_2d(fit: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """PCA: the top-2 principal axes of ``fit`` (its mean removed); each array projected on them."""
    fit = np.asarray(fit, np.float64)
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return [(np.asarray(x, np.float64) - mean) @ vt[:2].T for x in arrays]
