"""One protocol for where rows come from: every algorithm (measures, transfer scores, drift) reads through it.

A row source holds N image rows (d columns), their class labels (-1 = none) or, for paired sources, one text row
per image, and C text rows (class prompts, or the N captions). Two implementations:

  * :class:`embedx.store.Store`: a Zarr store on disk or object storage, read in whole chunks (checked against the
    chunk checksums recorded at finalize);
  * :class:`ArrayRows`: in-memory numpy or torch arrays, sliced the same way.

Algorithms take blocks (``iter_images``), never "all rows": faiss.contrib's ``knn_ground_truth(xq, db_iterator, k)``
shape, so memory is bounded by a block whatever N is.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from embedx import validate

#: Rows per "chunk" of an in-memory source: arrays have no chunks, so blocks are any number of rows.
ARRAY_CHUNK_ROWS = 1


@runtime_checkable
class RowSource(Protocol):
    """What every algorithm reads. Image rows ``0..n_images-1``; labels int32 (-1 = none) for class sources;
    text rows ``0..n_texts-1`` (paired: text i pairs with image i)."""

    path: str
    meta: dict
    n_images: int
    n_texts: int
    dim: int
    dtype: np.dtype        # the dtype rows are decoded into for the float16/float32 kernels
    chunk_rows: int
    paired: bool

    def iter_images(self, block_rows: int | None = None, dtype=None, with_labels: bool = False,
                    reuse: bool = False, prefetch: bool = True) -> Iterator[tuple]: ...
    def read_images_into(self, start: int, out: np.ndarray) -> np.ndarray: ...
    def images(self, rows=None, dtype=None) -> np.ndarray: ...
    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...
    def texts(self, dtype=None) -> np.ndarray: ...
    def read_texts(self, start: int, stop: int) -> np.ndarray: ...
    def text_rows(self, rows) -> np.ndarray: ...
    def text_names(self) -> np.ndarray: ...
    def ids(self) -> np.ndarray: ...
    def block_rows(self, target_bytes: int = 64 << 20) -> int: ...
    def whole_chunks(self, target_rows: int) -> int: ...
    def ensure_unchanged(self) -> None: ...
    def content_chunks(self) -> dict: ...
    def chunks_verified(self) -> dict: ...


def as_numpy(a):
    """numpy view of a numpy array or torch tensor (CUDA tensors are copied to the host); None stays None."""
    if a is None:
        return None
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor, without importing torch
        a = a.detach().cpu().numpy()
    return np.asarray(a)


class ArrayRows:
    """In-memory rows behind the :class:`RowSource` protocol.

    ``images`` (N, d) and ``texts`` (C, d): numpy arrays or torch tensors, float16/float32/float64 (float64 is
    kept for the float64 transfer scores; the float16/float32 kernels read float32). Class sources take
    ``labels`` (N,) in [-1, C) (``texts=None``: classes 0..max(labels), for the transfer scores that need no
    class prompts); paired sources (``paired=True``, or ``labels=None`` with C == N) pair text i with
    image i. ``ids`` (paired): rows sharing an id are one item (several captions of one image); default one item
    per row. Reads hand out copies, block by block: the caller's arrays never change."""

    def __init__(self, images, texts, labels=None, *, paired: bool | None = None, ids=None, names=None,
                 chunk_rows: int = ARRAY_CHUNK_ROWS):
        x, t = as_numpy(images), as_numpy(texts)
        validate.matrix(x, "images")
        if t is None:
            if labels is None or paired:
                raise validate.error("texts", "texts are needed (paired rows, or the class prompts)")
            t = np.empty((0, x.shape[1]), x.dtype)
        else:
            validate.matrix(t, "texts")
            validate.same_dim(x, t)
        if paired is None:
            paired = labels is None
        if paired:
            if labels is not None:
                raise validate.error("labels", "a paired source has no class labels (text i pairs with image i)")
            if len(t) != len(x):
                raise validate.error("texts", f"a paired source needs one text row per image ({len(x)}), got "
                                              f"{len(t)}")
            y = None
        else:
            if labels is None:
                raise validate.error("labels", "a class source needs labels (one class index per image)")
            y = validate.labels(as_numpy(labels), len(x), len(t) if len(t) else None).astype(np.int32)
        self.x, self.t, self.y = x, t, y
        self.paired = bool(paired)
        self.n_images, self.n_texts, self.dim = x.shape[0], t.shape[0], x.shape[1]
        self.dtype = np.dtype(np.float16) if x.dtype == np.float16 else np.dtype(np.float32)
        self.chunk_rows = int(chunk_rows)
        self.path = "<arrays>"
        self.meta: dict = {"mode": "paired" if paired else "class"}
        self._ids = None if ids is None else np.asarray(as_numpy(ids)).astype(str)
        if self._ids is not None and len(self._ids) != self.n_images:
            raise validate.error("ids", f"needs one id per image ({self.n_images}), got {len(self._ids)}")
        self._names = None if names is None else np.asarray(list(names), dtype=object)

    # -- blocks -----------------------------------------------------------------------------------------------
    def block_rows(self, target_bytes: int = 64 << 20) -> int:
        per_chunk = self.chunk_rows * self.dim * self.dtype.itemsize
        return self.chunk_rows * max(1, target_bytes // per_chunk)

    def whole_chunks(self, target_rows: int) -> int:
        return self.chunk_rows * max(1, int(target_rows) // self.chunk_rows)

    def iter_images(self, block_rows: int | None = None, dtype=None, with_labels: bool = False,
                    reuse: bool = False, prefetch: bool = True) -> Iterator[tuple]:
        """(start, block[, labels]) copies of the images, in their own dtype unless ``dtype`` (copies: the
        algorithms may normalize a block in place, and the caller's arrays must not change)."""
        step = block_rows or self.block_rows()
        for start in range(0, self.n_images, step):
            block = np.array(self.x[start:start + step], dtype=dtype)
            yield (start, block, self.labels(start, start + len(block))) if with_labels else (start, block)

    def read_images_into(self, start: int, out: np.ndarray) -> np.ndarray:
        np.copyto(out, self.x[start:start + len(out)], casting="unsafe")
        return out

    def images(self, rows=None, dtype=None) -> np.ndarray:
        return np.array(self.x if rows is None else self.x[np.asarray(rows, dtype=np.int64)], dtype=dtype)

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        if self.y is None:
            return np.full(max(min(stop if stop is not None else self.n_images, self.n_images) - start, 0), -1,
                           np.int32)
        return self.y[start:stop].copy()

    def texts(self, dtype=None) -> np.ndarray:
        return np.array(self.t, dtype=dtype)

    def read_texts(self, start: int, stop: int) -> np.ndarray:
        return self.t[start:stop].copy()

    def text_rows(self, rows) -> np.ndarray:
        return self.t[np.asarray(rows, dtype=np.int64)]

    def text_names(self) -> np.ndarray:
        if self._names is not None:
            return self._names
        return np.asarray([str(k) for k in range(self.n_texts)], dtype=object)

    def ids(self) -> np.ndarray:
        return self._ids if self._ids is not None else np.arange(self.n_images).astype(str)

    # -- the store-only parts of the protocol: nothing on disk to check ---------------------------------------
    def ensure_unchanged(self) -> None:
        return None

    def content_chunks(self) -> dict:
        return {}

    def chunks_verified(self) -> dict:
        return {}


def as_source(obj) -> RowSource:
    """A :class:`RowSource` from a source, a store path, or a tuple (images, texts[, labels])."""
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        from embedx.store import Store

        return Store(str(obj))
    if isinstance(obj, tuple):
        if len(obj) not in (2, 3):
            raise validate.error("source", "a tuple source is (images, texts) or (images, texts, labels)")
        return ArrayRows(*obj)
    if isinstance(obj, RowSource):
        return obj
    raise validate.error("source", f"expected a store path, an embedx Store, embedx.ArrayRows or a tuple "
                                   f"(images, texts[, labels]); got {type(obj).__name__}")


def resolve(ref):
    """The source a task was handed (``Executor.ref``): a ``StoreRef`` opened once per process, else as it is."""
    from embedx.store import StoreRef, open_ref

    return open_ref(ref) if isinstance(ref, StoreRef) else ref
