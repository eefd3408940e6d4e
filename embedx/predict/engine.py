"""The prediction engine: read a history, compute the missing predictors from stores, fit every (predictor,
outcome) pair and predict the outcomes of new stores (the package docstring states the math)."""
from __future__ import annotations

import logging
import math

import embedx.predict.fit as F
import embedx.predict.history as H
from embedx.errors import EmbedxError
from embedx.predict.history import OUTCOMES
from embedx.predict.predictors import DEFAULT_MEASURES, DEFAULT_STORE_PREDICTORS, TRANSFER_SCORES, StoreCache, \
    computable

log = logging.getLogger("embedx")


def _finite(v) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def outcome_range(outcome: str, zs: float | None) -> tuple[float | None, float | None]:
    """The values ``outcome`` can take (None: unbounded on that side). gain = (ft - zs) / (1 - zs) with ft in
    [0, 1] lies in [-zs / (1 - zs), 1] (zs: the target's zero-shot accuracy; unknown: (-inf, 1]); forgetting, a
    mean accuracy change, in [-1, 1]."""
    if outcome == "gain":
        return (-zs / (1.0 - zs) if zs is not None and 0.0 <= zs < 1.0 else None), 1.0
    return -1.0, 1.0


def _target_zs(cache: StoreCache, path: str) -> float | None:
    """The target store's own zero-shot top-1 (it stands for the task's zs_acc in the gain's range); None for a
    paired store or where undefined."""
    if cache._store(path).paired:
        return None
    return _finite(cache.get(path, ["zeroshot_top1"])["zeroshot_top1"])


def _choose_predictors(hist: H.History, measures) -> list[str]:
    if measures:
        names = list(dict.fromkeys(m.strip() for m in measures if m.strip()))
        for m in names:
            if m in H.REQUIRED or m == H.STORE or m in H.RESERVED:
                raise EmbedxError(f"measures: {m} is not a predictor (it is a required column or an outcome)",
                                  param="measures")
            if m in hist.predictors:
                continue
            if not computable(m):
                cols = ", ".join(hist.predictors) or "none"
                raise EmbedxError(f"measures: unknown predictor {m!r}: not a column of {hist.path} (predictor "
                                  f"columns: {cols}) and not a measure or transfer score embedx computes "
                                  f"({', '.join(DEFAULT_MEASURES + TRANSFER_SCORES)}, ...)", param="measures")
            if not hist.has_store:
                raise EmbedxError(f"measures: {m} is not a column of {hist.path}, and the file has no store "
                                  "column to compute it from", param="measures")
        return names
    names = list(hist.predictors)
    if hist.has_store:
        names += [m for m in DEFAULT_STORE_PREDICTORS if m not in names]
    if not names:
        raise EmbedxError(f"{hist.path} has no predictor columns and no store column; add measure columns "
                          "(e.g. iimm) or a store column with each task's zero-shot embedding store")
    return names


def predict(history_path: str, targets=(), *, measures=None, where=None, silhouette_mode: str = "exact",
            sample_size: int = 2000, logit_scale: float | None = None, seed: int = 0, device: str = "auto",
            executor=None) -> dict:
    """Fit every (predictor, outcome) pair on the history and predict the outcomes of ``targets`` (store paths).

    ``measures``: predictor names (default: every predictor column, plus, when the CSV has a store column, the
    default store predictors). ``where``: {column: value or [values]} or ["COL=VALUE", ...]. The store options
    (silhouette_mode, sample_size, seed, device: ``embedx.measures.compute``; logit_scale:
    ``embedx.transferability.compute``; executor: where both run) only matter for values computed from stores.

    Fewer than ``fit.MIN_RUNS`` runs give a warning with its reason (``caution``: the runs, the minimum and the
    R² a predictor reaches by chance). Each target's predictions and 95% intervals are clipped to the range the
    outcome can take (:func:`outcome_range`, the gain's from the target store's own zero-shot top-1): ``range``,
    ``clipped`` and the OLS numbers as ``unclipped`` beside them."""
    hist = H.read(history_path)
    wh = H.parse_where(where)
    rows = H.select(hist, wh)
    if len(rows) < F.MIN_ROWS:
        what = f" match where {H.describe_where(wh)}" if wh else ""
        raise EmbedxError(f"{hist.path}: {len(rows)} row(s){what}; a fit needs at least {F.MIN_ROWS}",
                          param="where" if wh else None)
    names = _choose_predictors(hist, measures)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    cache = StoreCache(silhouette_mode=silhouette_mode, sample_size=sample_size, seed=seed,
                       logit_scale=logit_scale, device=device, explicit=bool(measures), warn=warn,
                       executor=executor)
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

    counts = {o: sum(r.outcome(o) is not None for r in rows) for o in outcomes}
    caution = None
    if counts and min(counts.values()) < F.MIN_RUNS:
        n = min(counts.values())
        r2 = F.chance_r2(n)
        caution = {"n_runs": n, "min_runs": F.MIN_RUNS, "chance_r2": r2}
        k = len(names)
        few = "" if len(set(counts.values())) == 1 else f" with a {min(counts, key=counts.get)} value"
        warn(f"only {n} runs{few}: "
             f"below {F.MIN_RUNS} the fits are fragile (with {n} runs a predictor unrelated to the outcome reaches "
             f"R² ≥ {r2:.2f} one time in 20{f', and ranking {k} predictors favours such flukes' if k > 1 else ''}"
             "); add runs before trusting the ranking or the intervals")

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
        zs = _target_zs(cache, t) if "gain" in outcomes else None
        bounds = {o: outcome_range(o, zs) for o in outcomes}
        preds = {m: {o: F.clip(F.predict(fits[m][o], vals[m]), *bounds[o]) for o in outcomes} for m in tn}
        best = {o: next((m for m in ranking[o] if preds.get(m, {}).get(o)), None) for o in outcomes}
        entry = {"measures": vals, "zeroshot_top1": zs, "ranges": {o: list(b) for o, b in bounds.items()},
                 "predictions": preds, "best": best}
        if not_comp:
            entry["not_computable"] = not_comp
        tout[t] = entry
    if targets and not_comp:
        warn(f"no target predictions from {', '.join(not_comp)}: not a measure or transfer score embedx computes "
             "from a store")

    return {"history": hist.path, "n_rows": len(rows), "where": wh, "outcomes": outcomes, "predictors": names,
            "rows": out_rows, "fits": fits, "ranking": ranking, "targets": tout, "caution": caution,
            "warnings": warnings}
