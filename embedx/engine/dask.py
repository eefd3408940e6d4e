"""The Dask executor: tasks of whole chunks (or shards), each reading its own row range from the store, and a
fixed merge tree, so a result is the same run after run.

  * :meth:`DaskExecutor.map_reduce` maps ``fn(item, *args)`` over ``items`` and merges the results pairwise-free
    in a fixed tree (groups of ``split_every`` consecutive results, level by level, on the workers): the float64
    sums are added in one order whatever the timing, and only the merged partial comes back.
  * :meth:`DaskExecutor.map` returns every result in item order (block-pair tasks of the pairwise kernels).
  * :meth:`DaskExecutor.ref` turns a source into what a task opens: a store becomes its path and generation id
    (``embedx.rowsource.StoreRef``; each worker opens it once and reads directly), in-memory rows travel once,
    as a task of the graph (:func:`graph_data`: a worker that dies holding them has them recomputed).

Tasks are retried ``RETRIES`` times on an error; a worker that dies is handled by Dask (its tasks are recomputed
elsewhere, up to ``distributed.scheduler.allowed-failures`` deaths per task).
"""
from __future__ import annotations

import os

from embedx.engine.executor import Executor

TASK_BYTES = 128 << 20   # stored bytes a task reads (64-256 MiB: Dask's per-task overhead is ~1 ms)
SPLIT_EVERY = 8
RETRIES = 2


def worker_path(path: str) -> str:
    """``path`` as a worker opens it: a local path made absolute (a worker may run in another folder, or on another
    machine with the same mounts), a URL as it is."""
    from embedx.fs.locations import location

    return location(path).absolute()


def _absolute(ref):
    import dataclasses

    path = getattr(ref, "path", None)
    if isinstance(path, str) and worker_path(path) != path:
        return dataclasses.replace(ref, path=worker_path(path))
    return ref


def _value(x):
    return x


def graph_data(client, value, key: str | None = None):
    """A future of ``value`` held as a task of the graph (its argument), not scattered: the scheduler keeps the
    task, so when every worker holding the value dies it is computed again on another one (scattered data dies
    with its last holder, and every task that needs it is cancelled). It is sent to the scheduler once; workers
    fetch it from each other."""
    import warnings

    with warnings.catch_warnings():  # a large source (many file names) is one graph argument, by design
        warnings.filterwarnings("ignore", message=r".*[Ll]arge .*graph")
        return client.submit(_value, value, pure=False, key=key)


def _merge_all(parts: list, merge):
    """``merge``-fold of ``parts`` left to right (a node of the merge tree)."""
    out = parts[0]
    for p in parts[1:]:
        out = merge(out, p)
    return out


class DaskExecutor(Executor):
    """Runs a pass as Dask tasks on ``client``'s workers. ``task_bytes``: stored bytes per task (default
    TASK_BYTES, or ``EMBEDX_TASK_BYTES``)."""

    name = "dask"
    distributed = True
    threads = 1

    def __init__(self, client, task_bytes: int | None = None, split_every: int = SPLIT_EVERY):
        self.client = client
        self.task_bytes = int(task_bytes or os.environ.get("EMBEDX_TASK_BYTES") or TASK_BYTES)
        self.split_every = max(2, int(split_every))
        self._scattered = {}

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def describe(self) -> str:
        return f"dask ({self.n_workers} workers at {self.client.scheduler.address})"

    def partitioned(self, fold, workers, items) -> None:
        raise NotImplementedError("the Dask executor runs row-range tasks (map_reduce), not in-process folds")

    def ref(self, source):
        """What a task receives to read ``source``: a StoreRef for stores, the rows as a graph task otherwise."""
        make = getattr(source, "ref", None)
        if make is not None:
            return _absolute(make())
        key = id(source)
        if key not in self._scattered:
            self._scattered[key] = (source, graph_data(self.client, source))
        return self._scattered[key][1]

    def row_ranges(self, n: int, unit: int, unit_bytes: int) -> list[tuple[int, int]]:
        """[start, stop) ranges over ``n`` rows, each whole units of ``unit`` rows (``unit_bytes`` stored bytes a
        unit) and about ``task_bytes`` (at least one unit): the tasks of a pass."""
        step = unit * max(1, self.task_bytes // max(1, unit_bytes))
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    def chunks_verified(self, source, reset: bool = False) -> dict:
        """{array: sorted chunk indices} the workers' reads of ``source`` matched to their recorded checksums (a
        worker restarted meanwhile forgets its own); ``reset``: forget them (the start of a run)."""
        make = getattr(source, "ref", None)
        if make is None:
            return {}
        from embedx.store import opened_verified

        out: dict = {}
        for per_worker in self.client.run(opened_verified, make(), reset).values():
            for name, ks in per_worker.items():
                out.setdefault(name, set()).update(ks)
        return {name: sorted(ks) for name, ks in out.items()}

    def _submit(self, fn, items, args) -> list:
        return [self.client.submit(fn, item, *args, pure=False, retries=RETRIES) for item in items]

    @staticmethod
    def _progress(futures, bar, sizes) -> None:
        """Advance ``bar`` by ``sizes[i]`` as future i finishes (returns when all have)."""
        if bar is None or sizes is None:
            return
        from distributed import as_completed

        size = {f.key: s for f, s in zip(futures, sizes)}
        for f in as_completed(futures):
            if f.status == "finished":
                bar.update(size[f.key])

    def map(self, fn, items, *args, bar=None, sizes=None) -> list:
        """``[fn(item, *args) for item in items]`` as tasks, results in item order."""
        items = list(items)
        if not items:
            return []
        futures = self._submit(fn, items, args)
        self._progress(futures, bar, sizes)
        return self.client.gather(futures)

    def map_reduce(self, fn, items, merge, *args, bar=None, sizes=None):
        """``merge``-fold of ``fn(item, *args)`` over ``items`` in a fixed tree: level by level, groups of
        ``split_every`` consecutive results merge left to right on a worker. ``bar``/``sizes``: progress."""
        items = list(items)
        if not items:
            raise ValueError("map_reduce over no items")
        leaves = level = self._submit(fn, items, args)
        while len(level) > 1:
            groups = [level[i:i + self.split_every] for i in range(0, len(level), self.split_every)]
            level = self._submit(_merge_all, groups, (merge,))
        self._progress(leaves, bar, sizes)
        del leaves
        return level[0].result()
