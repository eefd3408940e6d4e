"""The wheel must ship every package: pyproject lists them explicitly (kernels/ and cli/ are mapped into the
embedx namespace), so a new subpackage that is not listed would be missing from non-editable installs."""
import os

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+; tomli is the same parser (the test extra pulls it in)
    import tomli as tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_subpackage_is_listed_in_pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for name, rel in dirs.items():
        for root, subdirs, files in os.walk(os.path.join(REPO, rel)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            if "__init__.py" in files:
                sub = os.path.relpath(root, os.path.join(REPO, rel))
                pkg = name if sub == "." else name + "." + sub.replace(os.sep, ".")
                if pkg.split(".")[1:2] in (["kernels"], ["cli"]) and not name.endswith(pkg.split(".")[1]):
                    continue  # embedx/ never holds kernels/ or cli/: they are mapped
                found.add(pkg)
    assert found - listed == set(), f"packages missing from pyproject's list: {sorted(found - listed)}"
