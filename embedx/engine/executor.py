"""Where the work of a pass runs. The scores never see this: they hand the planner accumulators and block folds.

An :class:`Executor` runs ``partitioned(fold, workers, items)``: worker ``t`` (an accumulator with its own
buffers) folds ``items[t::len(workers)]`` in order; the caller merges the workers in their fixed order, so a
result is the same run after run. :class:`SerialExecutor` runs everything in the calling thread;
:class:`ThreadedExecutor` one thread per worker (the kernels release the GIL). A distributed executor implements
the same method with tasks of whole chunks and a fixed merge tree, touching no score.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence


class Executor:
    """Runs folds of items over workers. ``threads``: how many workers a pass should make."""

    threads: int = 1
    name: str = "executor"
    distributed = False  # True: work runs as tasks in other processes (embedx.engine), reading sources by ref

    def ref(self, source):
        """What a task is handed to read ``source`` (in-process: the source itself)."""
        return source

    def partitioned(self, fold: Callable, workers: Sequence, items: Sequence) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.threads} thread{'s' if self.threads != 1 else ''})"


class SerialExecutor(Executor):
    """Everything in the calling thread (workers are folded one after another)."""

    name = "serial"
    threads = 1

    def partitioned(self, fold, workers, items) -> None:
        for t, w in enumerate(workers):
            fold(w, items[t::len(workers)])


class ThreadedExecutor(Executor):
    """One thread per worker, up to ``threads`` (default: the cores, at most 16)."""

    name = "threaded"

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(threads or min(os.cpu_count() or 1, 16)))

    def partitioned(self, fold, workers, items) -> None:
        if len(workers) == 1:
            fold(workers[0], items)
            return
        with ThreadPoolExecutor(len(workers), thread_name_prefix="embedx-pass") as pool:
            for f in [pool.submit(fold, w, items[t::len(workers)]) for t, w in enumerate(workers)]:
                f.result()


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
