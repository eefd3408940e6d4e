"""The pass planner: the union of what the requested scores need, in the fewest passes over the rows.

A :class:`Need` is a unit of work a score names in its registration (``embedx.engine.registry``):

  * ``pass``: an accumulator folded over every block of one pass (``build(ctx)`` returns it, or None when there
    is nothing to do); every pass need at the same depth shares one pass. A pass need with ``run`` instead
    reads the rows itself (a fused reader, such as the measures' chunk-parallel pass) and takes a pass alone.
  * ``local``: in-memory work (class texts, the algebra between passes); it may read more passes itself when
    its size demands it (TransRate's class groups beyond the memory budget), and says so in its docstring.
  * ``pairwise``: a kernel over pairs of row blocks (exact silhouette, retrieval rank counts).

``after`` names the needs whose results must be final first (a pass need after a pass need goes one pass
later); ``uses`` the needs of the same pass that must be built first. Depth: a pass need is one deeper than the
deepest need it comes after. The plan runs, for depth 0, 1, ...: the pass of that depth, then the local and
pairwise needs of that depth (depth 0: before any pass). Time is charged to the one score that uses a need, else to ``shared``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

SHARED = "shared"


@dataclass(frozen=True)
class Need:
    name: str
    kind: str                                  # "pass" | "local" | "pairwise"
    build: Callable | None = None              # pass: ctx -> accumulator (update(block), seconds) or None
    run: Callable | None = None                # local/pairwise (and fused pass): ctx -> result
    after: tuple = ()
    uses: tuple = ()
    timing: str | None = None                  # timings key ("" = untimed; None = charged to its users)


@dataclass
class Step:
    depth: int
    kind: str                                  # "pass" or "work"
    needs: list


@dataclass
class Context:
    """What needs read and write: the source, options, executor, and each need's result by name."""

    source: object
    scores: list
    options: dict
    executor: object = None
    progress: object = None
    results: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def __getitem__(self, need: str):
        return self.results[need]

    def option(self, key: str) -> bool:
        """Whether any requested score sets the registry option ``key``."""
        return any(s.options.get(key) for s in self.scores)

    def wants(self, *names: str) -> bool:
        return any(s.name in names for s in self.scores)


def needs_of(score, paired: bool) -> tuple:
    """A score's needs; a dict keys them by source kind ("paired" / "class")."""
    n = score.needs
    return tuple(n.get("paired" if paired else "class", ())) if isinstance(n, dict) else tuple(n)


def plan(scores, catalog: dict, paired: bool = False) -> list[Step]:
    """The steps for ``scores`` over the needs in ``catalog`` (name -> Need), in order."""
    order, seen = [], set()

    def visit(name: str, trail=()):
        if name in seen:
            return
        if name in trail:
            raise ValueError(f"needs form a cycle: {' -> '.join(trail + (name,))}")
        need = catalog[name]
        for dep in need.after + need.uses:
            visit(dep, trail + (name,))
        seen.add(name)
        order.append(need)

    for s in scores:
        for n in needs_of(s, paired):
            visit(n)
    depth: dict[str, int] = {}  # the pass a need is in (pass needs), or after which it runs (the others)
    for need in order:
        d = max((depth[a] for a in need.after), default=0) + (need.kind == "pass")
        depth[need.name] = max([d] + [depth[u] for u in need.uses])
    steps: list[Step] = []
    for d in range(0, max(depth.values(), default=0) + 1):
        passes = [n for n in order if depth[n.name] == d and n.kind == "pass"]
        fused = [n for n in passes if n.run is not None]
        shared = [n for n in passes if n.run is None]
        steps += [Step(d, "pass", [n]) for n in fused]
        if shared:
            steps.append(Step(d, "pass", shared))
        work = [n for n in order if depth[n.name] == d and n.kind != "pass"]
        if work:
            steps.append(Step(d, "work", work))
    return steps


def users(scores, catalog: dict, paired: bool) -> dict[str, list[str]]:
    """need -> the requested scores that use it (directly or through other needs)."""
    out: dict[str, list[str]] = {}

    def mark(name, score):
        if score in out.setdefault(name, []):
            return
        out[name].append(score)
        for dep in catalog[name].after + catalog[name].uses:
            mark(dep, score)

    for s in scores:
        for n in needs_of(s, paired):
            mark(n, s.name)
    return out


class Clock:
    """Seconds per score (or per timing key), and ``shared`` for work several scores use."""

    def __init__(self, names=(), shared: bool = True):
        self.seconds = {s: 0.0 for s in names}
        if shared:
            self.seconds[SHARED] = 0.0

    def charge(self, owners, t: float) -> None:
        owners = list(owners)
        key = owners[0] if len(owners) == 1 else SHARED
        self.seconds[key] = self.seconds.get(key, 0.0) + t

    def timed(self, key: str, fn: Callable):
        """``fn()``, its time added under ``key``."""
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t


def execute(steps: list[Step], ctx: Context, sweep: Callable, owners: dict, clock: Clock) -> None:
    """Run the steps: each shared pass is one ``sweep(ctx, accumulators, desc)`` (returning its read/prepare
    seconds); results land in ``ctx.results``; time is charged through ``clock`` (a need's ``timing`` key, else
    its users)."""
    n_pass = 0

    def charge(need: Need, t: float) -> None:
        if need.timing is not None:  # "" = not timed
            if need.timing:
                clock.seconds[need.timing] = clock.seconds.get(need.timing, 0.0) + t
        else:
            clock.charge(owners.get(need.name, [SHARED]), t)

    for step in steps:
        if step.kind == "work" or step.needs[0].run is not None:
            if step.kind == "pass":
                n_pass += 1
            for need in step.needs:
                t = time.perf_counter()
                ctx.results[need.name] = need.run(ctx)
                charge(need, time.perf_counter() - t)
            continue
        n_pass += 1
        accs, built = [], []
        for need in step.needs:
            t = time.perf_counter()
            acc = need.build(ctx)
            charge(need, time.perf_counter() - t)
            ctx.results[need.name] = acc
            if acc is not None:
                accs.append(acc)
                built.append(need)
        if not accs:
            continue
        prep = sweep(ctx, accs, f"pass {n_pass}")
        pass_users = sorted({u for n in built for u in owners.get(n.name, [])})
        clock.charge(pass_users or [SHARED], prep)
        for need, acc in zip(built, accs):
            charge(need, acc.seconds)
