"""Triton building blocks shared by the kernels (GPU; CPU under ``TRITON_INTERPRET=1``).

``tile_dot`` multiplies in the inputs' own precision where that is exact: float16 x float16 and bfloat16 x
bfloat16 products are exact in float32, so on a GPU they go to the tensor cores (``NATIVE``) with float32
accumulation, the same arithmetic as upcasting first. float32 inputs use IEEE float32 FMAs (never plain TF32,
whose 10-bit mantissa would break the 1e-5 contract), or ``tile_dot_3xtf32``: three TF32 tensor-core products
of the split operands, float32-grade accuracy. The interpreter upcasts everything (it has no bf16 dot).

``launch_config`` picks tile sizes by dtype and device: large tiles that feed Hopper/Ampere tensor cores for
16-bit inputs, smaller ones for the float32 FMA path, and small ones under the interpreter (tests).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def native_dot(x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when ``x . y^T`` can run on tensor cores exactly: both float16 or both bfloat16, on a GPU."""
    return x.dtype == y.dtype and x.dtype in SIXTEEN_BIT and x.is_cuda and not interpreted()


def launch_config(native: bool, kernel: str = "tile") -> dict:
    """Tile sizes and warps: ``BM``, ``BN``, ``BK`` (constexprs) and ``num_warps``/``num_stages`` (launch)."""
    if interpreted():
        return {"BM": 16 if kernel == "topk" else 32, "BN": 64, "BK": 32}
    if kernel == "topk":  # the running top-k sits in registers per query row: keep row tiles small
        return {"BM": 16, "BN": 64, "BK": 64 if native else 32, "num_warps": 4, "num_stages": 3}
    if native:
        return {"BM": 128, "BN": 128, "BK": 64, "num_warps": 8, "num_stages": 3}
    return {"BM": 64, "BN": 64, "BK": 32, "num_warps": 4, "num_stages": 3}


if triton is not None:

    @triton.jit
    def tile_dot(x_ptr, y_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_y,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NATIVE: tl.constexpr):
        """(BM, BN) float32 tile of x[rows] . y[cols]^T, accumulated over the dim in BK-wide steps."""
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, dim, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < dim
            a = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            b = tl.load(y_ptr + cols[:, None] * stride_y + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                        other=0.0)
            if NATIVE:  # 16-bit tensor cores: exact products, float32 accumulation
                acc = tl.dot(a, tl.trans(b), acc)
            else:
                acc += tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
        return acc

    @triton.jit
    def _tf32(v):
        """``v`` truncated to TF32 (its top 10 mantissa bits): what a tensor core multiplies, made explicit so
        the interpreter computes the same products (an 11-bit x 11-bit product is exact in float32)."""
        return (v.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)

    @triton.jit
    def tile_dot_3xtf32(x_ptr, y_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_y,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """(BM, BN) float32 tile of x[rows] . y[cols]^T for float32 inputs on TF32 tensor cores, split-precision:
        a = a_hi + a_lo with a_hi, a_lo TF32 (a_lo = tf32(a - a_hi)), and a.b ~ a_hi.b_hi + a_hi.b_lo + a_lo.b_hi.
        The dropped a_lo.b_lo and the truncation of the low parts leave a relative error per product of about
        2^-21 (|a_lo| <= 2^-10 |a|, truncated to 2^-10 of itself), so |error of x.y| <= ~5e-7 |x||y| plus float32
        accumulation: the same order as the IEEE float32 FMA path, within the 1e-5 contract (near pairs, where
        the expansion cancels, are recomputed from differences either way). 3xBF16 does not fit: bf16's 8-bit
        mantissa leaves ~2^-16 (1.5e-5 |x||y|) per product."""
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, dim, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < dim
            a = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            b = tl.load(y_ptr + cols[:, None] * stride_y + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            a_hi = _tf32(a)
            b_hi = _tf32(b)
            a_lo = _tf32(a - a_hi)
            b_lo = _tf32(b - b_hi)
            bt_hi = tl.trans(b_hi)
            acc = tl.dot(a_lo, bt_hi, acc, input_precision="tf32")  # small terms first
            acc = tl.dot(a_hi, tl.trans(b_lo), acc, input_precision="tf32")
            acc = tl.dot(a_hi, bt_hi, acc, input_precision="tf32")
        return acc
