"""Retrieval recall@k for paired stores, through blocked top-k (or FAISS): never materializes N x M.

Image and text i share group ``groups[i]``; rows of one group are one item (e.g. the same image with several
captions: every caption is a positive). A query hits at k if any of its positives is among its top k.
"""
from __future__ import annotations

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError

KS = (1, 5, 10)


def groups_from_ids(ids) -> np.ndarray:
    """Rows with the same source id are one item: group = index of the id's first row."""
    _, first, inv = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    return first[inv]


def topk(q: torch.Tensor, g: torch.Tensor, k: int, knn: str = "blocked") -> torch.Tensor:
    if knn == "faiss":
        try:
            import faiss
        except ImportError:
            raise EmbedxError("--knn faiss needs the faiss package (pip install faiss-cpu)") from None
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(np.ascontiguousarray(g.float().numpy()))
        _, idx = index.search(np.ascontiguousarray(q.float().numpy()), min(k, len(g)))
        return torch.from_numpy(idx.astype(np.int64))
    if knn != "blocked":
        raise EmbedxError(f"unknown --knn {knn!r}; use blocked or faiss")
    return kernels.topk(q, g, k)


def recall_at_k(images: torch.Tensor, texts: torch.Tensor, groups: np.ndarray, ks=KS, knn: str = "blocked") -> dict:
    """i2t: one query per distinct image against all texts; t2i: every text against the distinct images."""
    groups = np.asarray(groups, dtype=np.int64)
    g = torch.from_numpy(groups)
    uniq, first = np.unique(groups, return_index=True)
    uq = torch.from_numpy(uniq)
    q_img = images[torch.from_numpy(first)]
    kmax = max(ks)
    hit_i2t = g[topk(q_img, texts, kmax, knn)] == uq[:, None]
    hit_t2i = uq[topk(texts, q_img, kmax, knn)] == g[:, None]
    out = {}
    for side, hit in (("i2t", hit_i2t), ("t2i", hit_t2i)):
        for k in ks:
            out[f"{side}_recall@{k}"] = float(hit[:, :k].any(1).double().mean())
    return out
