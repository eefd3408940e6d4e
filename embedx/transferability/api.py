"""The transfer scores' entry points: a store (or any ``RowSource``), or in-memory arrays."""
from __future__ import annotations

from embedx.constraints import DISTRIBUTED, PROGRESS, Names, Number, Optional, Source, constraints
from embedx.engine import registry
from embedx.engine.plan import SHARED  # noqa: F401  (key of Result.timings: reading and sums several scores use)
from embedx.engine.result import Result  # noqa: F401
from embedx.rowsource import ArrayRows, as_source
from embedx.transferability import engine
from embedx.transferability.leep import LOGIT_SCALE

SCORES = registry.names("transfer")
DEFAULT = registry.names("transfer", defaults_only=True)
NEED_TEXTS = tuple(s.name for s in registry.scores("transfer").values() if "texts" in s.requires)


def compute(store_or_path, scores=None, *, logit_scale: float | None = None, progress=None, executor=None) -> Result:
    """Transfer scores of a class store (a path, an ``embedx.store.Store`` or any ``RowSource``), streamed block by
    block.

    ``scores``: names (a list or a comma-separated string), default ``DEFAULT`` (all but gbc_diagonal).
    ``logit_scale`` scales the zero-shot logits of leep/nce; None = the model's own, recorded by ``embed`` in
    the store (``meta["logit_scale"]``), else 100 (CLIP's trained value). Returns a :class:`Result`
    ({score: float}, with ``.timings``)."""
    source = as_source(store_or_path)
    if logit_scale is None:
        logit_scale = engine.logit_scale_of(source)
    result = engine.run(source, scores, logit_scale=logit_scale, progress=progress, executor=executor)
    source.ensure_unchanged()  # every score came from the store that was opened
    return result


def store_logit_scale(store) -> float:
    """The zero-shot logit scale of the model that embedded ``store`` (recorded by embed), else 100."""
    return engine.logit_scale_of(store)


def compute_arrays(x, y, texts=None, scores=None, logit_scale: float = LOGIT_SCALE, executor=None) -> Result:
    """The same scores of in-memory arrays: ``x`` (N, d) features, ``y`` (N,) labels (-1 = none), ``texts``
    (C, d) class prompts (only leep/nce need them; without them the default leaves leep/nce out). The arrays
    are read in blocks through the same streaming code as a store."""
    return engine.run(ArrayRows(x, texts, y, paired=False), scores, logit_scale=logit_scale, progress=False,
                      executor=executor)


@constraints(source=Source(), scores=Optional(Names("transfer", "transfer score", empty=False)),
             logit_scale=Optional(Number(above=0)), progress=PROGRESS, **DISTRIBUTED)
def transfer(source, scores=None, *, logit_scale: float | None = None, progress=None, executor=None, cluster=None,
             client=None):
    """Transferability scores (hscore, gbc, transrate, logme, sfda, leep, nce) of a class ``source`` ->
    ``embedx.Result`` ({score: value}; ``.timings`` seconds per score, "shared" the reading and shared sums).
    ``scores``: a list, one name or "hscore,logme" (default: every default score). ``logit_scale``: the zero-shot
    scale for leep/nce (None: the one recorded in the store, else 100). ``cluster``: "local[:N]" or
    "tcp://HOST:PORT", or ``client``: a ``distributed.Client`` (embedx[dist]): the passes run as Dask tasks of
    whole blocks, the same bits as the in-process result (``executor``: an embedx executor instead)."""
    from embedx.engine.cluster import connect

    with connect(cluster, client) as dask_executor:
        return compute(source, scores, logit_scale=logit_scale, progress=progress,
                       executor=dask_executor or executor)
