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
from embedx.measures.stream import normalized, silhouette_values


def silhouette_samples(points: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Exact per-point values of in-memory points, in the input order (sklearn.metrics.silhouette_samples)."""
    pts = _ArrayPoints(points, labels)
    return _streamed_values(pts, np.arange(len(pts.labels)))


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


# --- silhouettes streamed from a store: memory bounded by the block sizes, not by N -------------------------
STREAM_ROWS = 2048     # point rows per kernel call
STREAM_COLS = 16384    # store rows per column block (read and normalized once per row block)
CACHE_BYTES = 512 << 20  # normalized columns up to this size are kept in memory instead of re-read


class _StorePoints:
    """Points read from a store for a streamed silhouette: ``labels`` (dense cluster id per point, O(n)
    scalars), ``rows(ids)`` (normalized points by id, random access) and ``columns()`` (first point id,
    normalized block, its labels) over all points in order."""

    def __init__(self, store, labels: np.ndarray, nbytes: int):
        self.store = store
        self.labels = labels
        self.nbytes = nbytes  # of all normalized points (decides whether the columns are cached)
        self.sizes = np.bincount(labels)
        if len(self.sizes) < 2 or len(self.sizes) > len(labels) - 1:
            raise EmbedxError(f"silhouette needs 2 <= clusters <= points - 1, got {len(self.sizes)} clusters of "
                              f"{len(labels)} points")

    def _image_blocks(self):
        s = self.store
        return s.iter_images(block_rows=s.chunk_rows * max(1, STREAM_COLS // s.chunk_rows))


class _ArrayPoints(_StorePoints):
    """In-memory points (any labels, made dense), one column block."""

    def __init__(self, points: torch.Tensor, labels: np.ndarray):
        _, dense = np.unique(np.asarray(labels), return_inverse=True)
        self.points = points
        super().__init__(None, dense.astype(np.int64).reshape(-1), 0)  # already in memory: one column block

    def columns(self):
        yield 0, self.points, self.labels

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return self.points[torch.from_numpy(ids)]


class _ModalityPoints(_StorePoints):
    """Images (cluster 1) then texts (cluster 0): the papers' modality silhouette."""

    def __init__(self, store, texts: torch.Tensor | None):
        self.texts = texts
        n = store.n_images + store.n_texts
        super().__init__(store, np.r_[np.ones(store.n_images, np.int64), np.zeros(store.n_texts, np.int64)],
                         n * store.dim * 4)

    def columns(self):
        n = self.store.n_images
        for start, block in self._image_blocks():
            yield start, normalized(block, "images", start), self.labels[start:start + len(block)]
        if self.texts is not None:
            yield n, self.texts, self.labels[n:]
            return
        arr = self.store.group["texts/embeddings"]
        for start in range(0, self.store.n_texts, STREAM_COLS):
            block = normalized(arr[start:start + STREAM_COLS], "texts", start)
            yield n + start, block, self.labels[n + start:n + start + len(block)]

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        n = self.store.n_images
        img, txt = ids[ids < n], ids[ids >= n] - n
        parts = []
        if len(img):
            parts.append(normalized(self.store.images(img, dtype=np.float32), "images", 0))
        if len(txt):
            parts.append(self.texts[torch.from_numpy(txt)] if self.texts is not None else normalized(
                self.store.group["texts/embeddings"].get_orthogonal_selection((txt, slice(None))).astype(np.float32),
                "texts", 0))
        return torch.cat(parts)


class _ClassPoints(_StorePoints):
    """The labelled images, clustered by class label (unlabelled rows, y = -1, are left out)."""

    def __init__(self, store):
        y = store.labels()
        self.image_rows = np.flatnonzero(y >= 0)
        _, dense = np.unique(y[self.image_rows], return_inverse=True)
        self.before = np.r_[0, np.cumsum(y >= 0)]  # labelled rows before each store row: point ids of a block
        super().__init__(store, dense.astype(np.int64), len(dense) * store.dim * 4)

    def columns(self):
        for start, block in self._image_blocks():
            p0, p1 = self.before[start], self.before[start + len(block)]
            keep = self.image_rows[p0:p1] - start
            if len(keep):
                yield p0, normalized(block[keep], "images", start), self.labels[p0:p1]

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return normalized(self.store.images(self.image_rows[ids], dtype=np.float32), "images", 0)


def _streamed_values(points: _StorePoints, ids: np.ndarray, device="cpu") -> np.ndarray:
    """Exact silhouette values of the points ``ids`` (sorted), columns streamed from the store: per row block,
    every column block adds its per-cluster distance sums (fused kernel on ``device``, float64 sums)."""
    dev = torch.device(device)
    sizes = points.sizes
    k = len(sizes)
    rows = points.rows(ids).to(dev)
    rid = torch.from_numpy(ids.astype(np.int64)).to(dev)

    def columns():
        for off, cols, lab in points.columns():
            yield off, cols.to(dev), torch.from_numpy(lab).to(dev)

    out = np.empty(len(ids))
    cached = list(columns()) if points.nbytes <= CACHE_BYTES else None
    for r0 in range(0, len(ids), STREAM_ROWS):
        sums = torch.zeros(min(STREAM_ROWS, len(ids) - r0), k, dtype=torch.float64, device=dev)
        for off, cols, lab in cached if cached is not None else columns():
            sums += kernels.cluster_distance_sums(rows[r0:r0 + STREAM_ROWS], cols, lab, k,
                                                  row_ids=rid[r0:r0 + STREAM_ROWS], col_offset=off)
        s = sums.cpu().numpy()
        own = points.labels[ids[r0:r0 + len(s)]]
        ar = np.arange(len(s))
        means = s / sizes[None, :]
        means[ar, own] = np.inf
        out[r0:r0 + len(s)] = silhouette_values(s[ar, own], sizes[own], means.min(1))
    return out


def _score(points: _StorePoints, mode: str, sample_size: int, seed: int, device):
    total = len(points.labels)
    if mode == "exact":
        vals = _streamed_values(points, np.arange(total), device)
        return float(vals.mean()), vals
    ids = _sample_ids(total, sample_size, seed)
    return _estimate(_streamed_values(points, ids, device), total, seed), None


def modality_silhouette(store, texts: torch.Tensor | None, mode: str = "exact", sample_size: int = 2000,
                        seed: int = 0, device="cpu"):
    """Silhouette of the store's images + texts labelled by modality (Euclidean), columns streamed from the
    store. exact -> (score, per-point values in image-then-text order); sample -> (estimate dict, None)."""
    if store.n_images + store.n_texts < 3:
        raise EmbedxError(f"silhouette needs at least 3 points, got {store.n_images + store.n_texts}")
    return _score(_ModalityPoints(store, texts), mode, sample_size, seed, device)


def class_silhouette(store, mode: str = "exact", sample_size: int = 2000, seed: int = 0, device="cpu"):
    """Silhouette of the store's labelled images clustered by class (Euclidean), streamed like
    :func:`modality_silhouette`: exact -> (score, per-point values), sample -> (estimate dict, None)."""
    return _score(_ClassPoints(store), mode, sample_size, seed, device)
