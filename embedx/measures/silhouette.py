"""Euclidean silhouette, exact or sampled, through the fused distance + per-cluster-sum kernel.

Follows sklearn.metrics.silhouette_score exactly: s_p = (b_p - a_p)/max(a_p, b_p) with a_p the mean distance
to the rest of p's cluster, b_p the smallest mean distance to another (non-empty) cluster; singleton
clusters score 0; the score is the mean over all points. Never materializes the distance matrix.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError
from embedx.measures.stream import silhouette_values

ROW_BLOCK = 1024


def _prepare(points: torch.Tensor, labels: np.ndarray):
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")            # clusters contiguous: tiles span few clusters
    _, dense = np.unique(labels[order], return_inverse=True)
    k = int(dense.max()) + 1 if len(dense) else 0
    if k < 2 or k > len(points) - 1:
        raise EmbedxError(f"silhouette needs 2 <= clusters <= points - 1, got {k} clusters of {len(points)} points")
    return points[torch.from_numpy(order)], dense, order, k


def _values(pts, dense, k, row_idx: np.ndarray) -> np.ndarray:
    sizes = np.bincount(dense, minlength=k)
    lab_t = torch.from_numpy(dense)
    out = np.empty(len(row_idx))
    for r0 in range(0, len(row_idx), ROW_BLOCK):
        idx = row_idx[r0:r0 + ROW_BLOCK]
        rid = torch.from_numpy(idx.astype(np.int64))
        s = kernels.cluster_distance_sums(pts[rid], pts, lab_t, k, row_ids=rid).cpu().numpy()
        own = dense[idx]
        ar = np.arange(len(idx))
        means = s / sizes[None, :]
        means[ar, own] = np.inf
        out[r0:r0 + len(idx)] = silhouette_values(s[ar, own], sizes[own], means.min(1))
    return out


def silhouette_samples(points: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Exact per-point values, in the input order (sklearn.metrics.silhouette_samples)."""
    pts, dense, order, k = _prepare(points, labels)
    vals = _values(pts, dense, k, np.arange(len(pts)))
    out = np.empty_like(vals)
    out[order] = vals
    return out


def silhouette_exact(points: torch.Tensor, labels: np.ndarray) -> float:
    return float(silhouette_samples(points, labels).mean())


def silhouette_sampled(points: torch.Tensor, labels: np.ndarray, sample_size: int, seed: int = 0) -> dict:
    """Unbiased estimate: the mean of the exact silhouette values of a uniform sample of points drawn without
    replacement (each value uses all points); 95% interval from the standard error with the finite-population
    correction."""
    n = len(points)
    m = min(int(sample_size), n)
    if m < 2:
        raise EmbedxError("--sample-size must be at least 2")
    pts, dense, order, k = _prepare(points, labels)
    pick = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    vals = _values(pts, dense, k, pick)
    mean = float(vals.mean())
    se = float(vals.std(ddof=1) / math.sqrt(m) * math.sqrt((n - m) / (n - 1))) if n > 1 else 0.0
    return {"estimate": mean, "stderr": se, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "sample_size": m,
            "population": n, "seed": seed, "method": "sample"}
