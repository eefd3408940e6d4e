"""TransRate (Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022)::

    Z = X - mean(X)                                     (globally centered features)
    R(Z) = 1/2 logdet(I_d + Z^T Z / (n eps)),  eps = 1e-4, n = rows of Z
    TransRate = R(Z) - (1/K) sum_k R(Z_k)               Z_k = the rows of Z in class k, K present classes

Streamed: per class the shifted scatter P_k = sum_{y_i=k} (x_i - s)(x_i - s)^T (float64), then
Z_k^T Z_k = P_k + a_k dl^T + dl a_k^T + n_k dl dl^T with dl = s - mu and a_k the shifted class sum. That is
K d^2 float64; beyond BUDGET_BYTES the classes are processed in groups, one extra pass per group after the first
(which rides along the shared first pass). Log-determinants by slogdet in float64.
"""
from __future__ import annotations

import copy

import numpy as np

from types import SimpleNamespace

from embedx.transferability.moments import (Block, Mergeable, Moments, scatter_matrix, single_threaded_blas, symmetric,
                                     syrk_update)

EPS = 1e-4
BUDGET_BYTES = 1 << 30  # most bytes of per-class scatter matrices held at once


def groups(present: np.ndarray, dim: int) -> list[np.ndarray]:
    """Present labels in groups whose scatter matrices fit in BUDGET_BYTES (at least one class a group)."""
    size = max(1, int(BUDGET_BYTES // (dim * dim * 8)))
    return [present[i:i + size] for i in range(0, len(present), size)]


class ClassScatter(Mergeable):
    """Accumulates P_k for the labels of one group (shift taken from the Moments of the same or a former pass)."""

    ADDITIVE = ("p",)

    def __init__(self, labels: np.ndarray, moments: Moments, n_labels: int, dim: int):
        self.labels = np.asarray(labels)
        self.moments = moments
        self.slot = np.full(n_labels, -1, dtype=np.int64)
        self.slot[self.labels] = np.arange(len(self.labels))
        self.p = scatter_matrix(dim, len(self.labels))  # p[:, :, k]: upper triangle of P_k
        self.seconds = 0.0

    def update(self, b: Block) -> None:
        xs = b.shifted(self.moments.shift)
        with single_threaded_blas():
            for lab, b0, b1 in b.segments():
                k = self.slot[lab]
                if k >= 0:
                    syrk_update(self.p[:, :, k], xs[b0:b1])

    def light(self):
        """Tasks read only the shift of the Moments (set before the pass is sent out)."""
        out = copy.copy(self)
        out.moments = SimpleNamespace(shift=self.moments.shift)
        return out


def coding_rate(ztz: np.ndarray, n: float, eps: float = EPS) -> float:
    d = ztz.shape[0]
    sign, logdet = np.linalg.slogdet(np.eye(d) + ztz / (n * eps))
    return 0.5 * float(logdet)


def class_rates(acc: ClassScatter, m: Moments) -> float:
    """sum over the group's classes of R(Z_k)."""
    dl = m.shift - m.mean
    total = 0.0
    for k, lab in enumerate(acc.labels):
        a, n = m.sums[lab], float(m.counts[lab])
        ztz = symmetric(acc.p[:, :, k]) + np.outer(a, dl) + np.outer(dl, a) + n * np.outer(dl, dl)
        total += coding_rate(ztz, n)
    return total


def score(m: Moments, class_rate_sum: float) -> float:
    return coding_rate(m.centered_scatter(), m.N) - class_rate_sum / len(m.present)
