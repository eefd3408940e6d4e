"""Rank counting for retrieval: how many non-positive candidates score strictly above a threshold, per row
and per column of ``S = a . b^T``, both in one sweep over the tiles of S (never materialized).

Row i of ``a`` is the global query ``row_offset + i``; column j of ``b`` has the positive ``b_pos[j]`` (a global
row id). With ``other[i, j] = (b_pos[j] != row_offset + i)``:

  row_counts[i] = #{j : other[i, j] and a_i.b_j > a_thr[i]}
  col_counts[j] = #{i : other[i, j] and a_i.b_j > b_thr[j]}

With a_thr / b_thr the scores of the best positive, a count is the number of candidates scoring strictly
higher: recall@k is the share of counts below k. ``ties = (a_group, a_skip, b_group, b_skip)`` takes out the
candidates whose tie with the best positive is exact, because their vectors are identical to it: the row count
of i skips columns j with ``b_group[j] == a_skip[i]``, the column count of j skips rows i with
``a_group[i] == b_skip[j]`` (groups of identical rows, -1 for none; skips -2 for none); the caller ranks those
by index (the lowest index wins, as stable sorting). Optional
per-row scales ``a_scale``/``b_scale`` make the rows ``a_scale[i] * a_i`` (raw float16 rows times their inverse
norms, so the GPU multiplies on tensor cores without rounding the unit rows to float16 again). Counts are
sums, so row and column blocks can be streamed (``row_offset``) and the results added. Positive pairs are
masked explicitly: a positive's float32 tile value may round above its own float64 threshold.

  * ``rank_count_reference``: float64 numpy (the definition).
  * ``rank_count_torch``: row block x column block tiles in float32 (CPU/GPU).
  * ``rank_count_triton``: a program per row tile looping over column tiles, row counts in registers, column
    counts by ``tl.atomic_add`` (GPU; CPU under ``TRITON_INTERPRET=1``).

The float32 paths compare float32 tile values against the thresholds rounded down to float32, which decides
``s > thr`` exactly as in float64 for every float32 ``s``.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    import triton
    import triton.language as tl

    from embedx.kernels.ops.tiles import launch_config, native_dot, tile_dot
except ImportError:  # pragma: no cover
    triton = None


def _scaled(v: np.ndarray, scale) -> np.ndarray:
    return v if scale is None else v * np.asarray(scale, dtype=np.float64)[:, None]


def rank_count_reference(a, b, a_thr, b_thr, b_pos, row_offset: int = 0, a_scale=None,
                         b_scale=None, ties=None) -> tuple[np.ndarray, np.ndarray]:
    """float64 (row_counts [len(a)], col_counts [len(b)]), int64."""
    s = _scaled(np.asarray(a, dtype=np.float64), a_scale) @ _scaled(np.asarray(b, dtype=np.float64), b_scale).T
    other = np.asarray(b_pos)[None, :] != (np.arange(len(s)) + row_offset)[:, None]
    o_row = o_col = other
    if ties is not None:
        ag, askip, bg, bskip = (np.asarray(v) for v in ties)
        o_row = other & (bg[None, :] != askip[:, None])
        o_col = other & (ag[:, None] != bskip[None, :])
    rows = (o_row & (s > np.asarray(a_thr, dtype=np.float64)[:, None])).sum(1)
    cols = (o_col & (s > np.asarray(b_thr, dtype=np.float64)[None, :])).sum(0)
    return rows.astype(np.int64), cols.astype(np.int64)


def _below_f32(thr, device) -> torch.Tensor:
    """``thr`` rounded down to float32: for float32 s, ``s > result`` iff ``s > thr``."""
    t = torch.as_tensor(thr, device=device).double()
    t32 = t.float()
    return torch.where(t32.double() > t, torch.nextafter(t32, torch.full_like(t32, -float("inf"))), t32)


def _outputs(m: int, n: int, device, row_counts, col_counts):
    rc = torch.zeros(m, dtype=torch.long, device=device) if row_counts is None else row_counts
    cc = torch.zeros(n, dtype=torch.long, device=device) if col_counts is None else col_counts
    return rc, cc


def rank_count_torch(a: torch.Tensor, b: torch.Tensor, a_thr, b_thr, b_pos, row_offset: int = 0,
                     row_counts: torch.Tensor | None = None, col_counts: torch.Tensor | None = None,
                     block_rows: int = 2048, block_cols: int = 4096, a_scale=None,
                     b_scale=None, ties=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds the counts into ``row_counts``/``col_counts`` (int64, zeros when None) and returns them."""
    dev = a.device
    if ties is not None:
        ag, askip, bg, bskip = (torch.as_tensor(v, device=dev).long() for v in ties)
    rc, cc = _outputs(len(a), len(b), dev, row_counts, col_counts)
    a = a.float()
    if a_scale is not None:
        a = a * torch.as_tensor(a_scale, device=dev, dtype=torch.float32)[:, None]
    at, bt = _below_f32(a_thr, dev), _below_f32(b_thr, dev)
    pos = torch.as_tensor(b_pos, device=dev).long() - row_offset  # local row of each column's positive
    size = min(block_rows, len(a)) * min(block_cols, len(b))
    s_buf, hit_buf = torch.empty(size, device=dev), torch.empty(size, device=dev)
    for c0 in range(0, len(b), block_cols):
        bc = b[c0:c0 + block_cols].float()
        if b_scale is not None:
            bc = bc * torch.as_tensor(b_scale[c0:c0 + block_cols], device=dev, dtype=torch.float32)[:, None]
        pc, tc = pos[c0:c0 + block_cols], bt[c0:c0 + block_cols]
        for r0 in range(0, len(a), block_rows):
            ab = a[r0:r0 + block_rows]
            s = torch.mm(ab, bc.T, out=s_buf[:len(ab) * len(bc)].view(len(ab), len(bc)))
            j = ((pc >= r0) & (pc < r0 + len(s))).nonzero()[:, 0]
            s[pc[j] - r0, j] = -float("inf")  # positive pairs never count
            # comparisons into float32 (exact counts up to 2^24 per tile): far faster to sum than bool
            hit = hit_buf[:s.numel()].view(s.shape)
            r1 = r0 + len(s)
            skip_r = skip_c = None  # exact ties with identical vectors: left to the caller
            if ties is not None and (askip[r0:r1] >= 0).any() and (bg[c0:c0 + len(bc)] >= 0).any():
                skip_r = bg[None, c0:c0 + len(bc)] == askip[r0:r1, None]
            if ties is not None and (ag[r0:r1] >= 0).any() and (bskip[c0:c0 + len(bc)] >= 0).any():
                skip_c = ag[r0:r1, None] == bskip[None, c0:c0 + len(bc)]
            torch.gt(s, at[r0:r1, None], out=hit)
            if skip_r is not None:
                hit.masked_fill_(skip_r, 0)
            rc[r0:r1] += hit.sum(1).long()
            torch.gt(s, tc[None, :], out=hit)
            if skip_c is not None:
                hit.masked_fill_(skip_c, 0)
            cc[c0:c0 + len(bc)] += hit.sum(0).long()
    return rc, cc


if triton is not None:

    @triton.jit(do_not_specialize=["n_rows", "n_cols", "row_offset"])
    def _rank_count_kernel(a_ptr, b_ptr, athr_ptr, bthr_ptr, pos_ptr, rc_ptr, cc_ptr, as_ptr, bs_ptr, ag_ptr,
                           askip_ptr, bg_ptr, bskip_ptr, n_rows, n_cols, dim, row_offset, stride_a, stride_b,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_SCALE: tl.constexpr,
                           NATIVE: tl.constexpr, HAS_TIES: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        rmask = rows < n_rows
        athr = tl.load(athr_ptr + rows, mask=rmask, other=float("inf"))
        grow = rows.to(tl.int64) + row_offset
        if HAS_SCALE:
            sa = tl.load(as_ptr + rows, mask=rmask, other=0.0)
        if HAS_TIES:
            ag = tl.load(ag_ptr + rows, mask=rmask, other=-1)
            askip = tl.load(askip_ptr + rows, mask=rmask, other=-2)
        rcount = tl.zeros((BM,), dtype=tl.int32)
        for c0 in range(0, n_cols, BN):
            cols = c0 + tl.arange(0, BN)
            cmask = cols < n_cols
            acc = tile_dot(a_ptr, b_ptr, rows, cols, rmask, cmask, dim, stride_a, stride_b, BM, BN, BK, NATIVE)
            if HAS_SCALE:
                acc = acc * sa[:, None] * tl.load(bs_ptr + cols, mask=cmask, other=0.0)[None, :]
            pos = tl.load(pos_ptr + cols, mask=cmask, other=-1)
            bthr = tl.load(bthr_ptr + cols, mask=cmask, other=float("inf"))
            other = (pos[None, :] != grow[:, None]) & rmask[:, None] & cmask[None, :]
            o_row = other
            o_col = other
            if HAS_TIES:  # candidates identical to the best positive: ranked by index, by the caller
                bg = tl.load(bg_ptr + cols, mask=cmask, other=-1)
                bskip = tl.load(bskip_ptr + cols, mask=cmask, other=-2)
                o_row = other & (bg[None, :] != askip[:, None])
                o_col = other & (ag[:, None] != bskip[None, :])
            rcount += tl.sum((o_row & (acc > athr[:, None])).to(tl.int32), axis=1)
            cpart = tl.sum((o_col & (acc > bthr[None, :])).to(tl.int32), axis=0)
            tl.atomic_add(cc_ptr + cols, cpart.to(tl.int64), mask=cmask & (cpart > 0))
        prev = tl.load(rc_ptr + rows, mask=rmask, other=0)
        tl.store(rc_ptr + rows, prev + rcount.to(tl.int64), mask=rmask)


def rank_count_triton(a: torch.Tensor, b: torch.Tensor, a_thr, b_thr, b_pos, row_offset: int = 0,
                      row_counts: torch.Tensor | None = None, col_counts: torch.Tensor | None = None,
                      a_scale=None, b_scale=None, ties=None,
                      config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; same contract as :func:`rank_count_torch` (count tensors must be contiguous int64).
    ``a``/``b`` both float16 (or both bfloat16) multiply on tensor cores; ``config`` overrides the tiles."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    dev = a.device
    rc, cc = _outputs(len(a), len(b), dev, row_counts, col_counts)
    if len(a) == 0 or len(b) == 0:
        return rc, cc
    if not (rc.is_contiguous() and cc.is_contiguous()):
        raise ValueError("rank_count_triton adds into contiguous count tensors")
    a, b = a.contiguous(), b.contiguous()
    at, bt = _below_f32(a_thr, dev).contiguous(), _below_f32(b_thr, dev).contiguous()
    pos = torch.as_tensor(b_pos, device=dev).long().contiguous()
    has_scale = a_scale is not None or b_scale is not None
    sa = (torch.ones(len(a), device=dev) if a_scale is None else
          torch.as_tensor(a_scale, device=dev, dtype=torch.float32)).contiguous()
    sb = (torch.ones(len(b), device=dev) if b_scale is None else
          torch.as_tensor(b_scale, device=dev, dtype=torch.float32)).contiguous()
    native = native_dot(a, b)
    cfg = config or launch_config(native)
    if ties is not None:
        ag, askip, bg, bskip = (torch.as_tensor(v, device=dev).long().contiguous() for v in ties)
    else:
        ag = askip = bg = bskip = pos  # unused (HAS_TIES false)
    _rank_count_kernel[(triton.cdiv(len(a), cfg["BM"]),)](a, b, at, bt, pos, rc, cc, sa, sb, ag, askip, bg, bskip,
                                                          len(a), len(b), a.shape[1], int(row_offset), a.stride(0),
                                                          b.stride(0), HAS_SCALE=has_scale, NATIVE=native,
                                                          HAS_TIES=ties is not None, **cfg)
    return rc, cc
