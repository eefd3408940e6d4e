"""The dispatch points: pick an op's implementation by device (Triton on CUDA when installed, torch otherwise;
``EMBEDX_KERNEL=torch|triton`` forces one). The ops themselves are in ``embedx.kernels.ops``."""
from __future__ import annotations

import torch

from embedx.kernels.backend import backend_for  # noqa: F401
from embedx.kernels.ops.cluster_distance import (  # noqa: F401
    cluster_distance_pair_sums_reference,
    cluster_distance_pair_sums_torch,
    cluster_distance_sums_reference,
    cluster_distance_sums_torch,
    cluster_distance_sums_sym_triton,
    cluster_distance_sums_triton,
    split_precision,
    sym_tile_count,
    triton,
)
from embedx.kernels.ops.knn import PROVIDERS as KNN_PROVIDERS, knn, knn_reference, knn_stream  # noqa: F401
from embedx.kernels.ops.rank_count import rank_count_reference, rank_count_torch, rank_count_triton  # noqa: F401
from embedx.kernels.ops.stream_stats import NUMBA_MIN_ELEMENTS, stream_stats, stream_stats_reference  # noqa: F401
from embedx.kernels.ops.topk import TRITON_MAX_K, topk_reference, topk_torch, topk_triton  # noqa: F401
from embedx.kernels.ops.zeroshot import ZS_ELEMENTS, ZS_ROWS, zeroshot_hits_reference, zeroshot_hits_torch, zs_rows  # noqa: F401,E501


def cluster_distance_sums(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, n_clusters: int,
                          row_ids: torch.Tensor | None = None, col_offset: int = 0, x_scale=None,
                          y_scale=None) -> torch.Tensor:
    """``S[p, k] = sum_{q: labels[q] = k} ||x_p - y_q||`` as float64, (len(x), n_clusters). Row p is the point
    ``row_ids[p]`` of the columns (column j is point ``col_offset + j``); its self-pair counts 0. With scales,
    the points are ``x_scale[p] * x_p`` and ``y_scale[q] * y_q``."""
    impl = cluster_distance_sums_triton if backend_for(x.device) == "triton" else cluster_distance_sums_torch
    return impl(x, y, labels, n_clusters, row_ids, col_offset, x_scale=x_scale, y_scale=y_scale)


def cluster_distance_pair_sums(x: torch.Tensor, y: torch.Tensor | None, x_labels: torch.Tensor,
                               y_labels: torch.Tensor | None, n_clusters: int):
    """Both one-sided per-cluster distance sums of a block pair of one point set: ``(S_xy, S_yx)`` with
    ``S_xy[p, k] = sum_{q: y_labels[q] = k} ||x_p - y_q||`` and ``S_yx[q, k] = sum_{p: x_labels[p] = k}
    ||x_p - y_q||`` (float64); ``y`` None: the diagonal block, ``(S_xx, None)`` with self-pairs 0.

    torch (CPU): one distance tile serves both sides (every distance computed once). Triton (CUDA): the
    diagonal block through the symmetric kernel (tiles I <= J, both reductions by float64 atomics), an
    off-diagonal pair as the fused one-sided kernel twice."""
    if backend_for(x.device) != "triton":
        return cluster_distance_pair_sums_torch(x, y, x_labels, y_labels, n_clusters)
    if y is None:  # the diagonal block: the symmetric kernel (each tile I <= J once)
        return cluster_distance_sums_sym_triton(x, x_labels, n_clusters), None
    return (cluster_distance_sums_triton(x, y, y_labels, n_clusters),
            cluster_distance_sums_triton(y, x, x_labels, n_clusters))


def topk(q: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k most similar gallery rows per query (best first, ties to the lower index)."""
    if backend_for(q.device) == "triton" and min(k, len(g)) <= TRITON_MAX_K:
        return topk_triton(q, g, k)
    return topk_torch(q, g, k)


def rank_count(a: torch.Tensor, b: torch.Tensor, a_thr, b_thr, b_pos, row_offset: int = 0,
               row_counts: torch.Tensor | None = None, col_counts: torch.Tensor | None = None, a_scale=None,
               b_scale=None, ties=None):
    """int64 ``row_counts[i] = #{j: b_pos[j] != row_offset + i, a_i.b_j > a_thr[i]}`` and ``col_counts[j] =
    #{i: b_pos[j] != row_offset + i, a_i.b_j > b_thr[j]}``, added into the given tensors (zeros when None).
    With scales, the rows are ``a_scale[i] * a_i`` and ``b_scale[j] * b_j``; ``ties`` takes out the candidates
    tied exactly with the best positive (see ``kernels.rank_count``)."""
    impl = rank_count_triton if backend_for(a.device) == "triton" else rank_count_torch
    return impl(a, b, a_thr, b_thr, b_pos, row_offset, row_counts, col_counts, a_scale=a_scale, b_scale=b_scale,
                ties=ties)


def zeroshot_hits(x: torch.Tensor, y: torch.Tensor, texts: torch.Tensor, top1: torch.Tensor, top5: torch.Tensor,
                  hit: torch.Tensor, step: int | None = None, groups=()) -> None:
    """Add per class the rows whose true class ranks first (``top1``) or in the first five (``top5``); a tie among
    identical texts (``groups``) goes to the lowest index (see ``kernels.zeroshot``). Torch on every device."""
    zeroshot_hits_torch(x, y, texts, top1, top5, hit, step=step, groups=groups)
