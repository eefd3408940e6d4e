"""Compute kernels (``embedx.kernels``): tensors in, tensors out; nothing here knows about stores or files.

Each op lives in one module of ``embedx.kernels.ops`` with its float64 reference, its torch path (CPU/GPU) and
its Triton kernel where it has one; :func:`cluster_distance_sums`, :func:`topk` and :func:`rank_count` are the
dispatch points that pick an implementation by device: Triton on CUDA when it is installed, torch otherwise
(:func:`cluster_distance_pair_sums`, the symmetric block-pair op, is torch on every device). ``EMBEDX_KERNEL=torch|triton``
forces one (Triton on CPU needs ``TRITON_INTERPRET=1`` set before triton is imported). :func:`knn` picks a
provider (FAISS on the CPU, else :func:`topk`'s backend); :func:`zeroshot_hits` runs torch on every device.

Names are re-exported lazily (PEP 562) from ``dispatch``: importing one op (``ops.content_hash`` for the store
checksums) imports neither torch nor the other ops. This folder loads only as ``embedx.kernels``: imported as a
top-level ``kernels`` (the repository root on ``sys.path``) it hands over to that distribution (``embedx._noshadow``).
"""
from embedx._noshadow import only_as

only_as(__name__, "embedx.kernels", __file__)
__all__ = ["backend_for", "cluster_distance_sums", "cluster_distance_pair_sums", "cluster_distance_pair_sums_reference",
           "cluster_distance_pair_sums_torch", "topk", "rank_count", "zeroshot_hits", "knn", "knn_stream",
           "knn_reference", "KNN_PROVIDERS", "cluster_distance_sums_reference", "cluster_distance_sums_torch",
           "cluster_distance_sums_triton", "cluster_distance_sums_sym_triton", "split_precision", "sym_tile_count", "triton", "rank_count_reference", "rank_count_torch", "rank_count_triton",
           "NUMBA_MIN_ELEMENTS", "stream_stats", "stream_stats_reference", "TRITON_MAX_K", "topk_reference",
           "topk_torch", "topk_triton", "ZS_ELEMENTS", "ZS_ROWS", "zeroshot_hits_reference", "zeroshot_hits_torch",
           "zs_rows"]


def __getattr__(name):  # PEP 562; kernels import nothing of embedx outside themselves (so not embedx._lazy)
    if name in __all__:
        from embedx.kernels import dispatch

        return getattr(dispatch, name)
    raise AttributeError(f"module 'embedx.kernels' has no attribute {name!r}")
