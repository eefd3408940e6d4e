"""The fused numba sweeps of ``stream_stats`` (the contract and the float16 widening are described there).
Compiled once per installation (``jit.njit_cached``); imported on the first numba pass only."""
from __future__ import annotations

import numpy as np

from embedx.kernels.ops.jit import njit_cached

F16_EXP_BIAS_SHIFT = np.float32(2.0 ** 112)  # 2^(127 - 15): moves a float16 exponent into float32 range
# widened this way an inf/NaN float16 becomes a finite value >= 2^16 (finite float16 stop at 65504), so a row
# holding one has a sum of squares >= 2^32; only such rows get the exact (integer) test
F16_NONFINITE_SQ = np.float32(2.0 ** 32)
TINY_NORM = np.float32(2.0 ** -15)  # below this, 2^112 / |x| overflows float32 (rows of subnormal float16)


@njit_cached(nogil=True)
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


@njit_cached(fastmath=True, nogil=True)
def _switch_class(run, acc, cur, c):  # pragma: no cover - compiled
    """Add the finished run of class ``cur`` into ``acc`` (and clear it) when the visit moves to class ``c``."""
    if c != cur and cur >= 0:
        ac = acc[cur]
        for j in range(run.shape[0]):
            ac[j] += run[j]
            run[j] = np.float32(0.0)
    return c


@njit_cached(nogil=True, fastmath=False)  # explicit: callees inherit fastmath, which would fold the two multiplies
def _add_in_order(run, tmp, scale, inv):  # pragma: no cover - compiled
    for j in range(tmp.shape[0]):
        run[j] += (tmp[j] * scale) * inv


@njit_cached(fastmath=True, nogil=True)
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


@njit_cached(nogil=True)
def _has_nonfinite_f16(hi):  # pragma: no cover - compiled
    for j in range(hi.shape[0]):
        if (hi[j] & 0x7C00) == 0x7C00:
            return True
    return False


@njit_cached(fastmath=True, nogil=True)
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


@njit_cached(fastmath=True, nogil=True)
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
