"""``embedx.drift(before, after, ...)``: the drift API function (``embedx.drift`` is callable as it)."""
from __future__ import annotations

from embedx.constraints import (DISTRIBUTED, SEED, Bool, Int, Names, OneOf, Optional, OutputFile, Pairs, StorePath,
                                constraints)


@constraints(before=StorePath(), after=StorePath(), others=Pairs(), metrics=Optional(Names("measure", "metric")),
             silhouette=OneOf("auto", "exact", "sample"), sample_size=Int(min=2), seed=SEED,
             knn=OneOf("blocked", "faiss"),
             knn_k=Int(min=1), knn_sample=Optional(Int(min=1)), plot_sample=Int(min=0),
             report=Optional(OutputFile("report")), force=Bool(), **DISTRIBUTED)
def drift(before, after, *, others=(), metrics=None, silhouette: str = "auto", sample_size: int = 2000,
          seed: int = 0, knn: str = "blocked", knn_k: int = 10, knn_sample: int | None = 20000,
          plot_sample: int = 2000, report=None, force: bool = False, executor=None, cluster=None,
          client=None):
    """What moved between two stores of the same samples (before / after fine-tuning) -> ``embedx.Result``: a
    mapping of the drift statistics of ``embedx.registry.names("drift")`` (displacement, CKA, kNN overlap), each
    measure's change after - before as ``delta_<measure>``, and ``forgetting_mean_delta`` with ``others``;
    ``.info`` holds every measure before/after, per class, the text side and the forgetting per task on
    ``others`` ("[NAME=]BEFORE:AFTER" strings or (name, before, after) tuples), ``.timings`` the seconds per
    step; ``to_dict()`` is the drift summary ``embedx drift --json`` writes. ``report``: also write the HTML
    report to this path. ``cluster``: "local[:N]" or "tcp://HOST:PORT", or ``client``: a ``distributed.Client``
    (embedx[dist]): the measures and the drift pass's sums run as Dask tasks, the same bits as the in-process
    result (``executor``: an embedx executor instead). Stores that hold different samples (ids, dataset spec or
    split) are refused unless ``force``; a BEFORE embedded from a finetune checkpoint with an AFTER that is not is
    compared with a warning (looks swapped)."""
    from embedx.engine.cluster import connect
    from embedx.drift_analysis import report as render
    from embedx.drift_analysis.comparison import compare

    with connect(cluster, client) as dask_executor:
        d = compare(str(before), str(after), others, metrics=metrics, silhouette_mode=silhouette,
                    sample_size=sample_size, seed=seed, knn=knn, knn_k=knn_k, knn_sample=knn_sample,
                    plot_sample=plot_sample, executor=dask_executor or executor, force=force)
    if report is not None:
        render.write(d, str(report))
    return as_result(d.summary)


def as_result(summary: dict):
    """The drift summary (``compare(...).summary``) as an ``embedx.Result`` (``drift``'s docstring)."""
    from embedx.engine import registry
    from embedx.engine.result import PROVENANCE_KEYS, TIMINGS_KEY, Result
    from embedx.drift_analysis.scores import summary_key

    stats = [summary_key(s) for s in registry.scores("drift").values()]
    values = {k: summary[k] for k in stats if k in summary}
    values.update({f"delta_{k}": v for k, v in (summary.get("delta") or {}).items()})
    if summary.get("forgetting"):
        values["forgetting_mean_delta"] = summary["forgetting"].get("mean_delta")
    info = {k: v for k, v in summary.items()
            if k not in values and k not in PROVENANCE_KEYS and k not in (TIMINGS_KEY, "delta")}
    if isinstance(summary.get("after"), dict) and "path" in summary["after"]:
        info["store"] = summary["after"]["path"]
    return Result(values, summary.get(TIMINGS_KEY), info=info, kind="drift", document=summary,
                  provenance={k: summary[k] for k in PROVENANCE_KEYS if k in summary})
