"""Start-up: a command loads only what it uses. Each command runs in a fresh interpreter, which then reports
the heavy packages it imported (a behavioural check, not a timing; bench/bench_startup.py has the times)."""
import json
import subprocess
import sys

import numpy as np
import pytest

MODEL_STACK = ("open_clip", "timm", "peft")
HEAVY = ("torch", *MODEL_STACK, "faiss", "matplotlib")

RUN = """
import json, sys
from embedx.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="embedx", standalone_mode=False)
    rc = 0
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "modules": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def loaded(*args) -> set:
    """The heavy packages ``embedx ARGS`` imported (it must succeed)."""
    p = subprocess.run([sys.executable, "-c", RUN, "-q", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["rc"] in (0, None), p.stdout
    return set(res["modules"])


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.standard_normal((40, 8)).astype(np.float32))
    np.save(d / "t.npy", rng.standard_normal((4, 8)).astype(np.float32))
    np.save(d / "y.npy", np.arange(40) % 4)
    return d


@pytest.fixture(scope="module")
def store(arrays):
    out = arrays / "s.zarr"
    loaded("import", "--images", arrays / "x.npy", "--texts", arrays / "t.npy", "--labels", arrays / "y.npy",
           "--out", out)
    return out


def test_help_imports_nothing_heavy():
    assert loaded("--help") == set()
    assert loaded("measure", "--help") == set()


def test_info_imports_nothing_heavy(store):
    assert loaded("info", store) == set()


def test_verify_and_import_import_nothing_heavy(arrays, store):
    assert loaded("verify", store) == set()
    assert loaded("import", "--images", arrays / "x.npy", "--texts", arrays / "t.npy", "--labels", arrays / "y.npy",
                  "--out", arrays / "again.zarr") == set()


def test_info_and_verify_load_no_model_stack(store):
    assert not loaded("info", store) & {*MODEL_STACK, "faiss", "matplotlib"}
    assert not loaded("verify", store) & {*MODEL_STACK, "faiss", "matplotlib"}


def test_measure_and_transfer_load_torch_but_no_model_stack(store):
    measure = loaded("measure", store, "--json")
    assert "torch" in measure  # the probe sees a heavy import: the empty sets above mean something
    assert not measure & set(MODEL_STACK)
    assert not loaded("transfer", store, "--json") & set(MODEL_STACK)
