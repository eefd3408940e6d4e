"""The ``embedx`` command. Parses options, calls the library, renders results; nothing else."""
from __future__ import annotations

import logging
import math
import os
import sys

import click

import embedx
from embedx.cli.common import emit_json, progress_enabled
from embedx.errors import EmbedxError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(f"{prefix}{record.getMessage()}", err=True)


def _setup_logging(quiet: bool) -> None:
    log = logging.getLogger("embedx")
    log.handlers[:] = [_Handler()]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class EmbedxGroup(click.Group):
    """Turns library errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmbedxError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted: committed rows are kept; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except OSError as e:  # an expected failure of the machine (disk full, I/O error, permissions): not a bug
            where = e.filename if e.filename is not None else "?"
            click.echo(f"error: {where}: {e.strerror or ' '.join(str(e).split())[:300]}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("EMBEDX_DEBUG"):
                raise
            msg = " ".join(str(e).split())[:300]
            click.echo(f"error: internal {type(e).__name__}: {msg} (set EMBEDX_DEBUG=1 for the traceback)",
                       err=True)
            sys.exit(1)


@click.group(cls=EmbedxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(embedx.__version__, prog_name="embedx")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors on stderr; no progress bars (shown on a terminal, or with "
                   "EMBEDX_PROGRESS=1).")
@click.pass_context
def cli(ctx, quiet):
    """embedx: embedding analytics for contrastive vision-language models.

    \b
    Typical session:
      embedx embed --model ViT-B-32 --pretrained openai --data folder:~/pets --out pets.zarr
      embedx info pets.zarr
      embedx import --paired-array feats.npy --out coco.zarr
      embedx demo
    """
    ctx.obj = {"quiet": quiet}
    _setup_logging(quiet)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


CODECS = ["none", "zstd1", "zstd3", "blosc-lz4", "blosc-zstd"]  # embedx.store.CODECS (not imported: keeps --help fast)


def _chunking_options(f):
    """--codec and --chunk-rows, shared by the commands that write stores."""
    f = click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
                     help="Rows per chunk, at most the row count [default: about 4 MiB].")(f)
    return click.option("--codec", type=click.Choice(CODECS), default="none", show_default=True,
                        help="Chunk codec (default from bench/results/codec.md).")(f)


@cli.command()
@click.option("--model", "-m", default=None,
              help="open_clip architecture (e.g. ViT-B-32) or hf-hub:ORG/REPO. Required unless --checkpoint.")
@click.option("--pretrained", "-p", default=None,
              help="Pretrained tag (e.g. openai), a local checkpoint file, or 'none' for seeded random weights "
                   "[default: none].")
@click.option("--checkpoint", default=None,
              help="A finished `embedx finetune` run folder: embed with its tuned model (its model, pretrained "
                   "weights and seed) and record the run in the store.")
@click.option("--data", "-d", required=True,
              help="folder:PATH (one subfolder per class), csv:PATH (image + label|caption columns) or "
                   "digits[:train|:test][:classes=0-4][:rotate=DEG][:noise=SIGMA] (scikit-learn's digits, 80/20; a "
                   "subset of classes, turned or noisy images make tasks of other difficulty), or "
                   "synthetic[:N][:size=PX][:classes=C][:seed=S] (seeded noise images, for throughput checks).")
@click.option("--out", "-o", required=True, help="Store path (local or fsspec URL). Rerun to resume.")
@click.option("--seed", default=0, show_default=True, help="Seed for random weights (--pretrained none).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--batch-size", "-b", default=64, show_default=True, type=int)
@click.option("--workers", type=int, default=None, help="DataLoader workers [default: 0 on <=2 cores, else cores/2].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--template", "templates", multiple=True,
              help="Prompt template with {} (repeat for an ensemble), 'simple' or 'openai' (open_clip's "
                   "ImageNet ensembles), or @FILE. Default: the data source's own template.")
@click.option("--limit", type=int, default=None, help="Only the first N items of the source.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (complete or not) at --out.")
@_chunking_options
@click.pass_context
def embed(ctx, model, pretrained, checkpoint, data, out, seed, dtype, batch_size, workers, device, templates, limit,
          strict, overwrite, codec, chunk_rows):
    """Embed images (and class prompts or captions) into a chunked Zarr store.

    Resumable: if the run is killed, rerun the same command and it continues from the last committed
    batch; the finished store equals an uninterrupted run. A resume with another model, checkpoint, seed,
    dataset or prompts is refused.
    """
    from embedx.embed import embed_to_store

    res = embed_to_store(out, data, model, pretrained, seed=seed, dtype=dtype, batch_size=batch_size,
                         workers=workers, device=device, templates=templates, overwrite=overwrite, strict=strict,
                         codec=codec, chunk_rows=chunk_rows, limit=limit, progress=progress_enabled(ctx),
                         checkpoint=checkpoint)
    m = res.meta
    resumed = f" (resumed at item {res.resumed_from})" if res.resumed_from else ""
    skipped = f", {m['n_skipped']} unreadable skipped (listed in the store's attributes)" if m["n_skipped"] else ""
    click.echo(f"wrote {out}: {m['rows_committed']} images x {m['dim']} {m['dtype']}{resumed}{skipped}")


@cli.command("import")
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
@_chunking_options
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


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(store, as_json):
    """Check a whole store: array lengths against its commit marker, every chunk file of the committed rows
    present, every chunk file's crc32c and every chunk's decoded rows (NH2 hash) against the inventory recorded
    when it was finalized.

    Prints each damaged array/chunk and exits 2 when anything is wrong; exit 0 and "ok" otherwise.
    """
    from embedx.integrity import verify as check

    res = check(store)
    if as_json:
        emit_json(dict(res, path=store), None, True)
    else:
        for line in res["problems"]:
            click.echo(f"damaged: {line}")
        inv = "" if res["inventory"] else " (no checksums recorded: lengths and chunk files only)"
        if res["ok"]:
            click.echo(f"ok: {store}: {res['chunks_checked']} chunk files checked{inv}")
    if not res["ok"]:
        click.echo(f"error: {store}: {len(res['problems'])} damaged (see above)", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--quick", is_flag=True, help="Skip the checksum check of every chunk (metadata and lengths only).")
def info(store, as_json, quick):
    """Describe a store: schema, model, counts, dims, dtype, chunking, size on disk, completeness, integrity.

    Unfinished stores are described too (complete: false), with the rows committed so far. A complete store's
    chunks are checked against their recorded content checksums (about 20 GB/s a core; --quick skips it):
    damage is listed and exits 2, as `embedx verify` (which also checks the files' crc32c).
    """
    from embedx.integrity import verify as check
    from embedx.store import Store

    d = Store(store, allow_partial=True).info()
    res = None
    if d["complete"] and d["integrity"] and not quick:
        res = check(store, files=False, content=True)
        d["integrity_check"] = {"ok": res["ok"], "problems": res["problems"]}
    if as_json:
        emit_json(d, None, True)
        if res is not None and not res["ok"]:
            sys.exit(EXIT_BAD_INPUT)
        return
    state = "complete" if d["complete"] else f"UNFINISHED ({d['rows_committed']} rows committed; rerun to resume)"
    rows = [
        ("store", d["path"]), ("schema", d["schema"]), ("state", state),
        ("mode", d["mode"]), ("images", d["n_images"]), ("texts", d["n_texts"]), ("dim", d["dim"]),
        ("dtype", d["dtype"]), ("chunks", f"{d['chunk_rows']} rows, codec {d['codec']}"),
        ("size on disk", _human_bytes(d["size_bytes"])), ("model", d["model"]),
        ("pretrained", d["pretrained"]), ("seed", d["seed"]), ("dataset", d["dataset"]),
        ("normalized", d["normalized"]), ("skipped inputs", d["n_skipped"]), ("created", d["created"]),
    ]
    integrity = d["integrity"] or "no checksums recorded (unfinished, remote or older store)"
    if res is not None:
        integrity += ": ok, checked now" if res["ok"] else f": {len(res['problems'])} DAMAGED (see below)"
    rows.append(("integrity", integrity))
    if d["checkpoint_sha256"]:
        rows.append(("checkpoint sha256", d["checkpoint_sha256"]))
    if d.get("checkpoint"):
        c = d["checkpoint"]
        rows.append(("fine-tuned run", f"{c.get('path')} ({c.get('method')}, params sha256 {str(c.get('sha256'))[:12]}...)"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{w}}  {v}")
    if res is not None and not res["ok"]:
        for line in res["problems"]:
            click.echo(f"damaged: {line}")
        click.echo(f"error: {store}: {len(res['problems'])} damaged (see above)", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@click.argument("store")
@click.option("--metrics", default=None, help="Comma-separated subset (default: every measure the store supports).")
@click.option("--silhouette", "silhouette_mode", type=click.Choice(["exact", "sample"]), default="exact",
              show_default=True, help="Euclidean silhouette: exact (O(N^2 d) through the fused kernel) or an "
                                      "unbiased estimate from --sample-size points with a 95% interval.")
@click.option("--sample-size", default=2000, show_default=True, help="Points for --silhouette sample.")
@click.option("--seed", default=0, show_default=True, help="Seed for --silhouette sample.")
@click.option("--silhouette-labels", type=click.Choice(["modality", "class"]), default="modality", show_default=True,
              help="'class' adds silhouette_class_euclidean: the images clustered by their class labels.")
@click.option("--knn", type=click.Choice(["blocked", "faiss"]), default="blocked", show_default=True,
              help="Retrieval recall: blocked = exact rank counts streamed from the store (bounded memory); "
                   "faiss = FAISS top-k with every row in memory.")
@click.option("--per-class", is_flag=True, help="Also acs, zero-shot recall and silhouette per class.")
@click.option("--device", default="auto", show_default=True,
              help="Where the pairwise kernels run (Euclidean silhouette, retrieval): auto (CUDA + Triton when "
                   "available), cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Also write the JSON to FILE.")
def measure(store, metrics, silhouette_mode, sample_size, seed, silhouette_labels, knn, per_class, device, as_json,
            out):
    """Measures of a store: acs, iimm (+ inter/intra parts), text_intra, gap, modality silhouettes
    (Euclidean, cosine), zero-shot top-1/top-5/mean per-class recall, and for paired stores retrieval
    recall@1/5/10 both ways. Exact: each value equals a float64 brute force of its definition (1e-5).
    """
    from embedx.measures import NOT_MEASURES, compute
    from embedx.store import Store

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    res = compute(Store(store), names, silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                  knn=knn, per_class=per_class, silhouette_labels=silhouette_labels, device=device)
    emit_json(res, out, as_json)
    if as_json:
        return
    click.echo(f"{store}: {res['n_images']} images, {res['n_texts']} texts, d={res['dim']}\n")
    keys = [k for k in res if k not in NOT_MEASURES]
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
            click.echo(f"  {name:<20} " + "  ".join("-" if v is None else (f"{v}" if isinstance(v, int) else f"{v: .4f}")
                                                  for v in vals))
    if "ties" in res:
        click.echo(f"\nties: {res['ties']}")
    if "integrity" in res:
        i = res["integrity"]
        click.echo(f"\nchecksums: {i['chunks_verified']} of {i['chunks_recorded']} chunks read and matched")
    click.echo(f"\n{sum(res['timings_s'].values()):.2f} s")


@cli.command()
@click.option("--n", default=4096, show_default=True, help="Points (rows) per kernel call.")
@click.option("--d", "dim", default=512, show_default=True, help="Embedding dimension.")
@click.option("--k", default=10, show_default=True, help="k for the top-k kernel.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for bench/results/).")
def profile(n, dim, k, device, as_json):
    """Time each kernel on this device: achieved GFLOP/s and GB/s against the roofline measured in the
    same run (a large matmul, a large copy) and against the reference implementations."""
    from embedx.profile import profile as run_profile

    if n < 2 or dim < 1 or k < 1:
        raise click.BadParameter("--n must be >= 2, --d and --k >= 1")
    res = run_profile(n, dim, k, device)
    if as_json:
        emit_json(res, None, True)
        return
    r = res["roofline"]
    click.echo(f"device {res['device']} ({res['device_name']}, {res['threads']} threads): roofline "
               f"{r['matmul_gflops']:.0f} GFLOP/s matmul, {r['copy_gbs']:.1f} GB/s copy; n={n}, d={dim}\n")
    head = f"{'kernel':<32} {'impl':<7} {'time':>9} {'GFLOP/s':>8} {'GB/s':>7} {'roofline':>8}  reference"
    click.echo(head)
    for row in res["kernels"]:
        ref = (f"{row['speedup_vs_reference']:.1f}x vs {row['reference']} ({row['reference_seconds'] * 1e3:.1f} ms)"
               if row["reference_seconds"] else "")
        click.echo(f"{row['kernel']:<32} {row['impl']:<7} {row['seconds'] * 1e3:7.2f}ms {row['gflops']:8.1f} "
                   f"{row['gbs']:7.2f} {row['roofline_share']:8.0%}  {ref}")


@cli.command()
@click.option("--out", "-o", default="embedx-demo", show_default=True, help="Folder for the demo stores.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(out, as_json):
    """Offline tour on real data: CLIP ViT-B/16 COCO image-caption embeddings vs a random-init control.

    The embeddings come from Liang et al., "Mind the Gap" (NeurIPS 2022, MIT license), shipped with embedx.
    """
    from embedx.demo import DATASET, run_demo
    from embedx.measures import NOT_MEASURES

    rows = run_demo(out)
    if as_json:
        emit_json(rows, None, True)
        return
    click.echo(f"embedx demo: {DATASET}\n")
    table = [["", *(r["model"] for r in rows)],
             ["store", *(r["info"]["path"] for r in rows)],
             ["pairs x dim", *(f"{r['info']['n_images']} x {r['info']['dim']} {r['info']['dtype']}" for r in rows)]]
    for k in rows[0]["measures"]:
        if k not in NOT_MEASURES:
            table.append([k, *(f"{r['measures'][k]:.4f}" for r in rows)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    clip, rand = rows[0]["measures"], rows[1]["measures"]
    click.echo(f"\nThe trained model retrieves the right caption for {clip['i2t_recall@1']:.0%} of the images "
               f"(random weights: {rand['i2t_recall@1']:.1%}), yet its image and text\nembeddings sit apart: "
               f"modality gap {clip['gap']:.2f}, modality silhouette {clip['silhouette_euclidean']:.2f}. "
               f"Next: `embedx measure {rows[0]['info']['path']}`.")


from embedx.cli.drift import drift  # noqa: E402  (commands in their own modules)
from embedx.cli.finetune import finetune  # noqa: E402
from embedx.cli.predict import predict  # noqa: E402
from embedx.cli.transfer import transfer  # noqa: E402

cli.add_command(drift)
cli.add_command(finetune)
cli.add_command(predict)
cli.add_command(transfer)


def main() -> None:
    cli(prog_name="embedx")


if __name__ == "__main__":
    main()
