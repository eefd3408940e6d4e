"""Predictors computed from a store: the measures of ``embedx.measures`` and the transfer scores of
``embedx.transfer``, each store opened and each value computed at most once per run (:class:`StoreCache`).
``predict`` fits outcomes on them; ``predict.experiment`` records them in a history row.
"""
from __future__ import annotations

import logging

from embedx.engine import registry
from embedx.errors import EmbedxError

log = logging.getLogger("embedx")

# The predictors a store gives: every registered measure and transfer score (the registry imports no torch).
TRANSFER_SCORES = registry.names("transfer")
DEFAULT_MEASURES = ("iimm", "iimm_inter", "iimm_intra", "acs", "gap", "silhouette_euclidean")
DEFAULT_TRANSFER = ("hscore", "gbc", "transrate", "logme", "sfda", "leep", "nce")
DEFAULT_STORE_PREDICTORS = DEFAULT_MEASURES + DEFAULT_TRANSFER


def _transfer_names() -> tuple[str, ...]:
    return TRANSFER_SCORES


def _measure_names() -> tuple[str, ...]:
    return registry.names("measure")


def computable(name: str) -> bool:
    """Whether a predictor can be computed from a store (a measure or a transfer score)."""
    return name in _measure_names() or name in _transfer_names()


class StoreCache:
    """Predictor values of stores, each store opened and each value computed at most once per run (``executor``:
    where the measures and transfer scores run; a Dask one from ``embedx.engine``)."""

    def __init__(self, *, silhouette_mode: str, sample_size: int, seed: int, logit_scale: float | None, device: str,
                 explicit: bool, warn=None, executor=None):
        self.opts = dict(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed, device=device,
                         executor=executor)
        self.logit_scale = logit_scale
        self.explicit = explicit  # names came from --measures: no silent skipping
        self.values: dict[str, dict[str, float]] = {}
        self.stores: dict = {}
        self.skipped: set = set()
        self.warn = warn or (lambda msg: log.warning("%s", msg))

    def _store(self, path: str):
        if path not in self.stores:
            from embedx.store import Store

            self.stores[path] = Store(path)
        return self.stores[path]

    def get(self, path: str, names) -> dict[str, float]:
        """{name: value} for ``names`` on the store at ``path`` (NaN where a measure is undefined)."""
        have = self.values.setdefault(path, {})
        todo = [m for m in dict.fromkeys(names) if m not in have]
        if todo:
            store = self._store(path)
            from embedx import measures as M

            meas = [m for m in todo if m in _measure_names()]
            if meas:
                res = M.compute(store, meas, **self.opts)
                have.update({m: float(res[m]) for m in meas})
            scores = [m for m in todo if m in _transfer_names()]
            if scores and store.paired and not self.explicit:
                # the transfer scores need class labels; a paired (caption) store has none
                if path not in self.skipped:
                    self.skipped.add(path)
                    self.warn(f"{path} is a paired (caption) store: transfer scores need class labels; skipped")
                have.update({m: float("nan") for m in scores})
                scores = []
            if scores:
                try:
                    from embedx import transferability as transfer
                except ImportError as e:
                    raise EmbedxError(f"transfer scores ({', '.join(scores)}) need embedx.transfer, which "
                                      f"is not installed ({e})") from None
                try:
                    res = transfer.compute(store, scores=scores, logit_scale=self.logit_scale,
                                           executor=self.opts["executor"])
                except EmbedxError as e:
                    if self.explicit:
                        raise
                    # the default set degrades like an undefined measure: missing for this store, with a warning
                    self.warn(f"{path}: transfer scores skipped ({e})")
                    res = {m: float("nan") for m in scores}
                have.update({m: float(res[m]) for m in scores})
        return {m: have[m] for m in names}
