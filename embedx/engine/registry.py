"""The registry of every score embedx computes: measures, transfer scores and drift statistics.

A :class:`Score` names what it needs (``needs``: units of work the planner schedules, see ``embedx.engine.plan``),
what its source must have (``requires``: ``labels`` for class stores, ``paired`` for image-caption stores,
``texts`` for class prompts), its ``finalize(ctx) -> float`` (the formula as docstring) and its citation.
Adding a score is one :func:`register` call (usually as a decorator on its finalize) in the module that
implements it; ``--metrics``, ``--scores``, ``predict``'s predictors, ``--help`` and the README tables read the
registry. This module imports nothing heavy: the implementing modules are imported on the first lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from embedx.engine.lazyreg import LazyRegistry

FAMILIES = ("measure", "transfer", "drift")
#: the modules that register each family's scores (imported on first use)
PROVIDERS = {"measure": ("embedx.measures.scores",), "transfer": ("embedx.transferability.scores",),
             "drift": ("embedx.drift_analysis.scores",)}

_REGISTRY = LazyRegistry(PROVIDERS, "score")


@dataclass(frozen=True)
class Score:
    """One registered score. ``finalize(ctx)`` turns what its needs accumulated into the value."""

    name: str
    family: str
    finalize: Callable
    needs: tuple | dict = ()                       # a dict: per source kind, {"class": (...), "paired": (...)}
    requires: frozenset = frozenset()
    citation: str = ""
    summary: str = ""
    default: bool = True
    options: dict = field(default_factory=dict)  # family-specific switches the needs read (e.g. scatter=True)

    @property
    def formula(self) -> str:
        """The definition: the finalize function's docstring."""
        return (self.finalize.__doc__ or "").strip()

    def applies_to(self, kinds: set) -> bool:
        """Whether a source with properties ``kinds`` (subset of labels/paired/texts) can give this score."""
        return self.requires <= kinds


def register(name: str, family: str, *, needs=(), requires=(), citation: str = "", summary: str = "",
             default: bool = True, **options):
    """Decorator: register ``finalize`` as the score ``name`` of ``family``. Returns the function unchanged.
    ``**options``: the score's own settings, kept as ``Score.options`` (any keywords: the score reads them)."""
    _REGISTRY.check_family(family)

    def deco(finalize):
        need = {k: tuple(v) for k, v in needs.items()} if isinstance(needs, dict) else tuple(needs)
        _REGISTRY.add(family, name, Score(name, family, finalize, need, frozenset(requires), citation, summary,
                                          default, dict(options)), lambda old: old.finalize is finalize)
        return finalize

    return deco


def scores(family: str) -> dict[str, Score]:
    """Every registered score of ``family``, in registration order."""
    return _REGISTRY.entries(family)


def get(family: str, name: str) -> Score:
    """The registered score ``name`` of ``family`` (a KeyError when there is none)."""
    return scores(family)[name]


def names(family: str, kinds: set | None = None, *, defaults_only: bool = False) -> tuple[str, ...]:
    """Names of the scores of ``family`` (those a source with ``kinds`` supports, when given)."""
    return tuple(s.name for s in scores(family).values()
                 if (kinds is None or s.applies_to(kinds)) and (s.default or not defaults_only))


def table(family: str) -> str:
    """A markdown table of the family's scores: name, needs, requires, summary, citation (README, docs)."""
    rows = ["| name | needs | requires | what | source |", "|---|---|---|---|---|"]
    for s in scores(family).values():
        needs = s.needs if not isinstance(s.needs, dict) else \
            [f"{v} ({k})" for k, vs in s.needs.items() for v in vs]
        rows.append(f"| `{s.name}` | {', '.join(needs) or '-'} | {', '.join(sorted(s.requires)) or '-'} | "
                    f"{s.summary} | {s.citation} |")
    return "\n".join(rows)


def unregister(family: str, name: str) -> None:
    """Remove the score ``name`` of ``family`` (what :func:`register` added)."""
    _REGISTRY.remove(family, name)
