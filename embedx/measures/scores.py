"""The papers' measures, registered (``embedx.engine.registry``): what each needs, and its formula.

X: N image rows, T: C text rows (class prompts, or the N captions of a paired store), y: labels (-1 = none), all
L2-normalized. The needs (``embedx.measures.engine.NEEDS``): ``stream`` = one pass of mergeable sums over the
images (S_x, per-class sums M_c, sum of correct-pair dots, zero-shot hits), ``sums`` = S_x, S_t from it,
``cosine`` = the cosine silhouette (in the stream pass when the store's recorded S_x checks out), the pairwise
kernels ``silhouette_modality``, ``silhouette_class`` and ``rank_counts`` (retrieval).
"""
from __future__ import annotations

import numpy as np

from embedx.engine.registry import register

PAPER_A = "paper A, arXiv 2402.09613"
PAPER_B = "paper B, arXiv 2407.15731"
KS = (1, 5, 10)


def _mean_pair_dot(s: np.ndarray, n: int) -> float:
    """mean_{i<j} x^_i.x^_j of n unit rows with sum ``s``: (|s|^2 - n) / (n (n - 1)); NaN below two rows."""
    return (float(s @ s) - n) / (n * (n - 1)) if n > 1 else float("nan")


@register("acs", "measure", needs=("sums",), summary="mean_i x_i.t_{y_i}", citation=PAPER_A)
def acs(ctx) -> float:
    """mean_i x^_i.t^_{y_i} over the labelled images (paired: t_i is image i's caption)."""
    s = ctx["sums"]
    if s.paired:
        return s.tot.correct_dot / s.n
    return s.correct / s.tot.n_labelled if s.tot.n_labelled else float("nan")


@register("iimm_inter", "measure", needs=("sums",), summary="mean_i (sum_c x_i.t_c - x_i.t_{y_i}) / (C-1)",
          citation=PAPER_B)
def iimm_inter(ctx) -> float:
    """S_inter = mean_i (sum_c x^_i.t^_c - x^_i.t^_{y_i}) / (C - 1) over the labelled images."""
    s = ctx["sums"]
    if s.paired:
        return (float(s.sx @ s.st) - s.tot.correct_dot) / (s.n * (s.n - 1)) if s.n > 1 else float("nan")
    if not s.tot.n_labelled or s.c <= 1 or s.tot.class_sum is None:
        return float("nan")
    return (float(s.tot.class_sum.sum(0) @ s.st) - s.correct) / (s.tot.n_labelled * (s.c - 1))


@register("iimm_intra", "measure", needs=("sums",), summary="mean_{i<j} x_i.x_j over every image",
          citation=PAPER_B)
def iimm_intra(ctx) -> float:
    """S_intra = mean_{i<j} x^_i.x^_j = (|S_x|^2 - N) / (N (N - 1)), over every image (labelled or not)."""
    s = ctx["sums"]
    return _mean_pair_dot(s.sx, s.n)


@register("iimm", "measure", needs=("sums",), summary="(iimm_inter + S_intra of the labelled images) / 2",
          citation=PAPER_B)
def iimm(ctx) -> float:
    """IIMM = (S_inter + S_intra) / 2, both terms over one image set: the labelled images (as the authors' code)."""
    s = ctx["sums"]
    if s.paired or s.tot.n_labelled == s.n:
        intra = _mean_pair_dot(s.sx, s.n)
    else:
        sl = s.tot.class_sum.sum(0) if s.tot.class_sum is not None and s.tot.n_labelled else None
        intra = _mean_pair_dot(sl, s.tot.n_labelled) if sl is not None else float("nan")
    return (iimm_inter(ctx) + intra) / 2


@register("text_intra", "measure", needs=("sums",), summary="mean_{c<c'} t_c.t_c'", citation=PAPER_B)
def text_intra(ctx) -> float:
    """mean_{c<c'} t^_c.t^_c' = (|S_t|^2 - C) / (C (C - 1))."""
    s = ctx["sums"]
    return (float(s.st @ s.st) - s.c) / (s.c * (s.c - 1)) if s.c > 1 else float("nan")


@register("gap", "measure", needs=("sums",), summary="|mean_i x_i - mean_c t_c|",
          citation="Liang et al., NeurIPS 2022")
def gap(ctx) -> float:
    """Modality gap |S_x / N - S_t / C|."""
    s = ctx["sums"]
    return float(np.linalg.norm(s.sx / s.n - s.st / s.c))


@register("silhouette_euclidean", "measure", needs=("silhouette_modality",),
          summary="silhouette of vstack(X, T) labelled by modality, Euclidean", citation=PAPER_A)
def silhouette_euclidean(ctx) -> float:
    """sklearn silhouette_score(vstack(X^, T^), [1]*N + [0]*C, metric="euclidean"), exact or sampled."""
    return ctx["silhouette_modality"]


@register("silhouette_cosine", "measure", needs=("cosine",),
          summary="silhouette of vstack(X, T) labelled by modality, cosine", citation=PAPER_A)
def silhouette_cosine(ctx) -> float:
    """sklearn silhouette_score(vstack(X, T), [1]*N + [0]*C, metric="cosine"), from S_x and S_t in one pass."""
    return ctx["cosine"]


ZEROSHOT = {"class": ("sums",), "paired": ("rank_counts",)}  # paired: the N captions are the classes (i2t)


def _zeroshot(ctx, k: int) -> float:
    s = ctx.results.get("sums")
    if s is None or s.paired:
        return ctx["rank_counts"][f"i2t_recall@{k}"]
    n = int(s.tot.class_count.sum())
    if not n:  # no labelled image: accuracy is undefined (NaN -> null in JSON), not 0
        return float("nan")
    hits = s.tot.top1 if k == 1 else s.tot.top5
    return float(hits.sum() / n)


@register("zeroshot_top1", "measure", needs=ZEROSHOT, summary="top-1 accuracy: the true class text scores highest",
          citation="Radford et al., ICML 2021")
def zeroshot_top1(ctx) -> float:
    """Fraction of labelled images for which no class text scores strictly higher than the true class's (a
    bit-identical text of lower index ranks first: the lowest index wins, as argmax); paired: i2t R@1."""
    return _zeroshot(ctx, 1)


@register("zeroshot_top5", "measure", needs=ZEROSHOT, summary="top-5 accuracy", citation="Radford et al., ICML 2021")
def zeroshot_top5(ctx) -> float:
    """Fraction of labelled images with fewer than 5 class texts ranking before the true class's (strictly
    higher, or bit-identical of lower index); paired: i2t R@5."""
    return _zeroshot(ctx, 5)


@register("zeroshot_mean_per_class_recall", "measure", needs=ZEROSHOT,
          summary="mean over classes of the top-1 recall", citation="Radford et al., ICML 2021")
def zeroshot_mean_per_class_recall(ctx) -> float:
    """mean over the classes with images of (top-1 hits / images) of the class; paired: i2t R@1."""
    s = ctx.results.get("sums")
    if s is None or s.paired:
        return ctx["rank_counts"]["i2t_recall@1"]
    counts = s.tot.class_count
    present = counts > 0
    if not present.any():  # no labelled image: undefined
        return float("nan")
    return float((s.tot.top1[present] / counts[present]).mean())


def _recall(side: str, k: int):
    def finalize(ctx) -> float:
        return ctx["rank_counts"][f"{side}_recall@{k}"]

    what = "image -> text" if side == "i2t" else "text -> image"
    finalize.__doc__ = (f"{what} recall@{k}: a query hits if any of its positives ranks among its top {k} "
                        f"(exact rank counts; ties: the lowest index)")
    register(f"{side}_recall@{k}", "measure", needs=("rank_counts",), requires=("paired",),
             summary=f"{what} recall@{k}", citation="retrieval recall")(finalize)


for _side in ("i2t", "t2i"):
    for _k in KS:
        _recall(_side, _k)


@register("silhouette_class_euclidean", "measure", needs=("silhouette_class",), requires=("labels",), default=False,
          summary="silhouette of the labelled images clustered by class, Euclidean", citation=PAPER_A)
def silhouette_class_euclidean(ctx) -> float:
    """sklearn silhouette_score(X^ of the labelled images, y, metric="euclidean"), exact or sampled."""
    return ctx["silhouette_class"]
