"""The fine-tuning loop: cross-entropy over logit_scale * cos(image, class-prompt text), resumable.

The text tower stays in the loop: class-prompt features are recomputed from the prompts at every step
(computed once per epoch only when nothing before them trains, e.g. CLIP-Adapter, whose text adapter still
runs every step). SGD (momentum 0.9) or Adam (betas 0.9, 0.99) with weight decay, no schedule; a seeded
hold-out slice of the training split picks the best epoch (the authors' recipe, notes section 2). The optimizer
and learning rate default to the method's own (:func:`embedx.models.methods.recipe`). A run that never moves is
reported (:func:`flat`): a warning always, an error with ``fail_if_flat``. A step that makes the training loss or
a trainable parameter NaN or inf (or an epoch whose hold-out loss is) stops the run with one line naming the
epoch and step: nothing of that epoch is saved, the epochs finished before keep their checkpoint and resume state.
Each epoch's data order and random state are seeded from (seed, epoch), so a run resumed from the last
finished epoch ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import embedx.finetune.events as ev
import embedx.finetune.run as rd
from embedx.models import methods
from embedx.models.encoder import NO_WEIGHTS, Encoder, file_sha256
from embedx.errors import EmbedxError, one_line
from embedx.models.factory import create_tuned as build
from embedx.sources.prompts import resolve_templates
from embedx.sources.catalog import Source, default_workers, parse_source
from embedx.models.tuned import TunedCLIP, count_params

log = logging.getLogger("embedx")
MAX_VAL = 5000  # hold-out cap, as the authors' code
OPTIMIZERS = methods.OPTIMIZERS
MAX_RATE = 1e30  # lr, weight_decay: beyond about 3e37 the optimizers' float32 step itself overflows (a crash, not
# a divergence); anything this large diverges at once, and the run stops at that step with one line
FLAT_ACC_TOL = 0.0  # flat(): the accuracy must rise above its start by more than this
FLAT_LOSS_TOL = 1e-3  # flat(): ... or the loss fall below (1 - this) times its start
# What identifies a run: a rerun must match all of these to resume.
PLAN_KEYS = ("model", "pretrained", "pretrained_sha256", "seed", "method", "options", "towers", "data",
             "per_class", "limit", "classnames", "dataset_sha256", "templates", "epochs", "lr", "weight_decay",
             "optimizer", "batch_size", "val_fraction")


def dry_run(model: str, pretrained: str = "none", method: str = "lora", *, seed: int = 0, towers: str = "both",
            **options) -> dict:
    """What ``method`` would train on ``towers`` of ``model``, training nothing and needing no tokenizer:
    ``{"trainable_params", "total_params", "family", "towers", "per_tower": {tower: count}, "what": {tower: rule}}``
    (``per_tower`` holds "other" for the parameters of neither tower that ``full`` trains: logit scale, decoder)."""
    opts = methods.resolve_options(method, options)
    enc = build(model, pretrained, method, opts, seed, device="cpu", towers=towers)
    trainable, total = count_params(enc.model)
    sel = enc.model.selection
    return {"trainable_params": trainable, "total_params": total, "family": sel.family, "towers": towers,
            "per_tower": sel.counts, "what": sel.what}


def class_source(data: str, limit: int | None = None, per_class: int | None = None,
                 classnames=None, classes: str | None = None) -> Source:
    """A labelled source (``folder:``, ``csv:`` with a label column, ``digits``), optionally with ``classnames``
    for its classes, at most ``per_class`` items of every class and then its first ``limit`` items; ``classes``:
    a class-names file (``folder:``, ``wds:``, ``parquet:``; :func:`embedx.sources.parse_source`)."""
    src = parse_source(data, classes=classes)
    if src.paired:
        raise EmbedxError(f"finetune needs class labels; {data} is an image-caption source (use folder:PATH, "
                          f"csv:PATH with a 'label' column, or digits)")
    if classnames is not None:
        src = src.renamed(classnames)
    if per_class is not None:
        if per_class < 1:
            raise EmbedxError(f"per_class must be positive, got {per_class}", param="per_class")
        src = src.per_class(per_class)
    if limit is not None:
        if limit < 2:
            raise EmbedxError(f"limit must be at least 2, got {limit}", param="limit")
        src = src.head(limit)
    return src


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) item indices: a seeded random ``val_fraction`` of the items (at most 5,000)."""
    n_val = 0 if val_fraction == 0 else max(1, min(MAX_VAL, int(round(val_fraction * n))))
    if n - n_val < 1:
        raise EmbedxError(f"{n} images leave nothing to train on with val_fraction={val_fraction}",
                          param="val_fraction")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _Images(Dataset):
    def __init__(self, source: Source, idx: np.ndarray, preprocess):
        self.source, self.idx, self.preprocess = source, idx, preprocess

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int):
        i = int(self.idx[k])
        try:
            image = self.source.load(i)
        except Exception as e:
            raise EmbedxError(f"cannot read image {self.source.ids[i]!r}: {one_line(e, 200)}") from None
        return self.preprocess(image), int(self.source.labels[i])


def _class_features(net: TunedCLIP, tokens: torch.Tensor, n_classes: int, base: torch.Tensor | None = None):
    """[C, d]: per class, the mean of its normalized prompt features, re-normalized (open_clip's zero-shot
    classifier); ``base`` = precomputed text-tower output when the tower is frozen."""
    f = net.head("text", base, True) if base is not None else net.encode_text(tokens, normalize=True)
    return F.normalize(f.float().view(n_classes, -1, f.shape[-1]).mean(1), dim=-1)


@torch.no_grad()
def evaluate(net: TunedCLIP, enc: Encoder, ds: Dataset, tokens: torch.Tensor, n_classes: int,
             batch_size: int) -> tuple[float | None, float | None]:
    """(mean cross-entropy, accuracy) of zero-shot classification with the current class prompts;
    (None, None) for an empty set."""
    if not len(ds):
        return None, None
    net.eval()
    loss = correct = 0.0
    with enc.amp:
        txt = _class_features(net, tokens, n_classes)
        for x, y in DataLoader(ds, batch_size=batch_size):
            x, y = x.to(enc.device), y.to(enc.device)
            logits = net.logits(net.encode_image(x, normalize=True), txt).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return loss / len(ds), correct / len(ds)


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _check_recipe(epochs, lr, weight_decay, optimizer, batch_size, val_fraction) -> None:
    for ok, param, msg in ((epochs >= 1, "epochs", f"epochs must be positive, got {epochs}"),
                           (lr > 0, "lr", f"lr must be positive, got {lr}"),
                           (lr <= MAX_RATE, "lr", f"lr must be at most {MAX_RATE:g}, got {lr}"),
                           (weight_decay >= 0, "weight_decay", f"weight_decay must be >= 0, got {weight_decay}"),
                           (weight_decay <= MAX_RATE, "weight_decay",
                            f"weight_decay must be at most {MAX_RATE:g}, got {weight_decay}"),
                           (optimizer in OPTIMIZERS, "optimizer", f"optimizer must be sgd or adam, got {optimizer!r}"),
                           (batch_size >= 1, "batch_size", f"batch_size must be positive, got {batch_size}"),
                           (0 <= val_fraction < 1, "val_fraction", f"val_fraction must be in [0, 1), got {val_fraction}")):
        if not ok:
            raise EmbedxError(msg, param=param)


def _check_resume(out: str, cfg: dict, plan: dict) -> None:
    for key in PLAN_KEYS:
        was = cfg.get(key, "both" if key == "towers" else None)  # runs from before --towers tuned both
        if was != plan[key]:
            old, new = repr(was), repr(plan[key])
            raise EmbedxError(f"refusing to resume {out}: it was started with {key}={old[:60]}, this run asks for "
                              f"{key}={new[:60]} (use overwrite=True to start over)")
    if cfg.get("diverged"):
        d = cfg["diverged"]
        raise EmbedxError(f"refusing to resume {out}: it diverged at epoch {d['epoch']} ({d['what']}) and would "
                          f"again; retrain it with a lower lr and overwrite=True", param="lr")
    if cfg.get("complete"):
        raise EmbedxError(f"{out} is a finished run (best epoch {cfg['best_epoch']} of {cfg['epochs']}); pass "
                          f"overwrite=True to retrain it")


def finetune(out: str, data: str, model: str, pretrained: str = "none", method: str = "lora", *,
             train_blocks: int | None = None, rank: int | None = None, reduction: int | None = None,
             towers: str = "both", templates=None, seed: int = 0, epochs: int = 10, lr: float | None = None,
             weight_decay: float = 1e-4,
             optimizer: str | None = None, batch_size: int = 32, val_fraction: float = 0.1, limit: int | None = None,
             per_class: int | None = None, classnames=None, device: str = "auto", workers: int | None = None,
             overwrite: bool = False, progress: bool = True, encoder: Encoder | None = None,
             fail_if_flat: bool = False, log_dir: str | None = None, classes: str | None = None) -> dict:
    """Fine-tune ``model`` on ``data`` with ``method`` into the run folder ``out``; returns its config.

    ``towers``: "both", "image" or "text", the towers the method tunes (a tower where the method finds nothing is
    refused before any work). ``optimizer``/``lr`` None: the method's defaults
    (:func:`embedx.models.methods.recipe`). ``train_blocks``,
    ``rank``, ``reduction``: None = the method's default; one given to a method that does not use it is
    refused. ``classnames`` replace the source's class names (one per class); ``per_class`` keeps at most N
    items of every class and ``limit`` the first N items. ``classes``: a file naming the classes of ``data``
    (:func:`embedx.sources.parse_source`). Rerunning the same call resumes from the last finished
    epoch; another configuration is refused,
    and a finished run is kept unless ``overwrite``. ``encoder``: an already built
    ``build(model, pretrained, method, options, seed)``, trained in place. A finished run that never moved
    (:func:`flat`) logs a warning; with ``fail_if_flat`` it then raises :class:`EmbedxError` (the run is kept).
    Each epoch's record in config.json keeps the training loss of every step (``step_loss``). ``log_dir``: also
    write TensorBoard event files there (step loss, learning rate, hold-out metrics per epoch;
    :mod:`embedx.finetune.events`; needs the ``tensorboard`` extra).
    """
    opts = methods.resolve_options(method, {"train_blocks": train_blocks, "rank": rank, "reduction": reduction})
    methods.check_towers(towers)
    optimizer, lr = methods.recipe(method, optimizer, lr)
    _check_recipe(epochs, lr, weight_decay, optimizer, batch_size, val_fraction)
    if log_dir is not None:
        log_dir = os.fspath(log_dir)
        if os.path.exists(log_dir) and not os.path.isdir(log_dir):
            raise EmbedxError(f"log_dir {log_dir} exists and is not a folder", param="log_dir")
        ev.writer_class()  # a missing tensorboard package is said before any work
    source = class_source(data, limit, per_class, classnames, classes)
    pretrained = (pretrained or "none").strip()
    pretrained = "none" if pretrained.lower() in NO_WEIGHTS else pretrained
    plan = {"model": model, "pretrained": pretrained,
            "pretrained_sha256": file_sha256(pretrained) if os.path.isfile(pretrained) else None,
            "seed": int(seed), "method": method, "options": opts, "towers": towers, "data": data,
            "dataset_sha256": source.fingerprint(), "per_class": per_class, "limit": limit,
            "classnames": list(source.classnames),
            "templates": resolve_templates(templates, source), "epochs": int(epochs), "lr": float(lr),
            "weight_decay": float(weight_decay), "optimizer": optimizer, "batch_size": int(batch_size),
            "val_fraction": float(val_fraction)}
    cfg = rd.existing(out)
    if cfg is not None and not overwrite:
        _check_resume(out, cfg, plan)  # before the model loads, so a refusal is quick

    enc = encoder or build(model, pretrained, method, opts, seed, device, towers=towers)
    # the tokenizer (a download for SigLIP and Hugging Face text towers) before anything is said or written
    tokens = enc.tokenizer([t.format(c) for c in source.classnames for t in plan["templates"]]).to(enc.device)
    net: TunedCLIP = enc.model
    trainable, total = count_params(net)
    sel = net.selection
    log.info("%s on %s (%s): %s trainable of %s parameters (%.3g%%); %s", method, model,
             sel.family if sel else "?", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
             sel.rule if sel else "")
    train_ds, val_ds = (_Images(source, idx, enc.preprocess) for idx in split(len(source), val_fraction, seed))
    n_classes = len(source.classnames)
    opt = _optimizer(optimizer, [p for p in net.parameters() if p.requires_grad], lr, weight_decay)
    rd.start(out, replace=overwrite and cfg is not None)  # an old run goes only once the new model has loaded

    steps = math.ceil(len(train_ds) / batch_size)  # optimizer steps per epoch (the last batch may be short)
    fresh = overwrite or cfg is None or not cfg["history"]
    events = ev.EventLog(log_dir, purge_step=0 if fresh else len(cfg["history"]) * steps + 1)
    try:
        return _run(out, cfg, plan, fresh, net, enc, opt, sel, trainable, total, train_ds, val_ds, tokens, n_classes,
                    batch_size, epochs, seed, workers, progress, fail_if_flat, steps, events)
    finally:
        events.close()


def _run(out, cfg, plan, fresh, net, enc, opt, sel, trainable, total, train_ds, val_ds, tokens, n_classes, batch_size,
         epochs, seed, workers, progress, fail_if_flat, steps, events) -> dict:
    """The epochs of :func:`finetune` after the model is built: the zero-shot hold-out (a fresh run) or the resume
    state, then each epoch trained, evaluated, logged and committed."""
    if fresh:
        zs_loss, zs_acc = evaluate(net, enc, val_ds, tokens, n_classes, batch_size)
        events.holdout(0, zs_loss, zs_acc)
        cfg = {"embedx_run": rd.FORMAT, **plan, "selection": sel.record() if sel else None,
               "trainable_params": trainable, "total_params": total,
               "n_train": len(train_ds), "n_val": len(val_ds), "zeroshot_val_loss": zs_loss,
               "zeroshot_val_acc": zs_acc, "history": [], "best_epoch": None, "best_val_acc": None,
               "params": None, "params_sha256": None, "state": None, "complete": False,
               "created": _now(), "embedx_version": _version()}
        rd.write_config(out, cfg)
    else:
        state = rd.load_state(os.path.join(out, cfg["state"]))
        net.load_trainable(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        log.info("resuming %s after epoch %d of %d", out, len(cfg["history"]), epochs)
    rd.clean(out, cfg)

    workers = default_workers() if workers is None else workers
    lr = float(opt.param_groups[0]["lr"])
    for epoch in range(len(cfg["history"]) + 1, epochs + 1):
        t0 = time.perf_counter()
        first = (epoch - 1) * steps  # the global step before this epoch's first

        def on_step(step: int, value: float) -> None:
            events.step(first + step, value, lr)

        try:
            loss, acc, step_loss = _train_epoch(net, enc, opt, train_ds, tokens, n_classes, batch_size, workers,
                                                seed * 100_003 + epoch, f"epoch {epoch}/{epochs}", progress,
                                                on_step)
        except Diverged as d:
            _stop(d, epoch, out, cfg)
        val_loss, val_acc = evaluate(net, enc, val_ds, tokens, n_classes, batch_size)
        if val_loss is not None and not math.isfinite(val_loss):  # finite parameters, overflowing logits
            _stop(Diverged(f"the hold-out loss is {val_loss} after the epoch's last step", None, None), epoch, out,
                  cfg)
        cfg["history"].append({"epoch": epoch, "train_loss": loss, "train_acc": acc, "val_loss": val_loss,
                               "val_acc": val_acc, "seconds": round(time.perf_counter() - t0, 3),
                               "step_loss": step_loss})
        events.epoch(first + len(step_loss), cfg["history"][-1])
        best = cfg["best_epoch"] is None or val_acc is None or val_acc > cfg["best_val_acc"]
        log.info("epoch %d/%d: loss %.4f, acc %.1f%%%s%s", epoch, epochs, loss, 100 * acc,
                 "" if val_acc is None else f", val acc {100 * val_acc:.1f}%", " (best)" if best else "")
        _commit(out, cfg, net, opt, epoch, best)
    why = flat(cfg)
    if why:
        log.warning("%s", why)
        if fail_if_flat:
            raise EmbedxError(f"{why} (fail_if_flat; the run is kept at {out})", param="fail_if_flat")
    return cfg


def flat(cfg: dict) -> str | None:
    """Why the finished run ``cfg`` never moved (one line), or None when it did.

    With a hold-out (``val_fraction`` > 0) the start is the zero-shot hold-out loss L0 and accuracy A0 measured
    before the first step, and the run is flat when, over all its epochs,

        max(val_acc) - A0 <= FLAT_ACC_TOL (0: not one more hold-out image right)   and
        min(val_loss) > (1 - FLAT_LOSS_TOL) * L0 (FLAT_LOSS_TOL = 1e-3: the loss fell by under 0.1%).

    Both must hold: a run whose loss falls while its accuracy has not yet moved is learning. Without a
    hold-out the same test runs on the training loss and accuracy, epoch 1 as the start; a single epoch
    without a hold-out is not judged (None).
    """
    h = cfg["history"]
    if cfg.get("zeroshot_val_loss") is not None:
        what, l0, a0 = "hold-out", cfg["zeroshot_val_loss"], cfg["zeroshot_val_acc"]
        losses, accs = [e["val_loss"] for e in h], [e["val_acc"] for e in h]
    elif len(h) >= 2:
        what, l0, a0 = "training", h[0]["train_loss"], h[0]["train_acc"]
        losses, accs = [e["train_loss"] for e in h[1:]], [e["train_acc"] for e in h[1:]]
    else:
        return None
    if not losses or max(accs) - a0 > FLAT_ACC_TOL or min(losses) <= (1 - FLAT_LOSS_TOL) * l0:
        return None
    return (f"fine-tuning did not move: {what} accuracy {a0:.1%} -> best {max(accs):.1%}, {what} loss "
            f"{l0:.4f} -> best {min(losses):.4f} over {len(h)} epoch{'s' * (len(h) > 1)} ({cfg['method']}, "
            f"{cfg['optimizer']} lr {cfg['lr']:g}); try a larger lr")


class Diverged(Exception):
    """A step made the loss or a trainable parameter NaN or inf (``what``: which, at ``step`` of ``steps``;
    None: after the epoch)."""

    def __init__(self, what: str, step: int | None, steps: int | None):
        super().__init__(what)
        self.what, self.step, self.steps = what, step, steps


def nonfinite_param(net: TunedCLIP) -> str | None:
    """The name of the first trainable parameter holding NaN or inf, or None (one device sync for all)."""
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in params])
    if bool(ok.all()):
        return None
    return params[int((~ok).nonzero()[0, 0])][0].removeprefix("clip.")


def _stop(d: Diverged, epoch: int, out: str, cfg: dict) -> None:
    """Record the divergence in the run's config (its files stay as the last finished epoch left them) and raise
    its one-line error."""
    msg = _diverged_message(d, epoch, out, cfg)
    cfg["diverged"] = {"epoch": epoch, "step": d.step, "what": d.what}
    rd.write_config(out, cfg)
    raise EmbedxError(msg, param="lr") from None


def _diverged_message(d: Diverged, epoch: int, out: str, cfg: dict) -> str:
    """One line: where the run diverged, what the run folder keeps, what to do."""
    done = len(cfg["history"])
    if cfg.get("best_epoch") is not None:
        kept = (f"{out} keeps epoch{f's 1..{done}' if done > 1 else ' 1'} (best epoch {cfg['best_epoch']}); "
                f"nothing of epoch {epoch} was saved")
    else:
        kept = f"{out} holds no trained epoch"
    default = methods.recipe(cfg["method"])
    hint = f" (the method's default: {default[0]} {default[1]:g})" if cfg["lr"] > default[1] else ""
    where = f"epoch {epoch}" if d.step is None else f"epoch {epoch}, step {d.step} of {d.steps}"
    return (f"training diverged at {where}: {d.what} ({cfg['method']}, "
            f"{cfg['optimizer']} at learning rate {cfg['lr']:g}); {kept}; try a lower lr{hint} with overwrite=True")


def train_step(net: TunedCLIP, enc: Encoder, opt, x: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor,
               n_classes: int, base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the device: cross-entropy of logit_scale * cos(image, class
    prompts) under the encoder's autocast (bf16 on CUDA). -> (loss, float32 logits), not synchronized."""
    with enc.amp:
        txt = _class_features(net, tokens, n_classes, base)
        logits = net.logits(net.encode_image(x, normalize=True), txt).float()
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logits


def _train_epoch(net: TunedCLIP, enc: Encoder, opt, ds: Dataset, tokens, n_classes: int, batch_size: int,
                 workers: int, epoch_seed: int, desc: str, progress: bool,
                 on_step=None) -> tuple[float, float, list[float]]:
    """One epoch -> (mean training loss, training accuracy, the loss of each step); ``on_step(step, loss)``
    after each step (step counted from 1)."""
    from tqdm.auto import tqdm

    torch.manual_seed(epoch_seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(epoch_seed),
                        pin_memory=enc.device.type == "cuda")
    net.train()
    freeze_batch_norm(net)
    base = None
    if net.text_tower_frozen():
        with torch.no_grad(), enc.amp:
            base = net.clip.encode_text(tokens)
    total = correct = n = 0
    losses = []
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True, leave=False)
    for step, (x, y) in enumerate(bar, 1):
        x, y = x.to(enc.device, non_blocking=True), y.to(enc.device, non_blocking=True)
        loss, logits = train_step(net, enc, opt, x, y, tokens, n_classes, base)
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            raise Diverged(f"the training loss is {value}", step, len(loader))
        bad = nonfinite_param(net)
        if bad is not None:
            bar.close()
            raise Diverged(f"parameter {bad} holds NaN or inf after the step", step, len(loader))
        total += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        losses.append(value)
        if on_step is not None:
            on_step(step, value)
        bar.set_postfix(loss=f"{total / n:.4f}", acc=f"{correct / n:.1%}", refresh=False)
    bar.close()
    return total / n, correct / n, losses


def freeze_batch_norm(net: torch.nn.Module) -> None:
    """BatchNorm layers (CNN image towers: RN50's ModifiedResNet, MobileCLIP's FastViT) stay in eval mode while
    training: their running statistics are buffers, not parameters, so a run that updated them could not be
    reproduced from the trained parameters it saves, and a frozen tower would drift."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _commit(out: str, cfg: dict, net: TunedCLIP, opt, epoch: int, best: bool) -> None:
    """Write epoch ``epoch``'s files under new names, then the config that names them, then drop the rest."""
    if best:
        name = f"best-{epoch:03d}.safetensors"
        rd.save_params(os.path.join(out, name), net.trainable_state(), cfg["method"])
        cfg.update(best_epoch=epoch, best_val_acc=cfg["history"][-1]["val_acc"], params=name)
    if epoch < cfg["epochs"]:
        cfg["state"] = f"state-{epoch:03d}.pt"
        rd.save_state(os.path.join(out, cfg["state"]),
                      {"epoch": epoch, "trainable": net.trainable_state(), "optimizer": opt.state_dict()})
    else:
        rd.copy_file(os.path.join(out, cfg["params"]), os.path.join(out, rd.PARAMS))
        cfg.update(params=rd.PARAMS, state=None, complete=True, finished=_now())
    cfg["params_sha256"] = file_sha256(os.path.join(out, cfg["params"]))
    rd.write_config(out, cfg)
    rd.clean(out, cfg)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from embedx.version import __version__

    return __version__
