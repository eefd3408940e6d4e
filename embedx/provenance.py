"""What every JSON result carries: the schema it follows and where its numbers came from.

A result is ``{"schema": "embedx.<kind>/<version>", "embedx_version", "created", "stores": {role: {...}},
"options": {...}, ...the numbers}``. ``stores`` names each input store by role ("store", "before", "after",
"others/<name>") with what identifies its embeddings: the path, the generation id, the model, the pretrained tag
or finetune checkpoint, the dataset and split. ``options`` holds only the settings that change numbers.
"""
from __future__ import annotations

import datetime as _dt
import os

SCHEMA_VERSION = 1
STORE_FIELDS = ("model", "pretrained", "dataset", "split", "mode", "dtype", "generation")


def schema(kind: str) -> str:
    """``embedx.<kind>/<SCHEMA_VERSION>`` (kind: measure, transfer, drift, predict, ...)."""
    return f"embedx.{kind}/{SCHEMA_VERSION}"


def store_provenance(store) -> dict:
    """What identifies one store's embeddings (``store``: an :class:`embedx.store.Store`)."""
    meta = store.meta
    out = {"path": str(store.path), "n_images": int(store.n_images), "n_texts": int(store.n_texts)}
    out.update({k: meta.get(k) for k in STORE_FIELDS})
    ck = meta.get("checkpoint") or None
    out["checkpoint"] = ({k: ck.get(k) for k in ("path", "method", "options", "sha256")}
                         if isinstance(ck, dict) else ck)  # the finetune run (embedx.models.factory.ModelSpec.checkpoint)
    src = meta.get("source")
    if isinstance(src, dict) and src.get("format"):
        out["source_format"] = src.get("format")
    return out


def provenance(kind: str, stores: dict, options: dict | None = None) -> dict:
    """The header of a ``kind`` result: schema, embedx version, UTC time, ``stores`` ({role: Store or a dict
    already built}) and the ``options`` that change numbers."""
    from embedx.version import __version__

    return {"schema": schema(kind), "embedx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stores": {role: (s if isinstance(s, dict) else store_provenance(s)) for role, s in stores.items()},
            "options": dict(options or {})}


def relative_to(path: str, base_file: str) -> str:
    """``path`` relative to the folder of ``base_file`` (a history CSV records stores this way), or as given
    when it is a URL or on another drive."""
    from embedx.fs.locations import location

    if not location(path).local:
        return str(path)
    try:
        return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(base_file)))
    except ValueError:  # another drive (Windows)
        return os.path.abspath(path)


def file_provenance(path: str) -> dict:
    """What identifies an input file that is not a store (a ``predict`` history CSV): its path, size and sha256."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}
