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
    (:func:`fold`) into one entry of the next level, until a level has one entry. A group is folded as its entries
    come (a left fold is sequential), so one partial per level is held: O(log n) results at most.

    ``merge_into(a, b)``: ``merge(a, b)`` computed into ``a`` (the same arithmetic), used on the partials the tree
    holds (they are its own: fed results, or merges). Any subtree of ``split_every**k`` consecutive items starting
    at a multiple of that size is itself a ``MergeTree`` of those items, so an executor may compute it anywhere (one
    Dask task) and feed it in at level k (:meth:`push`) with the same result."""

    def __init__(self, merge: Callable, split_every: int = SPLIT_EVERY, merge_into: Callable | None = None):
        self.merge, self.split_every = merge, max(2, int(split_every))
        self.merge_into = merge_into or merge
        self.levels: list = []  # per level None, or [the left fold of the group so far, its entries]

    def push(self, result, level: int = 0) -> None:
        """Add the next entry of ``level`` (results: level 0)."""
        while True:
            while len(self.levels) <= level:
                self.levels.append(None)
            lv = self.levels[level]
            if lv is None:
                lv = self.levels[level] = [result, 1]
            else:
                lv[0], lv[1] = self.merge_into(lv[0], result), lv[1] + 1
            if lv[1] < self.split_every:
                return
            self.levels[level] = None
            result, level = lv[0], level + 1

    def result(self):
        """The root: the incomplete groups fold bottom up (each into the end of the level above)."""
        held = [j for j, lv in enumerate(self.levels) if lv is not None]
        if not held:
            raise ValueError("a merge tree of no results")
        carry = None
        for j in range(held[-1] + 1):
            lv = self.levels[j]
            if lv is None:
                acc = carry
            else:
                acc = lv[0] if carry is None else self.merge_into(lv[0], carry)
            carry = acc
        self.levels = []
        return carry


def tree_reduce(results: Iterable, merge: Callable, split_every: int = SPLIT_EVERY,
                merge_into: Callable | None = None):
    """The root of the fixed merge tree over ``results`` (in item order)."""
    tree = MergeTree(merge, split_every, merge_into)
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
                   parallel: bool = True, item_bytes: int = 0, merge_into: Callable | None = None):
        """The fixed merge tree (:class:`MergeTree`) of ``fn(item, *args)`` over ``items``; ``merge(a, b)`` must
        not modify its arguments; ``merge_into(a, b)`` may (it adds ``b`` into ``a`` and returns it, with the
        arithmetic of ``merge``: the tree uses it on the partials it owns). Options as :meth:`map`."""
        items = list(items)
        if not items:
            raise ValueError("map_reduce over no items")
        return tree_reduce(self.map(fn, items, *args, bar=bar, sizes=sizes, parallel=parallel,
                                    item_bytes=item_bytes), merge, self.split_every, merge_into)

    def _results(self, fn, items: list, args: tuple, parallel: bool, result_bytes: int) -> Iterator:
        """The results in item order: tasks on a pool of ``threads`` (``parallel``; else one task at a time), at
        most a window of them submitted and not yet taken. A failed task raises when its turn comes (the earliest
        failure in item order wins, whatever the timing); the tasks not yet started are cancelled."""
        if not items:
            return
        threads = min(self.threads if parallel else 1, len(items))
        window = 1 if not parallel else max(threads, min(2 * threads, RESULT_BYTES // max(1, result_bytes)))
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
