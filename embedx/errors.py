"""User-facing errors: one line, no traceback (the CLI prints ``error: <message>`` and exits 2)."""
from __future__ import annotations


class EmbedxError(ValueError):
    """Bad input or a refused operation, explained in one line. A ``ValueError`` (scikit-learn's habit: ``except
    ValueError`` catches a bad argument); code that catches ValueError around embedx calls re-raises it first.

    ``param`` names the Python parameter at fault (``EmbedxError("knn_k must be >= 1, got 0", param="knn_k")``),
    or a tuple of them when several clash (``param=("paired", "labels")``). Messages never name a CLI flag: they
    spell a parameter as Python does (``knn_k``, ``dtype='float32'``, a switch as ``overwrite=True``), and the CLI
    shows the command's flag in its place (``--knn-k``, ``--dtype float32``, ``--overwrite``:
    ``embedx.cli.common.with_flags``).
    """

    def __init__(self, message: str = "", param: str | tuple[str, ...] | None = None):
        super().__init__(message)
        self.param = param


class StoreError(EmbedxError):
    """A store is missing, unfinished, of another schema, or would be overwritten."""


class StorageError(StoreError):
    """The storage behind a URL failed: no credentials, an endpoint that cannot be reached, does not answer in time
    or dropped the connection (``embedx.fs.url``)."""


def one_line(x, limit: int | None = None) -> str:
    """``str(x)`` (an exception, or any text) on one line: every run of whitespace (newlines too) becomes one
    space; cut to its first ``limit`` characters when given. Library errors quote third-party exceptions with it."""
    text = " ".join(str(x).split())
    return text if limit is None else text[:limit]
