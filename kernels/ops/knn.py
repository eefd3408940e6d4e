"""Exact k nearest neighbours by inner product, each query's own row excluded, over a database streamed in blocks.

    N_k(q_i) = the k database rows j != exclude[i] of largest q_i . g_j, best first (row ids; -1 pads a query
               with fewer than k candidates).

Ties (equal scores): ``knn_reference`` and the ``torch``/``triton`` providers keep the lower row index, as a
stable descending sort. ``faiss`` returns the same k scores, but among rows tied with the k-th score it keeps
the ones its heap keeps (not always the lowest index); that is what drift has always reported, so ``auto``
keeps it on the CPU.

Providers (``provider``):
  * ``faiss``: per block faiss.IndexFlatIP (float32) searched for k+1, the own row dropped, merged in a
    faiss.ResultHeap. CPU; faiss is imported only here.
  * ``torch`` / ``triton``: per block ``topk_torch`` / ``topk_triton`` for k+1, the own row dropped, merged
    with the running best (float32 scores, ties to the lower row).
  * ``auto``: ``faiss`` for queries on the CPU when faiss is installed (``EMBEDX_KERNEL`` does not change that),
    else ``kernels.topk``'s backend (Triton on CUDA when installed, or what ``EMBEDX_KERNEL`` forces).
"""
from __future__ import annotations

import numpy as np
import torch

PROVIDERS = ("auto", "faiss", "torch", "triton")


def knn_reference(q, g, k: int, exclude=None) -> np.ndarray:
    """(len(q), k) int64: float64 dense scores, the own row (``exclude[i]``) removed, stable descending sort."""
    s = np.asarray(q, np.float64) @ np.asarray(g, np.float64).T
    if exclude is not None:
        own = np.asarray(exclude)
        hit = (own >= 0) & (own < s.shape[1])
        s[np.flatnonzero(hit), own[hit]] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    order = np.where(np.take_along_axis(s, order, 1) == -np.inf, -1, order)
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_provider(provider: str, on_cpu: bool) -> str:
    """The provider ``auto`` stands for here: faiss on the CPU when installed, else kernels.topk's backend."""
    if provider not in PROVIDERS:
        raise ValueError(f"knn provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    if provider != "auto":
        return provider
    if on_cpu and faiss_available():
        return "faiss"
    from embedx.kernels.backend import backend_for

    return backend_for(torch.device("cpu" if on_cpu else "cuda"))


class FaissKnn:
    """The faiss provider: IndexFlatIP per block, merged in a faiss.ResultHeap."""

    def __init__(self, queries, exclude: np.ndarray, k: int):
        import faiss

        self.faiss, self.k, self.exclude = faiss, k, exclude
        self.q = np.ascontiguousarray(_numpy(queries), np.float32)
        self.heap = faiss.ResultHeap(len(self.q), k, keep_max=True)

    def add(self, block, start: int) -> None:
        block = _numpy(block)
        index = self.faiss.IndexFlatIP(block.shape[1])
        index.add(np.ascontiguousarray(block, np.float32))
        dist, idx = index.search(self.q, min(self.k + 1, len(block)))  # k+1: one of them may be the query
        idx = np.where(idx >= 0, idx + start, -1)
        drop = (idx < 0) | (idx == self.exclude[:, None])
        dist[drop], idx[drop] = -np.inf, -1
        self.heap.add_result(dist, idx)

    def result(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I


class TopkKnn:
    """The torch/triton providers: kernels.topk per block, merged with the running best (ties to the lower row)."""

    def __init__(self, queries, exclude: np.ndarray, k: int, impl: str):
        from embedx.kernels.ops.topk import TRITON_MAX_K, topk_torch, topk_triton

        if impl == "triton" and k + 1 > TRITON_MAX_K:
            raise ValueError(f"the triton knn provider supports k <= {TRITON_MAX_K - 1}")
        self.topk = topk_triton if impl == "triton" else topk_torch
        self.q = _tensor(queries).to(torch.float32, copy=True)  # own memory: the Triton interpreter mishandles
        # a launch whose inputs share one storage (queries taken from the database array)
        self.k = k
        self.exclude = torch.as_tensor(exclude, dtype=torch.long, device=self.q.device)
        self.best_v = torch.full((len(self.q), 0), -float("inf"), device=self.q.device)
        self.best_i = torch.full((len(self.q), 0), -1, dtype=torch.long, device=self.q.device)

    def add(self, block, start: int) -> None:
        g = _tensor(block).to(self.q.device).float()
        local = self.topk(self.q, g, min(self.k + 1, len(g)))
        v = torch.einsum("qd,qkd->qk", self.q, g[local])  # the scores of the candidates, float32
        ids = local + start
        drop = ids == self.exclude[:, None]
        v, ids = v.masked_fill(drop, -float("inf")), ids.masked_fill(drop, -1)
        cat_v, cat_i = torch.cat([self.best_v, v], 1), torch.cat([self.best_i, ids], 1)
        by_id = torch.argsort(torch.where(cat_i < 0, torch.iinfo(torch.long).max, cat_i), dim=1, stable=True)
        cat_v, cat_i = cat_v.gather(1, by_id), cat_i.gather(1, by_id)
        pos = torch.sort(cat_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.best_v, self.best_i = cat_v.gather(1, pos), cat_i.gather(1, pos)

    def result(self) -> np.ndarray:
        out = np.full((len(self.q), self.k), -1, np.int64)
        ids = self.best_i.masked_fill(self.best_v == -float("inf"), -1).cpu().numpy()
        out[:, : ids.shape[1]] = ids
        return out


def knn_stream(queries, k: int, exclude=None, provider: str = "auto"):
    """A streamed exact top-k: ``.add(block, start)`` for each database block (rows start..), then ``.result()``
    the (len(queries), k) int64 neighbour rows, best first. ``exclude[i]``: the row never returned for query i
    (its own; -1 for none)."""
    on_cpu = not (isinstance(queries, torch.Tensor) and queries.is_cuda)
    exclude = np.full(len(queries), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    impl = resolve_provider(provider, on_cpu)
    return FaissKnn(queries, exclude, k) if impl == "faiss" else TopkKnn(queries, exclude, k, impl)


def knn(q, g, k: int, provider: str = "auto", exclude=None, block_rows: int | None = None) -> np.ndarray:
    """(len(q), k) int64 rows of ``g`` with the largest ``q_i . g_j`` (``exclude[i]`` left out), best first;
    ``g`` in blocks of ``block_rows`` rows (all at once when None)."""
    stream = knn_stream(q, k, exclude, provider)
    step = block_rows or max(len(g), 1)
    for s0 in range(0, len(g), step):
        stream.add(g[s0:s0 + step], s0)
    return stream.result()


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
