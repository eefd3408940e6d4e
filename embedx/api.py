"""embedx's Python API, re-exported by ``embedx``: ``open``, ``measure`` and ``import_arrays`` here; ``transfer``
(``embedx.transferability.api``), ``drift`` (``embedx.drift_analysis.api``) and ``embed``
(``embedx.embedding.serial``) beside their workflows. Each is a plain function that declares what each parameter
accepts (``@constraints``, ``embedx.constraints``), checked on call before any work, and runs the library; errors
are ``embedx.EmbedxError`` naming the Python parameter at fault (``err.param``). Heavy imports (torch, open_clip)
happen inside the functions, so ``import embedx`` stays light.

A *source* is a store path, an open store (``embedx.open``), ``embedx.ArrayRows(images, texts, labels)`` or a
tuple ``(images, texts[, labels])`` of numpy arrays or torch tensors.
"""
from __future__ import annotations

from embedx.constraints import (DISTRIBUTED, PROGRESS, SEED, ArrayFile, Bool, Device, Either, Int, Names, OneOf,
                                Optional, Path, Source, StorePath, Text, TextList, constraints)

SILHOUETTE = OneOf("auto", "exact", "sample")
KNN = OneOf("blocked", "faiss")
DTYPE = OneOf("float16", "float32")
CODEC = OneOf(of="embedx.store.writer:CODECS")


@constraints(path=StorePath(), allow_partial=Bool(), verify_content=Bool())
def open(path, *, allow_partial: bool = False, verify_content: bool = True):  # noqa: A001  (embedx.open)
    """Open the store at ``path`` (local or fsspec URL) for reading -> ``embedx.store.Store``.
    ``allow_partial``: an unfinished store too (its committed rows); ``verify_content``: check every whole chunk
    read against its recorded checksum (the default)."""
    from embedx.store import Store

    return Store(str(path), allow_partial=allow_partial, verify_content=verify_content)


@constraints(source=Source(), metrics=Optional(Names("measure", "metric")), device=Device(), silhouette=SILHOUETTE,
             sample_size=Int(min=2), seed=SEED, silhouette_labels=OneOf("modality", "class"), knn=KNN,
             per_class=Bool(), progress=PROGRESS, **DISTRIBUTED)
def measure(source, metrics=None, *, device: str = "auto", silhouette: str = "auto", sample_size: int = 2000,
            seed: int = 0, silhouette_labels: str = "modality", knn: str = "blocked", per_class: bool = False,
            progress=None, executor=None, cluster=None, client=None):
    """The papers' measures of ``source`` -> ``embedx.Result``: a mapping {measure: value} (``pd.Series(r)``,
    ``pd.DataFrame([r1, r2])``), with ``.info`` (n_images, n_texts, dim, store, ties, integrity), ``.timings``
    (seconds per step), ``.provenance``, ``.estimates`` (sampled silhouette), ``.per_class``; ``to_dict()`` is
    the JSON ``embedx measure --json`` writes.

    ``metrics``: names from ``embedx.registry.names("measure")``: a list, one name or "acs,gap" (default: every
    one the source supports).
    ``silhouette``: "auto" (exact when projected under a minute on this machine, else sampled: see
    ``.info["silhouette_method"]``), "exact" or "sample" (``sample_size`` points drawn with ``seed``).
    ``device``: "auto", "cpu", "cuda".
    ``cluster``: "local[:N]" or "tcp://HOST:PORT", or ``client``: a ``distributed.Client`` (embedx[dist]): the
    passes run as Dask tasks, the same bits as the in-process result. Same numbers as ``embedx measure`` on a
    store of the same rows."""
    from embedx.engine.cluster import connect
    from embedx.measures import compute

    with connect(cluster, client) as dask_executor:
        return compute(_source(source), metrics, silhouette_mode=silhouette, sample_size=sample_size, seed=seed,
                       knn=knn, per_class=per_class, silhouette_labels=silhouette_labels, device=device,
                       progress=progress, executor=dask_executor or executor)


@constraints(out=Path(), images=Optional(ArrayFile(2)), texts=Optional(ArrayFile(2)),
             labels=Optional(ArrayFile(1, whole=True)), paired=Optional(Bool()),
             names=Optional(Either(Path(exists="file"), TextList())), ids=Optional(ArrayFile(1, numeric=False)),
             dtype=DTYPE, overwrite=Bool(), model=Optional(Text()), pretrained=Optional(Text()),
             dataset=Optional(Text()), codec=Optional(CODEC), chunk_rows=Optional(Int(min=1)))
def import_arrays(out, images, texts, labels=None, *, paired: bool | None = None, names=None, ids=None,
                  dtype: str = "float16", overwrite: bool = False, model: str | None = None,
                  pretrained: str | None = None, dataset: str | None = None, codec: str | None = None,
                  chunk_rows: int | None = None):
    """Write arrays (numpy, torch, or .npy/.npz/.parquet paths) as a complete store at ``out`` -> ``embedx.Result``
    (no scores; ``.info``: the store's path, n_images, n_texts, dim, dtype, mode, ...; ``.provenance``: its
    generation id; ``to_dict()``: the store's whole metadata, checksums and sums included). ``labels``: class index
    per image (class store; ``texts`` the class prompts); without labels (or ``paired=True``) text i pairs with
    image i. ``ids``: the source id of each row; in a paired store rows that share an id are one image with several
    captions (every caption a positive of retrieval recall): COCO-style, ``texts`` holds every caption, ``ids`` one
    id per caption, and ``images`` either one row per caption or one row per distinct id (in order of first
    appearance in ``ids``). Every row is checked first (NaN/inf, zero rows, a dimension mismatch, labels out of
    range, float16 overflow): nothing is written on bad input. ``model``, ``pretrained``: the model and weights that
    made the rows (recorded; CLIP_benchmark result files name them). ``codec`` (None: the store's default,
    ``embedx.store.DEFAULT_CODEC``) and ``chunk_rows`` (None: about 4 MiB) shape the arrays."""
    from embedx.engine.result import store_result
    from embedx.formats.arrays import import_arrays as run

    if paired is None:
        paired = labels is None
    layout = {"chunk_rows": chunk_rows} if codec is None else {"chunk_rows": chunk_rows, "codec": codec}
    meta = run(str(out), images=images, texts=texts, labels=labels, paired=paired, names=names, ids=ids,
               dtype=dtype, overwrite=overwrite, model=model, pretrained=pretrained, dataset=dataset, **layout)
    return store_result(str(out), meta, "import", options={"dtype": dtype})


def _source(source):
    from embedx.rowsource import as_source

    return as_source(source)

