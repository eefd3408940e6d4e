"""``embedx export``: a store as clip-retrieval partitions, plain npy or parquet (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo
from embedx.cli.options import store_argument, verbosity_options


@click.command()
@store_argument
@click.option("--format", "fmt", type=click.Choice(["clip-retrieval", "npy", "parquet"]), required=True,
              help="clip-retrieval: img_emb/, text_emb/, metadata/ partitions (autofaiss, clip-retrieval index); "
                   "npy: images.npy, texts.npy, ids.parquet (+ labels.npy, names.parquet); parquet: one table with "
                   "the ids, captions/labels and the embeddings as fixed-size float32 lists.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder (created).")
@click.option("--partition-rows", type=click.IntRange(min=1), default=None,
              help="Rows per clip-retrieval partition [default: a store imported from clip-retrieval keeps the "
                   "dump's own partitions; else 1000000]. Rows are written float32, unit length (renormalized from "
                   "float16 as the measures do); an imported dump's metadata columns come back unchanged.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export at --out (only once the new one is complete).")
@verbosity_options
def export(store, fmt, out, partition_rows, overwrite):
    """Write a store as files other tools read; `embedx import --from FORMAT DIR` reads them back (same arrays,
    same dtype).

    \b
    Examples:
      embedx export coco.zarr --format clip-retrieval --out coco_emb/
      embedx export coco.zarr --format parquet --out coco_pq/
    """
    from embedx.formats.export import export_store
    from embedx.outputs import check_output_dir

    check_output_dir(out, "output folder", param="out")  # fail before reading the store
    r = export_store(store, fmt, out, partition_rows=partition_rows, overwrite=overwrite)
    echo(f"wrote {r['out']}: {r['rows']} rows x {r['dim']} {r['dtype']} as {r['format']} ({r['files']} files)")
