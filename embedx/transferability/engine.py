"""The transfer scores' needs and their run through the planner (``embedx.engine.plan``).

Passes over the rows: pass 1 folds every score's sums (``moments``: counts, class sums, and the scatter / squares
the requested scores ask for; TransRate's first class group; the zero-shot joints); pass 2 leep's likelihood and
sfda's ConfMix sums; pass 3 sfda's second FDA. TransRate's further class groups (beyond its memory budget) read
one more pass each.

Each pass runs on the executor as tasks of one block each (``moments.sweep``): the accumulators are
``moments.Mergeable`` (partials over disjoint blocks add, in the executor's fixed merge tree), and the first
pass's shift is fixed from the first block before the tasks go out, so in one process or on a cluster the scores
are the same bits.
"""
from __future__ import annotations

import math

import numpy as np

from embedx import validate
from embedx.engine import registry
from embedx.engine.executor import resolve
from embedx.engine.plan import Clock, Context, Need, execute, plan, users
from embedx.engine.result import Result
from embedx.provenance import provenance
from embedx.transferability import leep as _leep
from embedx.transferability import sfda as _sfda
from embedx.transferability import transrate as _transrate
from embedx.transferability.moments import Moments, block_rows, label_counts, n_labels, sweep, unit_rows

FAMILY = "transfer"


def _labels(ctx):
    src = ctx.source
    n = n_labels(src)
    counts = label_counts(src, n)
    k = int((counts > 0).sum())
    if k < 2:
        raise validate.error("labels", f"transfer scores need at least 2 classes with labelled rows, found {k}")
    return counts


def _texts(ctx):
    return unit_rows(ctx.source.texts(), "texts")


def _moments(ctx):
    return Moments(len(ctx["labels"]), ctx.source.dim, scatter=ctx.option("scatter"), sumsq=ctx.option("sumsq"))


def _transrate_groups(ctx) -> list:
    """The present labels in groups whose d x d scatters fit TransRate's memory budget."""
    return _transrate.groups(np.flatnonzero(ctx["labels"]), ctx.source.dim)


def _class_scatter(ctx):
    return _transrate.ClassScatter(_transrate_groups(ctx)[0], ctx["moments"], len(ctx["labels"]), ctx.source.dim)


def _transrate_rates(ctx):
    """Per-class coding rates: the first class group from pass 1, each further group one more pass."""
    mom, first = ctx["moments"], ctx["class_scatter"]
    rates = _transrate.class_rates(first, mom)
    for group in _transrate_groups(ctx)[1:]:
        acc = _transrate.ClassScatter(group, mom, len(ctx["labels"]), ctx.source.dim)
        sweep(ctx.source, [acc], progress=ctx.progress, desc="transrate group", executor=ctx.executor)
        rates += _transrate.class_rates(acc, mom)
    return rates


def _zeroshot(ctx):
    return _leep.ZeroShot(ctx["texts"], len(ctx["labels"]), ctx.options["logit_scale"], soft=ctx.wants("leep"),
                          hard=ctx.wants("nce"))


def _leep_likelihood(ctx):
    return _leep.LeepLikelihood(ctx["zeroshot"])


def _confmix(ctx):
    fda1 = _sfda.first_fda(ctx["moments"])
    return _sfda.ConfMix(fda1, ctx["moments"]) if fda1 is not None else None


def _sfda_probability(ctx):
    mix = ctx["confmix"]
    if mix is None:
        return None
    fda2 = _sfda.fit(mix.mixed_moments, shrinkage=mix.fda.shrinkage)
    return _sfda.TrueClassProbability(mix, fda2)


NEEDS = {n.name: n for n in (
    Need("labels", "local", run=_labels),
    Need("texts", "local", run=_texts),
    Need("moments", "pass", build=_moments, after=("labels",)),
    Need("class_scatter", "pass", build=_class_scatter, after=("labels",), uses=("moments",)),
    Need("transrate_rates", "local", run=_transrate_rates, after=("class_scatter", "moments")),
    Need("zeroshot", "pass", build=_zeroshot, after=("labels", "texts"), uses=("moments",)),
    Need("leep_likelihood", "pass", build=_leep_likelihood, after=("zeroshot", "moments")),
    Need("confmix", "pass", build=_confmix, after=("moments",)),
    Need("sfda_probability", "pass", build=_sfda_probability, after=("confmix",)),
)}


def names(scores, has_texts: bool) -> list[str]:
    """The requested score names (a list or a comma-separated string; None = the defaults this source allows)."""
    reg = registry.scores(FAMILY)
    kinds = {"labels"} | ({"texts"} if has_texts else set())
    if scores is None:
        return [s for s in registry.names(FAMILY, kinds, defaults_only=True)]
    if isinstance(scores, str):
        scores = scores.split(",")
    want = list(dict.fromkeys(s.strip() for s in scores if s and s.strip()))
    if not want:
        raise validate.error("scores", f"no transfer score asked for; choose from {', '.join(reg)}")
    for s in want:
        if s not in reg:
            raise validate.error("scores", f"unknown transfer score {s!r}; choose from {', '.join(reg)}")
    if not has_texts and any("texts" in reg[s].requires for s in want):
        raise validate.error("texts", "leep and nce need the class text embeddings (texts=...) for the zero-shot "
                                      "classifier")
    return want


def memory_needs(score: str, k: int, kp: int, c: int, d: int, rows: int) -> tuple[int, str]:
    """(bytes, what) of the largest float64 allocations score ``score`` makes for labels 0..``k``-1 of which
    ``kp`` have rows, ``c`` class texts, ``d`` dimensions and blocks of ``rows`` rows: what grows with the class
    count (K x d class sums; leep/nce the K x C joint of labels and zero-shot classes and the probabilities of
    the rows computed at once; sfda rows x K for the classes present), never with N alone."""
    sums = 3 * k * d * 8  # class sums and the K x d arrays derived from them
    if score in ("leep", "nce"):
        rows = min(rows, _leep.theta_rows(c))
        return (sums + 3 * k * c * 8 + 3 * rows * c * 8,
                f"{k:,} x {c:,} float64 joint of labels and zero-shot classes, x3, and {rows:,} x {c:,} "
                f"probabilities at once")
    if score == "sfda":
        return sums + 4 * rows * kp * 8, f"{rows:,} x {kp:,} float64 class probabilities per block, x4"
    if score == "transrate":
        return (sums + min(kp * d * d * 8, _transrate.BUDGET_BYTES),
                f"{k:,} x {d:,} float64 class sums, x3, and per-class {d} x {d} scatters")
    return sums + (2 * k * d * 8 if score.startswith("gbc") else 0), f"{k:,} x {d:,} float64 class sums"


ASK_ABOVE = 1 << 30  # estimates below 1 GiB are not checked against the budget


def check_memory(source, want: list[str]) -> None:
    """Refuse, before anything is allocated, the scores whose class-count-bound memory (:func:`memory_needs`)
    exceeds the budget (``embedx.budget``), in one line stating the largest estimate."""
    from embedx.budget import ENV, human_bytes, memory_budget

    k, c, d, n = n_labels(source), source.n_texts, source.dim, source.n_images
    rows = min(block_rows(source), max(1, n))
    kp = min(k, n)  # classes with rows: at most one per row; counted (a read of the labels) only if it matters
    if any(memory_needs(s, k, kp, c, d, rows)[0] > ASK_ABOVE for s in want if s in ("sfda", "transrate")):
        kp = int((label_counts(source, k) > 0).sum())
    needs = sorted(((*memory_needs(s, k, kp, c, d, rows), s) for s in want), reverse=True)
    if not needs or needs[0][0] <= ASK_ABOVE:
        return
    budget = memory_budget()
    over = [s for need, _, s in needs if need > budget]
    if over:
        need, what, s = needs[0]
        also = f" ({', '.join(over[1:])} too)" if len(over) > 1 else ""
        raise validate.error("scores", f"transfer {s} needs about {human_bytes(need)} for {k:,} classes ({what}), "
                                       f"above the memory budget of {human_bytes(budget)} ({ENV}){also}; leave "
                                       f"{', '.join(over)} out of scores")


def run(source, scores=None, *, logit_scale: float, progress=None, executor=None) -> Result:
    """The scores of a class ``source`` (a ``RowSource``) -> :class:`Result` ({score: float}; ``.timings``: per
    score its own work, under ``"shared"`` the reading and sums several scores use)."""
    if source.paired:
        raise validate.error("source", "transfer scores need class labels (this store is paired)")
    want = names(scores, source.n_texts > 0)
    logit_scale = validate.positive_number(logit_scale, "logit_scale")
    check_memory(source, want)
    specs = [registry.get(FAMILY, s) for s in want]
    ctx = Context(source, specs, {"logit_scale": logit_scale}, resolve(executor), progress)
    clock = Clock(want)
    n_pass = [0]

    def do_sweep(c, accs, desc):
        n_pass[0] += 1
        return sweep(c.source, accs, check=n_pass[0] == 1, progress=c.progress, desc=desc, executor=c.executor)

    execute(plan(specs, NEEDS), ctx, do_sweep, users(specs, NEEDS, False), clock)
    values = {}
    for s in specs:
        values[s.name] = float(clock.timed(s.name, lambda: s.finalize(ctx)))
    info = {"n_images": source.n_images, "n_texts": source.n_texts, "dim": source.dim, "store": str(source.path)}
    prov = provenance("transfer", {"store": source}, options={"scores": list(values), "logit_scale": logit_scale})
    return Result(values, clock.seconds, info=info, provenance=prov, kind="transfer")


def logit_scale_of(source) -> float:
    """The zero-shot logit scale of the model that embedded ``source`` (recorded by embed), else 100."""
    v = getattr(source, "meta", {}).get("logit_scale")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else _leep.LOGIT_SCALE
