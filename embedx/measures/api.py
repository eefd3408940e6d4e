"""The measures' entry point: a store (or any ``RowSource``: in-memory arrays too) -> :class:`Result`."""
from __future__ import annotations

from embedx.engine import registry
from embedx.engine.result import Result
from embedx.measures import engine
from embedx.measures.engine import CLASS_SILHOUETTE, NOT_MEASURES, TIES, available  # noqa: F401
from embedx.rowsource import as_source

BASE = registry.names("measure", {"labels", "texts"}, defaults_only=True)
RETRIEVAL = tuple(m for m in registry.names("measure", {"paired", "texts"}) if m not in BASE)


def compute(store, metrics=None, *, silhouette_mode: str = "auto", sample_size: int = 2000, seed: int = 0,
            knn: str = "blocked", per_class: bool = False, silhouette_labels: str = "modality",
            device: str = "auto", progress=None, executor=None, on_value=None) -> Result:
    """Requested measures of ``store`` (a path, ``embedx.store.Store`` or any ``RowSource``) -> :class:`Result`:
    {name: float, n_images, n_texts, dim, timings_s[, ties, estimates, per_class, integrity]} as ``to_dict()``.

    ``metrics``: names (default every measure the store supports: ``available(store)``).
    ``silhouette_mode``: "auto" (exact when its time projected from the first block on this machine is under
    ``embedx.measures.silhouette.auto_seconds()``, a minute; else sampled), "exact" or "sample" (``sample_size``
    points drawn with ``seed``: an unbiased estimate with a 95% interval under ``estimates``); which one ran is
    ``info["silhouette_method"]`` ("exact" / "sampled"). ``silhouette_labels="class"`` adds
    ``silhouette_class_euclidean``.
    ``knn``: retrieval by "blocked" exact rank counts (bounded memory) or "faiss" (rows in memory).
    ``device`` runs the pairwise kernels (Euclidean silhouette, retrieval) and the zero-shot matmul: "auto" =
    CUDA when available. ``progress``: bars per pass (None = when stderr is a terminal). ``executor``:
    ``embedx.engine.executor`` ("serial", "threaded" or an instance; default threaded in-process).
    ``on_value(name, value, estimate)``: called for each measure as it finishes (the silhouettes last)."""
    return engine.run(as_source(store), metrics, silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                      knn=knn, per_class=per_class, silhouette_labels=silhouette_labels, device=device,
                      progress=progress, executor=executor, on_value=on_value)
