"""``embedx import``: a store from existing embedding arrays (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.options import chunking_options


@click.command("import")
@click.option("--images", help="Image embeddings: .npy, .npz[:KEY] or .parquet[:COLUMN], shape (N, d).")
@click.option("--texts", help="Text embeddings, shape (C, d): one row per class, or per caption with --paired.")
@click.option("--labels", help="Class index per image (N,), in 0..C-1 (-1 = none).")
@click.option("--paired", is_flag=True, help="Text row i pairs with image row i (captions).")
@click.option("--paired-array", help="One (2, N, d) array of paired rows: [0] images, [1] texts.")
@click.option("--names", type=click.Path(), help="Text file, one class name (or caption) per text row.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--model", default=None, help="Record the model that made these embeddings.")
@click.option("--dataset", default=None, help="Record the dataset name.")
@click.option("--out", "-o", required=True, help="Store path (local or fsspec URL).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out (only once the new one is complete).")
@chunking_options
def import_(images, texts, labels, paired, paired_array, names, dtype, model, dataset, out, overwrite, codec,
            chunk_rows):
    """Build a store from existing embedding arrays.

    \b
    Examples:
      embedx import --images X.npy --texts T.npy --labels y.npy --names classes.txt --out s.zarr
      embedx import --images X.npy --texts captions.npy --paired --out coco.zarr
      embedx import --paired-array features_clip.npy --out coco.zarr

    Every row is checked before anything is written: NaN/inf or all-zero rows, a dimension mismatch,
    labels out of range and float16 overflow are refused with one line.
    """
    from embedx.importer import import_arrays

    m = import_arrays(out, images=images, texts=texts, labels=labels, paired=paired, names=names,
                      paired_array=paired_array, dtype=dtype, overwrite=overwrite, codec=codec,
                      chunk_rows=chunk_rows, model=model, dataset=dataset)
    n_texts = m["rows_committed"] if m["mode"] == "paired" else None
    what = f"{n_texts} paired texts" if n_texts else "class texts"
    click.echo(f"wrote {out}: {m['rows_committed']} images x {m['dim']} {m['dtype']}, {what}")
