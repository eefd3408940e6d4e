"""The registry of the kinds of input embedx reads: data sources (``embed --data KIND:ARG``, ``parse_source``) and
dump formats (``import --from KIND DIR``).

A :class:`Kind` has a name, a one-line summary, its spec (``usage``), its options (:class:`Option`: name, default,
help), an opener (``Kind.open(spec, options)`` -> the source or the scanned dump) and ``can_open(path)``: whether a
bare path is one this kind reads, so ``parse_source("photos/")`` is ``parse_source("folder:photos/")`` and
``import`` without ``--from`` finds the format. A source's options are keyword arguments (``parse_source(spec,
classes=...)``), or, ``in_spec``, written in the spec itself (``digits:train:classes=0-4``: the first part without
``=`` is the ``positional`` option).

Adding a kind is one :func:`register` call (a decorator on its opener) in the module that implements it;
``parse_source``, ``import --from``, ``--help`` and the README tables (``embedx.engine.docs``) read the registry.
This module imports nothing heavy: the implementing modules are imported on the first lookup.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from embedx.engine.lazyreg import LazyRegistry

FAMILIES = ("source", "dump")
#: the modules that register each family's kinds (imported on first use), in the order the kinds are listed
PROVIDERS = {"source": ("embedx.sources.catalog", "embedx.sources.webdataset", "embedx.sources.parquet",
                        "embedx.sources.tasks"),
             "dump": ("embedx.formats.dumps",)}
NOUN = {"source": "data source", "dump": "dump format"}

_REGISTRY = LazyRegistry(PROVIDERS, "kind")


@dataclass(frozen=True)
class Option:
    """One option of a kind. ``default`` is what an unset option means, as shown to people (``None``: the kind
    decides, ``help`` says how); ``in_spec``: written in the source spec (``key=value``), not a keyword."""

    name: str
    help: str
    default: object = None
    in_spec: bool = False
    positional: bool = False  # in_spec only: the first part of the spec without "=" (digits:train)

    def describe(self) -> str:
        return self.help + ("" if self.default in (None, "") else f" [default: {self.default}]")


@dataclass(frozen=True)
class Kind:
    """One registered kind. ``opener(arg, spec, **options)`` builds it: ``arg`` is the spec after ``KIND:`` for a
    source (the path or pattern; the in-spec options parsed into ``options``), the folder for a dump."""

    name: str
    family: str
    summary: str
    opener: Callable
    usage: str = ""
    options: tuple = ()
    can_open: Callable[[str], bool] | None = None

    @property
    def keywords(self) -> tuple[str, ...]:
        """The names of the options given as keyword arguments (not written in the spec)."""
        return tuple(o.name for o in self.options if not o.in_spec)

    @property
    def takes_path(self) -> bool:
        """A source whose spec is ``KIND:PATH`` (its rest is a path or pattern, not options)."""
        return not any(o.in_spec for o in self.options)

    def open(self, spec: str, options: dict | None = None):
        """The source (``spec`` = ``KIND:ARG``) or dump (``spec`` = its folder) with the keyword ``options``
        (None values are unset; one this kind does not take is refused, naming the kinds that take it)."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        for k in given:
            if k not in self.keywords:
                from embedx.errors import EmbedxError

                takers = [n for n, kd in kinds(self.family).items() if k in kd.keywords]
                what = repr(spec) if self.family == "source" else self.name
                raise EmbedxError(f"{k} applies to {_takers(self.family, takers)}, not {what}", param=k)
        if self.family == "dump":
            return self.opener(spec, **given)
        rest = spec.partition(":")[2]
        if self.takes_path:
            return self.opener(rest, spec, **given)
        return self.opener(rest, spec, **spec_options(spec, self.options, self.usage or self.name), **given)


def _takers(family: str, names: list) -> str:
    if family == "source":
        return " and ".join(f"{n}:" for n in names) + " sources" if names else "no data source"
    return "/".join(names) + " dumps" if names else "no dump format"


def spec_options(spec: str, options: tuple, usage: str) -> dict:
    """``{name: value}`` of the in-spec options of ``KIND[:POSITIONAL][:key=value]...`` (strings; defaults for the
    options not written). An unknown or repeated key is a one-line error naming ``usage``."""
    from embedx.errors import EmbedxError

    kind, parts = spec.split(":")[0], spec.split(":")[1:]
    inline = [o for o in options if o.in_spec]
    out = {o.name: o.default for o in inline}
    pos = next((o for o in inline if o.positional), None)
    if pos is not None and parts and "=" not in parts[0]:
        out[pos.name] = parts.pop(0)
    keys = {o.name for o in inline if not o.positional}
    seen = set()
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or key not in keys or key in seen:
            raise EmbedxError(f"unknown {kind} option {p!r}; use {usage}")
        seen.add(key)
        out[key] = value
    return out


def register(family: str, name: str, *, summary: str, usage: str = "", options=(), can_open=None):
    """Decorator: register ``opener`` as the kind ``name`` of ``family``. Returns the function unchanged."""
    _REGISTRY.check_family(family)

    def deco(opener):
        _REGISTRY.add(family, name, Kind(name, family, summary, opener, usage or name, tuple(options), can_open),
                      lambda old: old.opener is opener)
        return opener

    return deco


def kinds(family: str) -> dict[str, Kind]:
    """Every registered kind of ``family``, in registration order."""
    return _REGISTRY.entries(family)


def names(family: str) -> tuple[str, ...]:
    return tuple(kinds(family))


def get(family: str, name: str) -> Kind | None:
    """The kind ``name`` of ``family``, or None."""
    return kinds(family).get(name)


def recognise(family: str, path: str) -> list[Kind]:
    """The kinds of ``family`` whose ``can_open(path)`` is true (none, one, or several: ambiguous)."""
    found = []
    for k in kinds(family).values():
        try:
            if k.can_open is not None and k.can_open(path):
                found.append(k)
        except PermissionError:  # an unreadable folder is no kind's: the caller's message names the path
            pass
    return found


def option_help(family: str, option: str, prefix: str = "") -> str:
    """The help of the keyword ``option`` across the kinds that take it: ``KIND: help`` joined by ``; `` (kinds
    with the same help share one entry, ``a:/b:``); ``prefix`` goes before each kind's name (``--from ``)."""
    groups: dict[str, list[str]] = {}
    for k in kinds(family).values():
        for o in k.options:
            if o.name == option and not o.in_spec:
                groups.setdefault(o.describe(), []).append(k.name)
    sep = ":/" if family == "source" else "/"
    return "; ".join(f"{prefix}{sep.join(ns)}: {h}" for h, ns in groups.items())


def table(family: str) -> str:
    """A markdown table of the family's kinds: name, spec, what, options (README, docs)."""
    head = "| kind | spec | what | options |" if family == "source" else "| format (`--from`) | what | options |"
    rows = [head, "|---|---|---|---|" if family == "source" else "|---|---|---|"]
    for k in kinds(family).values():
        opts = "; ".join(f"`{o.name}=` (in the spec): {o.describe()}" if o.in_spec and not o.positional else
                         f"`{o.name}` (in the spec): {o.describe()}" if o.in_spec else
                         f"`{o.name}` (`--{o.name.replace('_', '-')}`): {o.describe()}" for o in k.options)
        cells = [f"`{k.name}`"] + ([f"`{k.usage}`"] if family == "source" else []) + [k.summary, opts or "-"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a pipe would split the cell
    return "\n".join(rows)


def unregister(family: str, name: str) -> None:
    """Remove the kind ``name`` of ``family`` (what :func:`register` added)."""
    _REGISTRY.remove(family, name)
