"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021),
classification: for each present class c, y = the 0/1 indicator of c, F = X (N x D, unit rows, not centered).
Bayesian linear regression y ~ N(F m, 1/beta), m ~ N(0, 1/alpha); with F^T F = V diag(s) V^T, from
alpha = beta = 1 iterate::

    gamma = sum_i beta s_i / (alpha + beta s_i)
    m     = beta (alpha I + beta F^T F)^-1 F^T y
    alpha = gamma / (m^T m + 1e-5),   beta = (N - gamma) / (|y - F m|^2 + 1e-5)
    L     = D/2 ln alpha + N/2 ln beta - 1/2 sum_i ln(alpha + beta s_i) - beta/2 (|y - F m|^2 + 1e-5)
            - alpha/2 (m^T m + 1e-5) - N/2 ln 2 pi
    logme = mean over classes of L / N

The 1e-5 in the denominators (and in the evidence) is the official code's. The official code stops when
lambda = alpha / beta changes by less than 1% (at most 11 iterations); we iterate to convergence instead (relative
change below 1e-10, at most 1000 iterations), so the value does not depend on where the loop was cut.
Everything comes from sufficient statistics: F^T F, F^T y (the class sums), y^T y = n_c and
|y - F m|^2 = y^T y - 2 m^T F^T y + m^T F^T F m; all classes iterate together, vectorized.
"""
from __future__ import annotations

import logging

import numpy as np

from embedx.transferability.moments import Moments

EPS = 1e-5
TOL = 1e-10
MAX_ITER = 1000

log = logging.getLogger("embedx")


def evidences(ftf: np.ndarray, fty: np.ndarray, yty: np.ndarray, n_rows: int) -> np.ndarray:
    """L / N per target; ``fty`` is K x D (one row per target), ``yty`` its K squared norms."""
    s, v = np.linalg.eigh(ftf)
    s = np.maximum(s, 0.0)[:, None]  # D x 1 (PSD: clip rounding below zero)
    d = ftf.shape[0]
    tmp = v.T @ fty.T  # D x K: V^T F^T y
    k = tmp.shape[1]
    alpha, beta = np.ones(k), np.ones(k)
    lam = alpha / beta
    alpha_de, beta_de = np.zeros(k), np.zeros(k)
    active = np.arange(k)
    for _ in range(MAX_ITER):
        a, b, t = alpha[active], beta[active], tmp[:, active]
        denom = a + b * s
        gamma = (b * s / denom).sum(axis=0)
        w = t * b / denom  # V^T m
        ad = (w * w).sum(axis=0)
        bd = np.maximum(yty[active] - 2 * (t * w).sum(axis=0) + (s * w * w).sum(axis=0), 0.0)
        alpha_de[active], beta_de[active] = ad, bd
        alpha[active] = gamma / (ad + EPS)
        beta[active] = (n_rows - gamma) / (bd + EPS)
        new_lam = alpha[active] / beta[active]
        done = np.abs(new_lam - lam[active]) / lam[active] < TOL
        lam[active] = new_lam
        active = active[~done]
        if not len(active):
            break
    else:
        log.warning("logme: %d of %d classes did not converge in %d iterations", len(active), k, MAX_ITER)
    ev = (d / 2.0 * np.log(alpha) + n_rows / 2.0 * np.log(beta)
          - 0.5 * np.log(alpha[None, :] + beta[None, :] * s).sum(axis=0)
          - beta / 2.0 * (beta_de + EPS) - alpha / 2.0 * (alpha_de + EPS) - n_rows / 2.0 * np.log(2 * np.pi))
    return ev / n_rows


def score(m: Moments) -> float:
    fty = m.a + m.n[:, None] * m.shift  # class sums of x: F^T y_c
    return float(np.mean(evidences(m.gram(), fty, m.n, m.N)))
