"""The options of an ``embed`` run, grouped by what they decide (``embed_to_store`` takes one object of each):

  SourceOptions   how the data is read: its kind's keyword options (``embedx.engine.kinds``) and ``per_class``/``limit``
  EncodeOptions   how items become rows: batches, loader workers, device, prompt templates, unreadable images
  WriteOptions    how rows are stored: dtype, codec, chunk size, overwrite, commit interval
  ClusterOptions  where the encoding runs: in this process, or on a Dask cluster (``cluster`` or ``client``)

None of them changes a stored number except ``WriteOptions.dtype`` (and the model, data and seed, which
``embed_to_store`` takes itself); ``EncodeOptions.batch_size`` decides the batches, so a resume keeps it.
:func:`split` builds the four from the flat keyword names ``embedx.embed`` and ``embedx embed`` use.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

from embedx import store as st

COMMIT_EVERY_S = 5.0


@dataclass(frozen=True)
class SourceOptions:
    """``classes`` (a class-names file), ``image_col``, ``caption_col``, ``label_col``: the keyword options of the
    data's kind (``wds:`` and ``parquet:``; refused for other kinds). ``per_class``: at most N
    items of every class (the first ones, the source's order kept); ``limit``: only the first N items (after
    ``per_class``); ``classnames``: names that replace the source's own class names, one per class in its order."""

    classes: str | None = None
    image_col: str | None = None
    caption_col: str | None = None
    label_col: str | None = None
    per_class: int | None = None
    limit: int | None = None
    classnames: Sequence[str] | None = None

    def kind_options(self) -> dict:
        """The options ``parse_source`` hands to the data's kind."""
        return {"classes": self.classes, "image_col": self.image_col, "caption_col": self.caption_col,
                "label_col": self.label_col}


@dataclass(frozen=True)
class EncodeOptions:
    """``batch_size`` images a forward pass; ``workers`` loader processes (None: ``default_workers()``);
    ``device`` auto/cpu/cuda[:N]; ``templates`` the class prompts (None: the source's own); ``strict``: fail on the
    first unreadable image instead of skipping it; ``normalize_on_device`` (None: on CUDA): loaders hand over
    uint8 pixels that the device scales and normalizes (the same pixels bit for bit)."""

    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    templates: Sequence[str] | None = None
    strict: bool = False
    normalize_on_device: bool | None = None


@dataclass(frozen=True)
class WriteOptions:
    """``dtype`` float16/float32 of the stored rows; ``codec`` and ``chunk_rows`` (None: about 4 MiB) of the
    store's arrays; ``overwrite`` replaces a store at ``out``; ``commit_every_s``: a serial run commits its whole
    batches at least this often."""

    dtype: str = "float16"
    codec: str = st.DEFAULT_CODEC
    chunk_rows: int | None = None
    overwrite: bool = False
    commit_every_s: float = COMMIT_EVERY_S


@dataclass(frozen=True)
class ClusterOptions:
    """``cluster`` ("local[:N]", "tcp://HOST:PORT") or ``client`` (a ``distributed.Client``): tasks of whole
    chunks on Dask workers, ``task_bytes`` of output each (None: ``EMBEDX_TASK_BYTES`` or 128 MiB). Neither: the
    run stays in this process."""

    cluster: str | None = None
    client: object = None
    task_bytes: int | None = None

    @property
    def on_cluster(self) -> bool:
        """A cluster or client was given: the run is the cluster embed (embedx.embedding.cluster)."""
        return self.cluster is not None or self.client is not None


GROUPS = {"source": SourceOptions, "encode": EncodeOptions, "write": WriteOptions, "cluster": ClusterOptions}


def split(**options) -> dict:
    """``{"source": SourceOptions, "encode": ..., "write": ..., "cluster": ...}`` from the flat keyword names
    (``batch_size=16, chunk_rows=32, limit=50, ...``); an unknown name is a TypeError, as for any function."""
    out = {}
    for group, cls in GROUPS.items():
        names = {f.name for f in fields(cls)}
        out[group] = cls(**{k: options.pop(k) for k in list(options) if k in names})
    if options:
        raise TypeError(f"embed got unexpected keyword argument(s) {', '.join(map(repr, options))}")
    return out
