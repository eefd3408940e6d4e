"""Validation as data: every public function declares what each parameter accepts (``embedx.constraints``), and
this test derives invalid values from each declaration and feeds them in, one parameter at a time, next to small
real valid arguments (tiny arrays, stores made with ``embedx.import_arrays``): each call must raise a one-line
``EmbedxError`` whose ``param`` is that parameter, before any work (no store written). Every parameter of every
public function must be declared, so a new one cannot slip in unchecked. Also: library messages never name a CLI
flag (the CLI maps parameters to flags in one place), and one helper puts an exception's text on one line."""
import ast
import inspect
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import embedx
from embedx import constraints as C
from embedx import metrics
from embedx.errors import EmbedxError, one_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRICS = sorted(n for n, f in vars(metrics).items()
                 if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == metrics.__name__)
PUBLIC = {"open": embedx.open, "measure": embedx.measure, "transfer": embedx.transfer, "drift": embedx.drift,
          "embed": embedx.embed, "import_arrays": embedx.import_arrays,
          **{f"metrics.{n}": getattr(metrics, n) for n in METRICS}}
CASES = [(f, p) for f, fn in PUBLIC.items() for p in C.declared(fn)]


@pytest.fixture(scope="module")
def D(tmp_path_factory):
    """Small real inputs: class rows (12 images, 3 classes, d=4), two stores of them, their files, a run folder."""
    d = tmp_path_factory.mktemp("params")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    t = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.arange(12) % 3
    embedx.import_arrays(d / "a.zarr", x, t, y, dtype="float32")
    embedx.import_arrays(d / "b.zarr", x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), t, y,
                         dtype="float32")
    for name, a in (("x", x), ("t", t), ("y", y), ("p", np.stack([x, x]))):
        np.save(d / f"{name}.npy", a)
    (d / "names.txt").write_text("a\nb\nc\n")
    (d / "run").mkdir()
    return SimpleNamespace(dir=d, x=x, t=t, y=y, a=str(d / "a.zarr"), b=str(d / "b.zarr"))


def valid(name: str, D) -> dict:
    """Valid keyword arguments for ``PUBLIC[name]``: the required ones, and a value for each optional array (the
    invalid arrays are derived from it). The rest keep their defaults."""
    x, t, y = D.x, D.t, D.y
    out = str(D.dir / f"{name}.zarr")  # never written: every call with it is refused
    if name == "measure":
        return dict(source=(x, t, y), metrics=["acs"], progress=False)
    if name == "transfer":
        return dict(source=(x, t, y), scores=["hscore"], progress=False)
    if name == "drift":
        return dict(before=D.a, after=D.b, metrics=["acs"])
    if name == "open":
        return dict(path=D.a)
    if name == "embed":
        return dict(out=out, data="synthetic:8", model="embedx-tiny", progress=False)
    if name == "import_arrays":
        return dict(out=out, images=x, texts=t, labels=y, names=["a", "b", "c"], ids=np.arange(len(x)))
    if name == "metrics.silhouette":
        return dict(points=x, labels=y)
    if name == "metrics.recall_at_k":  # paired: caption i of image i
        return dict(images=x, texts=x[::-1].copy())
    fn = PUBLIC[name]
    args = {"images": x, "texts": t, "labels": y}
    return {k: v for k, v in args.items() if k in inspect.signature(fn).parameters}


def base_value(name: str, param: str, D):
    """The valid value of ``param`` the invalid ones are derived from: given, else the default."""
    given = {**valid(name, D), "paired_array": np.stack([D.x, D.x])}  # a valid value of an alternative
    if param in given:
        return given[param]
    p = inspect.signature(PUBLIC[name]).parameters.get(param)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


# -- invalid values, derived from a declaration ------------------------------------------------------------------
def invalid(c: C.Constraint, base, D) -> list:
    """Values ``c`` refuses (``base``: a valid value of the parameter, to vary an array's shape or content)."""
    missing = D.dir / "no-such"
    if isinstance(c, C.Optional):
        return [v for v in invalid(c.inner, base, D) if v is not None]
    if isinstance(c, C.Either):
        out = []
        for v in [v for o in c.options for v in invalid(o, base, D)]:
            route = next((o for o in c.options if o.accepts_type(v)), None)
            if route is None or any(v is w for w in invalid(route, base, D)):
                out.append(v)
        return out
    if isinstance(c, C.Int):
        return (["1", 1.5, True, math.nan, None] + ([c.min - 1] if c.min is not None else [])
                + ([c.max + 1] if c.max is not None else []))
    if isinstance(c, C.Number):
        return (["1", True, math.nan, math.inf, None] + ([c.min - 1] if c.min is not None else [])
                + ([c.max + 1] if c.max is not None else []) + ([c.above, c.above - 1] if c.above is not None else []))
    if isinstance(c, C.OneOf):
        ints = [k for k in c.choices if isinstance(k, int)]
        return ["no-such-choice", 123456, None, [c.choices[0]]] + ([str(ints[0]), True, 3.5] if ints else [])
    if isinstance(c, C.Bool):
        return ["yes", 1, None]
    if isinstance(c, C.Text):
        return [42, "", "   ", None]
    if isinstance(c, C.StorePath):
        return [42, "", str(missing / "s.zarr"), None]
    if isinstance(c, C.OutputFile):
        return [42, str(missing / "report.html"), str(D.dir)]
    if isinstance(c, C.Path):
        return [42, ""] + ([str(missing)] if c.exists else [])
    if isinstance(c, C.TextList):  # one string is a list of one where the declaration says so (templates)
        return ([] if c.one else ["abc"]) + [["a", 1], 42]
    if isinstance(c, C.Array):
        a = np.asarray(base)
        out = ["abc", {"a": 1}, None, a[..., None], a.reshape(-1)[0], a[:0]]
        if c.numeric:
            out += [a.astype(str), a.astype(bool)]
        if c.finite:
            for bad in (math.nan, math.inf):
                b = a.astype(np.float64)
                b.flat[a.size // 2] = bad
                out.append(b)
        if c.whole:
            out.append(a.astype(np.float64) + 0.5)
        if isinstance(c, C.ArrayFile):
            out += [str(missing / "x.npy"), str(missing / "x.npz:key")]
        return out
    if isinstance(c, C.Names):
        return [42, ["no-such-score"], "acs,no-such-score", [1]] + ([] if c.empty else [[], ""])
    if isinstance(c, C.Device):
        return ["tpu", "CPU", "cuda:x", 0, None]
    if isinstance(c, C.Cluster):
        return [42, "no-such-cluster", "local:0"]
    if isinstance(c, C.Client):
        return [42, "tcp://127.0.0.1:1"]
    if isinstance(c, C.Executor):
        return [42, "parallel"]
    if isinstance(c, C.Source):
        return [42, None, object(), (D.x,), (D.x, D.t[:, :3], D.y), (D.x[0], D.t), str(missing / "s.zarr")]
    if isinstance(c, C.Pairs):
        return ["nocolon", 42, ["nocolon"], [("name", 1, 2)]]
    if isinstance(c, C.Free):
        return []
    raise AssertionError(f"no invalid values for {type(c).__name__}: add them here")


def test_every_parameter_of_every_public_function_is_declared():
    for name, fn in PUBLIC.items():
        decl = C.declared(fn)
        params = inspect.signature(fn).parameters  # the function's own signature (functools.wraps)
        named = [p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        assert decl and set(named) <= set(decl), (name, set(named) - set(decl))
        for p, c in decl.items():
            assert isinstance(c, C.Constraint), (name, p)
            if isinstance(c, C.Free):
                assert len(c.why) > 10, (name, p)  # a free parameter says why
    assert {f for f, _ in CASES} == set(PUBLIC) and len(CASES) > 100


def test_a_new_parameter_without_a_declaration_is_refused_at_import():
    with pytest.raises(TypeError, match="undeclared: \\['b'\\]"):
        C.constraints(a=C.Int())(lambda a, b=1: a)
    with pytest.raises(TypeError, match="not parameters: \\['c'\\]"):
        C.constraints(a=C.Int(), c=C.Int())(lambda a: a)


def test_defaults_satisfy_their_own_declarations():
    for name, fn in PUBLIC.items():
        decl = C.declared(fn)
        for p, v in inspect.signature(fn).parameters.items():
            if v.default is not inspect.Parameter.empty and not isinstance(decl[p], C.Source):
                decl[p].check(v.default, p)


@pytest.mark.parametrize("name", sorted(set(PUBLIC) - {"embed"}))
def test_the_valid_arguments_are_valid(name, D, tmp_path):
    """The baseline each invalid value is set into runs (embed would load a model: its options are declared, its
    run is tested in test_embed)."""
    kwargs = valid(name, D)
    if "out" in kwargs:
        kwargs["out"] = str(tmp_path / "s.zarr")
    PUBLIC[name](**kwargs)


@pytest.mark.parametrize("name, param", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_invalid_values_raise_one_line_errors_naming_the_parameter(name, param, D):
    fn, c = PUBLIC[name], C.declared(PUBLIC[name])[param]
    values = invalid(c, base_value(name, param, D), D)
    assert values or isinstance(c, C.Free), (name, param)
    out = valid(name, D).get("out")
    for bad in values:
        kwargs = {**valid(name, D), param: bad}
        with pytest.raises(EmbedxError) as e:
            fn(**kwargs)
        label = f"{name}({param}={C._show(bad)})"
        assert e.value.param == param, (label, e.value.param, str(e.value))
        assert str(e.value) and "\n" not in str(e.value), label
        assert not re.search(r"(?<![\w-])--[a-z]", str(e.value)), (label, str(e.value))  # no CLI flag
        if out is not None:
            assert not os.path.exists(out), label  # refused before any work


def test_unknown_options_are_a_type_error_as_for_any_keyword():
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        embedx.embed("s.zarr", "synthetic:8", "embedx-tiny", bogus=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        embedx.measure((np.eye(3), np.eye(3)), bogus=1)


def test_checks_convert_once_and_keep_the_callers_arrays():
    """An array check hands the function a numpy view (a tensor copied once); the caller's arrays are untouched;
    a tuple source reaches the engine as its row source (the arrays checked once)."""
    x = torch.randn(20, 6)
    t = torch.randn(4, 6)
    y = torch.arange(20) % 4
    keep = x.clone()
    got = metrics.acs(x, t, y)
    assert got == pytest.approx(metrics.acs(x.numpy(), t.numpy(), y.numpy()), abs=1e-12)
    assert torch.equal(x, keep)
    assert C.Array(2).check(x.numpy(), "images") is not None
    a = np.ones((3, 2), np.float32)
    assert np.shares_memory(C.Array(2, finite=True).check(a, "images"), a)


# -- messages --------------------------------------------------------------------------------------------------
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


DOC_KEYWORDS = ("summary", "help")  # a registered kind's documentation (README tables, --help), not a message
DOC_RENDERERS = ("table",)  # functions that render the README's tables of the CLI
CLICK_DECLARATIONS = ("option", "argument", "command", "group")  # click.option("--x"): a flag's own definition
OTHER_TOOL = re.compile(r"\b(?:pip|apt-get) install\b")  # another tool's command line, quoted as a hint


def _click_declaration(node) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Attribute) and f.attr in CLICK_DECLARATIONS and isinstance(f.value, ast.Name)
            and f.value.id == "click")


def _message_strings(path):
    """(line, text) of every string literal of a module but its docstrings and the documentation it renders
    (``summary=``/``help=`` of a registration, the README table renderers): messages, hints, report text."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    docs = set()
    for node in ast.walk(tree):
        doc = (isinstance(node, ast.keyword) and node.arg in DOC_KEYWORDS) or \
              (isinstance(node, ast.FunctionDef) and node.name in DOC_RENDERERS) or _click_declaration(node)
        if doc:
            docs.update(id(n) for n in ast.walk(node) if isinstance(n, ast.Constant))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_library_messages_never_name_a_cli_flag():
    """The library names Python parameters (``overwrite=True``, ``knn_k``); the CLI shows them as its flags
    (``embedx.cli.common.with_flags``). Docstrings and comments may speak of the CLI; a click declaration defines a
    flag (embedx-lit's retraining command); a quoted ``pip install`` / ``apt-get install`` line is another tool's."""
    found = []
    for dirpath, dirs, files in os.walk(os.path.join(REPO, "embedx")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                found += [f"{os.path.relpath(path, REPO)}:{line}: {text!r}"
                          for line, text in _message_strings(path)
                          if FLAG.search(text) and not OTHER_TOOL.search(text)]
    assert not found, "\n".join(found)


def test_the_cli_table_names_real_switches():
    from embedx.cli.common import PARAM_FLAGS
    from embedx.cli.main import COMMANDS, cli

    switches = {}
    for name in COMMANDS:
        for p in cli.get_command(None, name).params:
            if getattr(p, "is_flag", False) and p.name:
                switches.setdefault(p.name, set()).update(o for o in p.opts if o.startswith("--"))
    for name, flag in PARAM_FLAGS.items():
        assert flag in switches.get(name, ()), (name, flag)


def test_one_line_is_the_one_helper():
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert one_line("x" * 50, 10) == "x" * 10
    copies = []
    for dirpath, dirs, files in (w for top in ("embedx", "kernels", "cli", "bench") for w in os.walk(os.path.join(REPO, top))):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f)) as fh:
                    text = fh.read()
                if re.search(r"""["'] ["']\.join\(str\(""", text) and not f == "errors.py":
                    copies.append(os.path.relpath(os.path.join(dirpath, f), REPO))
    assert not copies, copies
