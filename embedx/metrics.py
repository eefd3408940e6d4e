"""Array functions in the style of ``sklearn.metrics``: numpy arrays or torch tensors in, a float out.

``images`` (N, d) and ``texts`` (C, d) rows need not be normalized (every measure L2-normalizes first);
``labels`` (N,) class indices in [-1, C) (-1 = none). Without ``labels``, text i is image i's caption (paired).
Each function runs the same engine as ``embedx measure`` on a store of these rows (float32 compute, float64
sums), so the numbers agree with the CLI's; the formulas are in ``embedx.measures.scores``. Each declares what its
parameters accept (``embedx.constraints``): a bad argument is an ``embedx.EmbedxError`` naming it, before any work.
"""
from __future__ import annotations

from embedx.constraints import SEED, Array, Device, Int, OneOf, Optional, constraints

IMAGES = Array(2, finite=True)
TEXTS = Array(2, finite=True)
LABELS = Array(1, whole=True)


def _one(name: str, images, texts, labels=None, **kw) -> float:
    from embedx.measures import compute
    from embedx.rowsource import ArrayRows

    return compute(ArrayRows(images, texts, labels), [name], progress=False, **kw).values[name]


@constraints(images=IMAGES, texts=TEXTS, labels=Optional(LABELS))
def iimm(images, texts, labels=None) -> float:
    """Inter-Intra Modal Measure: (S_inter + S_intra) / 2 over the labelled images (paper B)."""
    return _one("iimm", images, texts, labels)


@constraints(images=IMAGES, texts=TEXTS, labels=Optional(LABELS))
def iimm_inter(images, texts, labels=None) -> float:
    """S_inter = mean_i (sum_c x_i.t_c - x_i.t_{y_i}) / (C - 1)."""
    return _one("iimm_inter", images, texts, labels)


@constraints(images=IMAGES)
def iimm_intra(images) -> float:
    """S_intra = mean_{i<j} x_i.x_j of the unit image rows."""
    return _one("iimm_intra", images, images)


@constraints(images=IMAGES, texts=TEXTS, labels=Optional(LABELS))
def acs(images, texts, labels=None) -> float:
    """Average cosine similarity of the correct pairs: mean_i x_i.t_{y_i} (paired: t_i)."""
    return _one("acs", images, texts, labels)


@constraints(images=IMAGES, texts=TEXTS)
def modality_gap(images, texts) -> float:
    """|mean_i x_i - mean_c t_c| of the unit rows (Liang et al. 2022)."""
    return _one("gap", images, texts, _unlabelled(images) if len(texts) != len(images) else None)


@constraints(images=IMAGES, texts=TEXTS, metric=OneOf("euclidean", "cosine"),
             sample_size=Optional(Int(min=2)), seed=SEED, device=Device())
def modality_silhouette(images, texts, metric: str = "euclidean", *, sample_size: int | None = None, seed: int = 0,
                        device: str = "cpu") -> float:
    """Silhouette of vstack(images, texts) (unit rows) labelled by modality, ``metric`` "euclidean" or "cosine"
    (sklearn's silhouette_score); ``sample_size``: the unbiased sampled estimate instead of the exact value."""
    name = f"silhouette_{metric}"
    mode = "exact" if sample_size is None else "sample"
    labels = _unlabelled(images) if len(texts) != len(images) else None
    return _one(name, images, texts, labels, silhouette_mode=mode, sample_size=sample_size or 2000, seed=seed,
                device=device)


@constraints(points=Array(2, finite=True), labels=Array(1, numeric=False))
def silhouette(points, labels) -> float:
    """sklearn.metrics.silhouette_score(points, labels) (Euclidean, on the points as given), exact, never
    materializing the distance matrix."""
    import numpy as np
    import torch

    from embedx import validate
    from embedx.measures.silhouette import silhouette_exact

    if len(labels) != len(points):
        raise validate.error("labels", f"labels must have one entry per point ({len(points)}), got {len(labels)}")
    return silhouette_exact(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), labels)


@constraints(images=IMAGES, texts=TEXTS, labels=LABELS, k=OneOf(1, 5))
def zeroshot_accuracy(images, texts, labels, k: int = 1) -> float:
    """Top-``k`` (1 or 5) zero-shot accuracy: the true class text among the k highest x_i.t_c (ties: lowest
    index)."""
    return _one(f"zeroshot_top{k}", images, texts, labels)


@constraints(images=IMAGES, texts=TEXTS, k=OneOf(1, 5, 10), direction=OneOf("i2t", "t2i"))
def recall_at_k(images, texts, k: int = 1, direction: str = "i2t") -> float:
    """Paired retrieval recall@k (k in 1, 5, 10): the share of queries whose positive ranks in their top k,
    ``direction`` "i2t" (images query captions) or "t2i"."""
    return _one(f"{direction}_recall@{k}", images, texts)


def _unlabelled(images):
    """Labels of a class source with every image unlabelled (the measures over every image need no labels)."""
    import numpy as np

    return np.full(len(images), -1, np.int64)
