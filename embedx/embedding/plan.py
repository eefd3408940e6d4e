"""What a serial and a distributed ``embed`` share so that their stores are the same byte for byte.

  * **Tasks** (:func:`task_rows`): a distributed embed splits the rows into tasks of whole chunks that also start
    on a batch boundary (a multiple of ``lcm(chunk_rows, batch_size)`` rows), so every task encodes exactly the
    batches a serial run encodes (the forward pass of a batch need not equal the same rows in other batches to
    the last bit) and writes only its own chunk files.
  * **Batches** (:class:`Items`, :func:`collate`): source items by position, a failed read reported with its item.
  * **Rows** (:func:`accept_rows`): every encoded row passes the rule ``embedx import`` applies
    (``importer._check_rows``: finite, nonzero, a norm in range once stored) before it is buffered, so a model
    that outputs NaN, inf or zero rows stops the run at the first such sample and no such row is ever committed.
  * **Sums** (:func:`chunk_sums`, :func:`fold`, :func:`stored_sums`): the store's float64 sums of the normalized
    rows (``meta["sums"]``) are the left fold, in chunk order, of each chunk's sum. A serial run computes them
    from its committed rows at finalize (its commits fall wherever time and batch sizes put them), a distributed
    run from the per-chunk sums its tasks return: the same additions in the same order either way.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from embedx.errors import EmbedxError, one_line
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
    stored in ``dtype`` (``importer._check_rows``, the rule of ``embedx import``); else one line naming the first
    bad row and its input (``names[j]``: the ``noun`` it was encoded from). Nothing of the batch is committed."""
    from embedx.formats.arrays import _check_rows

    emb = np.asarray(emb)
    try:
        _check_rows(emb, what, dtype, offset=row0)
    except EmbedxError as e:
        j = 0
        for j in range(len(emb)):  # the first row the same rule refuses on its own
            try:
                _check_rows(emb[j:j + 1], what, dtype)
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


def chunk_sums(rows: np.ndarray, chunk_rows: int) -> list[np.ndarray]:
    """The float64 sum of the normalized rows of each chunk of ``rows`` (which start on a chunk boundary)."""
    from embedx.store import normalized_sum

    return [normalized_sum(rows[a:a + chunk_rows]) for a in range(0, len(rows), chunk_rows)]


def fold(parts) -> np.ndarray | None:
    """``((p0 + p1) + p2) + ...`` in float64 (None for no parts)."""
    out = None
    for p in parts:
        p = np.asarray(p, dtype=np.float64)
        out = p if out is None else out + p
    return out


def stored_sums(path: str, paired: bool) -> dict:
    """{"images": fold of the chunk sums of the committed image rows} (and "texts" for paired stores) of the
    unfinished store at ``path``, read chunk by chunk."""
    from embedx.store import Store

    s = Store(path, allow_partial=True, verify_content=False)
    names = {"images": "images/embeddings", **({"texts": "texts/embeddings"} if paired else {})}
    out = {}
    for key, name in names.items():
        arr = s.group[name]
        per, n = int(arr.chunks[0]), s.committed(name)
        buf = np.empty((per,) + arr.shape[1:], arr.dtype)
        parts = []
        for a in range(0, n, per):
            rows = s.read_rows_into(name, a, buf[:min(per, n - a)])
            parts.extend(chunk_sums(rows, per))
        out[key] = fold(parts)
    return out
