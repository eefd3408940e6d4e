"""Where a distributed run happens: ``--cluster local[:N]`` (a ``LocalCluster`` of N worker processes, started
and torn down here) or ``--cluster tcp://HOST:PORT`` (an existing ``dask scheduler``); or a caller's own
``distributed.Client``. Without any, nothing changes: the in-process executor is the embedded default.

Worker processes get ``MALLOC_MMAP_THRESHOLD_`` (bench/results/dist.md: distributed's default
``MALLOC_TRIM_THRESHOLD_`` alone makes every large temporary an mmap, page-faulted again on each reuse) unless
``EMBEDX_DASK_MALLOC=dask`` keeps Dask's default. GPU workers: start them with ``dask cuda worker`` (dask-cuda,
one worker per GPU) and pass ``tcp://``; ``local`` uses ``LocalCUDACluster`` when dask-cuda is installed and
CUDA is visible.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re

from embedx import validate
from embedx.errors import EmbedxError, one_line

MMAP_THRESHOLD = str(128 << 20)
CONNECT_TIMEOUT_S = 30


def _require_dask():
    try:
        import dask  # noqa: F401  (imported to check it is installed)
        import distributed  # noqa: F401
    except ImportError:
        raise validate.error("cluster", "a cluster needs Dask: pip install 'embedx[dist]' (dask and distributed)") \
            from None


def parse_cluster(spec: str) -> tuple[str, object]:
    """``local`` -> ("local", None: one worker per core); ``local:N`` -> ("local", N); ``tcp://HOST:PORT`` (or
    ``tls://``) -> ("remote", the address). Anything else is an error naming the forms."""
    spec = str(spec).strip()
    m = re.fullmatch(r"local(?::(\d+))?", spec)
    if m:
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and n < 1:
            raise validate.error("cluster", f"local:N needs N >= 1 workers, got {spec!r}")
        return "local", n
    if re.fullmatch(r"(tcp|tls|ucx|inproc)://[^\s]+", spec):
        return "remote", spec
    raise validate.error("cluster", f"unknown cluster {spec!r}; use local, local:N or tcp://HOST:PORT")


def _worker_environ() -> dict:
    if os.environ.get("EMBEDX_DASK_MALLOC", "embedx") == "dask":
        return {}
    return {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}


def _restore_environ(saved: dict) -> None:
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def environ_kept():
    """Context: ``os.environ`` is put back as it was on entry, on exit. distributed's nanny writes its worker
    environment (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``, ``PYTHONHASHSEED``, ...) into the *calling*
    process's environment each time it spawns a worker (start-up, and the restart of a worker that died), where
    every later subprocess of the caller would inherit it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        _restore_environ(saved)


def _why(e: BaseException) -> str:
    return one_line(e, 200) or type(e).__name__


def _logs_level() -> int:
    """The level Dask's own loggers keep during a run: warnings and above (embedx reports the run itself, and a
    fault in one line), INFO where the ``embedx`` logger logs DEBUG (``-v``)."""
    return logging.INFO if logging.getLogger("embedx").getEffectiveLevel() <= logging.DEBUG else logging.WARNING


class DaskLogs:
    """The levels of Dask's loggers (``distributed``, ``dask`` and every child with a level of its own, as
    distributed's config gives ``distributed.client``), raised for a while and put back by :meth:`restore`."""

    def __init__(self):
        self.saved: dict = {}

    def at_least(self, level: int) -> None:
        loggers = logging.root.manager.loggerDict
        names = ["distributed", "dask"] + [n for n, lg in list(loggers.items()) if isinstance(lg, logging.Logger)
                                           and n.startswith(("distributed.", "dask.")) and lg.level]
        for name in names:
            lg = logging.getLogger(name)
            self.saved.setdefault(name, lg.level)
            if lg.getEffectiveLevel() < level:
                lg.setLevel(level)

    def restore(self) -> None:
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)
        self.saved.clear()


@contextlib.contextmanager
def local_cluster(n: int | None = None, threads_per_worker: int = 1):
    """Context: a cluster of ``n`` local worker processes (default one per core) with embedx's worker environment
    (``LocalCUDACluster``, one worker per GPU, where dask-cuda is installed and CUDA is visible), torn down on
    exit; the caller's environment is left as it was. A worker that dies while the cluster starts is a one-line
    error."""
    import dask

    n = n or max(1, os.cpu_count() or 1)
    saved = dict(os.environ)
    try:
        with dask.config.set(_worker_environ()):
            cluster = None
            try:
                import torch
                from dask_cuda import LocalCUDACluster  # one worker per GPU where dask-cuda is installed

                if torch.cuda.is_available():
                    cluster = LocalCUDACluster(n_workers=min(n, torch.cuda.device_count()), dashboard_address=":0",
                                               silence_logs=logging.ERROR)
            except ImportError:
                pass
            if cluster is None:
                from distributed import LocalCluster

                cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                       dashboard_address=":0", silence_logs=logging.ERROR)
    except (RuntimeError, OSError, TimeoutError) as e:  # "Nanny failed to start.": a worker died while starting
        raise validate.error("cluster", f"cluster local:{n}: a Dask worker died as the cluster started "
                                        f"({_why(e)}); check that a worker process can start here (memory, "
                                        f"Dask's worker preload and config)") from None
    finally:
        _restore_environ(saved)
    try:
        yield cluster
    finally:
        _close_quietly(cluster, "cluster")
        _restore_environ(saved)  # again: a worker restarted meanwhile wrote it


def _close_quietly(obj, what: str) -> None:
    """Close a local Dask cluster or its client. Its work is finished (or already failed) here: a close that
    times out on a loaded machine is one warning line, not an error that would hide finished results (its
    worker processes are the nanny's children and end with it)."""
    try:
        obj.close()
    except TimeoutError as e:  # asyncio.TimeoutError is TimeoutError from Python 3.11
        logging.getLogger("embedx").warning("the local Dask %s took too long to close (%s); its worker "
                                            "processes end with this one", what, _why(e) or "timeout")


@contextlib.contextmanager
def _local_client(cluster):
    from distributed import Client

    c = Client(cluster)
    try:
        yield c
    finally:
        _close_quietly(c, "client")


def lost_scheduler(client, address: str, e: BaseException) -> str | None:
    """Why ``e`` (raised while ``client`` ran tasks on the scheduler at ``address``) means the scheduler is gone,
    or None when it does not: futures cancelled for the lost connection, a closed connection to that address, or a
    client no longer running."""
    reason = getattr(e, "reason", None)
    if reason == "scheduler-connection-lost" or "scheduler-connection-lost" in str(e):
        return "the connection to it was lost"
    if isinstance(e, OSError) and address in str(e):  # distributed's CommClosedError is an OSError
        return f"{type(e).__name__}: {_why(e)}"
    if getattr(client, "status", "running") not in ("running", "newly-created"):
        return f"the client is {client.status} ({type(e).__name__}: {_why(e)})"
    return None


def _fault(client, address: str, e: BaseException, rerun: str) -> EmbedxError | None:
    """A one-line error for a cluster fault (the scheduler lost, a task whose workers kept dying), else None."""
    from distributed import KilledWorker

    why = lost_scheduler(client, address, e)
    if why is not None:
        return EmbedxError(f"lost the Dask scheduler at {address}: {why}; {rerun}")
    if isinstance(e, KilledWorker):
        return EmbedxError(f"Dask workers at {address} kept dying while running task {getattr(e, 'task', '?')} "
                           f"({_why(e)}); check the workers' logs and memory, then {rerun}")
    return None


@contextlib.contextmanager
def connect(cluster=None, client=None, *, task_bytes: int | None = None, rerun: str = "rerun"):
    """Context: a :class:`embedx.engine.dask.DaskExecutor` on ``client`` (kept open), on ``cluster``
    ("local[:N]": started here and torn down after; "tcp://HOST:PORT": connected to), or None when neither
    is given (the caller then runs in-process).

    Faults are one-line :class:`EmbedxError` s ending in ``rerun`` (what to do next): a scheduler that cannot be
    reached, has no worker within ``EMBEDX_CONNECT_TIMEOUT_S`` (30 s), or is lost during the run; a task whose
    workers kept dying (Dask's ``allowed-failures``); a local worker that dies as the cluster starts. While
    connected, Dask's loggers log warnings and above (INFO too where the ``embedx`` logger logs DEBUG)."""
    if client is None and cluster is None:
        yield None
        return
    _require_dask()
    from distributed import Client

    from embedx.engine.dask import DaskExecutor

    logs = DaskLogs()  # importing distributed set its loggers to INFO: raised here, after the import
    logs.at_least(_logs_level())
    try:
        if client is not None:
            address = getattr(getattr(client, "scheduler", None), "address", None) or "the client's scheduler"
            with _faults(client, address, rerun, logs):
                yield DaskExecutor(client, task_bytes=task_bytes)
            return
        kind, arg = parse_cluster(cluster)
        if kind == "local":
            with local_cluster(arg) as lc, _local_client(lc) as c, _faults(c, lc.scheduler_address, rerun, logs):
                yield DaskExecutor(c, task_bytes=task_bytes)
            return
        timeout = float(os.environ.get("EMBEDX_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
        try:
            c = Client(arg, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise validate.error("cluster", f"cannot reach the Dask scheduler at {arg} within {timeout:g} s "
                                            f"({_why(e)}); start one with `dask scheduler` and workers with "
                                            f"`dask worker {arg}`") from None
        with c, _faults(c, arg, rerun, logs):
            try:
                c.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise validate.error("cluster", f"the Dask scheduler at {arg} has no worker (none joined within "
                                                f"{timeout:g} s, or each died as it started); start workers with "
                                                f"`dask worker {arg}` and check their logs") from None
            yield DaskExecutor(c, task_bytes=task_bytes)
    finally:
        logs.restore()


@contextlib.contextmanager
def _faults(client, address: str, rerun: str, logs: DaskLogs):
    """Context: a cluster fault raised inside (see :func:`connect`) becomes a one-line error."""
    try:
        yield
    except EmbedxError:
        raise
    except Exception as e:
        err = _fault(client, address, e, rerun)
        if err is None:
            raise
        # the fault is this one line: distributed's own reports of it while the client and cluster close (the
        # reconnect loop cancelled, with its traceback) stay off stderr; connect restores the levels after
        logs.at_least(logging.CRITICAL + 1)
        raise err from None
