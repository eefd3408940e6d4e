"""Benchmark kernels.content_hash (NH2 over the bytes of an N x d array): reference (numpy) / numba. There is no
torch or Triton kernel for this op (it checks chunks as they are read, on the CPU)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from embedx.kernels.ops.content_hash import content_hash, content_hash_reference  # noqa: E402


def setup(impl, p, rng, device):
    x = rng.standard_normal((p.n, p.d)).astype(p.dtype)
    fn = content_hash_reference if impl == "reference" else content_hash
    return lambda: fn(x)


if __name__ == "__main__":
    harness.main("content_hash", ["reference", "numba"], setup, classes=False,
                 note="no torch or Triton kernel for this op")
