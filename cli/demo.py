"""``embedx demo``: the offline tour on the shipped COCO embeddings (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo, emit_json
from embedx.cli.options import json_option, verbosity_options


def _render(rows: list[dict], dataset: str, not_measures) -> None:
    """A table of every measure, trained model beside the random control, and a two-line reading of it."""
    echo(f"embedx demo: {dataset}\n")
    table = [["", *(r["model"] for r in rows)],
             ["store", *(r["info"]["path"] for r in rows)],
             ["pairs x dim", *(f"{r['info']['n_images']} x {r['info']['dim']} {r['info']['dtype']}" for r in rows)]]
    for k in rows[0]["measures"]:
        if k not in not_measures:
            table.append([k, *(f"{r['measures'][k]:.4f}" for r in rows)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    clip, rand = rows[0]["measures"], rows[1]["measures"]
    echo(f"\nThe trained model retrieves the right caption for {clip['i2t_recall@1']:.0%} of the images "
         f"(random weights: {rand['i2t_recall@1']:.1%}), yet its image and text\nembeddings sit apart: "
         f"modality gap {clip['gap']:.2f}, modality silhouette {clip['silhouette_euclidean']:.2f}. "
         f"Next: `embedx measure {rows[0]['info']['path']}`.")


@click.command()
@click.option("--out", "-o", default="embedx-demo", show_default=True, help="Folder for the demo stores.")
@json_option("Machine-readable output.")
@verbosity_options
def demo(out, as_json):
    """Offline tour on real data: CLIP ViT-B/16 COCO image-caption embeddings vs a random-init control.

    The embeddings come from Liang et al., "Mind the Gap" (NeurIPS 2022, MIT license), shipped with embedx.
    """
    from embedx.demo import DATASET, run_demo
    from embedx.measures import NOT_MEASURES
    from embedx.outputs import check_output_dir

    check_output_dir(out, "demo folder", param="out")  # fail before the work
    rows = run_demo(out)
    if as_json:
        emit_json(rows, None, True)
        return
    _render(rows, DATASET, NOT_MEASURES)
