"""``embedx measure``: every measure of a store (parse, call, render)."""
from __future__ import annotations

import math
import sys

import click

from embedx.cli.common import LazyHelp, echo, emit_json, progress_enabled, refuse_unused, score_lines, term
from embedx.cli.options import NamesOption, cluster_option, device_option, json_out_options, silhouette_options, \
    store_argument, verbosity_options


UNDEFINED_SILHOUETTE = "sklearn's rule: 2 <= clusters <= points - 1"


def _head(store: str, st) -> str:
    return f"{term(store, True)}: {st.n_images} images, {st.n_texts} texts, d={st.dim}\n"


def _line(k: str, value: float, est: dict | None, w: int, store: str) -> str:
    """One measure: its value; a sampled silhouette says so, with its 95% interval (and, when auto chose it,
    the exact command and its projected time)."""
    why = UNDEFINED_SILHOUETTE if k.startswith("silhouette") else "needs 2+ classes/points"
    val = f"{value: .6f}" if math.isfinite(value) else f" undefined ({why})"
    if not est:
        return f"{k:<{w}}  {val}"
    ci = (f"   sampled: {est['sample_size']:,} of {est['population']:,} points, 95% CI {est['ci95'][0]:.4f} .. "
          f"{est['ci95'][1]:.4f}")
    auto = est.get("auto")
    if auto:
        ci += (f"\n{'':<{w}}   exact (about {_human(auto['projected_exact_s'])} here): embedx measure "
               f"{term(store, True)} --silhouette exact")
    return f"{k:<{w}}  {val}{ci}"


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _render(res: dict, per_class: bool) -> None:
    """The rest of the text report, after the measure lines (printed as they finished): per-class rows, ties,
    checksums, time."""
    if per_class:
        echo("\nper class: images, acs, zero-shot recall, silhouette")
        for name, row in res["per_class"].items():
            vals = [row["n_images"], row["acs"], row["zeroshot_recall"], row.get("silhouette_euclidean")]
            cells = ("-" if v is None else (f"{v}" if isinstance(v, int) else f"{v: .4f}") for v in vals)
            echo(f"  {term(name, True):<20} " + "  ".join(cells))
    if "ties" in res:
        echo(f"\nties: {res['ties']}")
    if "integrity" in res:
        i = res["integrity"]
        echo(f"\nchecksums: {i['chunks_verified']} of {i['chunks_recorded']} chunks read and matched")
    echo(f"\ntime: {sum(res['timings_s'].values()):.2f} s")


def _help() -> str:
    return f"""Measures of a store: acs, iimm (+ inter/intra parts), text_intra, gap, modality silhouettes
(Euclidean, cosine), zero-shot top-1/top-5/mean per-class recall, and for paired stores retrieval
recall@1/5/10 both ways. Exact: each value equals a float64 brute force of its definition (1e-5).
Only the passes the asked measures need are read; progress bars show each on a terminal. Each measure
is printed as it finishes: the streaming ones within seconds, retrieval and the Euclidean silhouette
last (--json: one document at the end). Ctrl-C prints the measures finished so far and exits 130.

The Euclidean silhouette (O(N^2 d)) is --silhouette auto by default: exact when its time, projected
from its first block on this machine, is under a minute; else an unbiased estimate from --sample-size
points (seeded by --seed) with its 95% interval, labelled "sampled" (JSON: silhouette_method and
estimates), naming the exact command: --silhouette exact always computes it exactly.

\b
{score_lines("measure", 31)}
"""


@click.command(cls=LazyHelp, help_factory=_help,
               short_help="Measures of a store: acs, iimm, gap, silhouettes, zero-shot, recall.")
@store_argument
@click.option("--metrics", cls=NamesOption, family="measure", noun="metric", default=None,
              help="Comma-separated subset of the measures above (default: every measure the store supports; "
                   "retrieval recall on paired stores).")
@silhouette_options("Euclidean silhouette: auto = exact when projected under a minute on this machine, else "
                    "sampled; exact (O(N^2 d) through the fused kernel); sample = an unbiased estimate from "
                    "--sample-size points with a 95% interval.", "Seed of the silhouette sample (auto, sample).",
                    default="auto")
@click.option("--silhouette-labels", type=click.Choice(["modality", "class"]), default="modality", show_default=True,
              help="'class' adds silhouette_class_euclidean: the images clustered by their class labels.")
@click.option("--knn", type=click.Choice(["blocked", "faiss"]), default="blocked", show_default=True,
              help="Retrieval recall: blocked = exact rank counts streamed from the store (bounded memory); "
                   "faiss = FAISS top-k with every row in memory.")
@click.option("--per-class", is_flag=True, help="Also acs, zero-shot recall and silhouette per class (the silhouette column when the "
                   "silhouette is exact).")
@device_option("Where the pairwise kernels run (Euclidean silhouette, retrieval): auto (CUDA + Triton when "
               "available), cpu, cuda or cuda:N.")
@cluster_option()
@json_out_options()
@click.option("--format", "fmt", type=click.Choice(["embedx", "clip-benchmark"]), default="embedx",
              show_default=True,
              help="Layout of the JSON (--json, --out): embedx = every measure with its provenance (schema "
                   "embedx.measure/1); clip-benchmark = LAION-AI/CLIP_benchmark's result file (zero-shot "
                   "classification acc1/acc5/mean_per_class_recall, or retrieval image_/text_retrieval_recall@k on "
                   "paired stores), computing only those measures; printed when neither --json nor --out is given.")
@verbosity_options
@click.pass_context
def measure(ctx, store, metrics, silhouette_mode, sample_size, seed, silhouette_labels, knn, per_class, device,
            cluster, as_json, out, fmt):
    from embedx.formats import clip_benchmark
    from embedx.engine.cluster import connect
    from embedx.errors import EmbedxError
    from embedx.measures import compute
    from embedx.outputs import check_output_file
    from embedx.provenance import provenance
    from embedx.store import Store

    check_output_file(out, "JSON file", param="out")  # fail before the work, not after it
    if silhouette_mode == "exact":
        refuse_unused(ctx, ["sample_size", "seed"], "with --silhouette sample or auto")
    st = Store(store)
    names = metrics
    if fmt == "clip-benchmark":
        if metrics or per_class:
            raise EmbedxError("--format clip-benchmark computes its own measures; drop --metrics/--per-class")
        names = clip_benchmark.measures_needed(st.paired)
        as_json = as_json or not out
    streamed = not as_json and fmt == "embedx"  # text: each measure's line as it finishes
    done: list[str] = []
    width = _width(st, names, silhouette_labels)

    def on_value(name: str, value: float, est) -> None:
        line = _line(name, value, est, width, store)
        done.append(line)
        if streamed:
            echo(line)

    if streamed:
        echo(_head(store, st))
    try:
        with connect(cluster) as executor:
            res = compute(st, names, silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                          knn=knn, per_class=per_class, silhouette_labels=silhouette_labels, device=device,
                          progress=progress_enabled(ctx), executor=executor, on_value=on_value)
    except KeyboardInterrupt:
        _interrupted(done, streamed)
    head = provenance("measure", {"store": st}, options={
        "metrics": list(names) if names else None, "silhouette": silhouette_mode,
        "sample_size": sample_size if silhouette_mode != "exact" else None,
        "seed": seed if silhouette_mode != "exact" else None, "silhouette_labels": silhouette_labels,
        "knn": knn})
    if fmt == "clip-benchmark":
        missing = clip_benchmark.placeholders(st.meta)
        if missing:
            flags = " ".join(f"--{k} NAME" for k in missing)
            echo(f"note: {store} records no {' or '.join(missing)}; wrote \"{clip_benchmark.UNKNOWN}\" for "
                 f"{'them' if len(missing) > 1 else 'it'} (record {'them' if len(missing) > 1 else 'it'} with "
                 f"`embedx import ... {flags}`)", err=True)
        emit_json(clip_benchmark.result(res, st, head), out, as_json)
        return
    body = res.to_dict(provenance=False)  # the head above names the options as the command took them
    for est in body.get("estimates", {}).values():
        if "auto" in est:  # auto sampled it: the command that computes it exactly
            est["auto"]["exact_command"] = f"embedx measure {store} --silhouette exact"
    emit_json({**head, **body}, out, as_json)
    if not as_json:
        _render(body, per_class)


def _width(st, names, silhouette_labels: str) -> int:
    """The measure column's width: the longest name to be printed."""
    from embedx.measures import CLASS_SILHOUETTE, available
    from embedx import validate

    keys = list(validate.names(names)) if names else list(available(st))
    if silhouette_labels == "class":
        keys.append(CLASS_SILHOUETTE)
    return max((len(k) for k in keys), default=0)


def _interrupted(done: list[str], streamed: bool) -> None:
    """Ctrl-C: the finished measures (already printed in text mode; on stderr under --json), one line saying
    what was lost, exit 130. A measurement does not resume: nothing of the unfinished ones is kept."""
    from embedx.cli.common import EXIT_INTERRUPTED

    if not streamed:
        for line in done:
            echo(line, err=True)
    n = len(done)
    echo(f"interrupted: {n} measure{'s' if n != 1 else ''} finished{' (above)' if n else ''}; the rest were not "
         f"measured and nothing resumes: rerun the command (--silhouette sample, or --metrics without the "
         f"silhouettes, is the quick way)", err=True)
    sys.exit(EXIT_INTERRUPTED)
