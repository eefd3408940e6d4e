"""Keep the repository's top-level ``kernels/`` and ``cli/`` folders from posing as top-level packages.

The folders are the sources of ``embedx.kernels`` and ``embedx.cli`` (pyproject's ``package-dir``). Whenever the
repository root is on ``sys.path`` (pytest's rootdir insertion, ``python -m`` or ``python -c`` started there, a
notebook opened there, a subprocess with the root as working directory), ``import kernels`` would find the folder
before the real distribution of that name (Hugging Face's ``kernels``, imported by transformers, so by peft).
Each folder's ``__init__`` calls :func:`only_as` first: imported under its own name nothing happens; imported under
any other name, the import is handed to the distribution of that name found elsewhere on the path, or fails
exactly as if the folder were not there. Standard library only: this runs before anything else is importable.
"""
import importlib.machinery
import importlib.util
import os
import sys


def only_as(name: str, canonical: str, init_file: str) -> None:
    """Let the package whose ``__init__`` is ``init_file`` load only as ``canonical``.

    Loaded as ``name != canonical``: find ``name`` on every finder with the folder's parent taken off the path,
    execute it, and leave it in ``sys.modules[name]`` (the import system returns what ``sys.modules`` holds
    after the ``__init__`` ran); with none found, raise ``ModuleNotFoundError`` as a plain miss would.
    """
    if name == canonical:
        return
    folder = os.path.realpath(os.path.dirname(init_file))
    root = os.path.dirname(folder)
    spec = _find_elsewhere(name, root, folder)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def _find_elsewhere(name: str, root: str, folder: str):
    """The spec of ``name`` from the meta path finders, with ``root`` off the path and ``folder`` ruled out."""
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, path) if finder is importlib.machinery.PathFinder else find(name, None)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec is not None else None
        if spec is None or spec.loader is None:  # no match, or a namespace portion: not a distribution
            continue
        if origin and os.path.realpath(origin).startswith(folder + os.sep):
            continue
        return spec
    return None
