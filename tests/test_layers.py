"""The layering contract, read from the source with ``ast`` (no import-linter dependency):

(a) ``embedx.kernels`` imports nothing of ``embedx`` outside itself but the shadowing guard ``embedx._noshadow``,
which imports nothing of ``embedx`` at all; (b) the library never imports ``embedx.cli``;
(c) package ``__init__.py`` files only re-export (docstring, imports, ``__all__``, ``__version__``);
(d) the module import graph has no cycle; (e) no algorithm branches on the kind of executor (outside
``embedx.engine``, nothing reads an executor's ``distributed`` flag or tests an executor's class: every pass
calls the one executor interface). The graph counts every import, module-level or inside a function,
and the packages an import runs implicitly: importing ``embedx.a.b`` from ``m`` also runs ``embedx.a/__init__``
(an edge ``m -> embedx.a``) unless ``embedx.a`` is ``m`` itself or one of its own packages (already running).
A module that imports *through* one of its own packages (``from embedx.a import x``, a submodule or not, or
``import embedx.a``) reads that package's namespace, so it depends on ``embedx.a/__init__`` (an edge): a package
``__init__`` that imports such a module is a cycle (the package is half-initialized while the module reads it).
``import embedx.a.b`` and ``from embedx.a.b import x`` name the module itself and add no edge to its package.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = {"embedx": "embedx", "embedx.kernels": "kernels", "embedx.cli": "cli"}  # pyproject's package-dir
SHADOW_GUARD = "embedx._noshadow"  # the top-level folders' only_as(...) guard (docs/DESIGN.md "No shadowing")



def discover(repo=REPO):
    """``{module name: source path}`` for every .py under the three package roots."""
    mods = {}
    for pkg, folder in ROOTS.items():
        for dirpath, dirs, files in os.walk(os.path.join(repo, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(repo, folder))[:-3]
                    parts = [p for p in rel.split(os.sep) if p != "__init__"]
                    mods[".".join([pkg] + parts)] = os.path.join(dirpath, f)
    return mods


def _is_package(mods, name):
    return mods.get(name, "").endswith("__init__.py")


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(tree, mods):
    """``(module, line)`` for every ``embedx`` module an AST imports, anywhere in it: ``from embedx.p import a, b``
    names ``embedx.p`` (whose namespace it reads, even for a submodule ``a``) and each submodule taken."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "embedx"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "embedx":
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names if f"{node.module}.{a.name}" in mods]
    return out


def import_graph(mods):
    """``{module: {imported module: first line}}``, implicit package edges included (see the module docstring):
    ``m``'s own package counts only when ``m`` imports through it (names it as the module imported or imported
    from), not when it is only the ancestor of the module imported."""
    graph = {}
    for name, path in mods.items():
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        own = set(_ancestors(name)) | {name}
        edges = graph.setdefault(name, {})
        for target, line in imported_modules(tree, mods):
            for t in _ancestors(target) + [target]:
                if t in mods and t != name and (t not in own or t == target):
                    edges.setdefault(t, line)
    return graph


def find_cycle(graph, skip=()):
    """One import cycle as ``[m0, m1, ..., m0]`` avoiding the modules in ``skip``, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t in skip:
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in skip and m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _call_name(node) -> str:
    f = node.func if isinstance(node, ast.Call) else None
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _lazy_reexport(node) -> bool:
    """The re-export forms a package may use besides imports: a module ``__getattr__`` (PEP 562: names loaded on
    first use; written out, or ``__getattr__ = _lazy.exports(...)``), ``__dir__ = _lazy.public(__all__)`` and ``only_as(__name__, ...)`` (the top-level
    folders' shadowing guard). Callable modules are gone: the API functions are plain functions."""
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__getattr__"]:
        return _call_name(node.value) == "exports"
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__dir__"]:
        return _call_name(node.value) == "public"  # dir(package): its __all__ (_lazy.public)
    if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":  # a module __getattr__ (PEP 562)
        return True
    return isinstance(node, ast.Expr) and _call_name(node.value) == "only_as"


def init_logic(path):
    """The lines of a package ``__init__`` that are more than a docstring, imports, ``__all__``/``__version__``."""
    with open(path) as fh:
        body = ast.parse(fh.read(), path).body
    bad = []
    for i, node in enumerate(body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                for t in node.targets):
            continue
        if _lazy_reexport(node):
            continue
        bad.append(f"line {node.lineno}: {type(node).__name__}")
    return bad


MODS = discover()
GRAPH = import_graph(MODS)


def test_discovery_sees_the_three_roots():
    assert {"embedx", "embedx.store", "embedx.kernels", "embedx.kernels.ops.topk", "embedx.cli", "embedx.cli.main",
            "embedx.finetune", "embedx.finetune.train"} <= set(MODS)


def test_kernels_import_nothing_of_embedx_outside_kernels():
    bad = [f"{m} imports {t} (line {line})" for m, edges in GRAPH.items() if m.startswith("embedx.kernels")
           for t, line in edges.items() if not t.startswith("embedx.kernels") and t != SHADOW_GUARD]
    assert not bad, "; ".join(bad)


def test_the_shadowing_guard_imports_nothing_of_embedx():
    assert GRAPH[SHADOW_GUARD] == {}, f"{SHADOW_GUARD} must stay standard library only: {GRAPH[SHADOW_GUARD]}"


def test_both_top_level_folders_are_guarded():
    """Every package root that is a top-level folder of the repository calls only_as(__name__, its name) first."""
    for pkg, folder in ROOTS.items():
        if pkg == "embedx":
            continue
        with open(os.path.join(REPO, folder, "__init__.py")) as fh:
            body = ast.parse(fh.read()).body
        calls = [n.value for n in body if isinstance(n, ast.Expr) and _call_name(n.value) == "only_as"]
        assert calls and ast.literal_eval(calls[0].args[1]) == pkg, f"{folder}/__init__.py lacks only_as(__name__, {pkg!r}, __file__)"


def test_library_never_imports_the_cli():
    bad = [f"{m} imports {t} (line {line})" for m, edges in GRAPH.items() if not m.startswith("embedx.cli")
           for t, line in edges.items() if t.startswith("embedx.cli")]
    assert not bad, "; ".join(bad)


def test_package_inits_only_reexport():
    bad = [f"{m}: {', '.join(lines)}" for m in sorted(MODS) if _is_package(MODS, m) for lines in [init_logic(MODS[m])] if lines]
    assert not bad, "package __init__ with more than re-exports: " + "; ".join(bad)


def test_import_graph_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# One filesystem seam (docs/DESIGN.md "Filesystems"): local path or URL is decided in embedx.fs alone (a Location
# and its capabilities); nothing else builds a filesystem, asks is_url/url_fs, or imports fsspec. The input readers
# (embedx.fs, embedx.sources) import nothing of the store.
FS_PACKAGE = "embedx.fs"
FS_DECIDERS = {"is_url", "url_fs", "storage_options", "_filesystem"}
FILESYSTEM_LIBS = {"fsspec", "s3fs", "gcsfs", "adlfs"}
READERS = ("embedx.fs", "embedx.sources")


def filesystem_decisions(tree):
    """``(line, what)`` for each place a module decides local vs URL itself: it imports a filesystem library,
    imports or calls one of ``FS_DECIDERS``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, f"imports {a.name}") for a in node.names if a.name.split(".")[0] in FILESYSTEM_LIBS]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 0 and node.module.split(".")[0] in FILESYSTEM_LIBS:
                out.append((node.lineno, f"imports {node.module}"))
            out += [(node.lineno, f"imports {a.name}") for a in node.names if a.name in FS_DECIDERS]
        elif isinstance(node, ast.Call) and _call_name(node) in FS_DECIDERS:
            out.append((node.lineno, f"calls {_call_name(node)}()"))
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and isinstance(node.left, ast.Constant) and node.left.value == "://":
            out.append((node.lineno, "tests '://' in a path"))
    return out


def _outside_fs(name):
    return name != FS_PACKAGE and not name.startswith(FS_PACKAGE + ".")


def test_only_embedx_fs_decides_local_or_url():
    bad = []
    for m in sorted(MODS):
        if _outside_fs(m):
            with open(MODS[m]) as fh:
                bad += [f"{m} line {line}: {what}" for line, what in filesystem_decisions(ast.parse(fh.read()))]
    assert not bad, "local vs URL decided outside embedx.fs (ask embedx.fs.locations.location(path)): " + "; ".join(bad)


def test_input_readers_import_nothing_of_the_store():
    bad = [f"{m} imports {t} (line {line})" for m, edges in GRAPH.items() if m.startswith(READERS)
           for t, line in edges.items() if t == "embedx.store" or t.startswith("embedx.store.")]
    assert not bad, "; ".join(bad)


EXECUTOR_CLASSES = {"Executor", "SerialExecutor", "ThreadedExecutor", "DaskExecutor"}
KIND_FLAG = "distributed"


def executor_kind_branches(tree) -> list[str]:
    """Where an AST asks which kind of executor it has: an attribute ``.distributed``, ``getattr``/``hasattr``
    of "distributed", or ``isinstance``/``type`` against an executor class."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == KIND_FLAG:
            out.append(f"line {node.lineno}: .{KIND_FLAG}")
        elif isinstance(node, ast.Call) and _call_name(node) in ("getattr", "hasattr", "setattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value == KIND_FLAG:
            out.append(f"line {node.lineno}: {_call_name(node)}(..., {KIND_FLAG!r})")
        elif isinstance(node, ast.Call) and _call_name(node) in ("isinstance", "issubclass") and len(node.args) == 2:
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            named = {c.attr if isinstance(c, ast.Attribute) else getattr(c, "id", None) for c in classes}
            hit = sorted(named & EXECUTOR_CLASSES)
            if hit:
                out.append(f"line {node.lineno}: {_call_name(node)}(..., {', '.join(hit)})")
    return out


def _branches(mods):
    bad = []
    for m in sorted(mods):
        if m == "embedx.engine" or m.startswith("embedx.engine."):
            continue
        with open(mods[m]) as fh:
            found = executor_kind_branches(ast.parse(fh.read(), mods[m]))
        bad += [f"{m} {f}" for f in found]
    return bad


def test_no_algorithm_branches_on_the_executor_kind():
    """Serial, threaded and Dask executors share one interface (map, map_reduce, ref, chunks_verified,
    task_device); outside embedx.engine nothing may ask which one it has."""
    bad = _branches(MODS)
    assert not bad, "executor-kind branch outside embedx.engine: " + "; ".join(bad)


# The checks above must be able to fail: plant each violation in a copy of the tree's shape.
def _plant(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for folder in ROOTS.values():
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    mods = discover(str(tmp_path))
    return mods, import_graph(mods)


def test_a_lazy_import_cycle_is_found_and_named(tmp_path):
    mods, graph = _plant(tmp_path, {"embedx/a.py": "import embedx.b\n",
                                    "embedx/b.py": "def f():\n    from embedx.a import x\n"})
    assert find_cycle(graph) == ["embedx.a", "embedx.b", "embedx.a"]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    mods, graph = _plant(tmp_path, {"embedx/p/__init__.py": "from embedx.q import y\n",
                                    "embedx/p/m.py": "", "embedx/q.py": "from embedx.p.m import z\n"})
    assert find_cycle(graph) == ["embedx.p", "embedx.q", "embedx.p"]
    # a package's own modules importing each other by their full names is not a cycle through the package
    mods, graph = _plant(tmp_path / "2", {"embedx/p/__init__.py": "from embedx.p.m import z\n",
                                          "embedx/p/m.py": "from embedx.p.n import w\nimport embedx.p.n\n",
                                          "embedx/p/n.py": ""})
    assert find_cycle(graph) is None
    # but a module taking a name its own package's __init__ defines (or re-exports) depends on that __init__
    mods, graph = _plant(tmp_path / "3", {"embedx/p/__init__.py": "from embedx.p.m import z\nX = 1\n",
                                          "embedx/p/m.py": "from embedx.p import X\n"})
    assert find_cycle(graph) == ["embedx.p", "embedx.p.m", "embedx.p"]


def test_an_init_importing_a_module_that_imports_back_through_the_package_is_a_cycle(tmp_path):
    """issue 23: ``drift/__init__`` imported ``comparison``, which did ``from embedx.drift import statistics``: it
    reads the half-initialized package (a submodule name or not), so it counts; so does ``import embedx.p`` and
    attribute use. A lazy ``__init__`` (names loaded on first use) is no cycle."""
    for k, m in enumerate(["from embedx.p import stats\n", "from embedx.p import stats as s, other\n",
                           "import embedx.p\nX = embedx.p.stats\n", "def f():\n    from embedx.p import stats\n"]):
        mods, graph = _plant(tmp_path / str(k), {"embedx/p/__init__.py": "from embedx.p.comparison import compare\n",
                                                 "embedx/p/comparison.py": m, "embedx/p/stats.py": "",
                                                 "embedx/p/other.py": ""})
        assert find_cycle(graph) == ["embedx.p", "embedx.p.comparison", "embedx.p"], m
    # through a module outside the package that the __init__ imports
    mods, graph = _plant(tmp_path / "out", {"embedx/p/__init__.py": "import embedx.q\n", "embedx/p/stats.py": "",
                                            "embedx/q.py": "from embedx.p import stats\n"})
    assert find_cycle(graph) == ["embedx.p", "embedx.q", "embedx.p"]
    # the same modules under a lazy __init__ (a PEP 562 re-export): nothing runs at import, no cycle
    mods, graph = _plant(tmp_path / "lazy", {
        "embedx/p/__init__.py": 'from embedx import _lazy\n__getattr__ = _lazy.exports(__name__, {"compare": '
                                '"embedx.p.comparison"})\n',
        "embedx/_lazy.py": "", "embedx/p/comparison.py": "from embedx.p import stats\n", "embedx/p/stats.py": ""})
    assert find_cycle(graph) is None and init_logic(mods["embedx.p"]) == []


def test_planted_executor_kind_branches_are_seen(tmp_path):
    mods, _ = _plant(tmp_path, {
        "embedx/algo/a.py": "def run(executor):\n    if getattr(executor, 'distributed', False):\n        return 1\n",
        "embedx/algo/b.py": "def run(ex):\n    return ex.distributed\n",
        "embedx/algo/c.py": "from embedx.engine.dask import DaskExecutor\n"
                            "def run(ex):\n    return isinstance(ex, (int, DaskExecutor))\n",
        "embedx/algo/d.py": "import embedx.engine.executor as E\n"
                            "def run(ex):\n    return isinstance(ex, E.SerialExecutor)\n",
        "embedx/algo/ok.py": "from distributed import Client\nimport distributed\n"
                             "def run(ex, items):\n    return ex.map_reduce(len, items, max)\n",
        "embedx/engine/dask.py": "class DaskExecutor:\n    distributed = True\n    def f(self):\n"
                                 "        return self.distributed\n",
    })
    assert _branches(mods) == ["embedx.algo.a line 2: getattr(..., 'distributed')",
                               "embedx.algo.b line 2: .distributed",
                               "embedx.algo.c line 3: isinstance(..., DaskExecutor)",
                               "embedx.algo.d line 3: isinstance(..., SerialExecutor)"]


def test_planted_kernel_cli_and_init_violations_are_seen(tmp_path):
    mods, graph = _plant(tmp_path, {"kernels/k.py": "from embedx.store import Store\n", "embedx/store/__init__.py": "",
                                    "embedx/lib.py": "def f():\n    import embedx.cli.main\n", "cli/main.py": "",
                                    "embedx/pkg/__init__.py": '"""doc."""\nimport os\n__all__ = []\nX = os.sep\n'})
    assert graph["embedx.kernels.k"] == {"embedx.store": 1}
    assert "embedx.cli.main" in graph["embedx.lib"]
    assert init_logic(mods["embedx.pkg"]) == ["line 4: Assign"]
    assert init_logic(mods["embedx"]) == []


def test_planted_filesystem_decisions_are_seen():
    tree = ast.parse("import fsspec\nfrom embedx.fs.url import is_url\nfrom s3fs import S3FileSystem\n"
                     "def f(p):\n    return url_fs(p) if st.is_url(p) else p\n"
                     "remote = '://' in str(p)\n")
    assert sorted(filesystem_decisions(tree)) == [(1, "imports fsspec"), (2, "imports is_url"), (3, "imports s3fs"),
                                                  (5, "calls is_url()"), (5, "calls url_fs()"),
                                                  (6, "tests '://' in a path")]
    assert filesystem_decisions(ast.parse("from embedx.fs.locations import location\nlocation(p).local\n")) == []
