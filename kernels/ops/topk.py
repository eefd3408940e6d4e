"""Blocked similarity top-k: indices of the k largest ``q_i . g_j`` per query, never materializing
len(q) x len(g). Ties go to the lower gallery index (as a stable descending sort).

  * ``topk_reference``: float64 dense similarity + stable argsort (the definition).
  * ``topk_torch``: query blocks x gallery blocks, running top-k merged per block (CPU/GPU).
  * ``topk_triton``: a Triton kernel keeping a running top-k per query tile in registers (GPU; CPU under
    ``TRITON_INTERPRET=1``); k <= 16.
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

TRITON_MAX_K = 16


def topk_reference(q, g, k: int) -> np.ndarray:
    s = np.asarray(q, dtype=np.float64) @ np.asarray(g, dtype=np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, : min(k, s.shape[1])]


def block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest per row of ``s`` and their columns, ties to the lower column. ``torch.topk`` keeps any of the
    values tied with the k-th: rows where more than k values reach it take a stable sort instead."""
    v, i = s.topk(k, dim=1)
    if k == 0:
        return v, i
    tied = ((s >= v[:, -1:]).sum(1) > k).nonzero()[:, 0]
    if len(tied):
        i[tied] = torch.sort(s[tied], dim=1, descending=True, stable=True).indices[:, :k]
        v[tied] = s[tied].gather(1, i[tied])
    return v, i


def topk_torch(q: torch.Tensor, g: torch.Tensor, k: int, block: int = 4096) -> torch.Tensor:
    """(len(q), min(k, len(g))) int64 indices, best first."""
    k = min(k, len(g))
    q = q.float()
    out = torch.empty(len(q), k, dtype=torch.long, device=q.device)
    for q0 in range(0, len(q), block):
        qb = q[q0:q0 + block]
        best_v = torch.full((len(qb), 0), -float("inf"), device=q.device)
        best_i = torch.zeros((len(qb), 0), dtype=torch.long, device=q.device)
        for g0 in range(0, len(g), block):
            s = qb @ g[g0:g0 + block].float().T
            v, i = block_topk(s, min(k, s.shape[1]))
            cat_v, cat_i = torch.cat([best_v, v], 1), torch.cat([best_i, i + g0], 1)
            # stable: among equal values keep the lower gallery index first
            order = torch.argsort(cat_i, dim=1)
            cat_v, cat_i = cat_v.gather(1, order), cat_i.gather(1, order)
            pos = torch.sort(cat_v, dim=1, descending=True, stable=True).indices[:, :k]
            best_v, best_i = cat_v.gather(1, pos), cat_i.gather(1, pos)
        out[q0:q0 + block] = best_i
    return out


if triton is not None:

    @triton.jit(do_not_specialize=["n_q", "n_g", "K"])
    def _topk_kernel(q_ptr, g_ptr, out_ptr, n_q, n_g, dim, stride_q, stride_g, K,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KP: tl.constexpr, NATIVE: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        rmask = rows < n_q
        kcols = tl.arange(0, KP)
        best_v = tl.full((BM, KP), float("-inf"), tl.float32)
        best_i = tl.full((BM, KP), 2147483647, tl.int32)
        for g0 in range(0, n_g, BN):
            cols = g0 + tl.arange(0, BN)
            cmask = cols < n_g
            acc = tile_dot(q_ptr, g_ptr, rows, cols, rmask, cmask, dim, stride_q, stride_g, BM, BN, BK, NATIVE)
            s = tl.where(cmask[None, :], acc, float("-inf"))
            idx = tl.where(cmask[None, :], cols[None, :], 2147483647) + tl.zeros((BM, BN), tl.int32)
            new_v = tl.full((BM, KP), float("-inf"), tl.float32)
            new_i = tl.full((BM, KP), 2147483647, tl.int32)
            for j in range(0, K):  # k selection steps over (running best) U (this tile)
                vs = tl.max(s, axis=1)
                vb = tl.max(best_v, axis=1)
                # lowest index among the maxima of each side (ties -> lower gallery index)
                is_ = tl.min(tl.where(s == vs[:, None], idx, 2147483647), axis=1)
                ib = tl.min(tl.where(best_v == vb[:, None], best_i, 2147483647), axis=1)
                take_s = (vs > vb) | ((vs == vb) & (is_ < ib))
                v = tl.where(take_s, vs, vb)
                i = tl.where(take_s, is_, ib)
                new_v = tl.where(kcols[None, :] == j, v[:, None], new_v)
                new_i = tl.where(kcols[None, :] == j, i[:, None], new_i)
                s = tl.where(take_s[:, None] & (idx == is_[:, None]), float("-inf"), s)
                idx = tl.where(take_s[:, None] & (idx == is_[:, None]), 2147483647, idx)
                best_v = tl.where((~take_s)[:, None] & (best_i == ib[:, None]), float("-inf"), best_v)
                best_i = tl.where((~take_s)[:, None] & (best_i == ib[:, None]), 2147483647, best_i)
            best_v = new_v
            best_i = new_i
        tl.store(out_ptr + rows[:, None] * K + kcols[None, :], best_i.to(tl.int64),
                 mask=rmask[:, None] & (kcols[None, :] < K))


def topk_triton(q: torch.Tensor, g: torch.Tensor, k: int, config: dict | None = None) -> torch.Tensor:
    """(len(q), min(k, len(g))) int64 indices, best first; both float16 (or bfloat16) use tensor cores."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    k = min(k, len(g))
    if k > TRITON_MAX_K:
        raise ValueError(f"topk_triton supports k <= {TRITON_MAX_K}")
    q, g = q.contiguous(), g.contiguous()
    out = torch.empty(len(q), k, dtype=torch.long, device=q.device)
    if len(q) == 0 or k == 0:
        return out
    kp = max(2, triton.next_power_of_2(k))
    native = native_dot(q, g)
    cfg = config or launch_config(native, "topk")
    _topk_kernel[(triton.cdiv(len(q), cfg["BM"]),)](q, g, out, len(q), len(g), q.shape[1], q.stride(0), g.stride(0),
                                                    k, KP=kp, NATIVE=native, **cfg)
    return out
