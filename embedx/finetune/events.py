"""TensorBoard event files of a fine-tuning run (``finetune(..., log_dir=DIR)``, ``embedx finetune --log-dir``).

Written with ``torch.utils.tensorboard.SummaryWriter`` (the optional ``tensorboard`` package:
``pip install 'embedx[tensorboard]'``), every scalar against the global optimizer step
g = (epoch - 1) * steps_per_epoch + step (step counted from 1 within the epoch; steps_per_epoch =
ceil(n_train / batch_size)):

  train/loss         the training cross-entropy of each step (the batch mean, as the run records it in
                     config.json's ``history[e]["step_loss"]``)
  train/lr           the learning rate of each step (constant: the recipe has no schedule)
  epoch/train_loss   the epoch's mean training loss and accuracy, at the epoch's last step
  epoch/train_acc
  holdout/loss       the hold-out loss and accuracy after each epoch (at its last step), and before the first
  holdout/acc        step (g = 0: the zero-shot model)

The events of each epoch are flushed when it is committed. A resumed run purges what a killed epoch had logged
beyond its last finished epoch (``purge_step``), so the curves hold each step once. TensorBoard reads a folder's
event files in the order of their names, ``events.out.tfevents.<unix second>.<host>.<pid>...``: a session's file
must sort after the files already there, so one started within the same second as the newest of them waits for
the next second (a run killed within a second of its start and resumed at once: its pid decided the order).
"""
from __future__ import annotations

import os
import re
import time

from embedx.errors import EmbedxError

INSTALL = "pip install 'embedx[tensorboard]'"


def writer_class():
    """``SummaryWriter``, or a one-line EmbedxError naming the extra when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise EmbedxError(f"log_dir needs the tensorboard package, which is not installed ({e}): "
                          f"{INSTALL}", param="log_dir") from None
    return SummaryWriter


_STAMP = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def after_newest_file(log_dir: str) -> None:
    """Wait until the current unix second is later than the stamp of every event file in ``log_dir``, so the file
    a writer opens now sorts (by name) after them."""
    try:
        names = os.listdir(log_dir)
    except OSError:
        return
    stamps = [int(m.group(1)) for m in map(_STAMP.match, names) if m]
    if stamps:
        newest = max(stamps)
        while int(time.time()) <= newest:
            time.sleep(min(1.0, newest + 1 - time.time()) + 0.01)


class EventLog:
    """The run's event file in ``log_dir`` (None: logs nothing). ``purge_step``: the first global step this
    session writes (0 for a fresh run: whatever an earlier run left in the folder is superseded)."""

    def __init__(self, log_dir: str | None, purge_step: int = 0):
        self.writer = None
        if log_dir is not None:
            cls = writer_class()
            after_newest_file(str(log_dir))
            self.writer = cls(log_dir=str(log_dir), purge_step=purge_step)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def holdout(self, global_step: int, loss: float | None, acc: float | None) -> None:
        if self.writer is not None and loss is not None:
            self.writer.add_scalar("holdout/loss", loss, global_step)
            self.writer.add_scalar("holdout/acc", acc, global_step)

    def epoch(self, global_step: int, record: dict) -> None:
        """One finished epoch (its ``history`` record): the epoch means and the hold-out metrics; flushed."""
        if self.writer is not None:
            self.writer.add_scalar("epoch/train_loss", record["train_loss"], global_step)
            self.writer.add_scalar("epoch/train_acc", record["train_acc"], global_step)
            self.holdout(global_step, record["val_loss"], record["val_acc"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
