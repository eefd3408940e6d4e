"""H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning",
ICIP 2019)::

    hscore = tr( pinv(Cov(X)) Cov(g) ),   g_i = mu_{y_i} (the mean feature of x_i's class)

Both covariances with 1/(N-1), as the authors' code; pinv with rcond = 1e-15. Streamed:
Cov(X) = Z^T Z / (N-1) and Cov(g) = sum_c n_c (mu_c - mu)(mu_c - mu)^T / (N-1) (see ``moments``).
"""
from __future__ import annotations

import numpy as np

from embedx.transferability.moments import Moments

RCOND = 1e-15


def score(m: Moments) -> float:
    n_all = m.N
    cov_x = m.centered_scatter() / (n_all - 1)
    dev = m.class_means - m.mean
    cov_g = (dev * m.n[:, None]).T @ dev / (n_all - 1)
    return float(np.sum(np.linalg.pinv(cov_x, rcond=RCOND) * cov_g.T))  # trace of the product
