"""``embedx transfer``: transferability scores of a class store (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import LazyHelp, echo, emit_json, jsonable, progress_enabled, score_lines
from embedx.cli.options import NamesOption, cluster_option, json_out_options, store_argument, verbosity_options


def _help() -> str:
    return f"""Transferability scores of a class store's image embeddings and labels, streamed from the store.

\b
Rows are L2-normalized, computed on in float64; rows labelled -1 are left out. X: features,
mu_c: class means, theta(x) = softmax(logit_scale x.T) the zero-shot classifier over the class prompts.
{score_lines("transfer")}
Higher is better for every score. The planner reads the fewest passes the asked scores need (sfda: 3, leep: 2,
the others 1, shared).

\b
Example:
  embedx transfer pets.zarr --scores hscore,logme,leep --json
"""

HIGHER = "higher = the features separate the classes more: expected to transfer better (every score)"


@click.command(cls=LazyHelp, help_factory=_help,
               short_help="Transferability scores of a class store (hscore ... nce).")
@store_argument
@click.option("--scores", cls=NamesOption, family="transfer", noun="transfer score", default=None,
              help="Comma-separated subset of the scores above [default: all but gbc_diagonal].")
@click.option("--logit-scale", default=None, type=float,
              help="Zero-shot logit scale for leep/nce [default: the model's own, recorded in the store by "
                   "`embedx embed`; else 100, CLIP's trained value].")
@cluster_option("the passes over the rows")
@json_out_options("Print the JSON: {score: value} (undefined -> null) under the provenance header (schema "
                  "embedx.transfer/1: store, model, dataset, embedx version, options).",
                  "Also write that JSON to FILE.")
@verbosity_options
@click.pass_context
def transfer(ctx, store, scores, logit_scale, cluster, as_json, out):
    from embedx.engine.cluster import connect
    from embedx.outputs import check_output_file
    from embedx.provenance import provenance
    from embedx.store import Store
    from embedx.transferability import compute
    from embedx.transferability.engine import logit_scale_of

    check_output_file(out, "JSON file", param="out")  # fail before the work, not after it
    st = Store(store)
    progress = not as_json and progress_enabled(ctx)
    with connect(cluster) as executor:
        res = compute(st, scores, logit_scale=logit_scale, progress=progress, executor=executor)
    values = jsonable(dict(res))
    head = provenance("transfer", {"store": st}, options={
        "scores": list(values), "logit_scale": logit_scale if logit_scale is not None else logit_scale_of(st)})
    emit_json({**head, **values}, out, as_json)
    if as_json:
        return
    secs = res.timings
    w = max(len(k) for k in values)
    echo(f"{'score':<{w}}  {'value':>14}  {'seconds':>8}")
    for k, v in values.items():
        val = f"{v:14.6g}" if v is not None else f"{'undefined':>14}"
        echo(f"{k:<{w}}  {val}  {secs.get(k, 0.0):8.2f}")
    echo(f"\n{HIGHER}")
    echo(f"{sum(secs.values()):.2f} s in all ({secs.get('shared', 0.0):.2f} s reading and shared sums)")
