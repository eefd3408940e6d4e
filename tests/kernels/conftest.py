"""Shared by the kernel tests: which implementations run here, and random unit rows."""
import os

import numpy as np
import pytest
import torch

from embedx import kernels as K

requires_interpreter = pytest.mark.skipif(
    K.triton is None or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="Triton needs a GPU or TRITON_INTERPRET=1 (make test sets it)")

IMPLS = ["torch", pytest.param("triton", marks=requires_interpreter)]


def unit(rng, n, d):
    """n random float64 rows of length 1 in d dimensions."""
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
