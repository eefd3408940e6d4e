"""The cosine modality silhouette from S_x and S_t (sklearn's silhouette_score(metric="cosine"), exact).

For unit rows the mean cosine distance of x^ to a cluster G is 1 - x^.(sum_G g)/|G| (self excluded from its own
cluster), so one pass of dots with S_x and S_t gives every a_p and b_p. The stream pass does it when the store's
recorded S_x (``meta["sums"]``) is within HINT_EFFECT of the streamed one; else a second pass with the exact sums.
When the clusters are tight and close (``cosine_scale`` below COSINE_EXACT_BELOW) float32 unit rows are not
enough and two float64 passes compute it without cancellation (:func:`cosine_exact`).
"""
from __future__ import annotations

import numpy as np
import torch

from embedx.engine.progress import Bar, enabled
from embedx.measures.silhouette import defined
from embedx.measures.stream import cosine_silhouette_sum, normalized, silhouette_values

HINT_EFFECT = 1e-7  # use the recorded S_x only if its error moves any a_p by less than this
COSINE_EXACT_BELOW = 1e-2  # cluster scale of cosine distances below which the exact float64 passes run
COSINE_PARALLEL = False  # second pass: blocks at once in-process (False: one at a time, torch on every core)


def cosine_silhouette(source, tot, sx: np.ndarray, st: np.ndarray, cfg, st_hint, text_cos: float,
                      progress=None, executor=None) -> float:
    """The cosine silhouette of ``source`` given the stream pass (``tot``: its Partial; ``cfg``: its config);
    NaN when it is undefined (``silhouette.defined``: fewer than 3 points)."""
    n, c = source.n_images, source.n_texts
    if not defined(n + c, int(n > 0) + int(c > 0)):
        return float("nan")
    sx_t, st_t = torch.from_numpy(sx), torch.from_numpy(st)
    hint_ok = (cfg.sum_x_hint is not None and (not source.paired or st_hint is not None)
               and float(np.linalg.norm(cfg.sum_x_hint - sx)) / max(n - 1, 1) < HINT_EFFECT
               and (not source.paired or float(np.linalg.norm(st_hint - st)) / max(c - 1, 1) < HINT_EFFECT))
    if hint_ok:
        img_cos = tot.cos_sum
    else:  # the recorded sums are missing or stale: a second pass with the exact sums
        img_cos, text_cos = cosine_pass(source, sx_t, st_t, progress, executor)
    if cfg.texts is not None:
        w = torch.from_numpy(cfg.texts).double() @ torch.stack([st_t, sx_t], 1)
        text_cos = cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), c, n)
    value = (img_cos + text_cos) / (n + c)
    if cosine_scale(sx, st, n, c) < COSINE_EXACT_BELOW:  # tight clusters close together: float32 is not enough
        value = cosine_exact(source)
    return value


def cosine_scale(sx: np.ndarray, st: np.ndarray, n: int, c: int) -> float:
    """The smallest, over the two modalities, of max(mean cosine distance inside it, mean distance between them):
    a silhouette value's size there. The fast path's float32 unit rows err by ~1e-7 absolute, so below 1e-2 a
    value could move by more than 1e-5 (or, between overlapping tight clusters, by much more)."""
    if n < 2 or c < 2:
        return float("inf")
    within = [1 - (float(v @ v) - k) / (k * (k - 1)) for v, k in ((sx, n), (st, c))]
    between = 1 - float(sx @ st) / (n * c)
    return min(max(w, between) for w in within)


def cosine_exact(source) -> float:
    """Cosine silhouette from float64 unit rows without cancellation: with D(p, q) = 1 - x^_p.x^_q = |x^_p - x^_q|^2/2
    and the float64 mean m_G of cluster G, sum_{q in G} |x^_p - x^_q|^2 = n_G (|x^_p - m_G|^2 + V_G), V_G the mean
    of |x^_q - m_G|^2 over G. Two float64 passes (the means, then |x^_p - m_A|^2 and |x^_p - m_B|^2 per row),
    run only when :func:`cosine_scale` says float32 is not enough."""
    n, c = source.n_images, source.n_texts

    def unit(block):
        x = np.asarray(block, dtype=np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def blocks(kind):
        if kind == "images":
            for _, b in source.iter_images(reuse=True):
                yield unit(b)
        else:
            for t0 in range(0, c, source.block_rows()):
                yield unit(source.read_texts(t0, t0 + source.block_rows()))

    kinds = ("images", "texts")
    means = [sum(b.sum(0) for b in blocks(k)) / m for k, m in zip(kinds, (n, c))]
    # per row, |x^_p - m_images|^2 and |x^_p - m_texts|^2 (columns 0 and 1)
    d = [np.concatenate([np.stack([((b - m) ** 2).sum(1) for m in means], 1) for b in blocks(k)]) for k in kinds]
    var = [d[0][:, 0].mean(), d[1][:, 1].mean()]  # V_images, V_texts
    total = 0.0
    for own, size in ((0, n), (1, c)):
        other = 1 - own
        own_sum = 0.5 * size * (d[own][:, own] + var[own])  # sum of D(p, q) over the rest of p's cluster
        other_mean = 0.5 * (d[own][:, other] + var[other])
        total += float(silhouette_values(own_sum, np.full(len(own_sum), size), other_mean).sum())
    return total / (n + c)


def cosine_pass(source, sx: torch.Tensor, st: torch.Tensor, progress=None, executor=None):
    """Second pass: cosine-silhouette sums (images, paired texts) with the exact S_x, S_t: the ``executor``'s merge
    tree (default: in-process) of :func:`cosine_block` over blocks of ``source.block_rows()`` rows."""
    from embedx.engine.executor import resolve, row_units

    executor = resolve(executor)
    block = source.block_rows()
    units = row_units(source.n_images, block)
    if not units:
        return 0.0, 0.0
    with Bar(source.n_images, "cosine silhouette pass", enabled(progress)) as bar:
        return executor.map_reduce(cosine_block, units, add_pairs, executor.ref(source), sx, st, bar=bar,
                                   sizes=[b - a for a, b in units], parallel=COSINE_PARALLEL,
                                   item_bytes=block * source.dim * np.dtype(source.dtype).itemsize)


def cosine_block(rng: tuple[int, int], ref, sx: torch.Tensor, st: torch.Tensor) -> tuple[float, float]:
    """A task: the cosine-silhouette sums (images, paired texts) of image rows ``rng`` (one block) of ``ref``."""
    from embedx.engine.executor import scratch
    from embedx.rowsource import resolve

    source = resolve(ref)
    start, stop = rng
    block = source.read_images_into(start, scratch("cosine pass rows", stop - start, source.dim, source.dtype))
    n, c = source.n_images, source.n_texts
    both = torch.stack([sx, st], 1)
    w = normalized(block, "images", start).double() @ both
    img = cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), n, c)
    txt = 0.0
    if source.paired:
        w = normalized(source.read_texts(start, stop), "texts", start).double() @ both
        txt = cosine_silhouette_sum(w[:, 1].numpy(), w[:, 0].numpy(), c, n)
    return img, txt


def add_pairs(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1]
