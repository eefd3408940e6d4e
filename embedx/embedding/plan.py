"""What a serial and a distributed ``embed`` share so that their stores are the same byte for byte.

  * **Tasks** (:func:`task_rows`): a distributed embed splits the rows into tasks of whole chunks that also start
    on a batch boundary (a multiple of ``lcm(chunk_rows, batch_size)`` rows), so every task encodes exactly the
    batches a serial run encodes (the forward pass of a batch need not equal the same rows in other batches to
    the last bit) and writes only its own chunk files.
  * **Batches** (:class:`Items`, :func:`collate`): source items by position, a failed read reported with its item.
  * **Rows** (:func:`accept_rows`): every encoded row passes the rule ``embedx import`` applies
    (``embedx.rows.check_block``: finite, nonzero, a norm in range once stored) before it is buffered, so a model
    that outputs NaN, inf or zero rows stops the run at the first such sample and no such row is ever committed.
  * **Sums and checksums** (:func:`fold`): the store's float64 sums of the normalized rows (``meta["sums"]``) are
    the left fold, in chunk order, of each chunk's sum, and its inventory lists each chunk's checksums. Both are
    taken as the chunks are written (``embedx.store.sink.ChunkSink``): a serial run's sink whenever its commits
    complete a chunk (they fall wherever time and batch sizes put them), a distributed run's tasks for their own
    chunks, folded by the driver in task order: the same additions in the same order either way.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from embedx.errors import EmbedxError, one_line
from embedx.rows import check_block
from embedx.sources.catalog import Source


class Item(NamedTuple):
    """One source item as a loader worker hands it over: its position, its pixels, or why it could not be read."""

    index: int
    pixels: torch.Tensor | None
    error: str | None


class Batch(NamedTuple):
    """A batch of items (:func:`collate`): ``items`` their positions, ``good`` those read, ``pixels`` theirs stacked
    (None if none was), ``bad`` ``(position, reason)`` of those that could not be read."""

    items: list
    good: list
    pixels: torch.Tensor | None
    bad: list


class Items(Dataset):
    """Source items from ``start`` on, as :class:`Item`; a failed read has ``pixels`` None and its reason."""

    def __init__(self, source: Source, preprocess, start: int, stop: int):
        self.source, self.preprocess, self.start, self.stop = source, preprocess, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int):
        i = self.start + k
        try:
            return Item(i, self.preprocess(self.source.load(i)), None)
        except Exception as e:  # unreadable/corrupt image: reported, never dropped silently
            return Item(i, None, f"{type(e).__name__}: {one_line(e, 200)}")


def collate(items: list[Item]) -> Batch:
    good = [it for it in items if it.pixels is not None]
    return Batch([it.index for it in items], [it.index for it in good],
                 torch.stack([it.pixels for it in good]) if good else None,
                 [(it.index, it.error) for it in items if it.pixels is None])


def accept_rows(emb: np.ndarray, names, what: str, noun: str, dtype: str, row0: int) -> np.ndarray:
    """``emb`` (float32 rows from the encoder, store rows ``row0``..) if the store accepts every row as it will be
    stored in ``dtype`` (``embedx.rows.check_block``, the rule of ``embedx import``); else one line naming the first
    bad row and its input (``names[j]``: the ``noun`` it was encoded from). Nothing of the batch is committed."""
    emb = np.asarray(emb)
    try:
        check_block(emb, what, dtype, offset=row0)
    except EmbedxError as e:
        j = 0
        for j in range(len(emb)):  # the first row the same rule refuses on its own
            try:
                check_block(emb[j:j + 1], what, dtype)
            except EmbedxError:
                break
        name = str(names[j])
        name = name if len(name) <= 80 else name[:77] + "..."
        raise EmbedxError(f"{e}: the model's embedding of {noun} {name!r}; nothing of its batch was committed "
                          f"(rows committed before are kept); check the model's weights (a checkpoint trained "
                          f"with too high an lr?)") from None
    return emb


def task_rows(chunk_rows: int, batch_size: int, row_bytes: int, task_bytes: int) -> int:
    """Rows per task: whole multiples of ``lcm(chunk_rows, batch_size)``, about ``task_bytes`` of output."""
    unit = math.lcm(int(chunk_rows), int(batch_size))
    return unit * max(1, int(task_bytes) // max(1, unit * int(row_bytes)))


def fold(parts) -> np.ndarray | None:
    """``((0 + p0) + p1) + ...`` in float64, the fold ``embedx.store.sink`` takes of chunk sums (None for no parts)."""
    out = None
    for p in parts:
        p = np.asarray(p, dtype=np.float64)
        out = (np.zeros(len(p)) if out is None else out) + p
    return out
