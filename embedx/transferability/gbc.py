"""GBC, the Gaussian Bhattacharyya coefficient (Pandy et al., "Transferability Estimation using Bhattacharyya
Class Separability", CVPR 2022)::

    per present class c: mean mu_c, diagonal v_c = max(var_c, 1e-4) (population variance, ddof 0)
        gbc:           Sigma_c = s_c I with s_c = mean_j v_cj     (spherical)
        gbc_diagonal:  Sigma_c = diag(v_c)
    D_B(1, 2) = 1/8 (mu_1 - mu_2)^T Sigma^-1 (mu_1 - mu_2) + 1/2 ln( det Sigma / sqrt(det Sigma_1 det Sigma_2) ),
        Sigma = (Sigma_1 + Sigma_2) / 2
    GBC = - sum_{c1 != c2} exp(-D_B(c1, c2))      (ordered pairs of present classes; higher = more separable)

The determinants are d-dimensional, as in the paper: for spherical Gaussians the log-determinant term is
d/2 (ln s - ln s_1 / 2 - ln s_2 / 2). Google's reference code (google-research stable_transfer/transferability/
gbc.py, also used by mit-ll/IIMM) drops the factor d in the spherical case; we follow the paper's formula.
Streamed from class counts, sums and per-dimension sums of squares; the pair loop is vectorized in row chunks.
"""
from __future__ import annotations

import numpy as np

from embedx.transferability.moments import Moments

FLOOR = 1e-4
PAIR_CHUNK = 1 << 22  # elements of one (rows x K x d) chunk of the pairwise computation


def score(m: Moments, diagonal: bool = False) -> float:
    mu = m.class_means
    var = np.maximum(m.class_variances(), FLOOR)
    k, d = mu.shape
    sph = None if diagonal else var.mean(axis=1)  # s_c
    logdet = np.log(var).sum(axis=1) if diagonal else d * np.log(sph)
    rows = max(1, PAIR_CHUNK // max(1, k * d))
    total = 0.0
    for i0 in range(0, k, rows):
        i1 = min(k, i0 + rows)
        diff = mu[i0:i1, None, :] - mu[None, :, :]
        if diagonal:
            avg = (var[i0:i1, None, :] + var[None, :, :]) / 2
            first = (diff * diff / avg).sum(axis=2) / 8
            logdet_avg = np.log(avg).sum(axis=2)
        else:
            avg = (sph[i0:i1, None] + sph[None, :]) / 2
            first = (diff * diff).sum(axis=2) / (8 * avg)
            logdet_avg = d * np.log(avg)
        dist = first + 0.5 * (logdet_avg - 0.5 * logdet[i0:i1, None] - 0.5 * logdet[None, :])
        coef = np.exp(-dist)
        coef[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0  # c1 != c2
        total += coef.sum()
    return float(-total)
