import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import embedx.encoders  # noqa: F401  (applies the torchvision shim before anything imports torchvision)
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


@pytest.fixture
def rng():
    return np.random.default_rng(int.from_bytes(os.urandom(4), "little"))


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
