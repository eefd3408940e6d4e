"""Fused Euclidean distance + per-cluster sums: ``S[p, k] = sum_{q : label_q = k} ||x_p - y_q||_2``.

The distance tile ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))`` is reduced into per-cluster row sums in the same
pass, so the n x m distance matrix is never materialized. Self-pairs count exactly 0, as in sklearn: row i is
the point ``row_ids[i]`` of the column set, whose column j is the point ``col_offset + j`` (``row_ids`` None:
no self-pairs; -1: a row that is not a column). Partial sums are accumulated in float64. Columns may be
streamed in blocks (``col_offset``) and the partial results added. Optional per-row scales ``x_scale`` /
``y_scale`` make the points ``x_scale[p] * x_p`` (raw float16 store rows times their inverse norms: unit rows
without rounding them to float16 again, so a GPU multiplies them on its tensor cores exactly).

Three implementations, held together by tests/kernels/test_cluster_distance.py:
  * ``cluster_distance_sums_reference``: float64 brute force (numpy), the definition.
  * ``cluster_distance_sums_torch``: blocked torch (CPU or GPU), fp32 tiles, fp64 accumulation.
  * ``cluster_distance_sums_triton``: a Triton kernel (GPU; CPU under ``TRITON_INTERPRET=1``).

The symmetric block-pair op for a point set split into row blocks (the distributed exact silhouette: one task
per block pair I <= J): ``cluster_distance_pair_sums_torch`` computes each distance tile once and reduces it
both ways, I's rows over J's columns and J's rows over I's columns (torch tiles on any device; on the CPU from
PAIR_GEMM_MIN the sgemm tiles + fused numba pass of :mod:`.pair_gemm`, which also serves the one-sided op);
``cluster_distance_pair_sums_reference`` is two one-sided float64 references. On the GPU,
``cluster_distance_sums_sym_triton`` is the symmetric Triton kernel over one whole point set (tiles I <= J,
both reductions by float64 atomic adds), with float32 inputs as 3xTF32 split products (``tiles.tile_dot_3xtf32``).
"""
from __future__ import annotations

import numpy as np
import torch

try:  # Triton is optional: CPU installs may lack it
    import triton
    import triton.language as tl

    from embedx.kernels.ops.tiles import launch_config, native_dot, tile_dot, tile_dot_3xtf32
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

ONEHOT_MAX_CLUSTERS = 64  # below this, reduce with a matmul against one-hot labels; above, index_add
REDUCE_COLS = 128         # one-hot reduction: float32 sums over this many tile columns, then float64
# Precision (near.py): pairs with d^2 < NEAR * (|x|^2 + |y|^2) are recomputed from differences; concentrated
# column blocks are centred first.
from embedx.kernels.ops.near import CONCENTRATED, NEAR, NEAR_PAIRS  # noqa: E402,F401


def _scaled(v, scale, dtype):
    return v if scale is None else v * torch.as_tensor(scale, device=v.device, dtype=dtype)[:, None]


def cluster_distance_sums_reference(x, y, labels, n_clusters: int, row_ids=None, col_offset: int = 0,
                                    x_scale=None, y_scale=None) -> np.ndarray:
    """float64 brute force of the definition."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x_scale is not None:
        x = x * np.asarray(x_scale, dtype=np.float64)[:, None]
    if y_scale is not None:
        y = y * np.asarray(y_scale, dtype=np.float64)[:, None]
    d = np.concatenate([np.sqrt(((x[r:r + 64, None, :] - y[None, :, :]) ** 2).sum(-1))
                        for r in range(0, len(x), 64)]) if len(x) else np.zeros((0, len(y)))
    if row_ids is not None:
        for i, r in enumerate(np.asarray(row_ids)):
            if 0 <= r - col_offset < len(y):
                d[i, r - col_offset] = 0.0
    out = np.zeros((len(x), n_clusters))
    for k in range(n_clusters):
        out[:, k] = d[:, np.asarray(labels) == k].sum(1)
    return out


def _distance_tile(x: torch.Tensor, x_sq, yc: torch.Tensor, si=None, sj=None):
    """float32 tile ``d[p, q] = ||x_p - yc_q||`` of float32 rows ``x`` and columns ``yc`` -> (tile, ``x_sq``).

    ``d^2 = |x|^2 + |y|^2 - 2 x.y`` by one matmul; a concentrated column block (``|mean|^2 > CONCENTRATED *
    mean |y|^2``) is first centred on its mean (distances do not change under a shift); pairs with ``d^2 < NEAR *
    (|x|^2 + |y|^2)`` are recomputed as ``sum_k (x_k - y_k)^2``. Self-pairs ``(si[t], sj[t])`` are exactly 0.
    ``x_sq``: x's squared norms when already known (else None; returned for reuse when computed here)."""
    ysq = (yc * yc).sum(1)
    centre = yc.mean(0)
    if float(centre @ centre) > CONCENTRATED * float(ysq.mean()):  # a tight block: centre it first
        xc, yc = x - centre, yc - centre
        xsq, ysq = (xc * xc).sum(1), (yc * yc).sum(1)
    else:  # spread out: centring would not shrink the norms
        if x_sq is None:
            x_sq = (x * x).sum(1)
        xc, xsq = x, x_sq
    d = torch.addmm(xsq[:, None] + ysq[None, :], xc, yc.T, alpha=-2.0)
    self_pairs = si is not None and len(si) > 0
    if self_pairs:  # kept out of the near check, zero at the end
        d[si, sj] = float("inf")
    if len(d) and len(yc) and float(d.min()) < NEAR * float(xsq.max() + ysq.max()):  # cheap bound first
        near = (d < NEAR * (xsq[:, None] + ysq[None, :])).nonzero()
        for p0 in range(0, len(near), NEAR_PAIRS):
            ni, nj = near[p0:p0 + NEAR_PAIRS].unbind(1)
            diff = xc[ni] - yc[nj]
            d[ni, nj] = (diff * diff).sum(1)
    d.clamp_(min=0).sqrt_()
    if self_pairs:
        d[si, sj] = 0.0
    return d, x_sq


def _reduce_cols(d: torch.Tensor, lab: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """(rows, n_clusters) float64: ``sum_{q: lab_q = k} d[p, q]``. Up to ONEHOT_MAX_CLUSTERS clusters, a float32
    matmul against one-hot labels per REDUCE_COLS columns, the partial sums added in float64 (a float32 sum along
    a whole 2048-column tile drifted by ~1e-7 of the sum); above, a float32 index_add (a cluster then holds few
    of a tile's columns on average)."""
    if n_clusters > ONEHOT_MAX_CLUSTERS:
        part = torch.zeros(len(d), n_clusters, dtype=d.dtype, device=d.device)
        return part.index_add_(1, lab, d).double()
    oh = torch.nn.functional.one_hot(lab, n_clusters).to(d.dtype)
    n, m = d.shape[1], d.shape[1] // REDUCE_COLS * REDUCE_COLS
    out = torch.zeros(len(d), n_clusters, dtype=torch.float64, device=d.device)
    if m:  # (segments, rows, k) float32 partial sums, added in float64
        seg = torch.matmul(d[:, :m].unflatten(1, (-1, REDUCE_COLS)).transpose(0, 1),
                           oh[:m].unflatten(0, (-1, REDUCE_COLS)))
        out += seg.double().sum(0)
    if m < n:
        out += (d[:, m:] @ oh[m:]).double()
    return out


def _reduce_rows(d: torch.Tensor, lab: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """(cols, n_clusters) float64: ``sum_{p: lab_p = k} d[p, q]``, as :func:`_reduce_cols` of ``d.T`` (segments
    of REDUCE_COLS rows: contiguous slices of the tile, nothing copied)."""
    if n_clusters > ONEHOT_MAX_CLUSTERS:
        part = torch.zeros(n_clusters, d.shape[1], dtype=d.dtype, device=d.device)
        return part.index_add_(0, lab, d).double().T
    oh = torch.nn.functional.one_hot(lab, n_clusters).to(d.dtype)
    n, m = len(d), len(d) // REDUCE_COLS * REDUCE_COLS
    out = torch.zeros(n_clusters, d.shape[1], dtype=torch.float64, device=d.device)
    if m:
        seg = torch.matmul(oh[:m].unflatten(0, (-1, REDUCE_COLS)).transpose(1, 2), d[:m].unflatten(0, (-1, REDUCE_COLS)))
        out += seg.double().sum(0)
    if m < n:
        out += (oh[m:].T @ d[m:]).double()
    return out.T


def cluster_distance_sums_torch(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, n_clusters: int,
                                row_ids: torch.Tensor | None = None, col_offset: int = 0,
                                block: int | None = None, x_scale=None, y_scale=None, impl: str = "auto") -> torch.Tensor:
    """Blocked torch: (len(x), n_clusters) float64. ``y`` may stay float16: it is upcast block by block. A
    concentrated column block is centred on its mean first; near pairs are recomputed directly (see ``NEAR``).
    Each ``block``-column tile is reduced in float32 and added into the float64 sums. ``impl`` as
    :func:`cluster_distance_pair_sums_torch` ("gemm": :func:`.pair_gemm.sums_gemm`, the CPU sgemm tiles)."""
    if _pick(impl, x, len(y)) == "gemm":
        from embedx.kernels.ops.pair_gemm import sums_gemm

        return sums_gemm(x, y, labels, n_clusters, row_ids, col_offset, block=block or PAIR_BLOCK,
                         x_scale=x_scale, y_scale=y_scale)
    block = block or 2048
    x = _scaled(x.float(), x_scale, torch.float32)
    labels = labels.to(device=y.device, dtype=torch.long)
    out = torch.zeros(len(x), n_clusters, dtype=torch.float64, device=x.device)
    x_sq = None
    for c0 in range(0, len(y), block):
        yc = _scaled(y[c0:c0 + block].float(), None if y_scale is None else y_scale[c0:c0 + block], torch.float32)
        si = sj = None
        if row_ids is not None:  # self-pairs in this tile
            j = row_ids.to(x.device) - (col_offset + c0)
            si = ((j >= 0) & (j < len(yc))).nonzero()[:, 0]
            sj = j[si]
        d, x_sq = _distance_tile(x, x_sq, yc, si, sj)
        out += _reduce_cols(d, labels[c0:c0 + block], n_clusters)
    return out


def cluster_distance_pair_sums_reference(x, y, x_labels, y_labels, n_clusters: int):
    """float64 brute force of :func:`cluster_distance_pair_sums_torch` by two one-sided calls of
    :func:`cluster_distance_sums_reference`: ``(S_xy, S_yx)``, or ``(S_xx, None)`` when ``y`` is None (the
    diagonal block: row i is column i, its self-pair 0)."""
    if y is None:
        return cluster_distance_sums_reference(x, x, x_labels, n_clusters, row_ids=np.arange(len(x))), None
    return (cluster_distance_sums_reference(x, y, y_labels, n_clusters),
            cluster_distance_sums_reference(y, x, x_labels, n_clusters))


PAIR_BLOCK = 4096  # the gemm path's tile (pair_gemm.PAIR_BLOCK, not imported here: numba loads on first use)
PAIR_GEMM_MIN = 1 << 24  # CPU calls of at least this many rows x cols x d go through pair_gemm


def _pick(impl: str, x: torch.Tensor, cols: int) -> str:
    """"gemm" or "tiles" for ``impl`` ("auto": gemm on the CPU from PAIR_GEMM_MIN rows x cols x d)."""
    if impl not in ("auto", "gemm", "tiles"):
        raise ValueError(f"impl must be auto, gemm or tiles, got {impl!r}")
    if impl == "auto":
        size = len(x) * cols * (x.shape[1] if x.dim() == 2 else 1)
        return "gemm" if x.device.type == "cpu" and size >= PAIR_GEMM_MIN else "tiles"
    return impl


def cluster_distance_pair_sums_torch(x: torch.Tensor, y: torch.Tensor | None, x_labels: torch.Tensor,
                                     y_labels: torch.Tensor | None, n_clusters: int, block: int | None = None,
                                     impl: str = "auto"):
    """Both one-sided per-cluster sums of a block pair (I, J) of one point set from one pass over its tiles:

      S_xy[p, k] = sum_{q in J: y_labels[q] = k} ||x_p - y_q||     (I's rows over J's columns)
      S_yx[q, k] = sum_{p in I: x_labels[p] = k} ||x_p - y_q||     (J's rows over I's columns)

    -> (S_xy, S_yx), float64, (len(x), n_clusters) and (len(y), n_clusters). ``y`` None: the diagonal block
    (J = I, row i is point i, its self-pair exactly 0) -> (S_xx, None); its tiles are symmetric too, so only
    the ``block`` x ``block`` sub-tiles on and above the diagonal are computed. Every distance is computed once
    where two calls of :func:`cluster_distance_sums_torch` would compute it twice. Tiles and their reductions
    are float32 with the same precision handling (centring, ``NEAR`` recompute: :func:`_distance_tile`), each
    added into the float64 sums; inputs may be float16 (upcast per tile).

    ``impl``: "tiles" (the torch tiles above, any device), "gemm" (CPU: :mod:`.pair_gemm`, BLAS sgemm tiles
    reduced by one fused numba pass, rows and columns sorted by label), "auto": gemm for CPU pairs of at least
    PAIR_GEMM_MIN rows x cols x d (below, numba's start-up in a fresh process costs more than it saves)."""
    if _pick(impl, x, len(x) if y is None else len(y)) == "gemm":
        from embedx.kernels.ops.pair_gemm import pair_sums_gemm

        return pair_sums_gemm(x, y, x_labels, y_labels, n_clusters, block=block or PAIR_BLOCK)
    block = block or 2048
    diagonal = y is None
    ys, ylab = (x, x_labels) if diagonal else (y, y_labels)
    dev = x.device
    xlab = x_labels.to(device=dev, dtype=torch.long)
    ylab = ylab.to(device=dev, dtype=torch.long)
    sx = torch.zeros(len(x), n_clusters, dtype=torch.float64, device=dev)
    sy = sx if diagonal else torch.zeros(len(ys), n_clusters, dtype=torch.float64, device=dev)
    for r0 in range(0, len(x), block):
        xr = x[r0:r0 + block].float()
        x_sq = None
        for c0 in range(r0 if diagonal else 0, len(ys), block):
            yc = ys[c0:c0 + block].float()
            si = sj = None
            if diagonal and c0 == r0:  # the sub-tile on the diagonal: rows are the columns
                si = sj = torch.arange(min(len(xr), len(yc)), device=dev)
            d, x_sq = _distance_tile(xr, x_sq, yc, si, sj)
            sx[r0:r0 + len(xr)] += _reduce_cols(d, ylab[c0:c0 + len(yc)], n_clusters)
            if not (diagonal and c0 == r0):  # the transposed tile: J's rows over I's columns
                sy[c0:c0 + len(yc)] += _reduce_rows(d, xlab[r0:r0 + len(xr)], n_clusters)
    return sx, (None if diagonal else sy)


if triton is not None:

    @triton.jit
    def _near_recomputed(x_ptr, y_ptr, xs_ptr, ys_ptr, rows, cols, rmask, cmask, near, d2, dim, stride_x, stride_y,
                         BM: tl.constexpr, BN: tl.constexpr, HAS_SCALE: tl.constexpr):
        """``d2`` with the ``near`` pairs (where |x|^2 + |y|^2 - 2 x.y cancels) recomputed as sum_k (x_k - y_k)^2
        from the stored rows (times their scales); rare: a tile without one returns ``d2`` as it is."""
        if tl.sum(near.to(tl.int32)) > 0:
            if HAS_SCALE:
                xs = tl.load(xs_ptr + rows, mask=rmask, other=0.0)
                ys = tl.load(ys_ptr + cols, mask=cmask, other=0.0)
            e2 = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(0, dim):
                xv = tl.load(x_ptr + rows * stride_x + k, mask=rmask, other=0.0).to(tl.float32)
                yv = tl.load(y_ptr + cols * stride_y + k, mask=cmask, other=0.0).to(tl.float32)
                if HAS_SCALE:
                    xv = xv * xs
                    yv = yv * ys
                diff = xv[:, None] - yv[None, :]
                e2 += diff * diff
            d2 = tl.where(near, e2, d2)
        return d2

    @triton.jit(do_not_specialize=["n_rows", "n_cols", "col_offset"])
    def _cluster_distance_kernel(x_ptr, y_ptr, lab_ptr, out_ptr, xsq_ptr, ysq_ptr, xs_ptr, ys_ptr, rid_ptr, n_rows,
                                 n_cols, dim, col_offset, stride_x, stride_y, stride_out,
                                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_SELF: tl.constexpr,
                                 HAS_SCALE: tl.constexpr, NATIVE: tl.constexpr, NEAR_C: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        rmask = rows < n_rows
        xsq = tl.load(xsq_ptr + rows, mask=rmask, other=0.0)
        if HAS_SCALE:
            xs = tl.load(xs_ptr + rows, mask=rmask, other=0.0)
        if HAS_SELF:
            rid = tl.load(rid_ptr + rows, mask=rmask, other=-1) - col_offset
        for c0 in range(0, n_cols, BN):
            cols = c0 + tl.arange(0, BN)
            cmask = cols < n_cols
            acc = tile_dot(x_ptr, y_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_y, BM, BN, BK, NATIVE)
            if HAS_SCALE:
                ys = tl.load(ys_ptr + cols, mask=cmask, other=0.0)
                acc = acc * xs[:, None] * ys[None, :]
            ysq = tl.load(ysq_ptr + cols, mask=cmask, other=0.0)
            d2 = xsq[:, None] + ysq[None, :] - 2.0 * acc
            valid = rmask[:, None] & cmask[None, :]
            if HAS_SELF:
                valid = valid & (rid[:, None] != cols[None, :])
            near = valid & (d2 < NEAR_C * (xsq[:, None] + ysq[None, :]))
            d2 = _near_recomputed(x_ptr, y_ptr, xs_ptr, ys_ptr, rows, cols, rmask, cmask, near, d2, dim, stride_x,
                                  stride_y, BM, BN, HAS_SCALE)
            d = tl.sqrt(tl.maximum(d2, 0.0))
            d = tl.where(valid, d, 0.0)
            lab = tl.load(lab_ptr + cols, mask=cmask, other=-1)
            k_lo = tl.min(tl.where(cmask, lab, 2147483647), axis=0)
            k_hi = tl.max(lab, axis=0)
            for k in range(k_lo, k_hi + 1):  # columns are sorted by label: a tile spans few clusters
                part = tl.sum(tl.where(lab[None, :] == k, d, 0.0), axis=1)
                ptr = out_ptr + rows * stride_out + k
                tl.store(ptr, tl.load(ptr, mask=rmask, other=0.0) + part.to(tl.float64), mask=rmask)


if triton is not None:

    @triton.jit(do_not_specialize=["n", "i0"])
    def _cluster_distance_sym_kernel(x_ptr, lab_ptr, out_ptr, xsq_ptr, xs_ptr, n, dim, stride_x, stride_out, i0,
                                     BT: tl.constexpr, BK: tl.constexpr, HAS_SCALE: tl.constexpr,
                                     NATIVE: tl.constexpr, SPLIT: tl.constexpr, NEAR_C: tl.constexpr):
        """Tile (I, J) of one point set, I = i0 + program_id(0) <= J = program_id(1) (J < I exits): the distance
        tile once, its rows reduced per column label into out[I's rows] and, off the diagonal, its columns per
        row label into out[J's rows] (float64 atomic adds)."""
        ti = i0 + tl.program_id(0)
        tj = tl.program_id(1)
        if tj >= ti:
            rows = ti * BT + tl.arange(0, BT)
            cols = tj * BT + tl.arange(0, BT)
            rmask = rows < n
            cmask = cols < n
            if SPLIT:
                acc = tile_dot_3xtf32(x_ptr, x_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_x, BT, BT, BK)
            else:
                acc = tile_dot(x_ptr, x_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_x, BT, BT, BK, NATIVE)
            if HAS_SCALE:
                xs = tl.load(xs_ptr + rows, mask=rmask, other=0.0)
                ys = tl.load(xs_ptr + cols, mask=cmask, other=0.0)
                acc = acc * xs[:, None] * ys[None, :]
            xsq = tl.load(xsq_ptr + rows, mask=rmask, other=0.0)
            ysq = tl.load(xsq_ptr + cols, mask=cmask, other=0.0)
            d2 = xsq[:, None] + ysq[None, :] - 2.0 * acc
            valid = rmask[:, None] & cmask[None, :] & (rows[:, None] != cols[None, :])
            near = valid & (d2 < NEAR_C * (xsq[:, None] + ysq[None, :]))
            d2 = _near_recomputed(x_ptr, x_ptr, xs_ptr, xs_ptr, rows, cols, rmask, cmask, near, d2, dim, stride_x,
                                  stride_x, BT, BT, HAS_SCALE)
            d = tl.where(valid, tl.sqrt(tl.maximum(d2, 0.0)), 0.0)
            labc = tl.load(lab_ptr + cols, mask=cmask, other=-1)
            k_lo = tl.min(tl.where(cmask, labc, 2147483647), axis=0)
            k_hi = tl.max(labc, axis=0)
            for k in range(k_lo, k_hi + 1):  # points are sorted by label: a tile spans few clusters
                part = tl.sum(tl.where(labc[None, :] == k, d, 0.0), axis=1)
                tl.atomic_add(out_ptr + rows * stride_out + k, part.to(tl.float64), mask=rmask)
            if tj > ti:  # the transposed tile: J's rows over I's columns
                labr = tl.load(lab_ptr + rows, mask=rmask, other=-1)
                r_lo = tl.min(tl.where(rmask, labr, 2147483647), axis=0)
                r_hi = tl.max(labr, axis=0)
                for k in range(r_lo, r_hi + 1):
                    part = tl.sum(tl.where(labr[:, None] == k, d, 0.0), axis=0)
                    tl.atomic_add(out_ptr + cols * stride_out + k, part.to(tl.float64), mask=cmask)


def split_precision(x: torch.Tensor, precision: str = "auto") -> bool:
    """Whether float32 ``x`` multiplies as 3xTF32 (:func:`.tiles.tile_dot_3xtf32`): ``precision`` "tf32x3"
    yes (any device: the interpreter computes the same products), "ieee" no, "auto" for float32 on a GPU."""
    if precision not in ("auto", "ieee", "tf32x3"):
        raise ValueError(f"precision must be auto, ieee or tf32x3, got {precision!r}")
    if precision == "auto":
        return x.dtype == torch.float32 and x.is_cuda and not native_dot(x, x)
    return precision == "tf32x3" and x.dtype not in (torch.float16, torch.bfloat16)


def sym_tile_count(x: torch.Tensor, precision: str = "auto", config: dict | None = None) -> int:
    """Row tiles of ``x`` in :func:`cluster_distance_sums_sym_triton` (its ``tiles`` range up to this)."""
    native = native_dot(x, x) and not split_precision(x, precision)
    return triton.cdiv(len(x), (config or launch_config(native))["BM"])


def cluster_distance_sums_sym_triton(x: torch.Tensor, labels: torch.Tensor, n_clusters: int, x_scale=None,
                                     precision: str = "auto", tiles: tuple[int, int] | None = None,
                                     out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Every point's per-cluster distance sums over the whole set ``x`` (self-pairs 0), (len(x), k) float64, by
    the symmetric Triton kernel: each distance tile (I, J) with I <= J computed once and reduced both ways, so
    half the flops of the one-sided kernel. Points sorted by label for speed (tiles span few clusters).
    ``tiles``: only the row tiles I in [t0, t1) (their pairs with every J >= I), added into ``out``: a caller
    may launch in chunks (progress) and read the sums once all chunks are in. ``precision``: see
    :func:`split_precision`. The sums are float64 atomic adds: the last bits may vary run to run."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    x = x.contiguous()
    dev = x.device
    n = len(x)
    labels = labels.to(device=dev, dtype=torch.int32).contiguous()
    xs = None if x_scale is None else torch.as_tensor(x_scale, device=dev, dtype=torch.float32).contiguous()
    xsq = (_scaled(x.float(), xs, torch.float32) ** 2).sum(1).contiguous()
    if out is None:
        out = torch.zeros(n, n_clusters, dtype=torch.float64, device=dev)
    if n == 0:
        return out
    split = split_precision(x, precision)
    native = native_dot(x, x) and not split
    cfg = dict(config or launch_config(native))
    bt = cfg.pop("BM")
    cfg.pop("BN", None)
    nt = triton.cdiv(n, bt)
    t0, t1 = (0, nt) if tiles is None else tiles
    if t1 <= t0:
        return out
    grid = (t1 - t0, nt)
    _cluster_distance_sym_kernel[grid](x, labels, out, xsq, xs if xs is not None else xsq, n, x.shape[1],
                                       x.stride(0), out.stride(0), t0, BT=bt, HAS_SCALE=xs is not None,
                                       NATIVE=native, SPLIT=split, NEAR_C=NEAR, **cfg)
    return out


def cluster_distance_sums_triton(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, n_clusters: int,
                                 row_ids: torch.Tensor | None = None, col_offset: int = 0, x_scale=None,
                                 y_scale=None, config: dict | None = None) -> torch.Tensor:
    """Triton launcher: (len(x), n_clusters) float64. Sort ``y`` by label for speed (not for correctness).
    ``x``/``y`` both float16 (or both bfloat16) multiply on tensor cores; ``config`` overrides the tiles."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    x = x.contiguous()
    y = y.contiguous()
    dev = x.device
    labels = labels.to(device=y.device, dtype=torch.int32).contiguous()
    xs = None if x_scale is None else torch.as_tensor(x_scale, device=dev, dtype=torch.float32).contiguous()
    ys = None if y_scale is None else torch.as_tensor(y_scale, device=dev, dtype=torch.float32).contiguous()
    xsq = (_scaled(x.float(), xs, torch.float32) ** 2).sum(1).contiguous()
    ysq = (_scaled(y.float(), ys, torch.float32) ** 2).sum(1).contiguous()
    out = torch.zeros(len(x), n_clusters, dtype=torch.float64, device=dev)
    if len(x) == 0 or len(y) == 0:
        return out
    has_scale = xs is not None or ys is not None
    if has_scale:
        xs = torch.ones(len(x), device=dev) if xs is None else xs
        ys = torch.ones(len(y), device=dev) if ys is None else ys
    rid = (row_ids if row_ids is not None else torch.zeros(1)).to(device=dev, dtype=torch.int64).contiguous()
    native = native_dot(x, y)
    cfg = config or launch_config(native)
    grid = (triton.cdiv(len(x), cfg["BM"]),)
    _cluster_distance_kernel[grid](x, y, labels, out, xsq, ysq, xs if has_scale else xsq, ys if has_scale else ysq,
                                   rid, len(x), len(y), x.shape[1], int(col_offset), x.stride(0), y.stride(0),
                                   out.stride(0), HAS_SELF=row_ids is not None, HAS_SCALE=has_scale, NATIVE=native,
                                   NEAR_C=NEAR, **cfg)
    return out
