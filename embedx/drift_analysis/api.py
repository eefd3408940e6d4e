"""``embedx.drift(before, after, ...)``: the drift API function (``embedx.drift`` is callable as it)."""
from __future__ import annotations

from embedx.constraints import (DISTRIBUTED, SEED, Bool, Int, Names, OneOf, Optional, OutputFile, Pairs, StorePath,
                                constraints)


@constraints(before=StorePath(), after=StorePath(), others=Pairs(), metrics=Optional(Names("measure", "metric")),
             silhouette=OneOf("exact", "sample"), sample_size=Int(min=2), seed=SEED, knn=OneOf("blocked", "faiss"),
             knn_k=Int(min=1), knn_sample=Optional(Int(min=1)), plot_sample=Int(min=0),
             report=Optional(OutputFile("report")), force=Bool(), **DISTRIBUTED)
def drift(before, after, *, others=(), metrics=None, silhouette: str = "exact", sample_size: int = 2000,
          seed: int = 0, knn: str = "blocked", knn_k: int = 10, knn_sample: int | None = 20000,
          plot_sample: int = 2000, report=None, force: bool = False, executor=None, cluster=None,
          client=None) -> dict:
    """What moved between two stores of the same samples (before / after fine-tuning) -> the drift summary dict:
    every measure before/after/delta, the drift statistics of ``embedx.registry.names("drift")`` (displacement,
    CKA, kNN overlap), per class, and forgetting on ``others`` ("[NAME=]BEFORE:AFTER" strings or (name,
    before, after) tuples). ``report``: also write the HTML report to this path. ``cluster``: "local[:N]" or
    "tcp://HOST:PORT", or ``client``: a ``distributed.Client`` (embedx[dist]): the measures and the drift pass's
    sums run as Dask tasks, the same bits as the in-process result (``executor``: an embedx executor instead).
    Stores that hold different samples (ids, dataset spec or split) are refused unless ``force``; a BEFORE
    embedded from a finetune checkpoint with an AFTER that is not is compared with a warning (looks swapped)."""
    from embedx.engine.cluster import connect
    from embedx.drift_analysis import report as render
    from embedx.drift_analysis.comparison import compare
    with connect(cluster, client) as dask_executor:
        d = compare(str(before), str(after), others, metrics=metrics, silhouette_mode=silhouette,
                    sample_size=sample_size, seed=seed, knn=knn, knn_k=knn_k, knn_sample=knn_sample,
                    plot_sample=plot_sample, executor=dask_executor or executor, force=force)
    if report is not None:
        render.write(d, str(report))
    return d.summary
