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

The exact silhouette on the CPU, or wherever the executor's tasks run elsewhere (``task_device`` None: a cluster),
runs as block-pair tasks through the executor's ``map``: the points are cut into row blocks of PAIR_ROWS (whole
chunks), and one task per pair I <= J reads both blocks from the store itself, normalizes and centres them (the
centre computed on the driver) and returns, from one distance tile per pair (``kernels.cluster_distance_pair_sums``),
S_IJ[p, k] = sum_{q in J, label k} |p - q| and S_JI; the driver adds each block's sums over the pairs in their
fixed order. By symmetry each distance is computed once: N^2/2 + O(N * PAIR_ROWS) distances instead of N^2. In
one process the tasks run one after another (torch on every core); a cluster computes the very same tiles, so
both give the same bits.
"""
from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError
from embedx import validate
from embedx.engine.progress import Bar, enabled, log, notice
from embedx.measures.stream import silhouette_values
from embedx.rows import first_bad_row


def defined(n_points: int, n_clusters: int) -> bool:
    """sklearn's rule (silhouette_score): 2 <= clusters <= points - 1; otherwise the silhouette is undefined.
    The store measures then report it as undefined (NaN; null in JSON) and the other measures as usual."""
    return 2 <= n_clusters <= n_points - 1


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


def _unit(block, what: str, start: int, rows: np.ndarray | None = None) -> torch.Tensor:
    """float64 x / |x| of raw rows; a bad row (``embedx.rows``: NaN/inf, zero, a norm out of range) is an error
    naming row ``start + i`` of ``what`` (or ``rows[i]`` when the block's store rows are given)."""
    x = torch.from_numpy(np.asarray(block)).double()
    nrm = torch.linalg.vector_norm(x, dim=1)
    if rows is None:
        validate.rows(nrm.numpy(), what, start)
    else:
        bad = first_bad_row(nrm.numpy())
        if bad is not None:
            raise validate.error(what, f"{what} row {rows[bad[0]]} {bad[1]}")
    return x.div_(nrm[:, None])


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
        if not defined(len(labels), len(self.sizes)):
            raise EmbedxError(f"silhouette needs 2 <= clusters <= points - 1, got {len(self.sizes)} clusters of "
                              f"{len(labels)} points")

    def _image_blocks(self):
        s = self.store
        return s.iter_images(block_rows=s.chunk_rows * max(1, STREAM_COLS // s.chunk_rows))

    def raw_bytes(self) -> int:
        return len(self.labels) * self.store.dim * self.store.dtype.itemsize

    def unit_rows(self, block, what: str, start: int) -> torch.Tensor:
        """float32 (x / |x| - centre) of raw rows, normalized and shifted in float64; bad rows are errors."""
        u = _unit(block, what, start)
        if self.centre is None:
            self.centre = u.mean(0) if len(u) else torch.zeros(u.shape[1], dtype=torch.float64)
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
        self.classes, dense = np.unique(y[self.image_rows], return_inverse=True)
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


def _resident_values(points: _StorePoints, ids: np.ndarray, dev: torch.device, progress=None,
                     limit: float | None = None) -> np.ndarray:
    """Exact silhouette values with every point resident on ``dev`` (see the module docstring)."""
    res = _resident(points, dev)
    if res is None:
        return None
    pts, scale, lab, where = res
    k = len(points.sizes)
    step = resident_rows(dev)
    cols = where[torch.from_numpy(ids.astype(np.int64)).to(dev)]
    out = np.empty(len(ids))
    clock = _CostClock(len(ids), len(points.labels), dev, limit)
    if len(ids) == len(points.labels) and kernels.backend_for(dev) == "triton":  # every point: symmetric tiles
        return _resident_symmetric(points, ids, pts, scale, lab, cols, clock, progress)
    with Bar(len(ids), "silhouette rows", enabled(progress)) as bar:
        for r0 in range(0, len(ids), step):
            c = cols[r0:r0 + step]
            sums = kernels.cluster_distance_sums(pts[c], pts, lab, k, row_ids=c, col_offset=0,
                                                 x_scale=None if scale is None else scale[c], y_scale=scale)
            out[r0:r0 + len(c)] = _finish(points, ids[r0:r0 + len(c)], sums.cpu().numpy())
            clock.done(len(c))
            bar.update(len(c))
    return out


SYM_TILE_CHUNK = 64  # row tiles per launch of the symmetric kernel (progress; the sums are read at the end)


def _resident_symmetric(points, ids, pts, scale, lab, cols, clock, progress) -> np.ndarray:
    """Every point's exact value from the symmetric Triton kernel (each distance tile I <= J once, reduced both
    ways: half the flops of the row sweep), launched in chunks of row tiles for the progress bar."""
    k = len(points.sizes)
    n = len(pts)
    sums = torch.zeros(n, k, dtype=torch.float64, device=pts.device)
    nt = kernels.sym_tile_count(pts)
    work = [(nt - t) for t in range(nt)]  # tile pairs per row tile: the bar counts pairs
    with Bar(sum(work), "silhouette tile pairs", enabled(progress), unit="pairs") as bar:
        for t0 in range(0, nt, SYM_TILE_CHUNK):
            t1 = min(t0 + SYM_TILE_CHUNK, nt)
            kernels.cluster_distance_sums_sym_triton(pts, lab, k, x_scale=scale, tiles=(t0, t1), out=sums)
            done = sum(work[t0:t1])
            clock.done(sum(work[:t1]), sum(work))
            bar.update(done)
    return _finish(points, ids, sums[cols].cpu().numpy())


def _streamed_values(points: _StorePoints, ids: np.ndarray, device="cpu", progress=None,
                     limit: float | None = None) -> np.ndarray:
    """Exact silhouette values of the points ``ids`` (sorted), columns streamed from the store: per row block,
    every column block adds its per-cluster distance sums (fused kernel on ``device``, float64 sums). On a GPU
    where every point fits :func:`resident_budget`, the resident path runs instead. ``limit``: mode auto's
    threshold (:class:`_CostClock`)."""
    dev = torch.device(device)
    if points.raw_bytes() <= resident_budget(dev):
        vals = _resident_values(points, ids, dev, progress, limit)
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
    clock = _CostClock(len(ids), len(points.labels), dev, limit)
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
AUTO_SECONDS = 60.0    # mode "auto": exact when projected under this many seconds on this machine, else sampled
AUTO_ENV = "EMBEDX_SILHOUETTE_AUTO_SECONDS"  # overrides AUTO_SECONDS (tests set 0 to take the sampled branch)
MODES = ("auto", "exact", "sample")


def auto_seconds() -> float:
    """The auto threshold: ``$EMBEDX_SILHOUETTE_AUTO_SECONDS`` when set, else AUTO_SECONDS."""
    raw = os.environ.get(AUTO_ENV, "").strip()
    if not raw:
        return AUTO_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise EmbedxError(f"{AUTO_ENV}={raw!r} is not a number of seconds >= 0")
    return value


class _TooSlow(Exception):
    """Mode auto: the exact silhouette's projected time (``eta`` seconds) passed the threshold."""

    def __init__(self, eta: float):
        super().__init__(eta)
        self.eta = eta


class _CostClock:
    """Projects an exact silhouette's time from its first row block (or block pair) on this machine: the
    elapsed time scaled by work done / work total, the measured rate of this run on this data. Mode auto
    (``limit`` seconds): beyond it, raises :class:`_TooSlow` (the caller samples instead); otherwise, beyond
    NOTICE_SECONDS, says so once (naming the sampled estimate that takes seconds). Work already done whole
    (one block) is never abandoned."""

    def __init__(self, rows: int, cols: int, dev: torch.device, limit: float | None = None):
        self.rows, self.cols, self.dev, self.limit = rows, cols, dev, limit
        self.t0 = time.perf_counter()
        self.told = False

    def done(self, rows_done: float, rows: float | None = None) -> None:
        """``rows_done`` of ``rows`` (default: the point rows; distances for the pair path) are done."""
        rows = self.rows if rows is None else rows
        if self.told or rows_done >= rows:
            return
        self.told = True
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        eta = (time.perf_counter() - self.t0) * rows / rows_done
        if self.limit is not None and eta > self.limit:
            raise _TooSlow(eta)
        if eta > NOTICE_SECONDS:
            notice(f"exact silhouette of {self.rows:,} x {self.cols:,} point pairs: about {_human(eta)} on this "
                   f"machine ({self.dev.type}); the sampled estimate (silhouette='sample') gives it "
                   f"with a 95% interval in seconds")


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _score(points: _StorePoints, mode: str, sample_size: int, seed: int, device, progress=None, executor=None,
           device_request=None):
    """The exact score of every point as block-pair tasks on ``executor`` when its tasks run on the CPU (or
    elsewhere: ``task_device`` None) and the points do not fit ``resident_budget``; a sample (its rows against
    every point), or every point on a GPU here, streamed or resident. Mode auto: the exact score, unless its
    time projected from the first block (pair) passes :func:`auto_seconds`; then the sampled estimate (seeded:
    the same points for the same ``seed``), its ``auto`` entry naming the projection and the threshold."""
    from embedx.engine.executor import resolve

    total = len(points.labels)
    request = str(device) if device_request is None else device_request
    executor = resolve(executor)

    def values(ids, limit=None):
        where = executor.task_device(request) if len(ids) == total else None
        if len(ids) == total and (where is None or (where.type == "cpu"
                                                    and points.raw_bytes() > resident_budget(where))):
            # resident_budget is 0 on the CPU; the GPU lane's dry run raises it to run the GPU paths
            return _pair_values(points, executor, request, progress, where, limit)
        return _streamed_values(points, ids, device, progress, limit)

    if mode != "sample":
        limit = auto_seconds() if mode == "auto" else None
        try:
            vals = values(np.arange(total), limit)
            return float(vals.mean()), vals
        except _TooSlow as slow:
            log.warning(f"silhouette: exact projected at about {_human(slow.eta)} on this machine, over the auto "
                        f"limit of {limit:g} s: estimating it from {min(int(sample_size), total):,} sampled points "
                        f"(silhouette_mode='exact' computes it)", extra={"param": "silhouette_mode"})
            est = _estimate(values(_sample_ids(total, sample_size, seed)), total, seed)
            est["auto"] = {"projected_exact_s": slow.eta, "limit_s": limit}
            return est, None
    return _estimate(values(_sample_ids(total, sample_size, seed)), total, seed), None


def modality_silhouette(store, mode: str = "exact", sample_size: int = 2000,
                        seed: int = 0, device="cpu", progress=None, executor=None, device_request=None):
    """Silhouette of the store's images + texts labelled by modality (Euclidean), columns streamed from the
    store. exact -> (score, per-point values in image-then-text order); sample -> (estimate dict, None); auto ->
    either, by the projected time of the exact score (:func:`_score`). The
    ``executor`` runs the exact score's block-pair tasks (on ``device_request``, resolved where they run); the
    sampled estimate runs here. (None, None) when the silhouette is undefined
    (:func:`defined`: fewer than 3 points)."""
    if not defined(store.n_images + store.n_texts, int(store.n_images > 0) + int(store.n_texts > 0)):
        return None, None
    return _score(_ModalityPoints(store), mode, sample_size, seed, device, progress, executor, device_request)


def class_silhouette(store, mode: str = "exact", sample_size: int = 2000, seed: int = 0, device="cpu",
                     progress=None, executor=None, device_request=None):
    """Silhouette of the store's labelled images clustered by class (Euclidean), streamed like
    :func:`modality_silhouette`: exact -> (score, per-point values), sample -> (estimate dict, None), auto ->
    either; (None, None) when the silhouette is undefined (:func:`defined`: the labelled images fall in one class,
    or each in its own)."""
    y = store.labels()
    y = y[y >= 0]
    if not defined(len(y), len(np.unique(y))):
        return None, None
    return _score(_ClassPoints(store), mode, sample_size, seed, device, progress, executor, device_request)


# --- the exact silhouette as block-pair tasks ------------------------------------------------------------------
PAIR_ROWS = 4096          # points per row block (whole chunks): a block pair is ~2 PAIR_ROWS^2 d flops, a task
@dataclass(frozen=True)
class PointSpec:
    """What a block-pair task needs to read its points: ``kind`` (modality: image rows then text rows, labels
    1 / 0; class: the labelled image rows, dense labels = index in ``classes``), the driver's ``centre``
    (float64), the number of clusters ``k``."""

    kind: str
    n_images: int
    centre: np.ndarray
    k: int
    classes: np.ndarray | None = None
    run: str = ""  # one exact silhouette: the key of the blocks a process keeps read (READ_CACHE_BYTES)


def _pair_blocks(points: _StorePoints, rows: int) -> list[tuple[int, int, int, int]]:
    """Row blocks (p0, p1, r0, r1) of ``rows`` points: point ids p0..p1-1, stored in rows r0..r1-1 (class points:
    the image rows spanned by those labelled rows; modality points: r = p)."""
    n = len(points.labels)
    out = []
    for p0 in range(0, n, rows):
        p1 = min(p0 + rows, n)
        if isinstance(points, _ClassPoints):
            out.append((p0, p1, int(points.image_rows[p0]), int(points.image_rows[p1 - 1]) + 1))
        else:
            out.append((p0, p1, p0, p1))
    return out


def read_block(store, spec: PointSpec, block) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's points of one row block: float32 (x/|x| - centre), normalized and shifted in float64 as
    in-process (the same row checks and errors), and their dense labels (int64)."""
    p0, p1, r0, r1 = block
    centre = torch.from_numpy(spec.centre)
    if spec.kind == "class":
        raw = store.read_images_into(r0, np.empty((r1 - r0, store.dim), store.dtype))
        y = store.labels(r0, r1)
        keep = np.flatnonzero(y >= 0)
        if len(keep) != p1 - p0:
            raise EmbedxError(f"{store.path}: images rows {r0}..{r1 - 1} hold {len(keep)} labelled rows, expected "
                              f"{p1 - p0}; the store changed")
        x = _unit(raw[keep], "images", r0, rows=keep + r0)
        return x.sub_(centre).float(), torch.from_numpy(np.searchsorted(spec.classes, y[keep]).astype(np.int64))
    n = spec.n_images
    parts, labels = [], []
    if p0 < n:
        b = min(p1, n)
        parts.append(_unit(store.read_images_into(p0, np.empty((b - p0, store.dim), store.dtype)), "images", p0))
        labels.append(np.ones(b - p0, np.int64))
    if p1 > n:
        a = max(p0, n) - n
        parts.append(_unit(store.read_texts(a, p1 - n), "texts", a))
        labels.append(np.zeros(p1 - n - a, np.int64))
    return torch.cat(parts).sub_(centre).float(), torch.from_numpy(np.concatenate(labels))


READ_CACHE_BYTES = 256 << 20  # a process keeps the blocks it read for one run up to this size (each read once)
_kept: dict = {"run": None, "bytes": 0, "blocks": {}}


def _kept_block(store, spec: PointSpec, block):
    """:func:`read_block`, each block read once per run (``spec.run``) while the kept blocks fit
    READ_CACHE_BYTES: block i pairs with every block J >= i, so without it the blocks are read ~nb/2 times each.
    A new run drops the last run's blocks."""
    if not spec.run:
        return read_block(store, spec, block)
    if _kept["run"] != spec.run:
        _kept.update(run=spec.run, bytes=0, blocks={})
    got = _kept["blocks"].get(block)
    if got is None:
        got = read_block(store, spec, block)
        size = got[0].numel() * got[0].element_size()
        if _kept["bytes"] + size <= READ_CACHE_BYTES:
            _kept["blocks"][block] = got
            _kept["bytes"] += size
    return got


def _drop_kept(run: str) -> None:
    if _kept["run"] == run:
        _kept.update(run=None, bytes=0, blocks={})


def block_pair_sums(pair, ref, spec: PointSpec, device_request: str | None):
    """A task: the block pair ``(I, J)`` (J None: the diagonal block I) of the points of store
    ``ref`` -> (S_IJ, S_JI) as float64 numpy (``kernels.cluster_distance_pair_sums``; S_JI None on the diagonal),
    on this worker's device (``device_request`` resolved here: a worker without a GPU runs on its CPU)."""
    from embedx.device import resolve_device
    from embedx.rowsource import resolve

    store = resolve(ref)
    dev = resolve_device(device_request or "auto")
    bi, bj = pair
    xi, li = _kept_block(store, spec, bi)
    xj, lj = (None, None) if bj is None else _kept_block(store, spec, bj)
    sx, sy = kernels.cluster_distance_pair_sums(xi.to(dev), None if xj is None else xj.to(dev), li.to(dev),
                                                None if lj is None else lj.to(dev), spec.k)
    return sx.cpu().numpy(), None if sy is None else sy.cpu().numpy()


def _pair_values(points: _StorePoints, executor, device_request=None, progress=None, where=None,
                 limit: float | None = None) -> np.ndarray:
    """Exact silhouette values of every point from block-pair tasks (see the module docstring): the driver
    adds each block's per-cluster sums over its pairs in pair order (I, J) lexicographic, and finishes a block
    with :func:`_finish` once its last pair (I, last) is in. Memory on the driver: the open blocks' sums,
    O(N k) float64. ``executor`` runs the tasks (in-process: one at a time, torch on every core); ``where``: the
    device they run on here (the time is projected from the first pair and announced), None elsewhere;
    ``limit``: mode auto's threshold, the projection timed on the driver wherever the tasks run (work: the
    distances of each pair, b_I b_J off the diagonal, b_I (b_I + 1) / 2 on it)."""
    store = points.store
    cols = points.columns()  # the centre: the mean unit row of the first column block, as in-process
    next(cols, None)
    cols.close()
    total, k = len(points.labels), len(points.sizes)
    spec = PointSpec("class" if isinstance(points, _ClassPoints) else "modality", store.n_images,
                     points.centre.numpy(), k, getattr(points, "classes", None), uuid.uuid4().hex)
    blocks = _pair_blocks(points, store.whole_chunks(PAIR_ROWS))
    nb = len(blocks)
    index = [(i, j) for i in range(nb) for j in range(i, nb)]
    pairs = [(blocks[i], None if j == i else blocks[j]) for i, j in index]
    acc = {}
    out = np.empty(total)

    def add(b: int, s: np.ndarray) -> None:
        if b in acc:
            acc[b] += s
        else:
            acc[b] = s.copy()

    def consume(t: int, res) -> None:
        i, j = index[t]
        add(i, res[0])
        if res[1] is not None:
            add(j, res[1])
        if j == nb - 1:  # block i has every pair in: its sums are complete
            p0, p1 = blocks[i][:2]
            out[p0:p1] = _finish(points, np.arange(p0, p1), acc.pop(i))

    size = blocks[0][1] - blocks[0][0]
    bs = [b[1] - b[0] for b in blocks]
    work = np.cumsum([bs[i] * (bs[i] + 1) / 2 if i == j else bs[i] * bs[j] for i, j in index])
    timed = where is not None or limit is not None
    clock = _CostClock(total, total, where or torch.device("cpu"), limit) if timed else None
    tasks = executor.map(block_pair_sums, pairs, executor.ref(store), spec, device_request, parallel=False,
                         result_bytes=2 * size * k * 8)
    try:
        with Bar(len(pairs), "silhouette block pairs", enabled(progress), unit="pairs") as bar:
            for t, res in enumerate(tasks):
                consume(t, res)
                bar.update(1)
                if clock is not None:
                    clock.done(float(work[t]), float(work[-1]))
    finally:
        close = getattr(tasks, "close", None)
        if close is not None:
            close()
        _drop_kept(spec.run)  # in-process tasks kept their blocks here
    return out
