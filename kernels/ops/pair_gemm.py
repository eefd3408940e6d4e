"""The symmetric block-pair op on the CPU at GEMM speed: BLAS sgemm tiles, reduced by one fused numba pass.

For a block pair (I, J) of one point set (``y`` None: the diagonal block J = I):

  S_xy[p, k] = sum_{q in J: y_labels[q] = k} ||x_p - y_q||     (I's rows over J's columns)
  S_yx[q, k] = sum_{p in I: x_labels[p] = k} ||x_p - y_q||     (J's rows over I's columns)

Rows and columns are first sorted by label (stable), so a tile's columns of one cluster are one contiguous
segment and its rows of one cluster consecutive rows. Each ``block`` x ``block`` tile's rows are cut into one
part per thread, and each thread, for its part:

  1. ``G = X Y^T``: one float32 BLAS GEMM (torch.mm, single-threaded: the threads are the parts) into the
     thread's own buffer, kept between tiles (no page faults);
  2. one numba pass over G, row by row while the row is in L1: ``d2 = |x|^2 + |y|^2 - 2 G`` (float32), the pairs
     with ``d2 < NEAR * (|x|^2 + |y|^2)`` (cancellation: near-duplicates) recomputed as ``sum_k (x_k - y_k)^2``
     with float64 differences, ``d = sqrt(max(d2, 0))``, and both reductions: the row's segment sums (float64)
     into S_xy and the running column sums of the current row cluster (float64) into S_yx^T, flushed when the
     row label changes.

Every distance is computed once (the diagonal block: only the tiles on and above the diagonal; a diagonal tile
is reduced along rows only, its self-pairs exactly 0). A concentrated column tile (``|mean|^2 > CONCENTRATED *
mean |y|^2``) is centred on its mean before the GEMM, as in the torch tiles (distances do not change under a
shift; the cancellation shrinks with the norms). The near-pair recompute costs O(d) for each near pair only;
a row without one never leaves the vectorized loops. Float64 partial sums everywhere: the float32 distances
are the only rounding, so the sums agree with the float64 brute force to ~1e-7 relative.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from embedx.kernels.ops.jit import njit_cached
from embedx.kernels.ops.near import CONCENTRATED, NEAR

PART_ROWS = 256    # a tile's rows are split between threads in parts of at least this many rows
# threads per tile (each: its rows' single-threaded GEMM, then their fused pass); 0: torch's intra-op thread
# count. Measured on the 2-core VM, 4096 x 4096 x 512 tile: one 2-thread GEMM then a 1-thread pass 0.133 s
# (the pass 0.020 s; a 2-thread pass gained nothing, torch's OpenMP team spinning), two threads each doing
# half the rows' GEMM and pass 0.107 s, the GEMM alone 0.093 s
REDUCE_THREADS = 0
# rows/cols per GEMM tile: a 4096 x 4096 tile (64 MiB) ran sgemm at 84-94% of the 4096^3 rate, 2048 at 75-86%,
# 1024 at 48%; the diagonal block uses half tiles (3 of 4 computed instead of the whole square)
PAIR_BLOCK = 4096


@njit_cached(fastmath=True, nogil=True)
def _reduce_tile(g, x, y, xsq, ysq, xlab, seg_start, seg_lab, sx, syt, c0, self_col, both, near_c, first):
    """The fused pass over one GEMM tile ``g`` = x @ y.T (float32, overwritten with the distances).

    ``seg_start``/``seg_lab``: the column segments of one label (sorted columns), ``seg_start[-1] = n``;
    ``sx`` (m, k) float64 += row sums; ``syt`` (k, N) float64, columns ``c0 .. c0 + n``, += column sums per row
    label (``both``); ``self_col[p]`` >= 0: row p is that column
    (its self-pair 0, not a near pair; -1: none); ``first`` (n,) float64, when
    not empty, takes the column sums of the first row label instead of ``syt`` (a thread's rows may share it with
    the rows before them)."""
    m, n = g.shape
    dim = x.shape[1]
    nseg = len(seg_lab)
    colacc = np.zeros(n, np.float64)
    cur = xlab[0] if m > 0 else 0
    private = len(first) > 0
    for p in range(m):
        lp = xlab[p]
        if both and lp != cur:  # rows are sorted by label: flush the finished cluster's column sums
            if private:
                for q in range(n):
                    first[q] += colacc[q]
                    colacc[q] = 0.0
                private = False
            else:
                for q in range(n):
                    syt[cur, c0 + q] += colacc[q]
                    colacc[q] = 0.0
            cur = lp
        row = g[p]
        a = xsq[p]
        cnt = 0
        for q in range(n):
            s = a + ysq[q]
            v = s - 2.0 * row[q]
            row[q] = v
            cnt += v < near_c * s
        j = self_col[p]
        if j >= 0:
            if row[j] < near_c * (a + ysq[j]):
                cnt -= 1
            row[j] = 0.0
        if cnt > 0:  # rare: near pairs, recomputed directly (float64 differences of the float32 coordinates)
            for q in range(n):
                if row[q] < near_c * (a + ysq[q]) and q != j:
                    e = 0.0
                    for t in range(dim):
                        u = np.float64(x[p, t]) - np.float64(y[q, t])
                        e += u * u
                    row[q] = e
        for q in range(n):
            row[q] = np.sqrt(max(row[q], np.float32(0.0)))
        for s in range(nseg):
            acc = 0.0
            for q in range(seg_start[s], seg_start[s + 1]):
                acc += np.float64(row[q])
            sx[p, seg_lab[s]] += acc
        if both:
            for q in range(n):
                colacc[q] += np.float64(row[q])
    if both and m > 0:
        if private:
            for q in range(n):
                first[q] += colacc[q]
        else:
            for q in range(n):
                syt[cur, c0 + q] += colacc[q]


_POOL = None
_BUFFERS = threading.local()  # each thread's float32 GEMM buffer, kept between tiles and calls
NO_FIRST = np.zeros(0, np.float64)


def _buffer(size: int) -> torch.Tensor:
    """This thread's float32 buffer of at least ``size`` values for its part of a tile, reused between tiles
    and calls (a fresh 64 MiB tile cost 10-20 ms of page faults each); per thread, so concurrent calls never
    share one."""
    b = getattr(_BUFFERS, "buf", None)
    if b is None or b.numel() < size:
        b = _BUFFERS.buf = torch.empty(size, dtype=torch.float32)
    return b


class _SerialBlas:
    """Inside: torch (and its BLAS) run one thread per call, so that each of :func:`_tile`'s threads computes
    its own rows' GEMM and reduces them while they are in cache, with no OpenMP team spinning through the
    reduction. Process-wide while it lasts (torch work in other threads meanwhile runs single-threaded: slower,
    never different); nested or concurrent uses are counted, and the last one out restores the thread count the
    first one found."""

    _lock = threading.Lock()
    _depth = 0
    _saved = 1

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        if self.threads > 1:
            with _SerialBlas._lock:
                if _SerialBlas._depth == 0:
                    _SerialBlas._saved = torch.get_num_threads()
                    torch.set_num_threads(1)
                _SerialBlas._depth += 1
        return self

    def __exit__(self, *exc):
        if self.threads > 1:
            with _SerialBlas._lock:
                _SerialBlas._depth -= 1
                if _SerialBlas._depth == 0:
                    torch.set_num_threads(_SerialBlas._saved)


def tile_threads() -> int:
    """Threads of :func:`_tile`: REDUCE_THREADS when set, else torch's intra-op thread count."""
    return REDUCE_THREADS or torch.get_num_threads()


def _tile(xr, yc, xsq, ysq, xl, seg_start, seg_lab, sx, syt, c0, self_col, both: bool, near, threads: int):
    """One tile: ``G = xr @ yc.T`` and :func:`_reduce_tile`, its rows split between up to ``threads`` threads,
    each computing its part's GEMM (torch.mm, single-threaded inside :class:`_SerialBlas`; GIL released) into
    its own buffer and reducing it at once (numba, GIL released). A part's first-label column sums go to a
    private row, added after the join (the part before may hold the same label), so no two threads write one
    element."""
    from concurrent.futures import ThreadPoolExecutor

    global _POOL
    m, n = len(xr), len(yc)
    parts = max(1, min(threads, m // PART_ROWS))
    cuts = [m * i // parts for i in range(parts + 1)]
    firsts = [NO_FIRST] + [np.zeros(n) if both else NO_FIRST for _ in range(parts - 1)]
    xn, yn = xr.numpy(), yc.numpy()

    def part(i):
        a, b = cuts[i], cuts[i + 1]
        g = _buffer((b - a) * n)[:(b - a) * n].view(b - a, n)
        torch.mm(xr[a:b], yc.T, out=g)
        _reduce_tile(g.numpy(), xn[a:b], yn, xsq[a:b], ysq, xl[a:b], seg_start, seg_lab, sx[a:b], syt, c0,
                     self_col[a:b], both, near, firsts[i])

    if parts == 1:
        part(0)
        return
    if _POOL is None or _POOL._max_workers < parts:
        _POOL = ThreadPoolExecutor(parts, thread_name_prefix="embedx-pair")
    for f in [_POOL.submit(part, i) for i in range(parts)]:
        f.result()
    if both:
        for i in range(1, parts):
            syt[xl[cuts[i]], c0:c0 + n] += firsts[i]


def _segments(lab: np.ndarray):
    """(starts with the end appended, labels) of the runs of equal values of sorted ``lab``."""
    if len(lab) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    return np.r_[0, cut, len(lab)].astype(np.int64), lab[np.r_[0, cut]].astype(np.int64)


def _sorted(v: torch.Tensor, lab: torch.Tensor):
    """float32 numpy rows sorted by label (stable), their labels, and the order."""
    lab = lab.detach().cpu().numpy().astype(np.int64)
    pts = np.ascontiguousarray(v.detach().cpu().float().numpy())
    if len(lab) < 2 or (lab[1:] >= lab[:-1]).all():  # already sorted (images then texts): no copy
        return pts, lab, np.arange(len(lab))
    order = np.argsort(lab, kind="stable")
    return pts[order], lab[order], order


def _sqnorms(v: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", v, v, dtype=np.float32)


def _tiles(xs: np.ndarray, ys: np.ndarray, yl: np.ndarray, block: int, diagonal: bool):
    """The GEMM tiles of rows ``xs`` x columns ``ys`` (float32, columns sorted by label ``yl``; ``diagonal``: xs is
    ys, only the tiles on and above the diagonal) -> (r0, r1, c0, rows, their |x|^2, columns, their |y|^2, the
    columns' label segments (start, label)), as torch tensors over the arrays. A concentrated column block
    (``|mean|^2 > CONCENTRATED * mean |y|^2``) and its rows are centred on the block's mean first."""
    m, n = len(xs), len(ys)
    xsq_all = _sqnorms(xs)
    ysq_all = xsq_all if diagonal else _sqnorms(ys)
    xt, yt = torch.from_numpy(xs), torch.from_numpy(ys)
    for c0 in range(0, n, block):
        c1 = min(c0 + block, n)
        yc, ysq = yt[c0:c1], ysq_all[c0:c1]
        seg_start, seg_lab = _segments(yl[c0:c1])
        centre = yc.mean(0)
        concentrated = float(centre @ centre) > CONCENTRATED * float(ysq.mean())
        if concentrated:  # a tight block: centre it (and the rows) on its mean first
            yc = yc - centre
            ysq = _sqnorms(yc.numpy())
        for r0 in range(0, c1 if diagonal else m, block):
            r1 = min(r0 + block, m)
            xr, xsq = xt[r0:r1], xsq_all[r0:r1]
            if concentrated:
                xr = xr - centre
                xsq = _sqnorms(xr.numpy())
            yield r0, r1, c0, xr, xsq, yc, ysq, seg_start, seg_lab


def pair_sums_gemm(x: torch.Tensor, y: torch.Tensor | None, x_labels: torch.Tensor, y_labels: torch.Tensor | None,
                   n_clusters: int, block: int = PAIR_BLOCK):
    """(S_xy, S_yx) float64 torch tensors of a block pair on the CPU (see the module docstring); ``y`` None: the
    diagonal block, (S_xx, None)."""
    diagonal = y is None
    if diagonal:  # half tiles: the tiles on and above the diagonal are 3/4 of the square, not all of it
        block = max(1, block // 2)
    xs, xl, xo = _sorted(x, x_labels)
    ys, yl, yo = (xs, xl, xo) if diagonal else _sorted(y, y_labels)
    m, n, k = len(xs), len(ys), int(n_clusters)
    sx = np.zeros((m, k))
    syt = np.zeros((k, n))
    if m and n:
        threads = tile_threads()
        with _SerialBlas(threads):
            for r0, r1, c0, xr, xsq, yc, ysq, seg_start, seg_lab in _tiles(xs, ys, yl, block, diagonal):
                on_diag = diagonal and r0 == c0
                self_col = np.arange(r1 - r0) if on_diag else np.full(r1 - r0, -1)
                _tile(xr, yc, xsq, ysq, xl[r0:r1], seg_start, seg_lab, sx[r0:r1], syt, c0, self_col, not on_diag,
                      np.float32(NEAR), threads)
    out_x = np.empty_like(sx)
    if diagonal:  # the tiles above the diagonal gave the rows' sums over the columns left of them
        out_x[xo] = sx + syt.T
        return torch.from_numpy(out_x), None
    out_x[xo] = sx
    out_y = np.empty((n, k))
    out_y[yo] = syt.T
    return torch.from_numpy(out_x), torch.from_numpy(out_y)


def sums_gemm(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, n_clusters: int, row_ids=None,
              col_offset: int = 0, block: int = PAIR_BLOCK, x_scale=None, y_scale=None) -> torch.Tensor:
    """The one-sided sums ``S[p, k] = sum_{q: labels[q] = k} ||x_p - y_q||`` (float64, (len(x), k)) on the CPU by
    the same sgemm tiles and fused pass (row sums only): columns sorted by label, row p's self-pair (the column
    ``row_ids[p] - col_offset``, when in range) exactly 0; ``x_scale``/``y_scale``: the points are the rows
    times them (float32, as the torch tiles)."""
    xf = x.detach().cpu().float()
    yf = y.detach().cpu().float()
    if x_scale is not None:
        xf = xf * torch.as_tensor(x_scale, dtype=torch.float32).cpu()[:, None]
    if y_scale is not None:
        yf = yf * torch.as_tensor(y_scale, dtype=torch.float32).cpu()[:, None]
    ys, yl, yo = _sorted(yf, labels)
    xs = np.ascontiguousarray(xf.numpy())
    m, n, k = len(xs), len(ys), int(n_clusters)
    sx = np.zeros((m, k))
    self_all = np.full(m, -1, np.int64)
    if row_ids is not None and m:
        inv = np.empty(n, np.int64)
        inv[yo] = np.arange(n)
        j = np.asarray(row_ids.cpu() if isinstance(row_ids, torch.Tensor) else row_ids, np.int64) - col_offset
        inside = (j >= 0) & (j < n)
        self_all[inside] = inv[j[inside]]
    if m and n:
        no_lab = np.zeros(min(block, m), np.int64)
        threads = tile_threads()
        with _SerialBlas(threads):
            for r0, r1, c0, xr, xsq, yc, ysq, seg_start, seg_lab in _tiles(xs, ys, yl, block, False):
                sc = self_all[r0:r1] - c0
                sc[(sc < 0) | (sc >= len(yc))] = -1
                _tile(xr, yc, xsq, ysq, no_lab[:r1 - r0], seg_start, seg_lab, sx[r0:r1], NO_SYT, c0, sc, False,
                      np.float32(NEAR), threads)
    return torch.from_numpy(sx)


NO_SYT = np.zeros((0, 0), np.float64)
