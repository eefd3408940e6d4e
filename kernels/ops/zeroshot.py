"""Zero-shot hit counting: per class, how many rows rank their true class first (top-1) or among the first five.

With logits ``s_ic = x_i . t_c`` and labels ``y_i``, the rank of the true class is

    r_i = #{c: s_ic > s_iy} + #{c < y_i: t_c identical, bit for bit, to t_y}

(identical class texts tie exactly and are decided by index: the lowest index wins, as argmax does), and
``top1[c] += #{i: y_i = c, r_i = 0}``, ``top5[c] += #{i: y_i = c, r_i < 5}``. Scaling a row does not change r_i.

  * ``zeroshot_hits_reference``: float64 logits, the formula above (the definition).
  * ``zeroshot_hits_torch``: IEEE float32 matmuls in row steps, counts added into the caller's tensors (CPU/GPU).
    There is no Triton kernel: the count is bound by the matmul, which torch already runs at full speed.
"""
from __future__ import annotations

import numpy as np
import torch

ZS_ROWS = 4096  # zero-shot rows per step at most: 4096 x C logits stay in cache for C up to 1,024
ZS_ELEMENTS = ZS_ROWS * 1024  # logits (float32) of one step at most: 16 MiB whatever C is


def zs_rows(c: int) -> int:
    """Rows per zero-shot step for ``c`` classes: ZS_ROWS, fewer as C grows so a step's ``rows x C`` logits stay
    within ZS_ELEMENTS (at least one row: 10^6 classes take 4 rows, 16 MiB, per step)."""
    return max(1, min(ZS_ROWS, ZS_ELEMENTS // max(1, int(c))))


def zeroshot_hits_reference(x, y, texts, groups=()) -> tuple[np.ndarray, np.ndarray]:
    """(top1, top5) int64 counts per class from float64 logits; ``groups``: index arrays of identical texts."""
    x, t = np.asarray(x, np.float64), np.asarray(texts, np.float64)
    y = np.asarray(y, np.int64)
    c = len(t)
    logits = x @ t.T
    true = logits[np.arange(len(y)), y]
    rank = (logits > true[:, None]).sum(1)
    for g in groups:
        g = np.asarray(g, np.int64)
        rows = np.isin(y, g)
        # inside a group every score equals the true one: the lower indices rank ahead, the float compare counted none
        rank[rows] += (g[None, :] < y[rows, None]).sum(1) - (logits[np.ix_(rows, g)] > true[rows, None]).sum(1)
    return np.bincount(y[rank == 0], minlength=c), np.bincount(y[rank < 5], minlength=c)


def zeroshot_hits_torch(x: torch.Tensor, y: torch.Tensor, texts: torch.Tensor, top1: torch.Tensor,
                        top5: torch.Tensor, hit: torch.Tensor, step: int | None = None, groups=()) -> None:
    """Add the top-1/top-5 hits of float32 rows ``x`` with labels ``y`` (all >= 0) per class into the int64
    tensors ``top1``/``top5`` (all on one device). The true class y ranks after every class scoring strictly
    higher and, among identical class texts (``groups``: index tensors of bit-identical rows, from
    ``embedx.rows.duplicate_groups``), after those of lower index: the lowest index wins a tie, as argmax.
    Row scaling does not change the ranking. ``hit``: a float32 work buffer of at least min(step, len(x)) x C.
    The matmul is IEEE float32 on every device (CUDA's default: no TF32). ``step`` rows per matmul (default
    :func:`zs_rows`: fewer as C grows, so memory stays bounded by ZS_ELEMENTS whatever C is)."""
    c = len(texts)
    step = zs_rows(c) if step is None else max(1, int(step))
    for z0 in range(0, len(x), step):  # cache-sized: matmul-bound, logits stay small
        yz = y[z0:z0 + step]
        logits = torch.nn.functional.linear(x[z0:z0 + step], texts)
        true = logits.gather(1, yz[:, None])
        # compared into float32, not bool: summed 4x faster, exact (counts <= C < 2^24)
        better = torch.gt(logits, true, out=hit[: len(yz)]).sum(1)
        for g in groups:  # identical texts tie exactly: decided by index, not by float rounding
            rows = torch.isin(yz, g).nonzero()[:, 0]
            if len(rows):
                yr = yz[rows]
                counted = (logits[rows][:, g] > true[rows]).sum(1)
                better[rows] += ((g[None, :] < yr[:, None]).sum(1) - counted).to(better.dtype)
        top1 += torch.bincount(yz[better == 0], minlength=c)
        top5 += torch.bincount(yz[better < 5], minlength=c)
