"""Triton building blocks shared by the kernels (GPU; CPU under ``TRITON_INTERPRET=1``)."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def tile_dot(x_ptr, y_ptr, rows, cols, rmask, cmask, dim, stride_x, stride_y,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """(BM, BN) float32 tile of x[rows] . y[cols]^T, accumulated over the dim in BK-wide steps."""
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, dim, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < dim
            a = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            b = tl.load(y_ptr + cols[:, None] * stride_y + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.dot(a, tl.trans(b), input_precision="ieee")
        return acc
