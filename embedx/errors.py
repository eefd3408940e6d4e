"""User-facing errors: one line, no traceback (the CLI prints ``error: <message>`` and exits 2)."""


class EmbedxError(Exception):
    """Bad input or a refused operation, explained in one line."""


class StoreError(EmbedxError):
    """A store is missing, unfinished, of another schema, or would be overwritten."""
