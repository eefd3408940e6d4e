"""Array functions in the style of ``sklearn.metrics``: numpy arrays or torch tensors in, a float out.

``images`` (N, d) and ``texts`` (C, d) rows need not be normalized (every measure L2-normalizes first);
``labels`` (N,) class indices in [-1, C) (-1 = none). Without ``labels``, text i is image i's caption (paired).
Each function runs the same engine as ``embedx measure`` on a store of these rows (float32 compute, float64
sums), so the numbers agree with the CLI's; the formulas are in ``embedx.measures.scores``. Beyond the CLI's
measures: ``zeroshot_accuracy`` for any k (float32 logits, the same tie rule) and ``silhouette`` with
sklearn's ``metric``/``sample_size``/``random_state`` (its cosine form in float64 from per-cluster sums). Each declares what its
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

    return compute(ArrayRows(images, texts, labels), [name], progress=False, **kw)[name]


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


@constraints(points=Array(2, finite=True), labels=Array(1, numeric=False), metric=OneOf("euclidean", "cosine"),
             sample_size=Optional(Int(min=2)), random_state=Optional(Int(min=0, max=2**32 - 1)))
def silhouette(points, labels, *, metric: str = "euclidean", sample_size: int | None = None,
               random_state: int | None = None) -> float:
    """``sklearn.metrics.silhouette_score(points, labels, metric=metric, sample_size=sample_size,
    random_state=random_state)``, on the points as given, never materializing the distance matrix.

    s_i = (b_i - a_i) / max(a_i, b_i), a_i the mean distance from i to the other points of its cluster, b_i the
    smallest mean distance to another cluster; a point alone in its cluster scores 0; the score is the mean of s_i.
    ``metric``: "euclidean" (exact, float32 tiles with float64 sums) or "cosine" (d = 1 - x.y/(|x||y|): the mean
    distance to a cluster G is 1 - x^.sum_G g^/|G|, float64). ``sample_size``: the score of the points sklearn
    draws, ``numpy.random.RandomState(random_state).permutation(N)[:sample_size]`` (None: numpy's global state, as
    sklearn), so equal seeds give sklearn's number. Needs 2 <= number of labels <= n_samples - 1."""
    import numpy as np
    import torch

    from embedx import validate
    from embedx.measures.silhouette import silhouette_exact

    if len(labels) != len(points):
        raise validate.error("labels", f"labels must have one entry per point ({len(points)}), got {len(labels)}")
    if sample_size is not None:
        rs = np.random.mtrand._rand if random_state is None else np.random.RandomState(random_state)
        keep = rs.permutation(len(points))[:sample_size]
        points, labels = points[keep], labels[keep]
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    k = int(codes.max()) + 1
    if not 2 <= k <= len(points) - 1:
        raise validate.error("labels", f"the number of labels must be in [2, n_samples - 1] = [2, {len(points) - 1}],"
                                       f" got {k}")
    if metric == "cosine":
        return _cosine_silhouette(np.asarray(points, np.float64), codes, k)
    return silhouette_exact(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), labels)


def _cosine_silhouette(x, codes, k: int) -> float:
    """Cosine silhouette from per-cluster sums of the unit rows (exact algebra, float64; module docstring)."""
    import numpy as np

    from embedx.measures.stream import silhouette_values

    norm = np.linalg.norm(x, axis=1)
    u = x / np.where(norm > 0, norm, 1.0)[:, None]  # a zero row stays zero (sklearn's normalize)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, codes, u)
    size = np.bincount(codes, minlength=k).astype(np.float64)
    own_size = size[codes]
    dots = u @ sums.T  # x^ . sum_G g^, N x k
    rows = np.arange(len(x))
    own_sum = (own_size - 1) - (dots[rows, codes] - (u * u).sum(1))  # sum over the others of 1 - x^.g^
    other = 1.0 - dots / size[None, :]
    other[rows, codes] = np.inf
    return float(np.mean(silhouette_values(own_sum, own_size, other.min(1))))


@constraints(images=IMAGES, texts=TEXTS, labels=LABELS, k=Int(min=1))
def zeroshot_accuracy(images, texts, labels, k: int = 1) -> float:
    """Top-``k`` zero-shot accuracy over the labelled images (label >= 0): the share whose true class text ranks
    among the k highest x_i.t_c, i.e. fewer than k texts rank before it (a strictly higher score, or a bit-identical
    text of lower index: the lowest index wins a tie, as argmax). k = 1 and 5 are ``embedx measure``'s
    zeroshot_top1/top5; any k >= 1 is computed the same way (float32 logits of the unit rows)."""
    if k in (1, 5):
        return _one(f"zeroshot_top{k}", images, texts, labels)
    return _topk_accuracy(images, texts, labels, k)


def _topk_accuracy(images, texts, labels, k: int) -> float:
    import numpy as np
    import torch

    from embedx import validate
    from embedx.measures.stream import normalized
    from embedx.rows import duplicate_groups

    validate.same_dim(images, texts)
    y_all = validate.labels(labels, len(images), len(texts)).astype(np.int64)
    keep = np.flatnonzero(y_all >= 0)
    if not len(keep):
        return float("nan")  # no labelled image: undefined, not 0
    t = normalized(texts, "texts")
    groups = [torch.as_tensor(g) for g in duplicate_groups(t.numpy())]
    hits = 0
    for s in range(0, len(keep), 4096):
        rows = keep[s:s + 4096]
        y = torch.as_tensor(y_all[rows])
        logits = normalized(np.asarray(images)[rows], "images") @ t.T
        true = logits.gather(1, y[:, None])
        rank = (logits > true).sum(1)
        for g in groups:  # identical texts tie exactly: decided by index, not by float rounding
            at = torch.isin(y, g).nonzero()[:, 0]
            if len(at):
                rank[at] += (g[None, :] < y[at, None]).sum(1) - (logits[at][:, g] > true[at]).sum(1)
        hits += int((rank < k).sum())
    return hits / len(keep)


@constraints(images=IMAGES, texts=TEXTS, k=OneOf(1, 5, 10), direction=OneOf("i2t", "t2i"))
def recall_at_k(images, texts, k: int = 1, direction: str = "i2t") -> float:
    """Paired retrieval recall@k (k in 1, 5, 10): the share of queries whose positive ranks in their top k,
    ``direction`` "i2t" (images query captions) or "t2i"."""
    return _one(f"{direction}_recall@{k}", images, texts)


def _unlabelled(images):
    """Labels of a class source with every image unlabelled (the measures over every image need no labels)."""
    import numpy as np

    return np.full(len(images), -1, np.int64)
