"""``embedx measure``: every measure of a store (parse, call, render)."""
from __future__ import annotations

import math

import click

from embedx.cli.common import LazyHelp, emit_json, progress_enabled, score_lines
from embedx.cli.options import cluster_option, device_option, json_out_options, silhouette_options, store_argument


def _render(store: str, res: dict, keys: list[str], per_class: bool) -> None:
    """The text report: one line per measure (with its sample interval), per-class rows, ties, checksums, time."""
    click.echo(f"{store}: {res['n_images']} images, {res['n_texts']} texts, d={res['dim']}\n")
    w = max(len(k) for k in keys)
    for k in keys:
        est = res.get("estimates", {}).get(k)
        ci = f"   (sample of {est['sample_size']}, 95% CI {est['ci95'][0]:.4f} .. {est['ci95'][1]:.4f})" if est else ""
        val = f"{res[k]: .6f}" if math.isfinite(res[k]) else " undefined (needs 2+ classes/points)"
        click.echo(f"{k:<{w}}  {val}{ci}")
    if per_class:
        click.echo("\nper class: images, acs, zero-shot recall, silhouette")
        for name, row in res["per_class"].items():
            vals = [row["n_images"], row["acs"], row["zeroshot_recall"], row.get("silhouette_euclidean")]
            cells = ("-" if v is None else (f"{v}" if isinstance(v, int) else f"{v: .4f}") for v in vals)
            click.echo(f"  {name:<20} " + "  ".join(cells))
    if "ties" in res:
        click.echo(f"\nties: {res['ties']}")
    if "integrity" in res:
        i = res["integrity"]
        click.echo(f"\nchecksums: {i['chunks_verified']} of {i['chunks_recorded']} chunks read and matched")
    click.echo(f"\n{sum(res['timings_s'].values()):.2f} s")


def _help() -> str:
    return f"""Measures of a store: acs, iimm (+ inter/intra parts), text_intra, gap, modality silhouettes
(Euclidean, cosine), zero-shot top-1/top-5/mean per-class recall, and for paired stores retrieval
recall@1/5/10 both ways. Exact: each value equals a float64 brute force of its definition (1e-5).
Only the passes the asked measures need are read; progress bars show each on a terminal, and an exact
silhouette projected past a minute says so (then --silhouette sample estimates it in seconds).

\b
{score_lines("measure", 31)}
"""


@click.command(cls=LazyHelp, help_factory=_help,
               short_help="Measures of a store: acs, iimm, gap, silhouettes, zero-shot, recall.")
@store_argument
@click.option("--metrics", default=None, metavar="NAME[,NAME...]",
              help="Comma-separated subset of the measures above (default: every measure the store supports; "
                   "retrieval recall on paired stores).")
@silhouette_options("Euclidean silhouette: exact (O(N^2 d) through the fused kernel) or an unbiased estimate from "
                    "--sample-size points with a 95% interval.", "Seed for --silhouette sample.")
@click.option("--silhouette-labels", type=click.Choice(["modality", "class"]), default="modality", show_default=True,
              help="'class' adds silhouette_class_euclidean: the images clustered by their class labels.")
@click.option("--knn", type=click.Choice(["blocked", "faiss"]), default="blocked", show_default=True,
              help="Retrieval recall: blocked = exact rank counts streamed from the store (bounded memory); "
                   "faiss = FAISS top-k with every row in memory.")
@click.option("--per-class", is_flag=True, help="Also acs, zero-shot recall and silhouette per class.")
@device_option("Where the pairwise kernels run (Euclidean silhouette, retrieval): auto (CUDA + Triton when "
               "available), cpu, cuda or cuda:N.")
@cluster_option()
@json_out_options()
@click.pass_context
def measure(ctx, store, metrics, silhouette_mode, sample_size, seed, silhouette_labels, knn, per_class, device,
            cluster, as_json, out):
    from embedx.dist.cluster import connect
    from embedx.measures import NOT_MEASURES, compute
    from embedx.store import Store

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    with connect(cluster) as executor:
        res = compute(Store(store), names, silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                      knn=knn, per_class=per_class, silhouette_labels=silhouette_labels, device=device,
                      progress=progress_enabled(ctx), executor=executor)
    emit_json(res, out, as_json)
    if not as_json:
        _render(store, res, [k for k in res if k not in NOT_MEASURES], per_class)
