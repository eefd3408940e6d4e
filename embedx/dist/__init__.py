"""Running embedx on a Dask cluster (the optional extra ``embedx[dist]``): ``connect`` gives an executor whose
tasks read their own row ranges of a store (no embedding data through the scheduler) and whose partial sums merge
in a fixed tree order. See ``embedx.dist.cluster`` and ``embedx.dist.executor``."""
from embedx._lazy import exports

__getattr__ = exports(__name__, {
    "connect": "embedx.dist.cluster",
    "parse_cluster": "embedx.dist.cluster",
    "DaskExecutor": "embedx.dist.executor",
})
