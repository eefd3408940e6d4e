"""Parameter constraints as data: what each public function accepts, declared beside it, checked on every call.

    @constraints(source=Source(), sample_size=Int(min=2), silhouette=OneOf("exact", "sample"), device=Device(),
                 progress=Optional(Bool()), ...)
    def measure(source, metrics=None, *, silhouette="exact", sample_size=2000, ...): ...

Every argument the caller passed is checked before the function runs, in the order of the signature; the first
violation raises :class:`~embedx.errors.EmbedxError` with a one-line message whose ``param`` is the parameter's
Python name (defaults are valid by construction, and tests/test_param_constraints.py checks that they are). A
check returns the value the function then receives: the same value, except that :class:`Array` gives a numpy
array (a torch tensor is copied to the host once), :class:`Source` opens the store or wraps the arrays
(``embedx.rowsource.as_source``), so nothing is opened or converted twice, and a list of names (:class:`Names`,
:class:`TextList`) is a list: one string is one name (``metrics="gap"``, ``metrics="acs,gap"``).

What one parameter cannot say alone (labels in [-1, C) for C texts; images and texts of one dimension) the
function checks itself (``embedx.validate``). ``Free(why)`` marks a parameter that takes anything. Every
parameter is declared one way or the other (:func:`constraints` refuses a signature with an undeclared one), so
a new parameter cannot slip in unchecked; the generated test derives invalid values from each declaration and
feeds them to every parameter of every public function. A keyword the signature gathers in ``**options`` is
declared by its name like any other; one not declared is a TypeError, as Python's own for an unknown keyword.

Imports nothing heavy (``import embedx`` stays light): numpy, the registry and the store load inside the checks
that need them.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import re

from embedx.errors import EmbedxError, one_line


def _show(value) -> str:
    """``value`` for a message: an array by its shape and dtype, anything else by its repr (one line, cut)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = one_line(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _is_path(value) -> bool:
    return isinstance(value, str) or hasattr(value, "__fspath__")


def _is_url(path: str) -> bool:
    from embedx.fs.locations import location  # the one place local vs URL is decided

    return not location(path).local


def _attr(spec: str):
    """``"package.module:name"`` -> that object (imported on first use: declarations stay light)."""
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


class Constraint:
    """What a valid value of one parameter is. ``what`` (a noun phrase) words the message
    ``{name} must be {what}, got {value}``; :meth:`check` returns the value the function receives."""

    what = "a valid value"

    def check(self, value, name: str):
        raise NotImplementedError

    def accepts_type(self, value) -> bool:
        """Whether ``value`` is of a kind this constraint judges (:class:`Either` picks the one that is)."""
        return True

    def fail(self, name: str, value, why: str | None = None) -> EmbedxError:
        return EmbedxError(why or f"{name} must be {self.what}, got {_show(value)}", param=name)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


def _range(lo, hi, lo_open: bool = False) -> str:
    lo, hi = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (lo, hi))
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    return f" <= {hi}" if hi is not None else ""


class Int(Constraint):
    """A whole number (int or numpy integer, not bool) in [``min``, ``max``] -> int."""

    def __init__(self, min: int | None = None, max: int | None = None):  # noqa: A002  (the natural names)
        self.min, self.max = min, max

    @property
    def what(self) -> str:
        return f"an integer{_range(self.min, self.max)}"

    def check(self, value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(name, value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise self.fail(name, value)
        return int(value)


class Number(Constraint):
    """A finite real number (not bool) in [``min``, ``max``], or above ``above`` (exclusive) -> float."""

    def __init__(self, min: float | None = None, max: float | None = None,  # noqa: A002
                 above: float | None = None):
        self.min, self.max, self.above = min, max, above

    @property
    def what(self) -> str:
        if self.above == 0 and self.min is None and self.max is None:
            return "a positive number"
        lo = self.above if self.above is not None else self.min
        return f"a finite number{_range(lo, self.max, lo_open=self.above is not None)}"

    def check(self, value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise self.fail(name, value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max) \
                or (self.above is not None and value <= self.above):
            raise self.fail(name, value)
        return float(value)


def _same(value, choice) -> bool:
    """``value`` is ``choice`` as a user means it: equal and of the same kind (True is not 1, 1.0 is not "1")."""
    if isinstance(choice, str):
        return isinstance(value, str) and value == choice
    if isinstance(value, bool) or isinstance(choice, bool):
        return value is choice
    if isinstance(choice, numbers.Number):
        return isinstance(value, numbers.Number) and value == choice
    return value is choice


class OneOf(Constraint):
    """One of ``choices`` (or of the keys of the object ``of`` names, ``"module:attr"``, read on first use)."""

    def __init__(self, *choices, of: str | None = None):
        self._choices, self.of = choices, of

    @property
    def choices(self) -> tuple:
        return tuple(_attr(self.of)) if self.of else self._choices

    @property
    def what(self) -> str:
        return " or ".join(map(str, self.choices))

    def check(self, value, name):
        if not any(_same(value, c) for c in self.choices):
            raise self.fail(name, value, f"{name} must be {self.what}, got {value!r}"
                            if isinstance(value, (str, numbers.Number)) else None)
        return value

    def __repr__(self) -> str:
        return f"OneOf(of={self.of!r})" if self.of else f"OneOf{self._choices!r}"


class Bool(Constraint):
    """True or False (a numpy bool too) -> bool."""

    what = "True or False"

    def check(self, value, name):
        numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
        if isinstance(value, bool) or numpy_bool:
            return bool(value)
        raise self.fail(name, value)


class Text(Constraint):
    """A non-empty string."""

    what = "a non-empty string"

    def check(self, value, name):
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, value)
        return value


class Optional(Constraint):
    """None, or what ``inner`` accepts."""

    def __init__(self, inner: Constraint):
        self.inner = inner

    @property
    def what(self) -> str:
        return f"None or {self.inner.what}"

    def check(self, value, name):
        return None if value is None else self.inner.check(value, name)


class Either(Constraint):
    """What the first of ``options`` that accepts the value accepts (a path, or the names themselves)."""

    def __init__(self, *options: Constraint):
        self.options = options

    @property
    def what(self) -> str:
        return " or ".join(o.what for o in self.options)

    def check(self, value, name):
        for o in self.options:
            if o.accepts_type(value):
                return o.check(value, name)
        raise self.fail(name, value)


class Path(Constraint):
    """A path (str or os.PathLike, not empty); with ``exists`` ("file" or "dir") a local one must be one (a URL is
    checked where it is opened)."""

    def __init__(self, exists: str | None = None):
        self.exists = exists

    what = "a path (str or os.PathLike)"

    def accepts_type(self, value) -> bool:
        return _is_path(value)

    def check(self, value, name):
        if not _is_path(value) or not os.fspath(value):
            raise self.fail(name, value)
        path = os.fspath(value)
        if self.exists and not _is_url(str(path)):
            ok = os.path.isfile(path) if self.exists == "file" else os.path.isdir(path)
            if not ok:
                raise self.fail(name, value, f"{name}: no such {'file' if self.exists == 'file' else 'folder'}: "
                                             f"{path}")
        return value


class OutputFile(Path):
    """A file the function will write: its folder exists and is writable (``embedx.outputs.check_output_file``)."""

    def __init__(self, what: str = "output"):
        super().__init__()
        self.noun = what

    def check(self, value, name):
        from embedx.outputs import check_output_file

        super().check(value, name)
        check_output_file(str(os.fspath(value)), self.noun, param=name)
        return value


class TextList(Constraint):
    """A list (or tuple) of strings, one per row; with ``one``, a single string is a list of one -> a list."""

    def __init__(self, one: bool = False):
        self.one = one

    @property
    def what(self) -> str:
        return "a string or a list of strings" if self.one else "a list of strings"

    def accepts_type(self, value) -> bool:
        return isinstance(value, (list, tuple)) or (self.one and isinstance(value, str))

    def check(self, value, name):
        if self.one and isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, value)
        return list(value)


def _numpy(value):
    """``value`` (numpy array, torch tensor, nested list) as a numpy array; None for what is no array."""
    import numpy as np

    from embedx.rowsource import as_numpy

    if isinstance(value, (str, bytes, dict, set)) or value is None:
        return None
    try:
        return np.asarray(as_numpy(value))
    except (TypeError, ValueError):
        return None


class Array(Constraint):
    """A non-empty ``ndim``-D numeric array (numpy, torch, or nested lists) -> a numpy array (no copy of a numpy
    array; a torch tensor copied to the host once). ``finite``: no NaN or inf (checked a block of rows at a time);
    ``whole``: whole numbers (class indices; a float array of them too); ``numeric=False``: values of any kind
    (labels that are only compared: strings too)."""

    BLOCK = 65536  # rows per finiteness check: a bounded temporary whatever the array's size

    def __init__(self, ndim: int, finite: bool = False, whole: bool = False, numeric: bool = True):
        self.ndim, self.finite, self.whole, self.numeric = ndim, finite, whole, numeric

    @property
    def what(self) -> str:
        kind = "whole-number" if self.whole else "numeric"
        if not self.numeric:
            return f"a non-empty {self.ndim}-D array (numpy, torch or a list)"
        return f"a non-empty {self.ndim}-D {kind} array (numpy or torch)"

    def accepts_type(self, value) -> bool:
        return not _is_path(value)

    def check(self, value, name):
        import numpy as np

        a = _numpy(value)
        if a is None or a.ndim != self.ndim or 0 in a.shape:
            raise self.fail(name, value)
        if not self.numeric:
            return a
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise self.fail(name, value, f"{name} must be numeric, got dtype {a.dtype}")
        if (self.finite or self.whole) and np.issubdtype(a.dtype, np.floating):
            for s in range(0, a.shape[0], self.BLOCK):
                block = a[s:s + self.BLOCK]
                ok = np.isfinite(block)
                if self.whole:
                    ok &= block == np.round(block)
                bad = ~ok.reshape(len(block), -1).all(axis=1)
                if bad.any():
                    i = s + int(np.flatnonzero(bad)[0])
                    if self.whole:
                        raise self.fail(name, value, f"{name} must be whole numbers (class indices)")
                    raise self.fail(name, value, f"{name} row {i} contains NaN or inf")
        return a


class ArrayFile(Array):
    """An array as ``Array`` accepts it, or a file of one: ``.npy``, ``.npz[:KEY]`` or ``.parquet[:COLUMN]``
    (``embedx.formats.arrays.load_array``), which must exist; a file is passed on as its path."""

    @property
    def what(self) -> str:
        return f"a .npy/.npz/.parquet file or {super().what}"

    def check(self, value, name):
        if not _is_path(value):
            return super().check(value, name)
        spec = os.fspath(value)
        path = spec
        for ext in (".npz", ".parquet"):  # file.npz:KEY, file.parquet:COLUMN (load_array's forms)
            head, sep, _ = spec.rpartition(ext + ":")
            if sep and head:
                path = head + ext
        if not os.path.isfile(path):
            raise self.fail(name, value, f"{name} file not found: {path}")
        return value


class Names(Constraint):
    """Score names of the registry's ``family``: a list, one name, or one comma-separated string -> a list of the
    names (None when none is given); ``empty``: whether none at all is allowed (the function's default set)."""

    def __init__(self, family: str, noun: str, empty: bool = True):
        self.family, self.noun, self.empty = family, noun, empty

    @property
    def what(self) -> str:
        return f"{self.noun} names (a list, or one comma-separated string)"

    def check(self, value, name):
        from embedx.engine import registry

        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise self.fail(name, value)
        known = registry.names(self.family)
        want = [v.strip() for v in items if v.strip()]
        if not want and not self.empty:
            raise self.fail(name, value, f"no {self.noun} asked for; choose from {', '.join(known)}")
        for v in want:
            if v not in known:
                raise self.fail(name, value, f"unknown {self.noun} {v!r}; choose from {', '.join(known)}")
        return want or None  # a list (one string is one name, or several comma-separated); none asked: None


class Device(Constraint):
    """A device name: auto (CUDA when torch sees one), cpu, cuda or cuda:N (``embedx.device``)."""

    what = "auto, cpu, cuda or cuda:N"

    def check(self, value, name):
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise self.fail(name, value, f"unknown device {_show(value)}; use auto, cpu, cuda or cuda:N")
        return value


class Cluster(Constraint):
    """A Dask cluster: "local", "local:N" or "tcp://HOST:PORT" (``embedx.engine.cluster.parse_cluster``)."""

    what = "local, local:N or tcp://HOST:PORT"

    def check(self, value, name):
        if not isinstance(value, str):
            raise self.fail(name, value)
        from embedx.engine.cluster import parse_cluster

        parse_cluster(value)
        return value


class Client(Constraint):
    """A ``distributed.Client`` (anything with its ``submit`` and ``gather``)."""

    what = "a distributed.Client"

    def check(self, value, name):
        if not (callable(getattr(value, "submit", None)) and callable(getattr(value, "gather", None))):
            raise self.fail(name, value)
        return value


class Executor(Constraint):
    """None, "serial", "threaded" or an ``embedx.engine.executor.Executor``."""

    what = "'serial', 'threaded' or an embedx Executor"

    def check(self, value, name):
        if value is None or (isinstance(value, str) and value in ("serial", "threaded")):
            return value
        from embedx.engine.executor import Executor as Base

        if not isinstance(value, Base):
            raise self.fail(name, value)
        return value


class Source(Constraint):
    """Rows to measure: a store path, an open store, ``embedx.ArrayRows`` or a tuple (images, texts[, labels])
    -> a row source (``embedx.rowsource.as_source``: the store opened, the arrays checked and wrapped)."""

    what = "a store path, an embedx Store, embedx.ArrayRows or a tuple (images, texts[, labels])"

    def check(self, value, name):
        from embedx.rowsource import RowSource, as_source

        if not (_is_path(value) or isinstance(value, (bytes, tuple)) or isinstance(value, RowSource)):
            raise self.fail(name, value)
        return as_source(value)  # its errors name this parameter (constraints() sets param)


class StorePath(Path):
    """The path of a store (local or a URL); a local one must exist (it is opened by the function)."""

    what = "a store path (str or os.PathLike)"

    def check(self, value, name):
        super().check(value, name)
        path = str(os.fspath(value))
        if not _is_url(path) and not os.path.exists(path):
            from embedx.store.looks_like import NoStoreError

            raise NoStoreError(path, param=name)
        return value


class Pairs(Constraint):
    """Other tasks' store pairs: a list of "[NAME=]BEFORE:AFTER" strings or (name, before, after) tuples."""

    what = "a [NAME=]BEFORE:AFTER string, or a list of them or of (name, before, after) tuples"

    def check(self, value, name):
        if isinstance(value, str):  # one pair
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise self.fail(name, value)
        from embedx.drift_analysis.comparison import parse_pair

        for spec in value:
            if isinstance(spec, str):
                parse_pair(spec)
            elif not (isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[0], str)
                      and all(_is_path(p) for p in spec[1:])):
                raise self.fail(name, spec, f"{name} entries are [NAME=]BEFORE:AFTER strings or (name, before, "
                                            f"after) tuples, got {_show(spec)}")
        return value


class Free(Constraint):
    """Anything: the parameter is checked where it is used, or needs no check (``why`` says which)."""

    def __init__(self, why: str):
        self.why = why

    what = "anything"

    def check(self, value, name):
        return value


def _checked(c: Constraint, value, name: str):
    try:
        return c.check(value, name)
    except EmbedxError as e:  # a check is about this parameter, whatever the code under it named (as_source: "images")
        e.param = name
        raise


def constraints(**declared: Constraint):
    """Decorator: ``fn`` checks every argument passed against its declaration before it runs (module docstring).
    Every parameter of ``fn`` but ``*args``/``**kwargs`` must be declared (a TypeError at import otherwise); names
    beyond the signature declare the keywords ``**kwargs`` takes."""
    def wrap(fn):
        sig = inspect.signature(fn)
        params = sig.parameters
        var_kw = next((p.name for p in params.values() if p.kind is p.VAR_KEYWORD), None)
        named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        undeclared = [n for n in named if n not in declared]
        extra = [n for n in declared if n not in params]
        if undeclared or (extra and var_kw is None) or any(not isinstance(c, Constraint) for c in declared.values()):
            raise TypeError(f"{fn.__qualname__}: declare a constraint for every parameter "
                            f"(undeclared: {undeclared}; not parameters: {extra if var_kw is None else []})")
        options = {n: declared[n] for n in extra}

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)  # a missing or unknown argument: Python's own TypeError
            for name, value in bound.arguments.items():
                if name != var_kw:
                    bound.arguments[name] = _checked(declared[name], value, name)
                    continue
                for key, v in value.items():
                    if key not in options:
                        raise TypeError(f"{fn.__name__}() got an unexpected keyword argument {key!r} (options: "
                                        f"{', '.join(options)})")
                    value[key] = _checked(options[key], v, key)
            return fn(*bound.args, **bound.kwargs)

        checked.__constraints__ = dict(declared)
        return checked

    return wrap


def declared(fn) -> dict[str, Constraint]:
    """The constraints ``fn`` declares ({parameter: Constraint}); empty for an undecorated function."""
    return dict(getattr(fn, "__constraints__", {}))


# declarations several public functions share
SEED = Int(min=0, max=2**64 - 1)  # numpy's and torch's generators take any seed in [0, 2**64)
PROGRESS = Optional(Bool())  # None: bars when stderr is a terminal
DISTRIBUTED = {"executor": Executor(), "cluster": Optional(Cluster()), "client": Optional(Client())}
