"""Where the work of a pass runs. The scores never see this: an algorithm cuts its pass into items (whole units
or blocks of rows, chosen by the algorithm alone) and hands them, with one task function, to an executor.

Every executor implements the same interface:

  * ``map_reduce(fn, items, merge, *args)``: ``fn(item, *args)`` for every item, merged in the **fixed tree**
    (:class:`MergeTree`): level by level, groups of ``SPLIT_EVERY`` consecutive results fold left to right, until
    one is left. The tree depends on the number of items only, so the float64 sums are added in one order whatever
    runs them: serial, threaded and Dask executors give the same bits for the same items.
  * ``map(fn, items, *args)``: the results, yielded in item order; at most about ``RESULT_BYTES`` of them (given
    ``result_bytes`` per item) are held at once, so a pass of many results never holds them all.
  * ``ref(source)``: what a task is handed to read ``source`` (in-process: the source itself).
  * ``chunks_verified(source)``: the chunks that reads made outside this process checked against their recorded
    checksums (in-process: none; the source records its own reads).
  * ``task_device(request)``: the torch device this process's tasks run on for ``request`` ("auto", "cpu", ...), or
    None where tasks run in other processes that each resolve it.

``parallel=False`` says a task takes every core itself (a torch matmul, BLAS): the in-process executors then run
one task at a time, in order. :class:`SerialExecutor` always does; :class:`ThreadedExecutor` otherwise runs up to
``threads`` tasks at once (the kernels release the GIL). Tasks reuse their buffers through :func:`scratch` and
:func:`thread_local` (one per thread and name), so a pass of many items allocates no more than one of few.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

SPLIT_EVERY = 8           # results per node of the merge tree
RESULT_BYTES = 256 << 20  # results a map holds (or has in flight) on the driver at once


def fold(parts: Sequence, merge: Callable):
    """``merge``-fold of ``parts`` left to right: one node of the merge tree."""
    out = parts[0]
    for p in parts[1:]:
        out = merge(out, p)
    return out


class MergeTree:
    """The fixed merge tree, fed one result at a time in item order: level 0 holds the results; each group of
    ``split_every`` consecutive entries of a level (the last group may be shorter) folds left to right
    (:func:`fold`) into one entry of the next level, until a level has one entry. A full group folds as soon as
    it is complete, so at most ``split_every - 1`` entries per level are held: O(split_every log n) results.

    Any subtree of ``split_every**k`` consecutive items starting at a multiple of that size is itself a
    ``MergeTree`` of those items, so an executor may compute it anywhere (one Dask task) and feed the tree from
    level k on (:meth:`push` with ``level=k``) and get the same result."""

    def __init__(self, merge: Callable, split_every: int = SPLIT_EVERY):
        self.merge, self.split_every = merge, max(2, int(split_every))
        self.levels: list[list] = []
        self.count = 0

    def push(self, result, level: int = 0) -> None:
        """Add the next entry of ``level`` (results: level 0)."""
        self.count += 1
        while True:
            while len(self.levels) <= level:
                self.levels.append([])
            lv = self.levels[level]
            lv.append(result)
            if len(lv) < self.split_every:
                return
            result = fold(lv, self.merge)
            self.levels[level] = []
            level += 1

    def result(self):
        """The root: the incomplete groups fold bottom up (each into the end of the level above)."""
        if not self.count:
            raise ValueError("a merge tree of no results")
        top = max(j for j, lv in enumerate(self.levels) if lv)
        carry = None
        for j in range(top + 1):
            lv = self.levels[j] + ([] if carry is None else [carry])
            if j == top and len(lv) == 1:
                return lv[0]
            carry = fold(lv, self.merge) if lv else None
            if j == top:
                return carry
        raise AssertionError("unreachable")


def tree_reduce(results: Iterable, merge: Callable, split_every: int = SPLIT_EVERY):
    """The root of the fixed merge tree over ``results`` (in item order)."""
    tree = MergeTree(merge, split_every)
    for r in results:
        tree.push(r)
    return tree.result()


def row_units(n: int, unit: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of ``unit`` rows over ``n`` rows (the last may be shorter): a pass's items."""
    unit = max(1, int(unit))
    return [(s, min(s + unit, n)) for s in range(0, n, unit)]


_local = threading.local()


def thread_local(name: str, key, make: Callable):
    """The object this thread keeps under ``name``: ``make()``'s, remade when ``key`` differs from the one it was
    made for (one object per name and thread, never two). Tasks keep their buffers here, so the tasks a thread
    runs reuse them; they die with the thread (an in-process pass's threads end with the pass)."""
    objs = getattr(_local, "objs", None)
    if objs is None:
        objs = _local.objs = {}
    have = objs.get(name)
    if have is not None and have[0] == key:
        return have[1]
    objs.pop(name, None)  # the old one goes first
    obj = make()
    objs[name] = (key, obj)
    return obj


def scratch(name: str, rows: int, dim: int, dtype) -> np.ndarray:
    """A (rows, dim) buffer of ``dtype`` this thread reuses under ``name`` (:func:`thread_local`; contiguous, grown
    when a task asks for more rows). Its contents are whatever the last task left: read into it before use."""
    dtype = np.dtype(dtype)
    buf = thread_local(name, (dim, dtype), lambda: np.empty((rows, dim), dtype))
    if len(buf) < rows:
        thread_local(name, None, lambda: None)
        buf = thread_local(name, (dim, dtype), lambda: np.empty((rows, dim), dtype))
    return buf[:rows]


class Executor:
    """Runs the tasks of a pass; see the module docstring. ``threads``: tasks at once in this process."""

    threads: int = 1
    name: str = "executor"
    split_every: int = SPLIT_EVERY

    def ref(self, source):
        """What a task is handed to read ``source`` (in-process: the source itself)."""
        return source

    def chunks_verified(self, source, reset: bool = False) -> dict:
        """{array: sorted chunk indices} that reads of ``source`` outside this process matched to their recorded
        checksums; ``reset``: forget them (the start of a run). In-process: none (``source`` records its own)."""
        return {}

    def task_device(self, request: str | None):
        """The torch device tasks run on for ``request`` (None: "auto"), resolved here."""
        from embedx.device import resolve_device

        return resolve_device(request or "auto")

    def describe(self) -> str:
        return f"{self.name} ({self.threads} thread{'s' if self.threads != 1 else ''})"

    # -- the interface ------------------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Sequence, *args, bar=None, sizes=None, parallel: bool = True,
            item_bytes: int = 0, result_bytes: int = 0) -> Iterator:
        """``fn(item, *args)`` for every item, yielded in item order. ``bar``: a progress counter advanced by
        ``sizes[i]`` (default 1) as result i comes; ``item_bytes``: stored bytes an item reads (a remote executor
        sizes its tasks by it); ``result_bytes``: bytes of one result (bounds the results held)."""
        items = list(items)
        sizes = [1] * len(items) if sizes is None else list(sizes)
        for i, res in enumerate(self._results(fn, items, args, parallel, result_bytes)):
            if bar is not None:
                bar.update(sizes[i])
            yield res

    def map_reduce(self, fn: Callable, items: Sequence, merge: Callable, *args, bar=None, sizes=None,
                   parallel: bool = True, item_bytes: int = 0):
        """The fixed merge tree (:class:`MergeTree`) of ``fn(item, *args)`` over ``items``; ``merge(a, b)`` must
        not modify its arguments. Options as :meth:`map`."""
        items = list(items)
        if not items:
            raise ValueError("map_reduce over no items")
        return tree_reduce(self.map(fn, items, *args, bar=bar, sizes=sizes, parallel=parallel,
                                    item_bytes=item_bytes), merge, self.split_every)

    def _results(self, fn, items: list, args: tuple, parallel: bool, result_bytes: int) -> Iterator:
        """The results in item order: tasks on a pool of ``threads`` (1 unless ``parallel``), at most a window of
        them submitted and not yet taken. A failed task raises when its turn comes (the earliest failure in item
        order wins, whatever the timing); the tasks not yet started are cancelled."""
        if not items:
            return
        threads = min(self.threads if parallel else 1, len(items))
        window = max(threads, min(2 * threads, RESULT_BYTES // max(1, result_bytes)))
        pool = ThreadPoolExecutor(threads, thread_name_prefix="embedx-task")
        pending: deque = deque()
        try:
            it = iter(items)
            for item in it:
                pending.append(pool.submit(fn, item, *args))
                if len(pending) >= window:
                    break
            while pending:
                res = pending.popleft().result()
                for item in it:
                    pending.append(pool.submit(fn, item, *args))
                    break
                yield res
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)


class SerialExecutor(Executor):
    """One task at a time, in item order (on one worker thread)."""

    name = "serial"
    threads = 1


class ThreadedExecutor(Executor):
    """Up to ``threads`` tasks at once on a pool of threads (default: the cores, at most 16)."""

    name = "threaded"

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(threads or min(os.cpu_count() or 1, 16)))


def default_executor() -> Executor:
    """In-process, one thread per core: the embedded default."""
    return ThreadedExecutor()


def resolve(executor) -> Executor:
    """An :class:`Executor` from None (the default), "serial", "threaded" or an instance."""
    if executor is None or executor == "threaded":
        return default_executor()
    if executor == "serial":
        return SerialExecutor()
    if isinstance(executor, Executor):
        return executor
    from embedx.validate import error

    raise error("executor", f"executor must be 'serial', 'threaded' or an embedx Executor, got {executor!r}")
