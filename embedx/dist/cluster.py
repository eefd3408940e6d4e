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


@contextlib.contextmanager
def local_cluster(n: int | None = None, threads_per_worker: int = 1):
    """Context: a cluster of ``n`` local worker processes (default one per core) with embedx's worker environment
    (``LocalCUDACluster``, one worker per GPU, where dask-cuda is installed and CUDA is visible), torn down on
    exit; the caller's environment is left as it was."""
    import dask

    n = n or max(1, os.cpu_count() or 1)
    saved = dict(os.environ)
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
    _restore_environ(saved)
    try:
        yield cluster
    finally:
        cluster.close()
        _restore_environ(saved)  # again: a worker restarted meanwhile wrote it


@contextlib.contextmanager
def connect(cluster=None, client=None, *, task_bytes: int | None = None):
    """Context: a :class:`embedx.dist.executor.DaskExecutor` on ``client`` (kept open), on ``cluster``
    ("local[:N]": started here and torn down after; "tcp://HOST:PORT": connected to), or None when neither
    is given (the caller then runs in-process)."""
    if client is None and cluster is None:
        yield None
        return
    _require_dask()
    from embedx.dist.executor import DaskExecutor

    if client is not None:
        yield DaskExecutor(client, task_bytes=task_bytes)
        return
    from distributed import Client

    kind, arg = parse_cluster(cluster)
    if kind == "local":
        with local_cluster(arg) as lc, Client(lc) as c:
            yield DaskExecutor(c, task_bytes=task_bytes)
        return
    timeout = float(os.environ.get("EMBEDX_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
    try:
        c = Client(arg, timeout=timeout)
    except (OSError, TimeoutError) as e:
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise validate.error("cluster", f"cannot reach the Dask scheduler at {arg} within {timeout:g} s ({why}); "
                                        f"start one with `dask scheduler` and workers with `dask worker {arg}`") \
            from None
    with c:
        yield DaskExecutor(c, task_bytes=task_bytes)
