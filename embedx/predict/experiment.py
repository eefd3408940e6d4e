"""A row of a ``predict`` history from a drift comparison (``embedx drift ... --history H.csv``).

A fine-tuning experiment is: the zero-shot store of a task (BEFORE), the same samples re-embedded with the tuned
model (AFTER), and optionally other tasks before/after (forgetting). Its row in the history is

  task, model, method      BEFORE's dataset (or --task), BEFORE's model[:pretrained], the run's method
  zs_acc, ft_acc           zero-shot top-1 of BEFORE and of AFTER
  ood_delta                mean zero-shot top-1 change on the other tasks (blank without --others)
  store                    the zero-shot store the predictors describe (BEFORE, or --history-store: the
                           papers measure the training split and score accuracy on the test split), recorded
                           relative to the CSV's folder (as ``embedx.predict.history`` reads it; URLs as given),
                           so a history moved with its stores still reads
  <predictors>             the measures and transfer scores of that store (``embedx.predict`` defaults)

so ``embedx predict --history H.csv`` can fit gain and forgetting against every predictor without the stores.
:func:`compare_and_record` runs the whole workflow: checks, ``embedx.drift_analysis.compare``, the row appended.
"""
from __future__ import annotations

import os

from embedx.drift_analysis import Drift, compare
from embedx.errors import EmbedxError
from embedx.predict.history import append_row
from embedx.predict.predictors import DEFAULT_STORE_PREDICTORS, StoreCache
from embedx.provenance import relative_to
from embedx.fs.locations import location
from embedx.store import Store


def identify(before: Store, after: Store, task: str | None, method: str | None) -> dict:
    """task / model / method of the experiment, checked before any work (one-line errors)."""
    if before.paired:
        raise EmbedxError("history needs class stores (zero-shot accuracy); these stores are paired", param="history")
    ckpt = after.meta.get("checkpoint") or {}
    method = method or ckpt.get("method")
    if not method:
        raise EmbedxError(f"{after.path} records no finetune run (it was not embedded from a finetune checkpoint); "
                          "give the method as method=NAME", param="method")
    model = before.meta.get("model") or "unknown"
    pre = before.meta.get("pretrained")
    if pre and str(pre).lower() != "none":
        model = f"{model}:{os.path.basename(str(pre))}"
    return {"task": task or before.meta.get("dataset") or os.path.basename(before.path.rstrip("/")),
            "model": model, "method": method}


def row(ident: dict, summary: dict, history_store: str, *, predictors=None, measure_opts=None,
        logit_scale: float | None = None, executor=None) -> dict:
    """The history row of a drift ``summary`` (see the module docstring); predictors come from
    ``history_store``, reusing BEFORE's measures when it is the same store (``executor``: where they run)."""
    from embedx.measures import compute

    opts = {k: v for k, v in (measure_opts or {}).items() if k in ("silhouette_mode", "sample_size", "seed")}
    acc = []
    for side in ("before", "after"):
        v = summary[side].get("zeroshot_top1")
        if v is None:
            v = compute(Store(summary[side]["path"]), ["zeroshot_top1"], executor=executor, **opts)["zeroshot_top1"]
        acc.append(v)
    forgot = summary.get("forgetting")
    out = {**ident, "zs_acc": acc[0], "ft_acc": acc[1], "ood_delta": forgot["mean_delta"] if forgot else None,
           "store": location(history_store).absolute()}
    want = list(predictors or DEFAULT_STORE_PREDICTORS)
    known = {}
    if os.path.abspath(history_store) == os.path.abspath(summary["before"]["path"]):
        known = {m: summary["before"][m] for m in want if m in summary["before"]}
    rest = [m for m in want if m not in known]
    if rest:
        cache = StoreCache(silhouette_mode=opts.get("silhouette_mode", "exact"),
                           sample_size=opts.get("sample_size", 2000), seed=opts.get("seed", 0),
                           logit_scale=logit_scale, device="auto", explicit=predictors is not None,
                           executor=executor)
        known.update(cache.get(history_store, rest))
    out.update({m: known[m] for m in want})
    return out


def compare_and_record(before: str, after: str, others=(), *, history: str, task: str | None = None,
                       method: str | None = None, history_store: str | None = None,
                       logit_scale: float | None = None, executor=None, **compare_opts) -> tuple[Drift, dict]:
    """``embedx.drift_analysis.compare(before, after, others, **compare_opts)`` and its experiment's row appended to the
    history CSV ``history`` (created if missing); every input is checked before any work. -> (drift, row)."""
    ident = identify(Store(before), Store(after), task, method)
    Store(history_store or before)  # a wrong or unfinished store fails before the work
    res = compare(before, after, others, executor=executor, **compare_opts)
    opts = {k: compare_opts[k] for k in ("silhouette_mode", "sample_size", "seed") if k in compare_opts}
    r = row(ident, res.summary, history_store or before, logit_scale=logit_scale, measure_opts=opts,
            executor=executor)
    r["store"] = relative_to(r["store"], history)  # as the history reads it back: from the CSV's folder
    append_row(history, r)
    return res, r
