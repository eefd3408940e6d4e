"""Compute kernels (``embedx.kernels``): arrays in, arrays out; nothing here knows about stores or files.

Populated by the measures work (fused distance + per-cluster sums, blocked top-k) with a Triton path, a
torch CPU path and one dispatch point.
"""
