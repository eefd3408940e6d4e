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
  * ``stream_stats(impl="torch")``: the same contract in a few torch calls (no JIT: numba's first call in a
    process costs ~0.3 s of runtime start-up, which small passes never win back; the pass picks torch below
    ``NUMBA_MIN_ELEMENTS``).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

F16_EXP_BIAS_SHIFT = np.float32(2.0 ** 112)  # 2^(127 - 15): moves a float16 exponent into float32 range
# widened this way an inf/NaN float16 becomes a finite value >= 2^16 (finite float16 stop at 65504), so a row
# holding one has a sum of squares >= 2^32; only such rows get the exact (integer) test
F16_NONFINITE_SQ = np.float32(2.0 ** 32)
TINY_NORM = np.float32(2.0 ** -15)
NUMBA_MIN_ELEMENTS = 1 << 25  # rows x dim of a pass from which the numba kernel pays for its start-up  # below this, 2^112 / |x| overflows float32 (rows of subnormal float16)


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


@njit(cache=True, nogil=True)
def _class_order(labels, n_classes):  # pragma: no cover - compiled
    """(rows grouped by class, the class of each visit) by a counting sort; label -1 is class n_classes.
    Rows of a class are summed in L1 and added to the accumulator once per chunk instead of once per row."""
    n = labels.shape[0]
    cls = np.empty(n, np.int64)
    counts = np.zeros(n_classes + 2, np.int64)
    for i in range(n):
        cls[i] = labels[i] if labels[i] >= 0 else n_classes
        counts[cls[i] + 1] += 1
    for c in range(n_classes + 1):
        counts[c + 1] += counts[c]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[counts[cls[i]]] = i
        counts[cls[i]] += 1
    return order, cls[order]


@njit(cache=True, fastmath=True, nogil=True)
def _switch_class(run, acc, cur, c):  # pragma: no cover - compiled
    """Add the finished run of class ``cur`` into ``acc`` (and clear it) when the visit moves to class ``c``."""
    if c != cur and cur >= 0:
        ac = acc[cur]
        for j in range(run.shape[0]):
            ac[j] += run[j]
            run[j] = np.float32(0.0)
    return c


@njit(cache=True, nogil=True, fastmath=False)  # explicit: callees inherit fastmath, which would fold the two multiplies
def _add_in_order(run, tmp, scale, inv):  # pragma: no cover - compiled
    for j in range(tmp.shape[0]):
        run[j] += (tmp[j] * scale) * inv


@njit(cache=True, fastmath=True, nogil=True)
def _row_done(i, tmp, scale, s, a0, a1, bad, run, norms, dots):  # pragma: no cover - compiled
    """Norm and dots of row i (its values are tmp * scale); add its normalized values to the class run."""
    if bad:
        norms[i] = np.float32(-1.0)  # marked; the wrapper turns it into NaN
        dots[i, 0] = np.float32(0.0)
        dots[i, 1] = np.float32(0.0)
        return
    nr = np.sqrt(s)
    norms[i] = nr
    if nr == 0:
        dots[i, 0] = np.float32(0.0)
        dots[i, 1] = np.float32(0.0)
        return
    inv = np.float32(1.0) / nr
    dots[i, 0] = a0 * inv
    dots[i, 1] = a1 * inv
    if nr < TINY_NORM:  # scale * inv could overflow float32: multiply in two steps, in this order
        _add_in_order(run, tmp, scale, inv)
        return
    w = scale * inv
    for j in range(tmp.shape[0]):
        run[j] += tmp[j] * w


@njit(cache=True, nogil=True)
def _has_nonfinite_f16(hi):  # pragma: no cover - compiled
    for j in range(hi.shape[0]):
        if (hi[j] & 0x7C00) == 0x7C00:
            return True
    return False


@njit(cache=True, fastmath=True, nogil=True)
def _sweep_f16(h, labels, vs, n_classes, acc, norms, dots):  # pragma: no cover - compiled
    n, d = h.shape
    bits = np.empty(d, np.uint32)
    tmp = bits.view(np.float32)       # x * 2^-112: the float16 bits moved into float32 position
    run = np.zeros(d, np.float32)
    v0, v1 = vs[0], vs[1]
    order, cls = _class_order(labels, n_classes)
    cur = -1
    for k in range(n):
        i = order[k]
        cur = _switch_class(run, acc, cur, cls[k])
        hi = h[i]
        for j in range(d):
            u = np.uint32(hi[j])
            bits[j] = ((u & np.uint32(0x7FFF)) << np.uint32(13)) | ((u & np.uint32(0x8000)) << np.uint32(16))
        s = np.float32(0.0)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        for j in range(d):
            v = tmp[j] * F16_EXP_BIAS_SHIFT
            s += v * v
            a0 += v * v0[j]
            a1 += v * v1[j]
        bad = s >= F16_NONFINITE_SQ and _has_nonfinite_f16(hi)  # finite test first: it costs nothing
        _row_done(i, tmp, F16_EXP_BIAS_SHIFT, s, a0, a1, bad, run, norms, dots)
    _switch_class(run, acc, cur, -1)


@njit(cache=True, fastmath=True, nogil=True)
def _sweep_f32(x, labels, vs, n_classes, acc, norms, dots):  # pragma: no cover - compiled
    n, d = x.shape
    run = np.zeros(d, np.float32)
    v0, v1 = vs[0], vs[1]
    order, cls = _class_order(labels, n_classes)
    ubits = x.view(np.uint32)
    cur = -1
    for k in range(n):
        i = order[k]
        cur = _switch_class(run, acc, cur, cls[k])
        xi = x[i]
        ui = ubits[i]
        flag = np.uint32(0)
        s = np.float32(0.0)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        for j in range(d):
            v = xi[j]
            s += v * v
            a0 += v * v0[j]
            a1 += v * v1[j]
            flag |= (ui[j] & np.uint32(0x7F800000)) + np.uint32(0x00800000)  # bit 31 iff exponent all ones
        _row_done(i, xi, np.float32(1.0), s, a0, a1, (flag & np.uint32(0x80000000)) != 0, run, norms, dots)
    _switch_class(run, acc, cur, -1)


def _stream_stats_torch(x: np.ndarray, lab: np.ndarray, v: np.ndarray, n_classes: int, acc: np.ndarray):
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
    row norm 0; neither adds to ``acc``. ``impl``: "numba" (fused kernel) or "torch"."""
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
    if impl == "torch":
        norms, dots = _stream_stats_torch(x, lab, v, int(n_classes), acc)
        norms[~np.isfinite(norms)] = np.nan
        return norms, dots, acc
    if impl != "numba":
        raise ValueError(f"impl must be numba or torch, got {impl!r}")
    norms = np.empty(n, np.float32)
    dots = np.empty((n, 2), np.float32)
    if x.dtype == np.float16:
        _sweep_f16(x.view(np.uint16), lab, v, int(n_classes), acc, norms, dots)
    else:
        _sweep_f32(x, lab, v, int(n_classes), acc, norms, dots)
    norms[norms < 0] = np.nan
    return norms, dots, acc
