"""``embedx study``: run a model x task x method x seed study from a STUDY.toml (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo, emit_json, term
from embedx.cli.options import cluster_option, json_option, verbosity_options


@click.command()
@click.argument("spec_path", metavar="STUDY.toml", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="The study folder: cells/ (one folder and done.json marker per finished cell), results.parquet, "
                   "results.csv, tables/*.csv, study.html. Rerunning into it resumes.")
@click.option("--overwrite", is_flag=True,
              help="Start over when STUDY.toml changed since the folder was made (else refused).")
@cluster_option("one cell per Dask task (zero-shot cells, then tuned cells; GPU workers where dask-cuda sees GPUs; "
                "the workers must see --out and the data)")
@json_option("Print the JSON summary (paths of the results, tables and report; cells run and skipped).")
@verbosity_options
@click.pass_context
def study(ctx, spec_path, out, overwrite, cluster, as_json):
    """Run the study declared in STUDY.toml: models x tasks x methods x seeds.

    \b
    Per model x task (zero-shot cell): embed the train and test splits, every measure and transfer score of
    the train store, zero-shot top-1 on test. Per model x task x method x seed (tuned cell): fine-tune on
    train, re-embed the test split and every other task's with the tuned model; gain = top-1 after - before,
    norm_gain = gain / (1 - before), forgetting = mean top-1 change on the other tasks.
    Every finished cell writes a marker: a rerun (after a crash or Ctrl-C) continues where it stopped; a
    changed STUDY.toml is refused unless --overwrite. Progress: cells done / total, seconds per cell.
    Example STUDY.toml (keys: embedx.studies.spec):
      [study]
      seeds = [0]
      [[models]]
      name = "ViT-B-32"
      pretrained = "openai"
      [[tasks]]
      name = "pets"
      train = "folder:pets/train"
      test = "folder:pets/test"
      [[methods]]
      name = "lora"
      epochs = 1
    Example: embedx study STUDY.toml --out study/ [--cluster local:2]
    """
    from embedx.studies.run import study as run

    quiet = bool((ctx.obj or {}).get("quiet"))
    res = run(spec_path, out, overwrite=overwrite, cluster=cluster, progress=not quiet).info
    emit_json(res, None, as_json)
    if not as_json:
        echo(f"{res['cells']} cells ({res['ran']} run now, {res['skipped']} already finished); "
             f"{res['rows']} result rows")
        echo(f"results: {term(res['results'], True)} (+ .csv)")
        for name, p in res["tables"].items():
            echo(f"table {name}: {term(p, True)}")
        echo(f"report: {term(res['report'], True)}")
