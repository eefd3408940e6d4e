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


def test_the_build_is_quiet_and_ships_the_data(tmp_path):
    """Built the way `make` installs it (the locked setuptools, no isolation), the project raises no setuptools
    warning (no `project.license` table deprecation, no data folder "absent from packages"), and the wheel holds
    the model configs and the shipped embeddings with their license."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the repository
    for name in ("embedx", "kernels", "cli"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    noisy = [ln for ln in (p.stdout + p.stderr).splitlines()
             if "Warning" in ln or "deprecat" in ln.lower() or "absent from" in ln]
    assert not noisy, "\n".join(noisy[:20])
    (wheel,) = (tmp_path / "dist").glob("embedx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"embedx/models/configs/embedx-tiny.json", "embedx/data/modality_gap/LICENSE",
            "embedx/data/modality_gap/features_clip.npy", "embedx/kernels/__init__.py", "embedx/cli/main.py",
            "embedx/_noshadow.py", "embedx/models/lit/heads.safetensors", "embedx/models/lit/train.py"} <= names
