"""``embedx finetune``: parse options, call :mod:`embedx.finetune`, render."""
from __future__ import annotations

import json
import os

import click

from embedx.cli.common import echo, progress_enabled, refuse_unused
from embedx.cli.options import KindsOption, device_option, json_option, seed_option, verbosity_options

# embedx.models.methods.METHODS, not imported (keeps --help fast); tests hold these names and the --help table of
# defaults equal to the registry
METHOD_NAMES = ("full", "bitfit", "attention", "lora", "adapter")


@click.command()
@click.option("--model", "-m", required=True, help="open_clip architecture (e.g. ViT-B-32) or hf-hub:ORG/REPO.")
@click.option("--pretrained", "-p", default="none", show_default=True,
              help="Pretrained tag, a local checkpoint file, or 'none' for seeded random weights.")
@click.option("--method", required=True, type=click.Choice(METHOD_NAMES), help="The method (see above).")
@click.option("--data", "-d", default=None,
              help="folder:PATH, csv:PATH (image + label columns), digits[:train|:test][:classes=..][:rotate=..]"
                   "[:noise=..] or synthetic[:N][:size=PX][:classes=C] (see `embedx embed --help`). Not needed "
                   "with --dry-run.")
@click.option("--classes", default=None, cls=KindsOption, family="source", kind_option="classes")
@click.option("--out", "-o", default=None, help="Run folder (config.json + trained parameters). Rerun to resume.")
@click.option("--train-blocks", type=int, default=None,
              help="bitfit, attention only: train only the first K blocks of each tower, as the authors' code "
                   "does [default: all].")
@click.option("--towers", type=click.Choice(["both", "image", "text"]), default="both", show_default=True,
              help="The towers the method tunes; a tower where it finds nothing (attention or lora on a CNN image "
                   "tower) is refused, naming the other choice.")
@click.option("--rank", type=int, default=None, help="lora only: rank of the q and v updates [default: 4].")
@click.option("--reduction", type=int, default=None, help="adapter only: bottleneck d -> d/RED -> d [default: 4].")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--lr", default=None, type=float,
              help="Learning rate [default: the method's, see above] (the papers' grid: 1e-2 .. 1e-5).")
@click.option("--weight-decay", "--wd", "weight_decay", default=1e-4, show_default=True, type=float)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None,
              help="sgd (momentum 0.9, the papers') or adam (betas 0.9, 0.99) [default: the method's, see above].")
@click.option("--batch-size", "-b", default=32, show_default=True, type=int,
              help="Images per step (32: enough steps per epoch on small data sets such as digits).")
@click.option("--val-fraction", default=0.1, show_default=True, type=float,
              help="Seeded hold-out slice of the training data (at most 5,000 images) that picks the best "
                   "epoch; 0 keeps the last epoch.")
@seed_option("Seeds random weights, the hold-out split, data order and LoRA/adapter initialization.")
@click.option("--template", "templates", multiple=True,
              help="Prompt template with {} (repeat for an ensemble), 'simple', 'openai' or @FILE. "
                   "Default: the data source's own template.")
@click.option("--per-class", type=int, default=None,
              help="At most N items of every class (the first ones, in the source's order): a class-balanced "
                   "subset of a source grouped by class. Applied before --limit.")
@click.option("--limit", type=int, default=None, help="Only the first N items of the source.")
@device_option()
@click.option("--workers", type=int, default=None, help="DataLoader workers [default: 0 on <=2 cores, else cores/2].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run (finished or not) at --out.")
@click.option("--dry-run", is_flag=True, help="Build the model, print the parameter counts, train nothing.")
@click.option("--fail-if-flat", is_flag=True,
              help="Exit 2 when the run never moved: hold-out accuracy never above its start and hold-out loss "
                   "never 0.1% below it (a warning is printed either way; the run is kept).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write TensorBoard event files to DIR: the loss and learning rate of every step, the "
                   "hold-out loss and accuracy per epoch (`tensorboard --logdir DIR`; needs "
                   "pip install 'embedx[tensorboard]').")
@json_option("Print JSON: with --dry-run {trainable_params, total_params, family, towers, per_tower, what}, else "
             "the run's config.")
@verbosity_options
@click.pass_context
def finetune(ctx, model, pretrained, method, data, classes, out, train_blocks, towers, rank, reduction, epochs, lr,
             weight_decay, optimizer, batch_size, val_fraction, seed, templates, per_class, limit, device, workers,
             overwrite, dry_run, fail_if_flat, log_dir, as_json):
    """Fine-tune an open_clip model on a labelled image source with one of the papers' methods.

    \b
    Methods (trainable parameters, in the towers chosen by --towers; the same rule for every open_clip
    family: CLIP, CoCa, SigLIP, EVA-02, ConvNeXt, RN50, MobileCLIP, Hugging Face text towers):
      full       everything (both towers: the whole model, CoCa's decoder included)
      bitfit     the biases inside the blocks (resblocks, timm blocks, residual blocks)
      attention  A-CLIP: the q, k, v input-projection weights of every attention block
                 (in_proj_weight, qkv.weight, q_proj/k_proj/v_proj, HF query/key/value)
      lora       peft LoRA on the q and v projections of every attention block
      adapter    CLIP-Adapter: a bottleneck MLP on the features, blended 0.2/0.8

    \b
    Defaults per method (when --optimizer / --lr are not given):
      method     optimizer  lr
      full       adam       1e-4
      bitfit     adam       1e-2
      attention  adam       1e-3
      lora       adam       1e-2
      adapter    adam       3e-3

    Adam, not the papers' SGD: from random weights (--pretrained none, the offline path) SGD does not learn
    in a few epochs (bench/results/finetune_defaults_sgd.md). From pretrained weights the papers' recipe is
    --optimizer sgd with an --lr from their grid (1e-2 .. 1e-5).

    \b
    Examples:
      embedx finetune -m embedx-tiny --method lora --epochs 2 --data digits:train --out digits-lora
      embedx finetune -m ViT-B-32 -p openai --method lora --rank 4 --data folder:~/pets --out pets-lora
      embedx finetune -m ViT-B-32 --method attention --dry-run --json
      embedx finetune -m convnext_base --method lora --towers text --dry-run
      embedx embed --checkpoint pets-lora --data folder:~/pets --out pets-lora.zarr

    Objective: cross-entropy over logit_scale * cos(image, class prompt), the text tower in the loop. The run
    folder keeps only the trained parameters of the best epoch (by hold-out accuracy) and config.json.
    Resumable: rerun the same command after an interruption and it continues from the last finished
    epoch; a different configuration is refused and a finished run is kept unless --overwrite.
    A run that never moved (see --fail-if-flat) ends with a warning. --train-blocks, --rank and --reduction
    given to a method that does not use them are refused. config.json keeps every step's training loss;
    --log-dir writes them, the learning rate and the hold-out metrics as TensorBoard events too.
    """
    from embedx.errors import EmbedxError
    from embedx.finetune import dry_run as count, finetune as run, methods

    # refuse, before any work, the method options the user typed that this method would ignore
    methods.check_given(method, [k for k in methods.DEFAULTS
                                 if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT])

    if dry_run:
        refuse_unused(ctx, ["log_dir"], "to a run that trains (not with --dry-run)")
        counts = count(model, pretrained, method, seed=seed, towers=towers, train_blocks=train_blocks, rank=rank,
                       reduction=reduction)
        if as_json:
            echo(json.dumps(counts))
        else:
            t, n = counts["trainable_params"], counts["total_params"]
            echo(f"{method} on {model} ({counts['family']}): {t:,} trainable of {n:,} parameters ({100 * t / n:.3g}%)")
            for tower, c in counts["per_tower"].items():
                what = counts["what"].get(tower, "the logit scale" + (" and the captioning decoder"
                                                                      if counts["family"] == "CoCa" else ""))
                echo(f"  {tower:<6} {c:>12,}  {what}")
        return
    if not data or not out:
        raise EmbedxError("--data and --out are required (unless --dry-run)")
    cfg = run(out, data, model, pretrained, method, train_blocks=train_blocks, towers=towers, rank=rank,
              reduction=reduction,
              templates=templates, seed=seed, epochs=epochs, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
              batch_size=batch_size, val_fraction=val_fraction, limit=limit, per_class=per_class, device=device,
              workers=workers, overwrite=overwrite, progress=progress_enabled(ctx), fail_if_flat=fail_if_flat,
              log_dir=log_dir, classes=classes)
    if as_json:
        echo(json.dumps(cfg, indent=2))
        return
    acc = cfg["best_val_acc"]
    size = os.path.getsize(os.path.join(out, cfg["params"]))
    echo(f"wrote {out}: {cfg['method']}, {cfg['trainable_params']:,} trainable of {cfg['total_params']:,} "
         f"parameters; best epoch {cfg['best_epoch']} of {cfg['epochs']}"
         f"{'' if acc is None else f' (val acc {acc:.1%})'}; {cfg['params']} {size / 1024:.0f} KiB")
