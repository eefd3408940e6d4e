"""The papers' measures of a store, exact and streamed (definitions: DESIGN.md, "Measures").

All rows are L2-normalized first (float32 compute, float64 global sums). With X the N images, T the C texts
and y the labels (rows with y = -1 are left out of the label measures):

  acs          mean_i x_i.t_{y_i}                                   (Niss et al. 2024, ACS)
  iimm_inter   mean_i (sum_c x_i.t_c - x_i.t_{y_i}) / (C-1)         (Niss et al. 2025, S_inter)
  iimm_intra   mean_{i<j} x_i.x_j = (|sum x|^2 - sum |x|^2) / (N(N-1))  (S_intra)
  iimm         (iimm_inter + iimm_intra) / 2
  text_intra   mean_{c<c'} t_c.t_c'
  gap          |mean_i x_i - mean_c t_c|                            (Liang et al. 2022)
  silhouette_* sklearn.metrics.silhouette_score(vstack(X, T), [1]*N + [0]*C, metric=euclidean|cosine)
  zeroshot_*   top-1 / top-5 accuracy of argmax_c x_i.t_c, and the mean per-class recall
  *_recall@k   paired stores: a query hits if any of its positives is in its top k

The O(N d) measures are sums, so each block yields a mergeable partial (:class:`Partial`); cosine
silhouette is exact through the cluster-sum decomposition (mean cosine distance of x to a cluster G is
1 - x.(sum_G g)/|G|, self excluded), which needs the image sum first, hence a second pass over the images.
Euclidean silhouette does not decompose: it goes through the fused distance + per-cluster-sum kernel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError
from embedx.store import Store

BASE = ("acs", "iimm_inter", "iimm_intra", "iimm", "text_intra", "gap", "silhouette_euclidean",
        "silhouette_cosine", "zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall")
RECALL_KS = (1, 5, 10)
RETRIEVAL = tuple(f"{side}_recall@{k}" for side in ("i2t", "t2i") for k in RECALL_KS)
SILHOUETTE_BLOCK = 1024
ZS_BLOCK = 8192


def available(store: Store) -> tuple[str, ...]:
    return BASE + (RETRIEVAL if store.paired else ())


def normalized(block, what: str, start: int) -> torch.Tensor:
    """float32 L2-normalized rows; NaN/inf and zero rows are input errors."""
    x = torch.as_tensor(np.asarray(block)).float()
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0]) + start
        raise EmbedxError(f"{what} row {i} contains NaN or inf")
    n = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    if bool((n == 0).any()):
        i = int((n[:, 0] == 0).nonzero()[0]) + start
        raise EmbedxError(f"{what} row {i} is all zeros (it has no direction)")
    return x / n


@dataclass
class Partial:
    """Mergeable sums over a set of image rows (one block, one chunk, or all)."""

    n: int = 0
    sum_x: np.ndarray | None = None          # sum of normalized rows (float64, d)
    sum_sq: float = 0.0                      # sum of |x|^2 (= n up to round-off)
    n_labelled: int = 0
    correct_dot: float = 0.0                 # sum over labelled rows of x_i.t_{y_i}
    wrong_dot: float = 0.0                   # sum over labelled rows of (sum_c x_i.t_c - x_i.t_{y_i})
    class_count: np.ndarray | None = None    # images per class
    class_top1: np.ndarray | None = None     # top-1 hits per class
    class_top5: np.ndarray | None = None

    def merge(self, o: "Partial") -> "Partial":
        def add(a, b):
            return b if a is None else a if b is None else a + b

        return Partial(self.n + o.n, add(self.sum_x, o.sum_x), self.sum_sq + o.sum_sq,
                       self.n_labelled + o.n_labelled, self.correct_dot + o.correct_dot,
                       self.wrong_dot + o.wrong_dot, add(self.class_count, o.class_count),
                       add(self.class_top1, o.class_top1), add(self.class_top5, o.class_top5))


def image_partial(x: torch.Tensor, y: np.ndarray, t_correct: torch.Tensor | None, t_sum: torch.Tensor,
                  texts: torch.Tensor | None) -> Partial:
    """Partial sums of one block. ``t_correct``: the text row of each labelled image (paired stores), else
    ``texts`` (C x d) is gathered; ``texts`` also gives zero-shot hits (class stores only)."""
    p = Partial(n=len(x), sum_x=x.double().sum(0).numpy(), sum_sq=float((x.double() ** 2).sum()))
    lab = torch.as_tensor(y, dtype=torch.long)
    m = lab >= 0
    xl = x[m]
    if len(xl):
        tc = t_correct[m] if t_correct is not None else texts[lab[m]]
        correct = (xl * tc).sum(1).double()
        p.n_labelled = int(m.sum())
        p.correct_dot = float(correct.sum())
        p.wrong_dot = float((xl.double() @ t_sum).sum() - correct.sum())
    if texts is not None:
        c = len(texts)
        p.class_count = np.bincount(lab[m].numpy(), minlength=c).astype(np.int64)
        p.class_top1 = np.zeros(c, np.int64)
        p.class_top5 = np.zeros(c, np.int64)
        if len(xl):
            top = (xl @ texts.T).topk(min(5, c), dim=1).indices
            ym = lab[m]
            hit1 = top[:, 0] == ym
            hit5 = (top == ym[:, None]).any(1)
            p.class_top1 = np.bincount(ym[hit1].numpy(), minlength=c).astype(np.int64)
            p.class_top5 = np.bincount(ym[hit5].numpy(), minlength=c).astype(np.int64)
    return p


def _silhouette_from_sums(own_sum, own_size, other_mean):
    """sklearn's convention: s = (b - a)/max(a, b); singleton clusters and 0/0 give 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own_sum / (own_size - 1)
        s = (other_mean - a) / np.maximum(a, other_mean)
    s[own_size <= 1] = 0.0
    return np.nan_to_num(s)


class _Timer:
    def __init__(self):
        self.t = {}

    def add(self, key, dt):
        self.t[key] = self.t.get(key, 0.0) + dt


def compute(store: Store, metrics: list[str] | None = None, device: str = "cpu") -> dict:
    """Every requested measure of ``store`` (all of :func:`available` by default) -> {name: float, ...}."""
    want = list(available(store)) if not metrics else list(dict.fromkeys(metrics))
    unknown = [m for m in want if m not in available(store)]
    if unknown:
        extra = " (retrieval recall needs a paired store)" if any(u in RETRIEVAL for u in unknown) else ""
        raise EmbedxError(f"unknown metric {unknown[0]!r}{extra}; choose from {', '.join(available(store))}")
    if store.n_texts == 0:
        raise EmbedxError(f"{store.path} has no text rows")
    timer = _Timer()
    n, c = store.n_images, store.n_texts
    t0 = time.perf_counter()
    texts_all = None if store.paired else normalized(store.texts(), "texts", 0)
    t_sum = _text_sum(store) if store.paired else texts_all.double().sum(0)
    t_sq = float((texts_all.double() ** 2).sum()) if texts_all is not None else float(c)
    timer.add("texts", time.perf_counter() - t0)

    # pass 1: mergeable partial sums over image blocks
    tot = Partial()
    t0 = time.perf_counter()
    tblocks = store.group["texts/embeddings"]
    for start, block, y in store.iter_images(dtype=np.float32, with_labels=True, reuse=True):
        x = normalized(block, "images", start)
        tc = normalized(tblocks[start:start + len(x)], "texts", start) if store.paired else None
        tot = tot.merge(image_partial(x, y, tc, t_sum, texts_all))
    timer.add("pass1", time.perf_counter() - t0)

    out: dict = {}
    sx = tot.sum_x
    tsum = t_sum.numpy()
    if tot.n_labelled:
        out["acs"] = tot.correct_dot / tot.n_labelled
        out["iimm_inter"] = tot.wrong_dot / tot.n_labelled / (c - 1) if c > 1 else float("nan")
    else:
        out["acs"] = out["iimm_inter"] = float("nan")
    out["iimm_intra"] = (float(sx @ sx) - tot.sum_sq) / (n * (n - 1)) if n > 1 else float("nan")
    out["iimm"] = (out["iimm_inter"] + out["iimm_intra"]) / 2
    out["text_intra"] = (float(tsum @ tsum) - t_sq) / (c * (c - 1)) if c > 1 else float("nan")
    out["gap"] = float(np.linalg.norm(sx / n - tsum / c))
    if not store.paired:
        counts = tot.class_count
        present = counts > 0
        nl = max(int(counts.sum()), 1)
        out["zeroshot_top1"] = float(tot.class_top1.sum() / nl)
        out["zeroshot_top5"] = float(tot.class_top5.sum() / nl)
        out["zeroshot_mean_per_class_recall"] = float((tot.class_top1[present] / counts[present]).mean())

    if "silhouette_cosine" in want:
        t0 = time.perf_counter()
        out["silhouette_cosine"] = _silhouette_cosine(store, sx, t_sum.numpy(), texts_all)
        timer.add("silhouette_cosine", time.perf_counter() - t0)
    if "silhouette_euclidean" in want:
        t0 = time.perf_counter()
        out["silhouette_euclidean"] = silhouette_euclidean(_images_all(store), texts_all
                                                           if texts_all is not None else _texts_all(store))
        timer.add("silhouette_euclidean", time.perf_counter() - t0)
    if store.paired and (any(m in RETRIEVAL for m in want) or any(m.startswith("zeroshot") for m in want)):
        t0 = time.perf_counter()
        rec = retrieval_recall(_images_all(store), _texts_all(store), groups_from_ids(store.ids()))
        out.update(rec)
        # zero-shot over the N captions as classes is image->text retrieval
        out["zeroshot_top1"] = rec["i2t_recall@1"]
        out["zeroshot_top5"] = rec["i2t_recall@5"]
        out["zeroshot_mean_per_class_recall"] = rec["i2t_recall@1"]
        timer.add("retrieval", time.perf_counter() - t0)
    result = {k: float(out[k]) for k in want}
    result.update(n_images=n, n_texts=c, dim=store.dim, timings_s=timer.t)
    return result


def _text_sum(store: Store) -> torch.Tensor:
    s = torch.zeros(store.dim, dtype=torch.float64)
    arr = store.group["texts/embeddings"]
    step = store.block_rows()
    for start in range(0, store.n_texts, step):
        s += normalized(arr[start:start + step], "texts", start).double().sum(0)
    return s


def _images_all(store: Store) -> torch.Tensor:
    return normalized(store.images(dtype=np.float32), "images", 0)


def _texts_all(store: Store) -> torch.Tensor:
    return normalized(store.texts(dtype=np.float32), "texts", 0)


def _silhouette_cosine(store: Store, sx: np.ndarray, st: np.ndarray, texts_all) -> float:
    """Exact cosine silhouette from cluster sums (second pass over the images)."""
    n, c = store.n_images, store.n_texts
    sx_t, st_t = torch.from_numpy(sx), torch.from_numpy(st)
    total = 0.0
    tarr = store.group["texts/embeddings"]

    def part(z: torch.Tensor, own_sum_vec, own_n, other_sum_vec, other_n) -> float:
        zd = z.double()
        own = (own_n - 1) - (zd @ own_sum_vec - (zd * zd).sum(1))   # sum of 1 - cos to the rest of its cluster
        other_mean = 1 - (zd @ other_sum_vec) / other_n
        return float(_silhouette_from_sums(own.numpy(), np.full(len(z), own_n), other_mean.numpy()).sum())

    for start, block in store.iter_images(dtype=np.float32, reuse=True):
        total += part(normalized(block, "images", start), sx_t, n, st_t, c)
    if texts_all is not None:
        total += part(texts_all, st_t, c, sx_t, n)
    else:
        step = store.block_rows()
        for start in range(0, c, step):
            total += part(normalized(tarr[start:start + step], "texts", start), st_t, c, sx_t, n)
    return total / (n + c)


def silhouette_euclidean(images: torch.Tensor, texts: torch.Tensor, labels: np.ndarray | None = None,
                         block: int = SILHOUETTE_BLOCK) -> float:
    """Exact sklearn silhouette (Euclidean) of vstack(images, texts) labelled by modality, or of ``images``
    alone by ``labels`` (texts=None), through the fused distance + per-cluster-sum kernel."""
    if texts is not None:
        pts = torch.cat([images, texts])
        lab = np.r_[np.zeros(len(images), np.int64), np.ones(len(texts), np.int64)]
    else:
        order = np.argsort(labels, kind="stable")
        pts, lab = images[torch.from_numpy(order)], np.asarray(labels)[order]
        _, lab = np.unique(lab, return_inverse=True)
    k = int(lab.max()) + 1
    sizes = np.bincount(lab, minlength=k)
    if k < 2 or k > len(pts) - 1:
        raise EmbedxError(f"silhouette needs 2 <= clusters <= points - 1, got {k} clusters of {len(pts)} points")
    lab_t = torch.from_numpy(lab)
    total = 0.0
    for r0 in range(0, len(pts), block):
        rows = pts[r0:r0 + block]
        rid = torch.arange(r0, r0 + len(rows))
        s = kernels.cluster_distance_sums(rows, pts, lab_t, k, row_ids=rid).cpu().numpy()
        own = lab[r0:r0 + len(rows)]
        own_sum = s[np.arange(len(rows)), own]
        means = s / sizes[None, :]
        means[np.arange(len(rows)), own] = np.inf
        total += float(_silhouette_from_sums(own_sum, sizes[own], means.min(1)).sum())
    return total / len(pts)


def groups_from_ids(ids: np.ndarray) -> np.ndarray:
    """Rows with the same source id are the same item: group = index of the id's first row."""
    _, first, inv = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    return first[inv]


def retrieval_recall(images: torch.Tensor, texts: torch.Tensor, groups: np.ndarray,
                     ks=RECALL_KS) -> dict:
    """Paired rows (image i <-> text i). Image and text i belong to ``groups[i]``; a query hits at k if an
    item of its group is among its top k. Images of one group are one gallery item."""
    g = torch.from_numpy(np.asarray(groups, dtype=np.int64))
    uniq, first = np.unique(groups, return_index=True)
    kmax = max(ks)
    out = {}
    # image -> text: one query per distinct image
    q = images[torch.from_numpy(first)]
    idx = kernels_topk(q, texts, kmax)
    hit = g[idx] == torch.from_numpy(uniq)[:, None]
    for k in ks:
        out[f"i2t_recall@{k}"] = float(hit[:, :k].any(1).double().mean())
    # text -> image: gallery of distinct images
    idx = kernels_topk(texts, q, kmax)
    hit = torch.from_numpy(uniq)[idx] == g[:, None]
    for k in ks:
        out[f"t2i_recall@{k}"] = float(hit[:, :k].any(1).double().mean())
    return out


def kernels_topk(q: torch.Tensor, g: torch.Tensor, k: int, block: int = 4096) -> torch.Tensor:
    """Indices of the k most similar gallery rows per query, blocked (never materializes len(q) x len(g))."""
    k = min(k, len(g))
    out = torch.empty(len(q), k, dtype=torch.long)
    for q0 in range(0, len(q), block):
        qb = q[q0:q0 + block]
        best_v = torch.full((len(qb), k), -float("inf"))
        best_i = torch.zeros((len(qb), k), dtype=torch.long)
        for g0 in range(0, len(g), block):
            s = qb @ g[g0:g0 + block].T
            v, i = s.topk(min(k, s.shape[1]), dim=1)
            cat_v = torch.cat([best_v, v], 1)
            cat_i = torch.cat([best_i, i + g0], 1)
            best_v, pos = cat_v.topk(k, dim=1)
            best_i = cat_i.gather(1, pos)
        out[q0:q0 + block] = best_i
    return out
