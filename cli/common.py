"""What every command shares: strict JSON output, the progress-bar rule, the exit codes, the damage report.
Imports nothing heavy (keeps --help fast)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys

import click

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer its reader closed on


# what a terminal would act on instead of showing: C0 controls (ESC starts colour codes, title changes, cursor
# moves), DEL, C1 controls (U+009B is a one-byte CSI) and the bidirectional overrides that reorder what is shown
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BREAKS = re.compile("[\t\n]")


def _escape(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def term(text, one_line: bool = False) -> str:
    """``text`` safe to print: every control character shown escaped (ESC as ``\\x1b``), never acted on; with
    ``one_line`` also tab and newline (a data string, e.g. a class name, cannot start a line of its own)."""
    text = _CONTROLS.sub(_escape, str(text))
    return _BREAKS.sub(_escape, text) if one_line else text


# Library messages name Python parameters, never flags; the CLI shows each as its flag here, in one place.
# A switch a message spells as ``name=True`` ("pass overwrite=True to replace it") is shown as the running
# command's flag of that name, else as the flag below: the hints that name another command's switch (``info``
# and ``measure`` quoting an unfinished import's "rerun the import with overwrite=True") read as flags too.
PARAM_FLAGS = {"overwrite": "--overwrite", "strict": "--strict"}

_PATH_CHARS = r"/\\"  # a name next to one of these is part of a path the message quotes (``out/s.zarr``)


def flag_for(command: click.Command | None, param: str) -> str | None:
    """The command's flag for Python parameter ``param`` (``knn_k`` -> ``--knn-k``; an argument -> ``STORE``)."""
    for p in getattr(command, "params", ()):
        if p.name == param:
            if isinstance(p, click.Option):
                return next((o for o in p.opts if o.startswith("--")), p.opts[0])
            return p.human_readable_name
    return None


def _switch(command: click.Command | None, name: str) -> str | None:
    for p in getattr(command, "params", ()):
        if p.name == name:
            return flag_for(command, name) if getattr(p, "is_flag", False) else None
    return PARAM_FLAGS.get(name)


def with_flags(message: str, command: click.Command | None = None, params=()) -> tuple[str, list[str]]:
    """``message`` (a library message naming Python parameters) as the CLI shows it, and the flags of ``params``
    it does not spell. In this order: every ``name=True`` of a switch becomes its flag (``overwrite=True`` ->
    ``--overwrite``); for each name of ``params`` with a flag of ``command``, every ``name=VALUE`` becomes
    ``--flag VALUE`` (``dtype='float32'`` -> ``--dtype float32``), or else its first bare occurrence becomes the
    flag (``knn_k must be >= 1`` -> ``--knn-k must be >= 1``; not inside a longer identifier nor a path the
    message quotes: ``out/s.zarr`` stays), or else the flag is listed as not spelled (the caller names it in
    front). ``command`` None: only the switches of :data:`PARAM_FLAGS`."""
    def switch(m: re.Match) -> str:
        return _switch(command, m.group(1)) or m.group(0)

    msg = re.sub(r"(?<![\w.-])([a-z_][a-z0-9_]*)=True\b", switch, message)
    missing = []
    for name in params:
        flag = flag_for(command, name)
        if flag is None:
            continue
        spelled = rf"(?<![\w.-]){re.escape(name)}=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;)]+))"
        if re.search(spelled, msg):
            msg = re.sub(spelled, lambda m: f"{flag} {next(g for g in m.groups() if g is not None)}", msg)
            continue
        bare = rf"(?<![\w{_PATH_CHARS}.-]){re.escape(name)}(?![\w{_PATH_CHARS}-]|\.\w)"
        if re.search(bare, msg):
            msg = re.sub(bare, lambda m: flag, msg, count=1)
        else:
            missing.append(flag)
    return msg, missing


def reader_command(hint) -> str:
    """The command that reads what a :class:`embedx.store.looks_like.Hint` describes into a store."""
    import shlex

    path = shlex.quote(str(hint.path))
    stem = os.path.splitext(os.path.basename(os.path.normpath(str(hint.path))))[0] or "store"
    out = shlex.quote(f"{stem}.zarr")
    if hint.reader == "dump":
        return f"embedx import --from {hint.arg[0]} {path} --out {out}"
    if hint.reader == "paired_array":
        return f"embedx import --paired-array {path} --out {out}"
    if hint.reader == "images":
        return f"embedx import --images {path} --texts TEXTS.npy [--labels LABELS.npy | --paired] --out {out}"
    if hint.reader in ("npz", "parquet"):
        key = hint.arg[0] if hint.arg else "KEY"
        return (f"embedx import --images {shlex.quote(f'{hint.path}:{key}')} --texts ... (.{hint.reader}:KEY picks "
                f"an array{', here one of ' + ', '.join(hint.arg[:6]) if hint.arg else ''}) --out {out}")
    return f"embedx embed --model MODEL --data {shlex.quote(hint.arg[0])} --out {out}"


def echo(message="", err: bool = False) -> None:
    """``click.echo`` of a line of output through :func:`term`: what the CLI prints never carries a live
    control character, whatever the data it quotes (class, store, dataset names, errors quoting them)."""
    click.echo(term(message), err=err)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        # a library message names parameters as Python does (strict=True; classes=FILE with extra={"param":
        # "classes"}, as EmbedxError's param): shown as the running command's flags (--strict, --classes FILE)
        param = getattr(record, "param", None)
        params = (param,) if isinstance(param, str) else tuple(param or ())
        ctx = click.get_current_context(silent=True)
        echo(f"{prefix}{with_flags(record.getMessage(), ctx.command if ctx else None, params)[0]}", err=True)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The ``embedx`` logger on stderr: INFO; WARNING with ``quiet``; DEBUG with ``verbose`` (which wins)."""
    log = logging.getLogger("embedx")
    log.handlers[:] = [_Handler()]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def jsonable(obj):
    """Strict JSON: NaN/inf (undefined measures) become null; numpy scalars become Python numbers."""
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(jsonable(obj), indent=2, default=str, allow_nan=False)


def emit_json(obj, out: str | None, as_json: bool) -> None:
    """Write ``obj`` as strict JSON to ``out`` (atomically) when given, and print it with ``as_json``."""
    text = dumps(obj)
    if out:
        from embedx.store.atomic import atomic_write_bytes

        atomic_write_bytes(out, (text + "\n").encode("utf-8"))
    if as_json:
        echo(text)


def table(rows: list[list[str]], right=(), sep: str = " | ") -> list[str]:
    """``rows`` (the first: the header) as lines whose columns line up: each padded to its widest cell, the
    columns in ``right`` right-aligned, ``sep`` between columns; trailing blanks dropped."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [sep.join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def progress_enabled(ctx) -> bool:
    """Progress bars on an interactive terminal (or EMBEDX_PROGRESS=1), never with --quiet."""
    if ((ctx.obj if ctx is not None else None) or {}).get("quiet"):
        return False
    return sys.stderr.isatty() or os.environ.get("EMBEDX_PROGRESS") == "1"


def exit_damaged(store: str, problems: list[str], listed: bool = True) -> None:
    """Report a damaged store (each problem as ``damaged: ...`` when ``listed``), one error line; exit 2."""
    if listed:
        for line in problems:
            echo(f"damaged: {term(line, one_line=True)}")
    echo(f"error: {term(store, one_line=True)}: {len(problems)} damaged (see above)", err=True)
    sys.exit(EXIT_BAD_INPUT)


def score_lines(family: str, width: int = 14) -> str:
    """One help line per registered score of ``family``: name, what it is, where it is from (the registry)."""
    from embedx.engine import registry

    return "\n".join(f"  {s.name:<{width}}{s.summary}  ({s.citation})" for s in registry.scores(family).values())


class LazyHelp(click.Command):
    """A command whose help text is built on first use by ``help_factory()`` (score lists from the registry,
    whose modules import numpy and scipy): listing the commands (``embedx --help``) reads only ``short_help``."""

    def __init__(self, *args, help_factory=None, **kwargs):
        self._factory, self._text = help_factory, None
        super().__init__(*args, **kwargs)

    @property
    def help(self):
        if self._text is None and self._factory is not None:
            self._text = self._factory()
        return self._text

    @help.setter
    def help(self, value):
        if value is not None:
            self._text = value


def refuse_unused(ctx, params, why: str) -> None:
    """A one-line error (exit 2, before any work) when an option of ``params`` (Python names) was typed although
    ``why`` says it would be ignored; defaults never trip it."""
    from click.core import ParameterSource

    from embedx.errors import EmbedxError

    given = [p for p in params if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
    if not given:
        return
    flags = []
    for p in ctx.command.params:
        if p.name in given:
            flags.append(next((o for o in p.opts if o.startswith("--")), p.opts[0]))
    verb = "applies" if len(flags) == 1 else "apply"
    raise EmbedxError(f"{', '.join(flags)} {verb} only {why}; leave {'it' if len(flags) == 1 else 'them'} out")
