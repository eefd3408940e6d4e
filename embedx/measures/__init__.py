"""The papers' measures of a store, exact and streamed (definitions: DESIGN.md, "Measures").

Rows are L2-normalized first (float32 compute, float64 sums). X: N images, T: C texts, y: labels (rows with
y = -1 are left out of the label measures):

  acs          mean_i x_i.t_{y_i}                                       ACS (Niss et al., paper A)
  iimm_inter   mean_i (sum_c x_i.t_c - x_i.t_{y_i}) / (C-1)             S_inter (paper B)
  iimm_intra   mean_{i<j} x_i.x_j = (|sum x|^2 - N) / (N(N-1))          S_intra (paper B), over every image
  iimm         (iimm_inter + S_intra of the labelled images) / 2        IIMM (paper B): both terms over the
                                                                        labelled images, as the authors' code
  gap, iimm_intra and the modality silhouettes cover every image, labelled or not.
  text_intra   mean_{c<c'} t_c.t_c'
  gap          |mean_i x_i - mean_c t_c|                                modality gap (Liang et al. 2022)
  silhouette_* sklearn silhouette_score(vstack(X, T), [1]*N + [0]*C, metric=euclidean|cosine)  (paper A)
  zeroshot_*   top-1 / top-5 accuracy of argmax_c x_i.t_c and the mean per-class recall
  *_recall@k   paired stores: a query hits if any of its positives is among its top k

One streaming pass computes every O(N d) measure and zero-shot accuracy (see ``stream``); the cosine
silhouette joins that pass when the store's recorded sum of image rows checks out, else it takes a second
pass. Euclidean silhouette and retrieval go through the kernels in ``embedx.kernels``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from embedx.encoders import resolve_device
from embedx.errors import EmbedxError
from embedx.rows import duplicate_groups
from embedx.measures import retrieval, silhouette
from embedx.measures.stream import (PassConfig, Partial, block_partial, class_pass, cosine_silhouette_sum,
                                   normalized, silhouette_values)
from embedx.store import Store

BASE = ("acs", "iimm_inter", "iimm_intra", "iimm", "text_intra", "gap", "silhouette_euclidean",
        "silhouette_cosine", "zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall")
RETRIEVAL = tuple(f"{side}_recall@{k}" for side in ("i2t", "t2i") for k in retrieval.KS)
CLASS_SILHOUETTE = "silhouette_class_euclidean"
TIES = "lowest index wins (as argmax and stable sorting): among candidates scoring exactly the same, the lower index ranks first"
NOT_MEASURES = ("n_images", "n_texts", "dim", "timings_s", "estimates", "per_class", "ties",
                "integrity")  # other result keys
HINT_EFFECT = 1e-7  # use the recorded S_x only if its error moves any a_p by less than this


def available(store: Store) -> tuple[str, ...]:
    return BASE + (RETRIEVAL if store.paired else ())


def _check_metrics(store: Store, metrics):
    want = list(available(store)) if not metrics else list(dict.fromkeys(metrics))
    for m in want:
        if m not in available(store) + (CLASS_SILHOUETTE,):
            extra = " (retrieval recall needs a paired store)" if m in RETRIEVAL else ""
            raise EmbedxError(f"unknown metric {m!r}{extra}; choose from {', '.join(available(store))}")
    return want


def compute(store: Store, metrics=None, *, silhouette_mode: str = "exact", sample_size: int = 2000, seed: int = 0,
            knn: str = "blocked", per_class: bool = False, silhouette_labels: str = "modality",
            device: str = "auto") -> dict:
    """Requested measures of ``store`` -> {name: float, n_images, n_texts, dim, timings_s[, estimates, per_class]}.
    ``device`` runs the pairwise kernels (Euclidean silhouette, retrieval) and the zero-shot matmul: auto = CUDA
    when available."""
    want = _check_metrics(store, metrics)
    dev = resolve_device(device)
    if silhouette_labels == "class":
        if store.paired:
            raise EmbedxError("--silhouette-labels class needs class labels (this store is paired)")
        want.append(CLASS_SILHOUETTE)
    elif silhouette_labels != "modality":
        raise EmbedxError(f"--silhouette-labels must be modality or class, got {silhouette_labels!r}")
    if silhouette_mode not in ("exact", "sample"):
        raise EmbedxError(f"--silhouette must be exact or sample, got {silhouette_mode!r}")
    n, c = store.n_images, store.n_texts
    if c == 0:
        raise EmbedxError(f"{store.path} has no text rows")
    timings: dict = {}
    t0 = time.perf_counter()
    texts = None if store.paired else normalized(store.texts(), "texts")
    timings["texts"] = time.perf_counter() - t0

    # --- one streaming pass ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    hints = store.meta.get("sums") or {}
    sx_hint = torch.tensor(hints["images"], dtype=torch.float64) if hints.get("images") else None
    st_hint = torch.tensor(hints["texts"], dtype=torch.float64) if hints.get("texts") else None
    text_sum = texts.double().sum(0) if texts is not None else st_hint
    want_cos = "silhouette_cosine" in want
    cfg = PassConfig(texts=texts, text_sum=text_sum, n_texts=c, n_images=n,
                     sum_x_hint=sx_hint if want_cos and text_sum is not None else None,
                     zeroshot=not store.paired and any(m.startswith("zeroshot") for m in want), device=dev,
                     text_groups=tuple(duplicate_groups(texts.numpy())) if texts is not None else ())
    tot, text_cos, st_pass = _stream(store, cfg)
    timings["stream_pass"] = time.perf_counter() - t0

    sx = tot.sum_x if tot.sum_x is not None else np.full(store.dim, np.nan)
    st = st_pass if store.paired else text_sum.numpy()
    out: dict = {}
    if store.paired:
        out["acs"] = tot.correct_dot / n
        out["iimm_inter"] = (float(sx @ st) - tot.correct_dot) / (n * (n - 1)) if n > 1 else float("nan")
    elif tot.n_labelled:
        tn = texts.double().numpy()
        correct = float((tot.class_sum * tn).sum()) if tot.class_sum is not None else float("nan")
        out["acs"] = correct / tot.n_labelled
        out["iimm_inter"] = (float(tot.class_sum.sum(0) @ st) - correct) / (tot.n_labelled * (c - 1)) \
            if c > 1 and tot.class_sum is not None else float("nan")
    else:
        out["acs"] = out["iimm_inter"] = float("nan")
    out["iimm_intra"] = _mean_pair_dot(sx, n)  # reported alone: every image, labelled or not
    # IIMM (paper B): both terms over one image set, the labelled images (all of them in paired stores)
    if store.paired or tot.n_labelled == n:
        intra_labelled = out["iimm_intra"]
    else:
        sl = tot.class_sum.sum(0) if tot.class_sum is not None and tot.n_labelled else None
        intra_labelled = _mean_pair_dot(sl, tot.n_labelled) if sl is not None else float("nan")
    out["iimm"] = (out["iimm_inter"] + intra_labelled) / 2
    out["text_intra"] = (float(st @ st) - c) / (c * (c - 1)) if c > 1 else float("nan")
    out["gap"] = float(np.linalg.norm(sx / n - st / c))
    if cfg.zeroshot:
        counts, present = tot.class_count, tot.class_count > 0
        nl = max(int(counts.sum()), 1)
        out["zeroshot_top1"] = float(tot.top1.sum() / nl)
        out["zeroshot_top5"] = float(tot.top5.sum() / nl)
        out["zeroshot_mean_per_class_recall"] = float((tot.top1[present] / counts[present]).mean())

    if want_cos:
        t0 = time.perf_counter()
        sx_t, st_t = torch.from_numpy(sx), torch.from_numpy(st)
        hint_ok = (cfg.sum_x_hint is not None and (not store.paired or st_hint is not None)
                   and float(torch.linalg.vector_norm(cfg.sum_x_hint - sx_t)) / max(n - 1, 1) < HINT_EFFECT
                   and (not store.paired or float(torch.linalg.vector_norm(st_hint - st_t)) / max(c - 1, 1) < HINT_EFFECT))
        if hint_ok:
            img_cos = tot.cos_sum
        else:  # the recorded sums are missing or stale: a second pass with the exact sums
            img_cos, text_cos = _cosine_pass(store, sx_t, st_t)
        if texts is not None:
            w = texts.double() @ torch.stack([st_t, sx_t], 1)
            text_cos = cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), c, n)
        out["silhouette_cosine"] = (img_cos + text_cos) / (n + c)
        if _cosine_scale(sx, st, n, c) < COSINE_EXACT_BELOW:  # tight clusters close together: float32 is not enough
            out["silhouette_cosine"] = _cosine_exact(store)
        timings["silhouette_cosine"] = time.perf_counter() - t0

    estimates, per_point = {}, None
    if "silhouette_euclidean" in want or CLASS_SILHOUETTE in want:
        t0 = time.perf_counter()
        if "silhouette_euclidean" in want:  # columns streamed from the store: memory bounded, not O(N d)
            score, per_point = silhouette.modality_silhouette(store, silhouette_mode, sample_size, seed, dev)
            if silhouette_mode == "exact":
                out["silhouette_euclidean"] = score
            else:
                out["silhouette_euclidean"] = score["estimate"]
                estimates["silhouette_euclidean"] = score
        if CLASS_SILHOUETTE in want:  # the labelled images by class, streamed the same way
            score, _ = silhouette.class_silhouette(store, silhouette_mode, sample_size, seed, dev)
            if silhouette_mode == "exact":
                out[CLASS_SILHOUETTE] = score
            else:
                out[CLASS_SILHOUETTE] = score["estimate"]
                estimates[CLASS_SILHOUETTE] = score
        timings["silhouette_euclidean"] = time.perf_counter() - t0

    if store.paired and any(m in RETRIEVAL or m.startswith("zeroshot") for m in want):
        t0 = time.perf_counter()
        if knn == "blocked":  # rank counts streamed from the store: memory bounded, not O(N d)
            rec = retrieval.recall_at_k_streamed(store, device=dev)
        else:  # --knn faiss holds every normalized image and text row in memory
            rec = retrieval.recall_at_k(normalized(store.images(dtype=np.float32), "images"),
                                        normalized(store.texts(dtype=np.float32), "texts"),
                                        retrieval.groups_from_ids(store.ids()), knn=knn)
        out.update(rec)
        # zero-shot with the N captions as the classes is image -> text retrieval
        out["zeroshot_top1"], out["zeroshot_top5"] = rec["i2t_recall@1"], rec["i2t_recall@5"]
        out["zeroshot_mean_per_class_recall"] = rec["i2t_recall@1"]
        timings["retrieval"] = time.perf_counter() - t0

    store.ensure_unchanged()  # every number above came from the store that was opened
    result = {k: float(out[k]) for k in want}
    result.update(n_images=n, n_texts=c, dim=store.dim, timings_s=timings)
    if any(m.startswith("zeroshot") or m in RETRIEVAL for m in want):
        result["ties"] = TIES
    if estimates:
        result["estimates"] = estimates
    if per_class:
        result["per_class"] = _per_class(store, tot, texts, per_point)
    recorded = store.content_chunks()
    if recorded:  # what the reads checked against the chunk checksums recorded at finalize (arrays read)
        seen = {k: v for k, v in store.chunks_verified().items() if v}
        result["integrity"] = {"chunks_verified": sum(len(v) for v in seen.values()),
                               "chunks_recorded": sum(recorded[k] for k in seen)}
    return result


def _mean_pair_dot(s: np.ndarray, n: int) -> float:
    """mean_{i<j} x^_i.x^_j of n unit rows with sum ``s``: (|s|^2 - n) / (n (n - 1)); NaN below two rows."""
    return (float(s @ s) - n) / (n * (n - 1)) if n > 1 else float("nan")


def _stream(store: Store, cfg: PassConfig):
    """The pass: class stores chunk by chunk (``stream.class_pass``); paired stores over aligned image and
    text blocks. -> (total Partial, paired text cosine-silhouette sum, paired S_t)."""
    if not store.paired:
        return class_pass(store, cfg), 0.0, None
    tot = Partial()
    text_cos = 0.0
    st_pass = np.zeros(store.dim)
    for start, block in store.iter_images(reuse=True):
        tb = normalized(store.read_texts(start, start + len(block)), "texts", start)
        st_pass += tb.double().sum(0).numpy()
        if cfg.sum_x_hint is not None:
            w = tb.double() @ torch.stack([cfg.text_sum, cfg.sum_x_hint], 1)
            text_cos += cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), cfg.n_texts, cfg.n_images)
        tot = tot.merge(block_partial(block, cfg, tb, start))
    return tot, text_cos, st_pass


COSINE_EXACT_BELOW = 1e-2  # cluster scale of cosine distances below which the exact float64 passes run


def _cosine_scale(sx: np.ndarray, st: np.ndarray, n: int, c: int) -> float:
    """The smallest, over the two modalities, of max(mean cosine distance inside it, mean distance between them):
    a silhouette value's size there. The fast path's float32 unit rows err by ~1e-7 absolute, so below 1e-2 a
    value could move by more than 1e-5 (or, between overlapping tight clusters, by much more)."""
    if n < 2 or c < 2:
        return float("inf")
    within = [1 - (float(v @ v) - k) / (k * (k - 1)) for v, k in ((sx, n), (st, c))]
    between = 1 - float(sx @ st) / (n * c)
    return min(max(w, between) for w in within)


def _cosine_exact(store: Store) -> float:
    """Cosine silhouette from float64 unit rows without cancellation: with D(p, q) = 1 - x^_p.x^_q = |x^_p - x^_q|^2/2
    and the float64 mean m_G of cluster G, sum_{q in G} |x^_p - x^_q|^2 = n_G (|x^_p - m_G|^2 + V_G), V_G the mean
    of |x^_q - m_G|^2 over G. Two float64 passes (the means, then |x^_p - m_A|^2 and |x^_p - m_B|^2 per row),
    run only when :func:`_cosine_scale` says float32 is not enough."""
    n, c = store.n_images, store.n_texts

    def unit(block):
        x = np.asarray(block, dtype=np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def blocks(kind):
        if kind == "images":
            for _, b in store.iter_images(reuse=True):
                yield unit(b)
        else:
            for t0 in range(0, c, store.block_rows()):
                yield unit(store.read_texts(t0, t0 + store.block_rows()))

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


def _cosine_pass(store: Store, sx: torch.Tensor, st: torch.Tensor):
    """Second pass: cosine-silhouette sums of the images (and paired texts) with the exact S_x, S_t."""
    n, c = store.n_images, store.n_texts
    img, txt = 0.0, 0.0
    both = torch.stack([sx, st], 1)
    for start, block in store.iter_images(dtype=np.float32, reuse=True):
        w = normalized(block, "images", start).double() @ both
        img += cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), n, c)
        if store.paired:
            w = normalized(store.read_texts(start, start + len(block)), "texts", start).double() @ both
            txt += cosine_silhouette_sum(w[:, 1].numpy(), w[:, 0].numpy(), c, n)
    return img, txt


def _per_class(store: Store, tot: Partial, texts, per_point) -> dict:
    """Per class: images, acs, zero-shot recall and mean modality silhouette (Euclidean) of its images."""
    if store.paired or tot.class_count is None:
        raise EmbedxError("--per-class needs a store with class labels (this store is paired)")
    names = [str(s) for s in store.text_names()]
    y = store.labels()
    out = {}
    tn = texts.double().numpy()
    for k, name in enumerate(names):
        cnt = int(tot.class_count[k])
        row = {"n_images": cnt, "acs": float(tot.class_sum[k] @ tn[k] / cnt) if cnt else None,
               "zeroshot_recall": float(tot.top1[k] / cnt) if cnt and tot.top1 is not None else None}
        if per_point is not None:
            row["silhouette_euclidean"] = float(per_point[: store.n_images][y == k].mean()) if cnt else None
        out[name] = row
    return out
