"""``embedx drift``: what moved between two embeddings of the same samples (parse, call, render)."""
from __future__ import annotations

import math
import os

import click

from embedx.cli.common import echo, emit_json, jsonable, refuse_unused, term
from embedx.cli.options import (NamesOption, cluster_option, json_out_options, silhouette_options,
                                verbosity_options)


def _num(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _t(v) -> str:
    """A data string (path, class, task, method name) for one table cell: control characters escaped."""
    return term(v, one_line=True)


def _render(s: dict, report: str | None) -> None:
    b, a, d = s["before"], s["after"], s["delta"]
    echo(f"{_t(b['path'])} -> {_t(a['path'])}: {s['n_images']} images, d={s['dim']}\n")
    w = max([len(m) for m in d] + [7])
    echo(f"{'measure':<{w}}  {'before':>9}  {'after':>9}  {'delta':>9}")
    for m, v in d.items():
        echo(f"{m:<{w}}  {_num(b[m]):>9}  {_num(a[m]):>9}  {_num(v, True):>9}")
    h = s.get("headline") or {}
    run = h.get("run")
    if run:
        tp = run.get("trainable_params")
        fam = f" ({_t(run['family'])})" if run.get("family") else ""
        from embedx.drift_analysis.report import plain, shown_path

        opts = ", ".join(f"{k} {plain(v)}" for k, v in (run.get("options") or {}).items())
        echo(f"\nrun: {_t(run.get('method'))}{f' ({_t(opts)})' if opts else ''} on {_t(run.get('model'))}{fam}, "
             f"{'-' if tp is None else f'{tp:,}'} trainable, trained on {_t(run.get('data') or '-')} "
             f"({_t(shown_path(run.get('path'), os.getcwd()))})")
        if run.get("rule"):
            echo(f"rule ({_t(run.get('towers') or 'both')} towers): {_t(run['rule'])}")
    echo(f"task gain ({_t(h.get('task'))}): {_num(h.get('zeroshot_top1_before'))} -> "
         f"{_num(h.get('zeroshot_top1_after'))}  {_num(h.get('task_gain'), True)}")
    if h.get("n_other_tasks"):
        echo(f"change on other tasks (mean of {h['n_other_tasks']}; below 0: forgotten): "
             f"{_num(h.get('forgetting'), True)}")
    t = s.get("text_drift") or {}
    echo(f"\n{'':31}{'images':>9}  {t.get('rows', 'texts'):>13}")
    for label, key in (("displacement mean (W1 bound)", "displacement_mean"), ("displacement p50", "displacement_p50"),
                       ("displacement p95", "displacement_p95"), ("linear CKA", "cka_linear")):
        echo(f"{label:<31}{_num(s[key]):>9}  {_num(t.get(key)):>13}")
    echo(f"{'kNN overlap':<31}{_num(s['knn_overlap']):>9}  {'':>13}   (k={s['knn_k']}, "
         f"{s['knn_sample_size']} queries)")
    pc = s.get("per_class")
    if pc:
        rows = sorted((v["delta"], n, v) for n, v in pc.items() if v["delta"] is not None)
        shown = rows if len(rows) <= 10 else rows[:5] + rows[-5:]
        echo(f"\nper-class zero-shot top-1 ({'all' if shown is rows else 'largest drops and gains'}):")
        for dl, n, v in shown:
            echo(f"  {_t(n)[:30]:<30} {_num(v['acc_before'])} -> {_num(v['acc_after'])}  {_num(dl, True)}"
                 f"   prompt moved {_num(v.get('prompt_displacement'))}")
    f = s.get("forgetting")
    if f:
        echo("\nother tasks, zero-shot top-1 after - before (below 0: forgotten):")
        for n, t in f["tasks"].items():
            echo(f"  {_t(n)[:30]:<30} {_num(t['zeroshot_top1_before'])} -> {_num(t['zeroshot_top1_after'])}  "
                 f"{_num(t['delta'], True)}")
        echo(f"  {'mean':<30} {'':16}  {_num(f['mean_delta'], True)}")
    for f in s.get("forced") or []:
        echo(f"\nforced: the stores hold different samples ({_t(f)})")
    if report:
        echo(f"\nreport: {_t(report)}")
    if s.get("history_row"):
        r = s["history_row"]
        echo(f"\nhistory: appended {_t(r['task'])} / {_t(r['method'])} (zs_acc {_num(r['zs_acc'])}, ft_acc "
             f"{_num(r['ft_acc'])}, ood_delta {_num(r['ood_delta'], True)})")
    echo(f"\ntime: {sum(s['timings_s'].values()):.2f} s")


@click.command()
@click.argument("before")
@click.argument("after")
@click.option("--others", multiple=True, metavar="[NAME=]BEFORE:AFTER",
              help="Stores of another task before/after fine-tuning (repeat): forgetting = zero-shot top-1 change. "
                   "NAME defaults to BEFORE's basename.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML report (plots embedded) to FILE.")
@json_out_options()
@click.option("--metrics", cls=NamesOption, family="measure", noun="measure", default=None,
              help="Comma-separated subset of measures (default: all the stores support).")
@silhouette_options("Euclidean silhouette: auto = exact when projected under a minute on this machine (for BEFORE; "
                    "AFTER takes the same method), else sampled; exact; or sample = estimated from --sample-size "
                    "points.", "Seed for every sample (silhouette, kNN queries, plots).", default="auto")
@click.option("--knn", type=click.Choice(["blocked", "faiss"]), default="blocked", show_default=True,
              help="Retrieval recall: blocked = exact rank counts streamed (bounded memory); faiss = FAISS "
                   "top-k, all rows in memory.")
@click.option("--knn-k", default=10, show_default=True, help="Neighbours for the kNN overlap.")
@click.option("--knn-sample", default=20000, show_default=True,
              help="Query images for the kNN overlap: all when N is at most this, else a uniform sample.")
@click.option("--plot-sample", default=2000, show_default=True, help="Images in the 2-D projection plot.")
@click.option("--history", type=click.Path(dir_okay=False), default=None,
              help="Append this experiment as a row of a `embedx predict` history CSV (created if missing): task, "
                   "model, method, zs_acc, ft_acc, ood_delta (with --others), store and its predictors.")
@click.option("--task", default=None, help="--history: the task's name [default: BEFORE's dataset].")
@click.option("--method", default=None,
              help="--history: the fine-tuning method [default: the run recorded in AFTER by embed --checkpoint].")
@click.option("--history-store", default=None,
              help="--history: the zero-shot store the predictors are measured on [default: BEFORE]; the papers "
                   "measure the training split and score accuracy on the test split.")
@click.option("--logit-scale", default=None, type=float,
              help="--history: zero-shot softmax scale for the LEEP/NCE predictors [default: the model's own, "
                   "recorded in the store by `embedx embed`; else 100].")
@click.option("--force", is_flag=True,
              help="Compare stores that hold different samples (other ids, dataset spec or split, as their "
                   "metadata records it) row by row anyway; refused without it.")
@cluster_option("the measures and the drift pass's sums (with --history: the predictors too)")
@verbosity_options
@click.pass_context
def drift(ctx, before, after, others, report, as_json, out, metrics, silhouette_mode, sample_size, seed, knn, knn_k,
          knn_sample, plot_sample, history, task, method, history_store, logit_scale, force, cluster):
    """Drift between two stores of the same samples (e.g. embedded before and after fine-tuning).

    \b
    Reports every measure before/after and its change, the per-image displacement |x_after - x_before|
    (mean, p50, p95; the mean bounds the 1-Wasserstein distance), linear CKA, k-NN neighbourhood overlap,
    per-class zero-shot accuracy change (class stores) and forgetting on --others tasks.
    Example:
      embedx drift pets-base.zarr pets-tuned.zarr --others cars=cars-base.zarr:cars-tuned.zarr --report drift.html
      embedx drift pets-test.zarr pets-lora-test.zarr --others cars=... --history runs.csv --history-store pets-train.zarr
    """
    from embedx.engine.cluster import connect
    from embedx.drift_analysis import compare, report as rep
    from embedx.outputs import check_output_file

    # every output path is checked before any work (a finished comparison must not fail on a missing folder)
    check_output_file(report, "--report", param="report")
    check_output_file(out, "--out", param="out")
    check_output_file(history, "--history", param="history")
    if silhouette_mode == "exact":
        refuse_unused(ctx, ["sample_size"], "with --silhouette sample or auto")
    if not history:
        refuse_unused(ctx, ["task", "method", "history_store", "logit_scale"], "with --history")
    if not report:
        refuse_unused(ctx, ["plot_sample"], "with --report")
    names = metrics  # a list of registered names (NamesOption), or None
    opts = dict(metrics=names, silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed, knn=knn,
                knn_k=knn_k, knn_sample=knn_sample, plot_sample=plot_sample, force=force)
    with connect(cluster) as executor:
        if history:
            from embedx.predict.experiment import compare_and_record

            res, row = compare_and_record(before, after, others, history=history, task=task, method=method,
                                          history_store=history_store, logit_scale=logit_scale, executor=executor,
                                          **opts)
        else:
            res, row = compare(before, after, others, executor=executor, **opts), None
    summary = jsonable(res.summary)
    if row is not None:
        summary["history_row"] = jsonable(row)
    if out:
        emit_json(summary, out, False)  # the JSON first: a report that fails leaves it written
    if report:
        rep.write(res, report)  # atomic: a failure leaves the old report intact
    if as_json:
        emit_json(summary, None, True)
        return
    _render(summary, report)
