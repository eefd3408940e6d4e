"""The one place where embedx builds the filesystem behind a URL (``s3://``, ``gs://``, ``memory://``, ...), for
stores, dumps and data sources alike, and where a fault of that storage becomes a one-line error.

Object storage gets bounded time: for ``s3://`` (s3fs over botocore) every request has a connect timeout of
``S3_CONNECT_TIMEOUT_S``, a read timeout (the longest wait for the next bytes of an answer) of
``S3_READ_TIMEOUT_S``, and at most ``S3_ATTEMPTS`` attempts (botocore's "standard" retry mode: connection
errors, timeouts, throttling and 5xx answers are retried with backoff; s3fs adds no retries of its own on top).
So an endpoint that accepts connections but never answers costs at most about attempts x read timeout per
request (about 30 s) instead of minutes, and a refused one fails in seconds. ``EMBEDX_S3_CONNECT_TIMEOUT``,
``EMBEDX_S3_READ_TIMEOUT`` (seconds) and ``EMBEDX_S3_ATTEMPTS`` override them; fsspec's own configuration for
``s3`` (``FSSPEC_S3_*`` variables, ``fsspec.config.conf["s3"]`` as set before embedx's first S3 access) wins over
both, key by key. They are set as fsspec's configuration for ``s3``, so every S3 filesystem of the process gets
them. Credentials and the endpoint come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...),
which Dask workers started locally inherit.

:func:`storage_fault` turns what botocore, aiohttp and fsspec raise when the storage cannot be reached, does not
answer in time, drops the connection or finds no credentials into a :class:`embedx.errors.StorageError` naming
the URL and the endpoint; :func:`storage_faults` does it around a block.
"""
from __future__ import annotations

import contextlib
import os

from embedx.errors import StorageError, one_line

S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 10.0
S3_ATTEMPTS = 3
_S3_PROTOCOLS = ("s3", "s3a")


def is_url(path) -> bool:
    return "://" in str(path)


def _number(name: str, default, cast):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise StorageError(f"{name} must be a positive number, got {raw!r}")
    return value


def s3_limits() -> tuple[float, float, int]:
    """(connect timeout s, read timeout s, attempts) for S3 requests: the defaults or ``EMBEDX_S3_*``."""
    return (_number("EMBEDX_S3_CONNECT_TIMEOUT", S3_CONNECT_TIMEOUT_S, float),
            _number("EMBEDX_S3_READ_TIMEOUT", S3_READ_TIMEOUT_S, float),
            _number("EMBEDX_S3_ATTEMPTS", S3_ATTEMPTS, int))


_USER_S3: dict | None = None  # fsspec's configuration for s3 as the user left it (FSSPEC_S3_* variables)


def storage_options(path) -> dict:
    """The fsspec options for ``path``: the timeouts and retries above for ``s3://`` (fsspec's own configuration
    for ``s3``, as the user set it, wins key by key), nothing for other protocols (their own defaults) or local
    paths."""
    protocol = str(path).split("://", 1)[0].lower() if is_url(path) else ""
    if protocol not in _S3_PROTOCOLS:
        return {}
    import copy

    import fsspec.config

    global _USER_S3
    if _USER_S3 is None:
        _USER_S3 = copy.deepcopy(dict(fsspec.config.conf.get("s3") or {}))
    connect, read, attempts = s3_limits()
    user = copy.deepcopy(_USER_S3)
    config = {"connect_timeout": connect, "read_timeout": read,
              "retries": {"total_max_attempts": attempts, "mode": "standard"}}
    config.update(user.pop("config_kwargs", None) or {})
    return {**user, "config_kwargs": config}


def _filesystem(path, **extra):
    """The filesystem of ``path``. The S3 options go into fsspec's configuration for ``s3`` rather than into the
    call, so every S3 filesystem of this process (zarr's, one a caller makes with ``fsspec.filesystem("s3")``)
    is the same cached instance with the same limits, sharing one listing cache."""
    import fsspec
    import fsspec.config

    opts = storage_options(path)
    if opts:
        fsspec.config.conf["s3"] = opts
    fs, p = fsspec.core.url_to_fs(str(path), **extra)
    if opts:
        fs.retries = 1  # s3fs's own retry loop (a class attribute, no option): botocore's attempts are the retries
    return fs, p


def url_fs(path: str):
    """(fsspec filesystem, path within it) of a URL, with :func:`storage_options`."""
    return _filesystem(path)


def open_group(path, mode: str = "r"):
    """``zarr.open_group`` of a local path or a URL, the URL's filesystem built as :func:`url_fs` builds it
    (asynchronous, as zarr wants it)."""
    import zarr

    if not storage_options(path):
        return zarr.open_group(str(path), mode=mode)
    from zarr.storage import FsspecStore

    fs, p = _filesystem(path, asynchronous=True)
    return zarr.open_group(FsspecStore(fs, path=p, read_only=mode == "r"), mode=mode)


_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_TIMEOUTS = {"ConnectTimeoutError", "ReadTimeoutError", "FSTimeoutError", "ServerTimeoutError",
             "ConnectionTimeoutError", "SocketTimeoutError"}
_CONNECTION = {"EndpointConnectionError", "ConnectionClosedError", "ProxyConnectionError", "ClientConnectorError",
               "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "ClientOSError",
               "HTTPClientError", "IncompleteRead"}
# The interpreter's own connection errors and timeouts count only where the caller names the URL at fault (a
# local disk raises no such error; stdout's BrokenPipeError must stay what it is).
_BUILTIN = {"ConnectionError": "connection", "TimeoutError": "timeout"}


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _kind(e: BaseException, url) -> tuple[str, BaseException] | None:
    for x in _chain(e):
        names = {c.__name__ for c in type(x).__mro__}
        if names & _CREDENTIALS:
            return "credentials", x
        if names & _TIMEOUTS:
            return "timeout", x
        if names & _CONNECTION:
            return "connection", x
        if url is not None:
            for name, kind in _BUILTIN.items():
                if name in names:
                    return kind, x
    return None


def endpoint(url=None, e: BaseException | None = None) -> str:
    """The storage endpoint a request of ``url`` goes to (as botocore names it in ``e``, else the environment's)."""
    for x in _chain(e) if e is not None else ():
        ep = (getattr(x, "kwargs", None) or {}).get("endpoint_url")
        if ep:  # botocore names the whole request URL: its scheme and host are the endpoint
            from urllib.parse import urlsplit

            u = urlsplit(str(ep))
            return f"{u.scheme}://{u.netloc}" if u.scheme and u.netloc else str(ep)
    protocol = str(url).split("://", 1)[0].lower() if url is not None and is_url(url) else "s3"
    if protocol in _S3_PROTOCOLS:
        return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or "the default AWS S3 endpoint")
    return f"the {protocol}:// service"


def _why(x: BaseException) -> str:
    text = one_line(x, 200)
    return f"{type(x).__name__}: {text}" if text else type(x).__name__


def storage_fault(e: BaseException, url=None) -> StorageError | None:
    """A one-line :class:`StorageError` for ``e`` when it is a fault of the storage behind a URL (``url``, when
    the caller knows it): no credentials, an endpoint that cannot be reached, does not answer in time or drops the
    connection. None for anything else (the caller handles it as before)."""
    if isinstance(e, StorageError):
        return e
    found = _kind(e, url)
    if found is None:
        return None
    kind, x = found
    where = f"{url}: " if url is not None else ""
    ep = endpoint(url, e)
    if kind == "credentials":
        return StorageError(f"{where}no credentials for the storage endpoint {ep} ({_why(x)}); set "
                            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if kind == "timeout":
        connect, read, attempts = s3_limits()
        return StorageError(f"{where}the storage endpoint {ep} did not answer in time ({_why(x)}); each request "
                            f"gets {attempts} attempts, a connect timeout of {connect:g} s and a read timeout of "
                            f"{read:g} s (EMBEDX_S3_ATTEMPTS, EMBEDX_S3_CONNECT_TIMEOUT, EMBEDX_S3_READ_TIMEOUT)")
    return StorageError(f"{where}cannot reach the storage endpoint {ep}: the connection failed or was lost "
                        f"({_why(x)})")


@contextlib.contextmanager
def storage_faults(url):
    """Inside the block, a storage fault (:func:`storage_fault`) of ``url`` becomes a :class:`StorageError`
    naming it; nothing changes for a local path."""
    if not is_url(url):
        yield
        return
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        fault = storage_fault(e, url)
        if fault is None:
            raise
        raise fault from None
