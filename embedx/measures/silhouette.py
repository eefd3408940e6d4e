"""Euclidean silhouette, exact or sampled, through the fused distance + per-cluster-sum kernel.

Follows sklearn.metrics.silhouette_score exactly: s_p = (b_p - a_p)/max(a_p, b_p) with a_p the mean distance
to the rest of p's cluster, b_p the smallest mean distance to another (non-empty) cluster; singleton
clusters score 0; the score is the mean over all points. Never materializes the distance matrix.

Two ways to feed the kernel:
  * streamed (CPU): float32 column blocks of the unit rows minus a common centre, cached in memory up to
    CACHE_BYTES, else re-read per row block; memory bounded by the block sizes. Rows are normalized and centred
    in float64 before the cast (distances do not change under a shift): unit rows rounded to float32 carry an
    absolute error of ~3e-9 a coordinate, which moved the silhouette by up to 7e-5 when images and texts lie
    within 1e-4 of one direction; centred, the rounding scales with the spread of the data instead.
  * resident (GPU, when every point fits ``resident_budget``): all points sit on the device once, in their
    stored precision (float16 rows go to the tensor cores exactly) with float32 inverse norms as per-row
    scales, columns sorted by cluster, and each kernel call takes a row block sized to fill the device. When
    all points lie so close together (mean squared distance below ``SPREAD_MIN``) that float32 unit rows would
    limit the result, the streamed path runs instead, on the same device.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError
from embedx import validate
from embedx.engine.progress import Bar, enabled, notice
from embedx.measures.stream import silhouette_values


def silhouette_samples(points: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Exact per-point values of in-memory points, in the input order (sklearn.metrics.silhouette_samples)."""
    pts = _ArrayPoints(points, labels)
    return _streamed_values(pts, np.arange(len(pts.labels)))


def silhouette_exact(points: torch.Tensor, labels: np.ndarray) -> float:
    return float(silhouette_samples(points, labels).mean())


def _sample_ids(total: int, sample_size: int, seed: int) -> np.ndarray:
    m = min(int(sample_size), total)
    if m < 2:
        raise validate.error("sample_size", "sample_size must be at least 2")
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


SPREAD_MIN = 1e-2  # resident path only above this mean squared distance 2 (1 - |mean unit row|^2) of the points
RESIDENT_FRACTION = 0.4  # resident path: all points may take up to this share of the device's free memory
RESIDENT_WAVES = 4       # resident path: row block = this many waves of the kernel's row tiles per SM


def resident_budget(dev: torch.device) -> int:
    """Bytes the resident path may hold on ``dev``: a share of free GPU memory; 0 on CPU (stream instead)."""
    if dev.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free * RESIDENT_FRACTION)


def resident_rows(dev: torch.device) -> int:
    """Rows per resident kernel call: enough 128-row tiles for RESIDENT_WAVES waves over the SMs."""
    if dev.type != "cuda":
        return STREAM_ROWS
    return torch.cuda.get_device_properties(dev).multi_processor_count * 128 * RESIDENT_WAVES


class _StorePoints:
    """Points read from a store for a streamed silhouette: ``labels`` (dense cluster id per point, O(n)
    scalars), ``rows(ids)`` (normalized points by id, random access), ``columns()`` (first point id,
    normalized block, its labels) over all points in order, and ``raw_blocks()`` (first point id, stored
    rows, what, first store row) for the resident path; ``unit``: points are the rows L2-normalized."""

    unit = True

    def __init__(self, store, labels: np.ndarray, nbytes: int):
        self.store = store
        self.centre = None  # float64: the mean unit row of the first block normalized (any common shift is exact)
        self.labels = labels
        self.nbytes = nbytes  # of all normalized points (decides whether the columns are cached)
        self.sizes = np.bincount(labels)
        if len(self.sizes) < 2 or len(self.sizes) > len(labels) - 1:
            raise EmbedxError(f"silhouette needs 2 <= clusters <= points - 1, got {len(self.sizes)} clusters of "
                              f"{len(labels)} points")

    def _image_blocks(self):
        s = self.store
        return s.iter_images(block_rows=s.chunk_rows * max(1, STREAM_COLS // s.chunk_rows))

    def raw_bytes(self) -> int:
        return len(self.labels) * self.store.dim * self.store.dtype.itemsize

    def unit_rows(self, block, what: str, start: int) -> torch.Tensor:
        """float32 (x / |x| - centre) of raw rows, normalized and shifted in float64; bad rows are errors."""
        x = torch.from_numpy(np.asarray(block)).double()
        nrm = torch.linalg.vector_norm(x, dim=1)
        validate.rows(nrm.numpy(), what, start)
        u = x.div_(nrm[:, None])
        if self.centre is None:
            self.centre = u.mean(0) if len(u) else torch.zeros(x.shape[1], dtype=torch.float64)
        return u.sub_(self.centre).float()


class _ArrayPoints(_StorePoints):
    """In-memory points (any labels, made dense), one column block."""

    def __init__(self, points: torch.Tensor, labels: np.ndarray):
        _, dense = np.unique(np.asarray(labels), return_inverse=True)
        self.points = points
        super().__init__(None, dense.astype(np.int64).reshape(-1), 0)  # already in memory: one column block

    unit = False  # the points as given (silhouette_samples is Euclidean on raw points)

    def columns(self):
        yield 0, self.points, self.labels

    def raw_blocks(self):
        yield 0, self.points, "points", 0

    def raw_bytes(self) -> int:
        return self.points.numel() * self.points.element_size()

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return self.points[torch.from_numpy(ids)]


class _ModalityPoints(_StorePoints):
    """Images (cluster 1) then texts (cluster 0): the papers' modality silhouette."""

    def __init__(self, store):
        n = store.n_images + store.n_texts
        super().__init__(store, np.r_[np.ones(store.n_images, np.int64), np.zeros(store.n_texts, np.int64)],
                         n * store.dim * 4)

    def columns(self):
        n = self.store.n_images
        for start, block in self._image_blocks():
            yield start, self.unit_rows(block, "images", start), self.labels[start:start + len(block)]
        step = self.store.whole_chunks(STREAM_COLS)
        for start in range(0, self.store.n_texts, step):
            block = self.unit_rows(self.store.read_texts(start, start + step), "texts", start)
            yield n + start, block, self.labels[n + start:n + start + len(block)]

    def raw_blocks(self):
        n = self.store.n_images
        for start, block in self._image_blocks():
            yield start, block, "images", start
        yield n, self.store.texts(), "texts", 0

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        n = self.store.n_images
        img, txt = ids[ids < n], ids[ids >= n] - n
        parts = []
        if len(img):
            parts.append(self.unit_rows(self.store.images(img), "images", 0))
        if len(txt):
            parts.append(self.unit_rows(self.store.text_rows(txt), "texts", 0))
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
                yield p0, self.unit_rows(block[keep], "images", start), self.labels[p0:p1]

    def raw_blocks(self):
        for start, block in self._image_blocks():
            p0, p1 = self.before[start], self.before[start + len(block)]
            if p1 > p0:
                yield p0, block[self.image_rows[p0:p1] - start], "images", start

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return self.unit_rows(self.store.images(self.image_rows[ids]), "images", 0)


def _finish(points: _StorePoints, ids: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Silhouette values of the points ``ids`` from their per-cluster distance sums (float64)."""
    sizes = points.sizes
    own = points.labels[ids]
    ar = np.arange(len(sums))
    means = sums / sizes[None, :]
    means[ar, own] = np.inf
    return silhouette_values(sums[ar, own], sizes[own], means.min(1))


def _resident(points: _StorePoints, dev: torch.device):
    """Every point on ``dev`` once: (stored rows in one dtype, float32 scales or None, labels), columns sorted
    by cluster, and ``where[p]`` = the column of point p. Bad rows (NaN/inf, zero) are errors, as streamed."""
    blocks, scales, dtypes = [], [], set()
    unit_sum = torch.zeros(points.store.dim if points.unit else 1, dtype=torch.float64, device=dev)
    for _, raw, what, start in points.raw_blocks():
        b = torch.as_tensor(np.asarray(raw)).to(dev)
        if points.unit:  # inverse norms from the stored values, in float32 (as ``normalized``)
            nrm = torch.linalg.vector_norm(b.float(), dim=1)
            validate.rows(nrm.cpu().numpy(), what, start)
            scales.append(1.0 / nrm)
            unit_sum += (b.double() / nrm.double()[:, None]).sum(0)
        blocks.append(b)
        dtypes.add(b.dtype)
    if points.unit:
        m = unit_sum / len(points.labels)
        if 2 * (1 - float(m @ m)) < SPREAD_MIN:  # everything close together: the centred streamed path is exact
            return None
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # mixed: upcast, exact
    pts = torch.cat([b.to(dtype) for b in blocks])
    labels = torch.from_numpy(points.labels).to(dev)
    order = torch.argsort(labels, stable=True)
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order), device=dev)
    scale = torch.cat(scales)[order].contiguous() if scales else None
    return pts[order].contiguous(), scale, labels[order].contiguous(), where


def _resident_values(points: _StorePoints, ids: np.ndarray, dev: torch.device, progress=None) -> np.ndarray:
    """Exact silhouette values with every point resident on ``dev`` (see the module docstring)."""
    res = _resident(points, dev)
    if res is None:
        return None
    pts, scale, lab, where = res
    k = len(points.sizes)
    step = resident_rows(dev)
    cols = where[torch.from_numpy(ids.astype(np.int64)).to(dev)]
    out = np.empty(len(ids))
    clock = _CostClock(len(ids), len(points.labels), dev)
    with Bar(len(ids), "silhouette rows", enabled(progress)) as bar:
        for r0 in range(0, len(ids), step):
            c = cols[r0:r0 + step]
            sums = kernels.cluster_distance_sums(pts[c], pts, lab, k, row_ids=c, col_offset=0,
                                                 x_scale=None if scale is None else scale[c], y_scale=scale)
            out[r0:r0 + len(c)] = _finish(points, ids[r0:r0 + len(c)], sums.cpu().numpy())
            clock.done(len(c))
            bar.update(len(c))
    return out


def _streamed_values(points: _StorePoints, ids: np.ndarray, device="cpu", progress=None) -> np.ndarray:
    """Exact silhouette values of the points ``ids`` (sorted), columns streamed from the store: per row block,
    every column block adds its per-cluster distance sums (fused kernel on ``device``, float64 sums). On a GPU
    where every point fits :func:`resident_budget`, the resident path runs instead."""
    dev = torch.device(device)
    if points.raw_bytes() <= resident_budget(dev):
        vals = _resident_values(points, ids, dev, progress)
        if vals is not None:
            return vals
    sizes = points.sizes
    k = len(sizes)
    rid = torch.from_numpy(ids.astype(np.int64)).to(dev)

    def columns():
        for off, cols, lab in points.columns():
            yield off, cols.to(dev), torch.from_numpy(lab).to(dev)

    out = np.empty(len(ids))
    cached = list(columns()) if points.nbytes <= CACHE_BYTES else None
    if cached is not None and len(ids) == len(points.labels):  # every point: the rows are the cached columns
        rows = torch.cat([cols for _, cols, _ in cached])
    else:
        rows = points.rows(ids).to(dev)
    clock = _CostClock(len(ids), len(points.labels), dev)
    with Bar(len(ids), "silhouette rows", enabled(progress)) as bar:
        for r0 in range(0, len(ids), STREAM_ROWS):
            sums = torch.zeros(min(STREAM_ROWS, len(ids) - r0), k, dtype=torch.float64, device=dev)
            for off, cols, lab in cached if cached is not None else columns():
                sums += kernels.cluster_distance_sums(rows[r0:r0 + STREAM_ROWS], cols, lab, k,
                                                      row_ids=rid[r0:r0 + STREAM_ROWS], col_offset=off)
            s = sums.cpu().numpy()
            out[r0:r0 + len(s)] = _finish(points, ids[r0:r0 + len(s)], s)
            clock.done(len(s))
            bar.update(len(s))
    return out


NOTICE_SECONDS = 60.0  # an exact silhouette projected to take longer than this is announced


class _CostClock:
    """Projects an exact silhouette's time from its first row block on this machine and, beyond NOTICE_SECONDS,
    says so once (naming the sampled estimate that takes seconds)."""

    def __init__(self, rows: int, cols: int, dev: torch.device):
        self.rows, self.cols, self.dev = rows, cols, dev
        self.t0 = time.perf_counter()
        self.told = False

    def done(self, rows_done: int) -> None:
        if self.told or rows_done >= self.rows:
            return
        self.told = True
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        eta = (time.perf_counter() - self.t0) * self.rows / rows_done
        if eta > NOTICE_SECONDS:
            notice(f"exact silhouette of {self.rows:,} x {self.cols:,} point pairs: about {_human(eta)} on this "
                   f"machine ({self.dev.type}); silhouette_mode='sample' (CLI: --silhouette sample) estimates it "
                   f"with a 95% interval in seconds")


def _human(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _score(points: _StorePoints, mode: str, sample_size: int, seed: int, device, progress=None):
    total = len(points.labels)
    if mode == "exact":
        vals = _streamed_values(points, np.arange(total), device, progress)
        return float(vals.mean()), vals
    ids = _sample_ids(total, sample_size, seed)
    return _estimate(_streamed_values(points, ids, device, progress), total, seed), None


def modality_silhouette(store, mode: str = "exact", sample_size: int = 2000,
                        seed: int = 0, device="cpu", progress=None):
    """Silhouette of the store's images + texts labelled by modality (Euclidean), columns streamed from the
    store. exact -> (score, per-point values in image-then-text order); sample -> (estimate dict, None)."""
    if store.n_images + store.n_texts < 3:
        raise EmbedxError(f"silhouette needs at least 3 points, got {store.n_images + store.n_texts}")
    return _score(_ModalityPoints(store), mode, sample_size, seed, device, progress)


def class_silhouette(store, mode: str = "exact", sample_size: int = 2000, seed: int = 0, device="cpu",
                     progress=None):
    """Silhouette of the store's labelled images clustered by class (Euclidean), streamed like
    :func:`modality_silhouette`: exact -> (score, per-point values), sample -> (estimate dict, None)."""
    return _score(_ClassPoints(store), mode, sample_size, seed, device, progress)
