"""``embedx import``: a store from existing embedding arrays (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo
from embedx.cli.options import KindChoice, KindsOption, chunking_options, verbosity_options


@click.command("import")
@click.argument("src", required=False, metavar="[DIR]")
@click.option("--from", "kind", type=KindChoice("dump"), default=None, cls=KindsOption, family="dump",
              help="Import a released dump folder DIR, local or an fsspec URL (s3://, gs://, hf://, ...; credentials "
                   "from the environment), streamed shard by shard [default: the format DIR's files show]. Formats:")
@click.option("--features", default=None, cls=KindsOption, family="dump", kind_option="features")
@click.option("--id-column", default=None, cls=KindsOption, family="dump", kind_option="id_column")
@click.option("--caption-column", default=None, cls=KindsOption, family="dump", kind_option="caption_column")
@click.option("--images", help="Image embeddings: .npy, .npz[:KEY] or .parquet[:COLUMN], shape (N, d).")
@click.option("--texts", help="Text embeddings, shape (C, d): one row per class, or per caption with --paired.")
@click.option("--labels", help="Class index per image (N,), in 0..C-1 (-1 = none).")
@click.option("--paired", is_flag=True, help="Text row i pairs with image row i (captions).")
@click.option("--paired-array", help="One (2, N, d) array of paired rows: [0] images, [1] texts.")
@click.option("--names", type=click.Path(), help="Text file, one class name (or caption) per text row.")
@click.option("--ids", help="Source id of each row: .txt (one per line), .npy, .npz[:KEY] or .parquet[:COLUMN]. With "
                            "--paired, one per caption; captions that share an id are one image's (each a positive "
                            "for retrieval recall), and --images holds one row per caption or one per distinct id, "
                            "in order of first appearance (COCO style).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Stored dtype [default: float16; with --from, the dump's own].")
@click.option("--model", default=None, help="Record the model that made these embeddings (open_clip name).")
@click.option("--pretrained", default=None,
              help="Record the weights the model was run with (open_clip pretrained tag or a path); `measure "
                   "--format clip-benchmark` writes it, \"unknown\" when nothing was recorded.")
@click.option("--dataset", default=None, help="Record the dataset name.")
@click.option("--out", "-o", required=True, help="Store path (local or fsspec URL).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out (only once the new one is complete).")
@chunking_options
@verbosity_options
def import_(src, kind, features, id_column, caption_column, images, texts, labels, paired, paired_array, names, ids,
            dtype, model, pretrained, dataset, out, overwrite, codec, chunk_rows):
    """Build a store from existing embedding arrays.

    \b
    Examples:
      embedx import --images X.npy --texts T.npy --labels y.npy --names classes.txt --out s.zarr
      embedx import --images X.npy --texts captions.npy --paired --out coco.zarr
      embedx import --images per_image.npy --texts captions.npy --paired --ids image_ids.txt --out coco.zarr
      embedx import --paired-array features_clip.npy --out coco.zarr
      embedx import --from clip-retrieval embeddings_folder/ --model ViT-B-32 --pretrained laion2b_s34b_b79k \\
          --out laion.zarr
      embedx import --from datacomp datacomp_small/metadata --features b32 --out pool.zarr

    Every row is checked before anything is written: NaN/inf or all-zero rows, a dimension mismatch,
    labels out of range and float16 overflow are refused with one line.
    """
    from embedx.outputs import check_output_dir

    check_output_dir(out, "store", param="out")  # fail before reading any input
    if kind is not None or src is not None:
        if src is None:
            raise click.UsageError("give the dump folder DIR after --from FORMAT")
        given = [f for f, v in (("--images", images), ("--texts", texts), ("--labels", labels), ("--paired", paired),
                                ("--paired-array", paired_array), ("--names", names), ("--ids", ids)) if v]
        if given:
            raise click.UsageError(f"a dump folder DIR is read from its own files; drop {', '.join(given)}")
        from embedx.formats.dumps import import_dump

        m = import_dump(out, kind, src, features=features, id_column=id_column, caption_column=caption_column,
                        dtype=dtype, model=model, pretrained=pretrained, dataset=dataset, overwrite=overwrite,
                        codec=codec, chunk_rows=chunk_rows)
        src_, kind = m["source"], m["source"]["format"]
        parts = src_.get("partitions", src_.get("shards", src_.get("files")))
        echo(f"wrote {out}: {m['rows_committed']} images x {m['dim']} {m['dtype']}, "
             f"{'paired texts' if m['mode'] == 'paired' else 'class texts'}, from {parts} {kind} "
             f"{'partitions' if kind == 'clip-retrieval' else 'files' if kind in ('npy', 'parquet') else 'shards'}")
        return
    if features or id_column or caption_column:
        raise click.UsageError("--features, --id-column and --caption-column go with a dump folder DIR")
    from embedx.formats.arrays import import_arrays

    m = import_arrays(out, images=images, texts=texts, labels=labels, paired=paired, names=names,
                      paired_array=paired_array, dtype=dtype or "float16", overwrite=overwrite, codec=codec,
                      chunk_rows=chunk_rows, model=model, pretrained=pretrained, dataset=dataset, ids=ids)
    n_texts = m["rows_committed"] if m["mode"] == "paired" else None
    what = f"{n_texts} paired texts" if n_texts else "class texts"
    echo(f"wrote {out}: {m['rows_committed']} images x {m['dim']} {m['dtype']}, {what}")
