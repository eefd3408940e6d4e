"""The repository's top-level ``kernels/`` and ``cli/`` folders never pose as top-level packages
(docs/DESIGN.md, "No shadowing"): wherever a Python process starts, ``import kernels`` is Hugging Face's
distribution (transformers imports it, so peft and every LoRA path do) and ``import cli`` is whatever is installed
under that name, or a plain miss. Checked in this pytest process (pytest put the root on ``sys.path``), and in
``python -c`` / ``python -m`` subprocesses started in the root (a notebook opened there has the same ``sys.path``).
"""
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed_dir(dist_name, package):
    """The folder of ``package`` inside the installed distribution ``dist_name``, or None when not installed."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return os.path.realpath(str(dist.locate_file(package)))


def _run(*args, timeout=300):
    """``python ARGS`` with the repository root as the working directory (``sys.path[0]`` is the root)."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


PROBE = """
import json, os, sys
out = {}
for name in ("kernels", "cli"):
    try:
        m = __import__(name)
        out[name] = os.path.realpath(m.__file__)
    except ModuleNotFoundError as e:
        out[name] = None if e.name == name else "other: " + str(e)
print(json.dumps({"path0": os.path.realpath(sys.path[0] or os.curdir), "mods": out}))
"""


def _expect(name):
    """Where ``import NAME`` must lead: the distribution's ``__init__``, or None (a miss) when none is installed."""
    folder = _installed_dir({"kernels": "kernels", "cli": "cli"}[name], name)
    return None if folder is None else os.path.join(folder, "__init__.py")


def test_the_lock_installs_hugging_faces_kernels():
    """The failure this guards against needs the real distribution: the locked transformers brings it."""
    if not os.path.exists(os.path.join(sys.prefix, "embedx-lock.sha256")):
        pytest.skip("not the environment `make test` built from requirements-cpu.lock")
    assert _installed_dir("kernels", "kernels") is not None


def test_import_in_this_pytest_process_finds_the_distribution():
    assert any(os.path.realpath(p or os.curdir) == REPO for p in sys.path), "pytest no longer puts the root first"
    for name in ("kernels", "cli"):
        sys.modules.pop(name, None)
        try:
            got = os.path.realpath(__import__(name).__file__)
        except ModuleNotFoundError as e:
            assert e.name == name
            got = None
        assert got == _expect(name), f"import {name} gave {got}"
        assert got is None or not got.startswith(os.path.join(REPO, name) + os.sep)


@pytest.mark.parametrize("how", [["-c", PROBE], ["-I", "-c", "import sys; sys.path.insert(0, ''); " + PROBE]])
def test_import_from_the_repository_root_finds_the_distribution(how):
    p = _run(*how)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["path0"] == REPO
    assert got["mods"] == {"kernels": _expect("kernels"), "cli": _expect("cli")}


def test_without_a_distribution_the_folder_is_a_plain_miss(tmp_path):
    """Only the root on the path (no site-packages): ``import kernels`` and ``import cli`` fail as if the folders
    were not there, and leave nothing behind in ``sys.modules``."""
    code = ("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; sys.path.insert(0, '')\n"
            "out = []\n"
            "for name in ('kernels', 'cli'):\n"
            "    try:\n"
            "        __import__(name); out.append('imported')\n"
            "    except ModuleNotFoundError as e:\n"
            "        out.append((e.name, name in sys.modules))\n"
            "import embedx.kernels, embedx.cli\n"
            "print(out, embedx.kernels.__name__, embedx.cli.__name__)\n")
    p = _run("-c", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[('kernels',", "False),", "('cli',", "False)]", "embedx.kernels", "embedx.cli"]


def test_lora_dry_run_and_one_epoch_through_python_m_in_the_root(tmp_path):
    """The issue's reproduction: every LoRA path imports peft -> transformers -> ``kernels``."""
    p = _run("-m", "embedx.cli.main", "finetune", "-m", "embedx-tiny", "--method", "lora", "--data", "digits",
             "--out", str(tmp_path / "dry"), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["trainable_params"] == 4096  # rank 4 on q and v of the 4 blocks (2 a tower), width 64
    run = tmp_path / "run"
    p = _run("-m", "embedx.cli.main", "finetune", "-m", "embedx-tiny", "--method", "lora", "--epochs", "1",
             "--data", "digits", "--limit", "64", "--batch-size", "32", "--out", str(run))
    assert p.returncode == 0, p.stderr
    params = load_file(str(run / "params.safetensors"))
    lora_b = [v for k, v in params.items() if ".lora_B." in k]
    assert lora_b and all(np.abs(v).max() > 0 for v in lora_b), "LoRA B starts at zero; one epoch must move it"
    assert json.loads((run / "config.json").read_text())["method"] == "lora"
