"""``embedx embed``: images (and class prompts or captions) into a store (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo, progress_enabled
from embedx.cli.options import (KindsOption, chunking_options, cluster_option, device_option, seed_option,
                                verbosity_options)


@click.command()
@click.option("--model", "-m", default=None,
              help="open_clip architecture (e.g. ViT-B-32) or hf-hub:ORG/REPO. Required unless --checkpoint.")
@click.option("--pretrained", "-p", default=None,
              help="Pretrained tag (e.g. openai), a local checkpoint file (a torch state dict .pt/.pth/.bin or a "
                   ".safetensors of the model's weights), or 'none' for seeded random weights [default: none].")
@click.option("--checkpoint", default=None,
              help="A finished `embedx finetune` run folder: embed with its tuned model (its model, pretrained "
                   "weights and seed) and record the run in the store.")
@click.option("--data", "-d", required=True, cls=KindsOption, family="source",
              help="The images: KIND:ARG, or a path that one kind recognises (a folder of class subfolders, a .csv, "
                   ".tar shards, .parquet files). Kinds:")
@click.option("--classes", default=None, cls=KindsOption, family="source", kind_option="classes")
@click.option("--image-col", default=None, cls=KindsOption, family="source", kind_option="image_col")
@click.option("--caption-col", default=None, cls=KindsOption, family="source", kind_option="caption_col")
@click.option("--label-col", default=None, cls=KindsOption, family="source", kind_option="label_col")
@click.option("--out", "-o", required=True, help="Store path (local or fsspec URL). Rerun to resume.")
@seed_option("Seed for random weights (--pretrained none).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--batch-size", "-b", default=64, show_default=True, type=int)
@click.option("--workers", type=int, default=None, help="DataLoader workers [default: 0 on <=2 cores, else cores/2].")
@device_option()
@click.option("--template", "templates", multiple=True,
              help="Prompt template with {} (repeat for an ensemble), 'simple' or 'openai' (open_clip's "
                   "ImageNet ensembles), or @FILE. Default: the data source's own template.")
@click.option("--per-class", type=int, default=None,
              help="At most N items of every class (the first ones, in the source's order): a class-balanced "
                   "subset of a source grouped by class. Applied before --limit.")
@click.option("--limit", type=int, default=None, help="Only the first N items of the source.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (complete or not) at --out.")
@chunking_options
@cluster_option("the encoding (tasks of whole chunks; the store equals an in-process run byte for byte)")
@verbosity_options
@click.pass_context
def embed(ctx, model, pretrained, checkpoint, data, classes, image_col, caption_col, label_col, out, seed, dtype,
          batch_size, workers, device, templates, per_class, limit, strict, overwrite, codec, chunk_rows, cluster):
    """Embed images (and class prompts or captions) into a chunked Zarr store.

    Resumable: if the run is killed, rerun the same command and it continues from the last committed
    batch; the finished store equals an uninterrupted run. A resume with another model, checkpoint, seed,
    dataset or prompts is refused. With --cluster, rerunning skips the tasks already done.
    """
    from embedx.embedding.options import ClusterOptions, EncodeOptions, SourceOptions, WriteOptions
    from embedx.embedding.serial import embed_to_store
    from embedx.outputs import check_output_dir

    check_output_dir(out, "store", param="out")  # fail before loading the model, not after it
    res = embed_to_store(
        out, data, model, pretrained, seed=seed, checkpoint=checkpoint, progress=progress_enabled(ctx),
        source=SourceOptions(classes=classes, image_col=image_col, caption_col=caption_col, label_col=label_col,
                             limit=limit, per_class=per_class),
        encode=EncodeOptions(batch_size=batch_size, workers=workers, device=device, templates=templates,
                             strict=strict),
        write=WriteOptions(dtype=dtype, codec=codec, chunk_rows=chunk_rows, overwrite=overwrite),
        cluster=ClusterOptions(cluster=cluster))
    m = res.meta
    resumed = f" (resumed at item {res.resumed_from})" if res.resumed_from else ""
    if res.tasks and res.tasks[0]:
        resumed = f" (resumed: {res.tasks[0]} of {res.tasks[1]} tasks were done)"
    skipped = (f", {m['n_skipped']} of {m['rows_committed'] + m['n_skipped']} unreadable skipped (listed in the "
               f"store's attributes; --strict fails on the first instead)" if m["n_skipped"] else "")
    echo(f"wrote {out}: {m['rows_committed']} images x {m['dim']} {m['dtype']}{resumed}{skipped}")
