"""Prediction: fit fine-tuning outcomes on zero-shot measures of measured tasks, predict them for new stores.

Paper B (Niss, Vogt-Lowell & Tsiligkaridis) finds a linear relation between the zero-shot IIMM of a task and
both the in-domain gain of fine-tuning and the forgetting it causes on other tasks, and compares IIMM against
transferability scores by R² and Kendall's τ. ``predict(HISTORY.csv, [STORE, ...])`` does that on your own
history of fine-tuning runs (format: ``embedx.predict.history``):

  outcomes     gain = (ft_acc - zs_acc) / (1 - zs_acc); forgetting = ood_delta (negative = accuracy lost)
  predictors   every numeric column of the CSV, or computed from each row's zero-shot store: the measures of
               ``embedx.measures`` and the transfer scores of ``embedx.transfer``
  fits         per predictor and outcome, OLS + Kendall τ + leave-one-out errors (``embedx.predict.fit``)
  ranking      per outcome, the predictors by R² (highest first)
  targets      for each new store, its predictor values and every fit's prediction with a 95% prediction
               interval

The paper fits per model, often per method: filter rows with ``where`` (``{"model": "ViT-B-32"}``).
"""
from __future__ import annotations

import logging
import math

from embedx.errors import EmbedxError
from embedx.predict import fit as F
from embedx.predict import history as H
from embedx.predict.history import OUTCOMES, append_row  # noqa: F401  (public API)

log = logging.getLogger("embedx")

# The transfer scores of embedx.transfer (the module, and torch behind it, is imported only when one is needed;
# tests check this list against embedx.transfer.SCORES).
TRANSFER_SCORES = ("hscore", "gbc", "gbc_diagonal", "transrate", "logme", "sfda", "leep", "nce")
DEFAULT_MEASURES = ("iimm", "iimm_inter", "iimm_intra", "acs", "gap", "silhouette_euclidean")
DEFAULT_TRANSFER = ("hscore", "gbc", "transrate", "logme", "sfda", "leep", "nce")
DEFAULT_STORE_PREDICTORS = DEFAULT_MEASURES + DEFAULT_TRANSFER


def _transfer_names() -> tuple[str, ...]:
    return TRANSFER_SCORES


def _measure_names() -> tuple[str, ...]:
    from embedx.measures import BASE, CLASS_SILHOUETTE, RETRIEVAL

    return BASE + RETRIEVAL + (CLASS_SILHOUETTE,)


def computable(name: str) -> bool:
    """Whether a predictor can be computed from a store (a measure or a transfer score)."""
    return name in _measure_names() or name in _transfer_names()


class StoreCache:
    """Predictor values of stores, each store opened and each value computed at most once per run."""

    def __init__(self, *, silhouette_mode: str, sample_size: int, seed: int, logit_scale: float | None, device: str,
                 explicit: bool, warn=None):
        self.opts = dict(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed, device=device)
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
                    from embedx import transfer
                except ImportError as e:
                    raise EmbedxError(f"transfer scores ({', '.join(scores)}) need embedx.transfer, which "
                                      f"is not installed ({e})") from None
                try:
                    res = transfer.compute(store, scores=scores, logit_scale=self.logit_scale)
                except EmbedxError as e:
                    if self.explicit:
                        raise
                    # the default set degrades like an undefined measure: missing for this store, with a warning
                    self.warn(f"{path}: transfer scores skipped ({e})")
                    res = {m: float("nan") for m in scores}
                have.update({m: float(res[m]) for m in scores})
        return {m: have[m] for m in names}


def _finite(v) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _choose_predictors(hist: H.History, measures) -> list[str]:
    if measures:
        names = list(dict.fromkeys(m.strip() for m in measures if m.strip()))
        for m in names:
            if m in H.REQUIRED or m == H.STORE or m in H.RESERVED:
                raise EmbedxError(f"--measures: {m} is not a predictor (it is a required column or an outcome)")
            if m in hist.predictors:
                continue
            if not computable(m):
                cols = ", ".join(hist.predictors) or "none"
                raise EmbedxError(f"--measures: unknown predictor {m!r}: not a column of {hist.path} (predictor "
                                  f"columns: {cols}) and not a measure or transfer score embedx computes "
                                  f"({', '.join(DEFAULT_MEASURES + TRANSFER_SCORES)}, ...)")
            if not hist.has_store:
                raise EmbedxError(f"--measures: {m} is not a column of {hist.path}, and the file has no store "
                                  "column to compute it from")
        return names
    names = list(hist.predictors)
    if hist.has_store:
        names += [m for m in DEFAULT_STORE_PREDICTORS if m not in names]
    if not names:
        raise EmbedxError(f"{hist.path} has no predictor columns and no store column; add measure columns "
                          "(e.g. iimm) or a store column with each task's zero-shot embedding store")
    return names


def predict(history_path: str, targets=(), *, measures=None, where=None, silhouette_mode: str = "exact",
            sample_size: int = 2000, logit_scale: float | None = None, seed: int = 0, device: str = "auto") -> dict:
    """Fit every (predictor, outcome) pair on the history and predict the outcomes of ``targets`` (store paths).

    ``measures``: predictor names (default: every predictor column, plus, when the CSV has a store column, the
    default store predictors). ``where``: {column: value or [values]} or ["COL=VALUE", ...]. The store options
    (silhouette_mode, sample_size, seed, device: ``embedx.measures.compute``; logit_scale:
    ``embedx.transfer.compute``) only matter for values computed from stores."""
    hist = H.read(history_path)
    wh = H.parse_where(where)
    rows = H.select(hist, wh)
    if len(rows) < F.MIN_ROWS:
        what = f" match --where {H.describe_where(wh)}" if wh else ""
        raise EmbedxError(f"{hist.path}: {len(rows)} row(s){what}; a fit needs at least {F.MIN_ROWS}")
    names = _choose_predictors(hist, measures)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    cache = StoreCache(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                       logit_scale=logit_scale, device=device, explicit=bool(measures), warn=warn)
    # only histories with stores (or targets) need embedx.measures (and torch)
    comp = [m for m in names if computable(m)] if hist.has_store or targets else []
    # values: CSV cells first, computed from the row's store where the cell is blank
    need: dict[str, set] = {}
    for r in rows:
        if r.store:
            miss = [m for m in comp if m not in r.values]
            if miss:
                need.setdefault(r.store, set()).update(miss)
    for path, ms in need.items():
        try:
            cache.get(path, [m for m in comp if m in ms])
        except EmbedxError as e:
            r = next(r for r in rows if r.store == path)
            raise EmbedxError(f"{hist.path}: row {r.index} (task {r.task}): {e}") from None
    table = []
    for r in rows:
        vals = {}
        for m in names:
            v = r.values.get(m)
            if v is None and r.store and m in comp:
                v = cache.get(r.store, [m])[m]
            vals[m] = _finite(v)
        table.append(vals)

    out_rows = []
    for r, vals in zip(rows, table):
        d = {"row": r.index, "task": r.task, "model": r.model, "method": r.method}
        if hist.has_store:
            d["store"] = r.store
        d.update(zs_acc=r.zs_acc, ft_acc=r.ft_acc, gain=r.gain, forgetting=r.forgetting)
        d.update(vals)
        out_rows.append(d)

    outcomes = []
    for o in OUTCOMES:
        k = sum(r.outcome(o) is not None for r in rows)
        if k < F.MIN_ROWS:
            warn(f"{o}: skipped, only {k} of {len(rows)} rows have a value (ood_delta is blank in the others); "
                 f"a fit needs {F.MIN_ROWS}")
            continue
        outcomes.append(o)

    fits: dict = {}
    for m in names:
        fits[m] = {}
        for o in outcomes:
            pairs = [(vals[m], r.outcome(o)) for r, vals in zip(rows, table)
                     if vals[m] is not None and r.outcome(o) is not None]
            f = F.fit([p[0] for p in pairs], [p[1] for p in pairs])
            if f["error"]:
                warn(f"{m} -> {o}: no fit, {f['error']}")
            fits[m][o] = f
    ranking = {o: sorted((m for m in names if not fits[m][o]["error"]),
                         key=lambda m: -fits[m][o]["r2"]) for o in outcomes}

    tout = {}
    tn = [m for m in names if computable(m)]
    not_comp = [m for m in names if not computable(m)]
    for t in targets:
        try:
            vals = {m: _finite(v) for m, v in cache.get(t, tn).items()}
        except EmbedxError as e:
            raise EmbedxError(f"target {t}: {e}") from None
        preds = {m: {o: F.predict(fits[m][o], vals[m]) for o in outcomes} for m in tn}
        best = {o: next((m for m in ranking[o] if preds.get(m, {}).get(o)), None) for o in outcomes}
        entry = {"measures": vals, "predictions": preds, "best": best}
        if not_comp:
            entry["not_computable"] = not_comp
        tout[t] = entry
    if targets and not_comp:
        warn(f"no target predictions from {', '.join(not_comp)}: not a measure or transfer score embedx computes "
             "from a store")

    return {"history": hist.path, "n_rows": len(rows), "where": wh, "outcomes": outcomes, "predictors": names,
            "rows": out_rows, "fits": fits, "ranking": ranking, "targets": tout, "warnings": warnings}
