"""One fused sweep over a block of embedding rows (CPU): per row its norm and its dots with two vectors
(divided by the norm); per class the sum of the normalized rows (label -1: an extra "unlabelled" row).

    norms[i]   = |x_i|                               (NaN when the row holds a NaN or inf)
    dots[i, q] = x_i . v_q / |x_i|                   (q = 0, 1)
    acc[c]    += sum_{i: y_i = c} x_i / |x_i|        (c = n_classes: the rows with y_i = -1; zero rows add nothing)

torch needs four passes over an upcast copy of the block for this (copy, norm, matmul, sparse matmul). The
numba kernel reads each row once and keeps it in L1: float16 is widened exactly with integer bit operations
(sign | (exponent, mantissa) << 13, then x 2^112, which also maps subnormals exactly) so the loops vectorize,
and a non-finite value is caught by an integer test on its exponent bits (fastmath cannot drop it; for
float16 only rows whose sum of squares reaches 2^32 need the test, since inf/NaN widen to values >= 2^16).
Rows are visited grouped by class (a counting sort), so each class's rows are summed in L1 and its
accumulator row is read and written once per chunk. The kernel is serial and releases the GIL: callers run
one per thread on cache-sized chunks. float32 accumulation in ``acc`` (callers flush it to float64 every few
chunks).

  * ``stream_stats_reference``: float64 numpy (the definition).
  * ``stream_stats(impl="numba")``: the fused kernel for float16 / float32 rows.
  * ``stream_stats(impl="numpy")``: the same contract in a few numpy calls (float32, as the kernel): no JIT and
    no torch, since numba's first call in a process costs about 0.8 s of start-up (import, then the kernels
    loaded from their cache), which small passes never win back; the pass picks numpy below
    ``NUMBA_MIN_ELEMENTS``. ``impl="torch"``: the same in torch (kept for comparison).
"""
from __future__ import annotations

import numpy as np

NUMBA_MIN_ELEMENTS = 1 << 25  # rows x dim of a pass from which the numba kernel pays for its start-up


def stream_stats_reference(x, labels, vs, n_classes: int):
    """(norms, dots, sums) in float64; sums has n_classes + 1 rows."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xn = np.where(norms[:, None] > 0, x / norms[:, None], 0.0)
    dots = xn @ np.asarray(vs, dtype=np.float64).T
    sums = np.zeros((n_classes + 1, x.shape[1]))
    lab = np.where(np.asarray(labels) < 0, n_classes, labels)
    np.add.at(sums, lab, xn)
    return norms, dots, sums


def _stream_stats_numpy(x: np.ndarray, lab: np.ndarray, v: np.ndarray, n_classes: int, acc: np.ndarray):
    """float32 throughout, as the kernel: norms from the row sums of squares, rows scaled by 1/|x|, per-class
    sums over the rows grouped by a stable sort on the labels (each class's rows added in order, float32; one
    ``sum`` per class present: ``np.add.reduceat`` and ``np.add.at`` are 40-80x slower here)."""
    xf = x.astype(np.float32, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", xf, xf))
        ok = np.isfinite(norms) & (norms > 0)
        inv = np.where(ok, np.float32(1.0) / np.where(ok, norms, np.float32(1.0)), np.float32(0.0))
        if v.any():
            dots = (xf @ v.T).astype(np.float32, copy=False) * inv[:, None]
            dots[~ok] = 0.0
        else:  # the class pass without the cosine silhouette dots with zeros
            dots = np.zeros((len(xf), 2), np.float32)
        cls = np.where(lab < 0, n_classes, lab)
        pick = np.flatnonzero(ok)
        if len(pick) > 1 and (cls[pick[1:]] < cls[pick[:-1]]).any():
            pick = pick[np.argsort(cls[pick], kind="stable")]
        if len(pick):
            rows = np.take(xf, pick, axis=0)
            rows *= inv[pick][:, None]       # the normalized rows, grouped by class
            cs = cls[pick]
            cuts = np.flatnonzero(cs[1:] != cs[:-1]) + 1
            for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(cs)].tolist()):
                acc[cs[a]] += rows[a:b].sum(0)
    return norms, dots


def _stream_stats_torch(x: np.ndarray, lab: np.ndarray, v: np.ndarray, n_classes: int, acc: np.ndarray):
    import torch

    xf = torch.from_numpy(x).float()
    norms = torch.linalg.vector_norm(xf, dim=1)
    ok = torch.isfinite(norms) & (norms > 0)
    xn = xf * torch.where(ok, 1.0 / norms, 0.0)[:, None]
    dots = xn @ torch.from_numpy(v).T
    cls = torch.from_numpy(np.where(lab < 0, n_classes, lab).astype(np.int64))
    torch.from_numpy(acc).index_add_(0, cls[ok], xn[ok])
    return norms.numpy(), dots.numpy()


def stream_stats(x: np.ndarray, labels: np.ndarray, vs: np.ndarray, n_classes: int,
                 acc: np.ndarray | None = None, impl: str = "numba"):
    """(norms float32 [n], dots float32 [n, 2], acc) for a float16 or float32 block ``x``; ``acc`` (float32,
    [n_classes + 1, d], allocated when None) has this block's per-class sums of normalized rows added to it.
    ``vs`` holds up to two vectors (missing ones count as zero). A row holding NaN/inf gets norm NaN, a zero
    row norm 0; neither adds to ``acc``. ``impl``: "numba" (fused kernel), "numpy" or "torch"."""
    x = np.ascontiguousarray(x)
    n, d = x.shape
    v = np.zeros((2, d), np.float32)
    vs = np.asarray(vs, dtype=np.float32).reshape(-1, d)
    v[: len(vs)] = vs[:2]
    if acc is None:
        acc = np.zeros((n_classes + 1, d), np.float32)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    if lab.size and (lab.max() >= n_classes or lab.min() < -1):
        raise ValueError(f"labels must lie in [-1, {n_classes}); got {lab.min()}..{lab.max()}")
    if x.dtype not in (np.float16, np.float32):
        raise TypeError(f"stream_stats takes float16 or float32 rows, got {x.dtype}")
    if impl in ("numpy", "torch"):
        fn = _stream_stats_numpy if impl == "numpy" else _stream_stats_torch
        norms, dots = fn(x, lab, v, int(n_classes), acc)
        norms[~np.isfinite(norms)] = np.nan
        return norms, dots, acc
    if impl != "numba":
        raise ValueError(f"impl must be numba, numpy or torch, got {impl!r}")
    from embedx.kernels.ops.stream_stats_numba import _sweep_f16, _sweep_f32

    norms = np.empty(n, np.float32)
    dots = np.empty((n, 2), np.float32)
    if x.dtype == np.float16:
        _sweep_f16(x.view(np.uint16), lab, v, int(n_classes), acc, norms, dots)
    else:
        _sweep_f32(x, lab, v, int(n_classes), acc, norms, dots)
    norms[norms < 0] = np.nan
    return norms, dots, acc
