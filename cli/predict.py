"""``embedx predict``: fit fine-tuning outcomes on zero-shot measures and predict new tasks (parse, call, render)."""
from __future__ import annotations

import math
import os

import click

from embedx.cli.common import echo, emit_json, jsonable, term
from embedx.cli.options import cluster_option, device_option, json_out_options, silhouette_options, verbosity_options


def _n(v, fmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _p(v) -> str:
    if v is None:
        return "-"
    return "<1e-300" if v == 0 else (f"{v:.4f}" if v >= 1e-3 else f"{v:.1e}")


def _render(res: dict, where: str) -> None:
    wh = f" where {where}" if where else ""
    echo(f"{term(res['history'], True)}: {res['n_rows']} rows{wh}; outcomes: {', '.join(res['outcomes']) or 'none'}")
    c = res.get("caution")
    if c:
        echo(f"caution: {c['n_runs']} runs, below {c['min_runs']}: R² up to {c['chance_r2']:.2f} arises by chance "
             "one time in 20 (see the warning)")
    for o in res["outcomes"]:
        ranked = res["ranking"][o]
        failed = [m for m in res["predictors"] if res["fits"][m][o]["error"]]
        w = max([len(m) for m in res["predictors"]] + [9])
        echo(f"\n{o} ~ predictor, by R²:")
        echo(f"  {'predictor':<{w}}  {'n':>3}  {'slope':>10}  {'intercept':>10}  {'R²':>6}  {'p':>8}  "
             f"{'Kendall τ':>9}  {'LOO RMSE':>9}")
        for m in ranked:
            f = res["fits"][m][o]
            echo(f"  {m:<{w}}  {f['n']:>3}  {_n(f['slope'], '.4g'):>10}  {_n(f['intercept'], '.4g'):>10}  "
                 f"{_n(f['r2'], '.3f'):>6}  {_p(f['p_value']):>8}  {_n(f['kendall_tau'], '+.3f'):>9}  "
                 f"{_n(f['loo_rmse'], '.4f'):>9}")
        for m in failed:
            f = res["fits"][m][o]
            echo(f"  {m:<{w}}  {f['n']:>3}  no fit: {f['error']}")
    for t, e in res["targets"].items():
        echo(f"\ntarget {term(t, True)}:")
        for o in res["outcomes"]:
            order = [m for m in res["ranking"][o] if m in e["predictions"]]
            order += [m for m in e["predictions"] if m not in order]
            echo(f"  {o} (95% prediction interval), best predictor first:")
            w = max([len(m) for m in order] + [9])
            for m in order:
                p = e["predictions"][m][o]
                x = e["measures"].get(m)
                if p is None:
                    why = "undefined on this store" if x is None else "no fit"
                    echo(f"    {m:<{w}}  -  ({why})")
                    continue
                ex = "  (extrapolated)" if p["extrapolated"] else ""
                if p.get("clipped"):
                    lo, hi = p["range"]
                    ex += f"  (clipped to the possible range [{_n(lo, '+.4f')}, {_n(hi, '+.4f')}])"
                r2 = res["fits"][m][o]["r2"]
                echo(f"    {m:<{w}}  {p['value']:+.4f}  [{p['lo']:+.4f}, {p['hi']:+.4f}]   "
                     f"{m} = {_n(x, '.4g')}, R² {r2:.3f}{ex}")
        if e.get("not_computable"):
            echo(f"  not computed from a store: {', '.join(e['not_computable'])}")


HELP = """Fit fine-tuning outcomes on zero-shot measures of tasks you have fine-tuned, and predict them for new
tasks (--target STORE).

\b
The history CSV has one row per fine-tuning run:
  task,model,method,zs_acc,ft_acc,ood_delta,iimm,silhouette_euclidean
  cars,ViT-B-32,lora,0.59,0.83,-0.041,0.31,0.52
  dtd,ViT-B-32,lora,0.44,0.71,-0.020,0.27,0.61
  eurosat,ViT-B-32,lora,0.45,0.98,-0.062,0.36,0.48

\b
  zs_acc, ft_acc   zero-shot and fine-tuned accuracy on the task, fractions in [0, 1]; zs_acc < 1
  ood_delta        mean accuracy change on other tasks after fine-tuning (blank: unknown)
  store            optional: the task's zero-shot embedding store (relative to the CSV's folder);
                   predictors missing from the CSV are computed from it (measures, transfer scores)
  other columns    numeric predictors (blank = missing); rows are counted from 1 after the header

\b
Outcomes:
  gain        = (ft_acc - zs_acc) / (1 - zs_acc)   gain normalized by the zero-shot error (paper B)
  forgetting  = ood_delta, sign as given: negative = accuracy lost on other tasks

\b
For every predictor and outcome: OLS slope, intercept, R², two-sided p of the slope, Kendall τ (tau-b)
and leave-one-out prediction error; targets get each fit's prediction with a 95% prediction interval,
clipped to the range the outcome can take (gain in [-zs/(1-zs), 1], zs the target's own zero-shot top-1;
forgetting in [-1, 1]). Fewer than 10 runs give a warning: with n runs a predictor unrelated to the
outcome reaches R² >= t²/(t² + n - 2) one time in 20 (0.90 for n = 4).
Default predictors: every numeric column, plus with a store column iimm, iimm_inter, iimm_intra, acs,
gap, silhouette_euclidean, hscore, gbc, transrate, logme, sfda, leep, nce. The paper fits per model,
often per method: --where model=ViT-B-32 --where method=lora.

\b
Example:
  embedx predict --history runs.csv --where model=ViT-B-32 --target pets.zarr --plot fit.png
"""


@click.command(help=HELP)
@click.option("--history", "history_path", required=True, metavar="H.csv",
              help="History CSV of fine-tuning runs (format above).")
@click.option("--target", "targets", multiple=True, metavar="STORE",
              help="Zero-shot store of a new task to predict (repeat).")
@click.option("--measures", multiple=True,
              help="Comma-separated predictors (CSV columns and/or names computed from stores; repeat the option "
                   "to add more) [default: all].")
@click.option("--where", "where", multiple=True, metavar="COL=VALUE",
              help="Keep rows whose COL equals VALUE (repeat: AND across columns, OR within one column).")
@silhouette_options("Euclidean silhouette computed from stores: exact, or estimated from --sample-size points.",
                    "Seed for --silhouette sample.")
@click.option("--logit-scale", default=None, type=float,
              help="Scale of the zero-shot logits behind LEEP/NCE [default: each store's model's own, recorded "
                   "by `embedx embed`; else 100].")
@device_option("Where the pairwise kernels run for measures computed from stores: auto, cpu, cuda or cuda:N.")
@cluster_option("the measures and transfer scores computed from stores")
@json_out_options()
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Write a scatter plot per predictor and outcome with the fit, its 95% prediction band and the "
                   "targets.")
@verbosity_options
def predict(history_path, targets, measures, where, silhouette_mode, sample_size, seed, logit_scale, device, cluster,
            as_json, out, plot_path):
    from embedx.outputs import check_output_file
    from embedx.predict import predict as run
    from embedx.predict.history import describe_where
    from embedx.provenance import file_provenance, provenance
    from embedx.store import Store

    check_output_file(out, "JSON file", param="out")  # fail before the work, not after it
    check_output_file(plot_path, "plot", param="plot_path")
    names = list(dict.fromkeys(m.strip() for v in measures for m in v.split(",") if m.strip())) or None
    from embedx.engine.cluster import connect

    with connect(cluster) as executor:
        res = run(history_path, targets, measures=names, where=list(where), silhouette_mode=silhouette_mode,
                  sample_size=sample_size, logit_scale=logit_scale, seed=seed, device=device, executor=executor)
    inputs = {"history": file_provenance(history_path), **{f"targets/{t}": Store(t) for t in targets}}
    head = provenance("predict", inputs, options={
        "measures": names, "where": list(where), "silhouette": silhouette_mode,
        "sample_size": sample_size if silhouette_mode == "sample" else None,
        "seed": seed if silhouette_mode == "sample" else None, "logit_scale": logit_scale})
    doc = jsonable({**head, **res})
    if out:
        emit_json(doc, out, False)  # the JSON before the plot
    if plot_path:
        from embedx.predict.plot import plot

        plot(res, plot_path)
    if as_json:
        emit_json(doc, None, True)
        return
    _render(doc, describe_where(res["where"]))
    if plot_path:
        echo(f"\nplot: {os.path.abspath(plot_path)}")
