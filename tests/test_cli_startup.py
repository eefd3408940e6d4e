"""Start-up: a command loads only what it uses. Each command runs in a fresh interpreter, which then reports
the heavy packages it imported (a behavioural check, not a timing; bench/bench_startup.py has the cold-process
wall times, bench/results/startup.md). The numba kernels compile once per installation: a second process loads
them from the cache; where no cache location is writable they compile in each process, with one debug line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

MODEL_STACK = ("open_clip", "timm", "peft")
HEAVY = ("torch", *MODEL_STACK, "faiss", "matplotlib", "numba", "scipy", "triton")

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


@pytest.mark.parametrize("metrics", ["iimm", "acs,gap,iimm_intra,iimm_inter,text_intra"])
def test_streamed_class_measures_import_neither_torch_nor_numba(store, metrics):
    """The O(N d) class pass of a small store runs on numpy: no torch, no numba, no scipy, no device."""
    assert loaded("measure", store, "--metrics", metrics, "--json") == set()


def test_zero_shot_still_loads_torch(store):
    assert "torch" in loaded("measure", store, "--metrics", "zeroshot_top1", "--json")


KERNELS = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
logging.getLogger("embedx.kernels").setLevel(logging.DEBUG)
from embedx.kernels.ops import content_hash as ch
from embedx.kernels.ops.stream_stats import stream_stats, stream_stats_reference
x = (np.arange(64 * 16) % 7 - 3).reshape(64, 16).astype(np.float16)
y = np.arange(64) % 3
data = x.tobytes()
got = int(ch.numba_kernel()(np.frombuffer(data, "<u4"), ch.BLOCK_KEYS, len(data) // 1024, np.empty(0, np.uint32)))
assert got == ch.content_hash_reference(data), "nh2"
_, _, acc = stream_stats(x, y, np.zeros((2, 16)), 3, impl="numba")
np.testing.assert_allclose(acc, stream_stats_reference(x, y, np.zeros((2, 16)), 3)[2], atol=1e-5)
print("OK")
"""


def _kernels(env: dict) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-c", KERNELS], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "OK", p.stderr
    return p


def test_numba_kernels_compile_once_per_installation(tmp_path):
    """A fresh cache folder (as in a new venv or CI): the first process compiles and writes the cache, the second
    loads every kernel it calls from it and compiles none."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    first = _kernels(env)
    assert "[cache] data saved" in first.stdout + first.stderr
    second = _kernels(env)
    log = second.stdout + second.stderr
    assert "[cache] data saved" not in log
    for kernel in ("content_hash_numba.nh2", "stream_stats_numba._sweep_f16"):
        assert f"[cache] data loaded from '{tmp_path}" in log and kernel in log, log


def test_read_only_install_compiles_per_process_with_one_debug_line():
    """No writable cache location (numba finds no locator for the kernels' files): the kernels still run,
    compiled in this process, and the logger ``embedx.kernels`` says so once."""
    p = _kernels({"NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"})
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("DEBUG:embedx.kernels")]
    assert len(lines) == 1 and "compile in each process" in lines[0], p.stderr
