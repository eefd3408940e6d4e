import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import embedx.models.encoder  # noqa: F401  (applies the torchvision shim before anything imports torchvision)
from embedx.cli.main import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "modality-gap")


def embedx_cmd(*args):
    return [sys.executable, "-m", "embedx.cli.main", *map(str, args)]


def run_embedx(*args, timeout=600, env=None):
    """The real console entry point in a subprocess: (returncode, stdout, stderr)."""
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(embedx_cmd(*args), capture_output=True, text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


def run_bounded(*args, timeout=120, mem_gib=4, env=None, cwd=None):
    """The console entry point in a child bounded in time and address space (``RLIMIT_AS``, set in the child):
    a hang or a runaway allocation fails the test in ``timeout`` seconds instead of stalling CI.
    ``(returncode, stdout, stderr)``; torch, peft and a small run fit well within 3 GiB of address space."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_gib << 30, mem_gib << 30))

    e = dict(os.environ, **(env or {}))
    try:
        p = subprocess.run(embedx_cmd(*args), capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd,
                           preexec_fn=limit)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"embedx {' '.join(map(str, args))} hung: no exit within {timeout} s "
                    f"(stderr so far: {(exc.stderr or b'')[-500:]!r})")
    return p.returncode, p.stdout, p.stderr


def lora_run_and_stores(root, train_limit: int, embed_limit: int) -> tuple[str, str, str]:
    """A real finished run (embedx-tiny, LoRA rank 2, one epoch on ``train_limit`` digits) and the stores of the
    first ``embed_limit`` digits embedded by the base and by the tuned model: ``(run, base, tuned)`` paths."""
    run, base, tuned = (os.path.join(str(root), n) for n in ("run", "base.zarr", "tuned.zarr"))
    r = invoke("finetune", "-m", "embedx-tiny", "--method", "lora", "--rank", "2", "--epochs", "1", "--data", "digits",
               "--limit", train_limit, "--batch-size", "32", "--optimizer", "adam", "--lr", "1e-2", "--out", run)
    assert r.exit_code == 0, r.stderr
    assert invoke("embed", "-m", "embedx-tiny", "--data", "digits", "--limit", embed_limit, "--out", base).exit_code == 0
    assert invoke("embed", "--checkpoint", run, "--data", "digits", "--limit", embed_limit, "--out", tuned).exit_code == 0
    return run, base, tuned


def invoke(*args):
    """In-process CLI call (fast): the click result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(rc, stderr, *fragments):
    assert rc != 0, "expected a non-zero exit"
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


SEED_ENV = "EMBEDX_TEST_SEED"


def test_seed() -> int:
    """``EMBEDX_TEST_SEED`` when set (a replay), else a fresh seed from os.urandom."""
    forced = os.environ.get(SEED_ENV)
    return int(forced) if forced else int.from_bytes(os.urandom(4), "little")


test_seed.__test__ = False  # a helper, not a test


@pytest.fixture
def rng(request):
    """A numpy Generator seeded by :func:`test_seed`; the seed is kept on the test item for the replay line."""
    seed = test_seed()
    request.node.embedx_seed = seed
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip with the reason where torch sees no CUDA device (``gpu`` tests still run: on the
    CPU they take the Triton interpreter)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that drew a seed says how to replay it: ``EMBEDX_TEST_SEED=<seed> pytest <nodeid>``."""
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "embedx_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("embedx seed", f"replay: {SEED_ENV}={seed} pytest {item.nodeid}"))


def write_behind_embedx(path, name: str, index, values) -> None:
    """Write ``values`` into array ``name`` at ``index`` of the store at ``path`` as another program would, and drop
    the content checksums (a store from such a writer, or from an embedx before them, has none): what embedx's own
    checks of the values (not of the bytes) must then catch."""
    import zarr

    g = zarr.open_group(str(path), mode="r+")
    g[name][index] = values
    meta = dict(g.attrs["embedx"])
    meta["integrity"] = {k: v for k, v in (meta.get("integrity") or {}).items() if k != "content"}
    g.attrs["embedx"] = meta


@pytest.fixture(scope="session")
def dask_client():
    """A Dask LocalCluster of 2 worker processes (1 thread each) shared by the session's cluster tests; the
    workers import embedx from this checkout. Torn down at the end of the session."""
    from distributed import Client

    from embedx.engine.cluster import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def small_tasks(monkeypatch):
    """Pass units, blocks and tasks small enough that a test store of a few thousand rows splits into many tasks.
    These are driver-side sizes: tasks receive their ranges and unit sizes as arguments."""
    from embedx.measures import stream

    monkeypatch.setattr(stream, "TASK_ROWS", 64)
    monkeypatch.setattr(stream, "FLUSH_ROWS", 256)
    monkeypatch.setattr(stream, "PAIRED_BLOCK_BYTES", 16 << 10)


@pytest.fixture
def dask_executor(dask_client, small_tasks):
    """A DaskExecutor on the session's 2-worker cluster with 64 KiB tasks (many tasks per test store)."""
    from embedx.engine.dask import DaskExecutor

    return DaskExecutor(dask_client, task_bytes=64 << 10)
