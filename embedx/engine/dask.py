"""The Dask executor: the executor interface (``embedx.engine.executor``) as Dask tasks, each reading its own rows
from the store, merged in the same fixed tree, so a result is the same run after run and the same as in-process.

  * :meth:`DaskExecutor.map_reduce`: one task per subtree of the merge tree (``SPLIT_EVERY**k`` consecutive items,
    about ``task_bytes`` of reads), the levels above it as merge tasks on the workers: the float64 sums are added in
    the very order the in-process executors add them, and only the merged root comes back.
  * :meth:`DaskExecutor.map`: tasks of consecutive items (about ``task_bytes``), results in item order, a window of
    them in flight (about ``RESULT_BYTES`` of results, at least WAVE_PER_WORKER tasks per worker).
  * :meth:`DaskExecutor.ref` turns a source into what a task opens: a store becomes its path and generation id
    (``embedx.rowsource.StoreRef``; each worker opens it once and reads directly), in-memory rows travel once,
    as a task of the graph (:func:`graph_data`: a worker that dies holding them has them recomputed).

Tasks are retried ``RETRIES`` times on an error; a worker that dies is handled by Dask (its tasks are recomputed
elsewhere, up to ``distributed.scheduler.allowed-failures`` deaths per task).
"""
from __future__ import annotations

import os

from embedx.engine.executor import RESULT_BYTES, Executor, fold, tree_reduce

TASK_BYTES = 128 << 20   # stored bytes a task reads (64-256 MiB: Dask's per-task overhead is ~1 ms)
RETRIES = 2
WAVE_PER_WORKER = 4      # a map keeps at least this many tasks per worker in flight


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


def _leaf(group: list, fn, merge, merge_into, split_every: int, *args):
    """A task: the subtree of the merge tree over ``group`` (consecutive items, a whole subtree)."""
    return tree_reduce((fn(item, *args) for item in group), merge, split_every, merge_into)


def _batch(group: list, fn, *args) -> list:
    """A task: ``[fn(item, *args) for item in group]``."""
    return [fn(item, *args) for item in group]


class DaskExecutor(Executor):
    """Runs a pass as Dask tasks on ``client``'s workers. ``task_bytes``: stored bytes a task reads (default
    TASK_BYTES, or ``EMBEDX_TASK_BYTES``)."""

    name = "dask"
    threads = 1

    def __init__(self, client, task_bytes: int | None = None, split_every: int | None = None):
        self.client = client
        self.task_bytes = int(task_bytes or os.environ.get("EMBEDX_TASK_BYTES") or TASK_BYTES)
        if split_every is not None:
            self.split_every = max(2, int(split_every))
        self._scattered = {}

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def describe(self) -> str:
        return f"dask ({self.n_workers} workers at {self.client.scheduler.address})"

    def task_device(self, request):
        """None: each worker resolves ``request`` on its own devices."""
        return None

    def ref(self, source):
        """What a task receives to read ``source``: a StoreRef for stores, the rows as a graph task otherwise."""
        make = getattr(source, "ref", None)
        if make is not None:
            return _absolute(make())
        key = id(source)
        if key not in self._scattered:
            self._scattered[key] = (source, graph_data(self.client, source))
        return self._scattered[key][1]

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

    def _submit(self, fn, groups, *args) -> list:
        return [self.client.submit(fn, g, *args, pure=False, retries=RETRIES) for g in groups]

    @staticmethod
    def _progress(futures, bar, sizes) -> None:
        """Advance ``bar`` by ``sizes[i]`` as future i finishes (returns when all have)."""
        if bar is None:
            return
        from distributed import as_completed

        size = {f.key: s for f, s in zip(futures, sizes)}
        for f in as_completed(futures):
            if f.status == "finished":
                bar.update(size[f.key])

    def _items_per_task(self, item_bytes: int, power_of: int | None = None) -> int:
        """Items a task takes: about ``task_bytes`` of reads, at least one (``power_of``: a power of it)."""
        fit = max(1, self.task_bytes // item_bytes) if item_bytes > 0 else 1
        if power_of is None:
            return fit
        g = 1
        while g * power_of <= fit:
            g *= power_of
        return g

    def map(self, fn, items, *args, bar=None, sizes=None, parallel=True, item_bytes=0, result_bytes=0):
        """``fn(item, *args)`` for every item, yielded in item order (tasks of consecutive items)."""
        items = list(items)
        if not items:
            return
        sizes = [1] * len(items) if sizes is None else list(sizes)
        g = self._items_per_task(item_bytes)
        groups = [items[i:i + g] for i in range(0, len(items), g)]
        window = max(WAVE_PER_WORKER * self.n_workers, RESULT_BYTES // max(1, g * result_bytes))
        pending, nxt, done = [], 0, 0
        try:
            while done < len(groups):
                while nxt < len(groups) and len(pending) < window:
                    pending += self._submit(_batch, [groups[nxt]], fn, *args)
                    nxt += 1
                results = pending.pop(0).result()
                for k, res in enumerate(results, done * g):
                    if bar is not None:
                        bar.update(sizes[k])
                    yield res
                done += 1
        finally:
            for f in pending:
                f.cancel()

    def map_reduce(self, fn, items, merge, *args, bar=None, sizes=None, parallel=True, item_bytes=0, merge_into=None):
        """The fixed merge tree of ``fn(item, *args)`` over ``items``: one task per subtree of
        ``split_every**k`` items (about ``task_bytes`` of reads), then level by level, groups of ``split_every``
        consecutive results merge left to right on a worker (``merge``: the inputs are other tasks' results; a
        subtree task merges its own partials with ``merge_into``); only the root comes back."""
        items = list(items)
        if not items:
            raise ValueError("map_reduce over no items")
        sizes = [1] * len(items) if sizes is None else list(sizes)
        s = self.split_every
        g = self._items_per_task(item_bytes, power_of=s)
        cuts = range(0, len(items), g)
        leaves = level = self._submit(_leaf, [items[i:i + g] for i in cuts], fn, merge, merge_into, s, *args)
        while len(level) > 1:
            level = self._submit(fold, [level[i:i + s] for i in range(0, len(level), s)], merge)
        self._progress(leaves, bar, [sum(sizes[i:i + g]) for i in cuts])
        del leaves
        return level[0].result()
