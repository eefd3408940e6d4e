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


def _sample_ids(total: int, sample_size: int, seed: int) -> np.ndarray:
    m = min(int(sample_size), total)
    if m < 2:
        raise EmbedxError("--sample-size must be at least 2")
    return np.sort(np.random.default_rng(seed).choice(total, m, replace=False))


def _estimate(vals: np.ndarray, total: int, seed: int) -> dict:
    """Mean of the exact values of a uniform sample without replacement (unbiased), with a 95% interval from
    the standard error and the finite-population correction."""
    m = len(vals)
    mean = float(vals.mean())
    se = float(vals.std(ddof=1) / math.sqrt(m) * math.sqrt((total - m) / (total - 1)))
    return {"estimate": mean, "stderr": se, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "sample_size": m,
            "population": total, "seed": seed, "method": "sample"}


def silhouette_sampled(points: torch.Tensor, labels: np.ndarray, sample_size: int, seed: int = 0) -> dict:
    """Estimate from the exact silhouette values (each against all points) of a uniform sample of points."""
    pick = _sample_ids(len(points), sample_size, seed)
    pts, dense, order, k = _prepare(points, labels)
    return _estimate(_values(pts, dense, k, pick), len(points), seed)

# --- modality silhouette streamed from a store: memory bounded by the block sizes, not by N -------------
STREAM_ROWS = 1024     # point rows per kernel call
STREAM_COLS = 16384    # store rows per column block (read and normalized once per row block)
CACHE_BYTES = 512 << 20  # normalized columns up to this size are kept in memory instead of re-read


def _modality_columns(store, texts: torch.Tensor | None):
    """(global offset, normalized fp32 block, dense label) over images (label 1) then texts (label 0)."""
    from embedx.measures.stream import normalized

    for start, block in store.iter_images(block_rows=store.chunk_rows * max(1, STREAM_COLS // store.chunk_rows)):
        yield start, normalized(block, "images", start), 1
    n = store.n_images
    if texts is not None:
        yield n, texts, 0
        return
    arr = store.group["texts/embeddings"]
    for start in range(0, store.n_texts, STREAM_COLS):
        yield n + start, normalized(arr[start:start + STREAM_COLS], "texts", start), 0


def _modality_rows(store, texts, ids: np.ndarray) -> torch.Tensor:
    """Normalized points by global id (images first, then texts), read by random access."""
    from embedx.measures.stream import normalized

    n = store.n_images
    img = ids[ids < n]
    txt = ids[ids >= n] - n
    parts = []
    if len(img):
        parts.append(normalized(store.images(img, dtype=np.float32), "images", 0))
    if len(txt):
        t = texts[torch.from_numpy(txt)] if texts is not None else normalized(
            store.group["texts/embeddings"].get_orthogonal_selection((txt, slice(None))).astype(np.float32), "texts", 0)
        parts.append(t)
    return torch.cat(parts)


def _streamed_values(store, texts, ids: np.ndarray) -> np.ndarray:
    """Exact silhouette values of the points ``ids`` (sorted global ids), columns streamed from the store."""
    n, c = store.n_images, store.n_texts
    sizes = np.array([c, n])                      # dense labels: texts 0, images 1
    own = (ids < n).astype(np.int64)
    rows = _modality_rows(store, texts, ids)
    rid = torch.from_numpy(ids.astype(np.int64))
    out = np.empty(len(ids))
    cached = list(_modality_columns(store, texts)) if (n + c) * store.dim * 4 <= CACHE_BYTES else None
    for r0 in range(0, len(ids), STREAM_ROWS):
        sums = torch.zeros(min(STREAM_ROWS, len(ids) - r0), 2, dtype=torch.float64)
        for off, cols, lab in cached if cached is not None else _modality_columns(store, texts):
            labels = torch.full((len(cols),), lab, dtype=torch.long)
            sums += kernels.cluster_distance_sums(rows[r0:r0 + STREAM_ROWS], cols, labels, 2,
                                                  row_ids=rid[r0:r0 + STREAM_ROWS], col_offset=off).cpu()
        s = sums.numpy()
        o = own[r0:r0 + len(s)]
        ar = np.arange(len(s))
        other = s[ar, 1 - o] / sizes[1 - o]
        out[r0:r0 + len(s)] = silhouette_values(s[ar, o], sizes[o], other)
    return out


def modality_silhouette(store, texts: torch.Tensor | None, mode: str = "exact", sample_size: int = 2000,
                        seed: int = 0):
    """Silhouette of the store's images + texts labelled by modality (Euclidean), columns streamed from the
    store. exact -> (score, per-point values in image-then-text order); sample -> (estimate dict, None)."""
    n, c = store.n_images, store.n_texts
    total = n + c
    if total < 3:
        raise EmbedxError(f"silhouette needs at least 3 points, got {total}")
    if mode == "exact":
        vals = _streamed_values(store, texts, np.arange(total))
        return float(vals.mean()), vals
    ids = _sample_ids(total, sample_size, seed)
    return _estimate(_streamed_values(store, texts, ids), total, seed), None
