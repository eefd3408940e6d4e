"""The issue's acceptance run: `embedx embed` killed with SIGKILL once rows are committed, then rerun,
equals an uninterrupted run (same rows, labels, ids, texts)."""
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from embedx.store import Store, read_meta
from tests.conftest import assert_one_line_error, embedx_cmd, invoke, run_embedx

# the first 480 digits in chunks of 64 rows: commits every 2 batches, so a kill lands mid-run
N = 480
CMD = ["embed", "--model", "ViT-S-32-alt", "--pretrained", "none", "--seed", "3", "--batch-size", "32",
       "--data", "digits", "--limit", str(N), "--chunk-rows", "64"]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _committed(path):
    try:
        return read_meta(path)["rows_committed"]
    except Exception:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "s.zarr")
    rc, _, err = run_embedx(*CMD, "--out", out)
    assert rc == 0, err
    return out


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, uninterrupted):
    out = str(tmp_path / "s.zarr")
    proc = subprocess.Popen(embedx_cmd(*CMD, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _committed(out) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _committed(out)
    assert 0 < killed_at < N
    assert not read_meta(out)["complete"]

    rc, stdout, err = run_embedx(*CMD, "--out", out)
    assert rc == 0, err
    assert "resumed at item" in stdout
    a, b = Store(uninterrupted), Store(out)
    assert a.n_images == b.n_images == N
    np.testing.assert_array_equal(a.images(), b.images())
    np.testing.assert_array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.texts(), b.texts())
    np.testing.assert_array_equal(a.text_names(), b.text_names())
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(b.labels(), load_digits().target[:N])


def test_store_contents_are_the_models_embeddings(uninterrupted):
    """Rows equal a direct open_clip forward of the same preprocessed images (fp16 round-off)."""
    import open_clip
    import torch

    from embedx.sources.catalog import digits_source

    torch.manual_seed(3)
    model, _, pre = open_clip.create_model_and_transforms("ViT-S-32-alt", pretrained=None)
    model.eval()
    src = digits_source()
    rows = [0, 5, N - 1]
    with torch.no_grad():
        x = model.encode_image(torch.stack([pre(src.load(i)) for i in rows]), normalize=True).numpy()
        tok = open_clip.get_tokenizer("ViT-S-32-alt")([f'a photo of the number: "{k}".' for k in range(10)])
        t = model.encode_text(tok, normalize=True).numpy()
    s = Store(uninterrupted)
    np.testing.assert_allclose(s.images(rows).astype(np.float32), x, atol=2e-3)
    np.testing.assert_allclose(s.texts().astype(np.float32), t, atol=2e-3)
    assert s.meta["prompts"]["templates"] == ['a photo of the number: "{}".']


TINY = ["embed", "-m", "embedx-tiny", "--data", "digits", "--limit", "64", "--batch-size", "32", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_unfinished(tmp_path_factory):
    """A tiny store made unfinished again, as if killed after its first batch."""
    import zarr

    out = str(tmp_path_factory.mktemp("tiny") / "s.zarr")
    r = invoke(*TINY, "--out", out)
    assert r.exit_code == 0, r.stderr
    g = zarr.open_group(out, mode="r+")
    g.attrs["embedx"] = dict(g.attrs["embedx"], complete=False, rows_committed=32, source_pos=32)
    return out


@pytest.mark.parametrize("change", [["--seed", "4"], ["-m", "ViT-S-32-alt"], ["--template", "digit {}"],
                                    ["--limit", "100"], ["--data", "folder:."]])
def test_resume_with_other_inputs_is_refused(tmp_path, tiny_unfinished, change):
    out = str(tmp_path / "s.zarr")
    shutil.copytree(tiny_unfinished, out)
    args = list(TINY)
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += change
    if change[0] == "--data":
        (tmp_path / "cls").mkdir()
        (tmp_path / "cls" / "a.png").write_bytes(b"")
        args[args.index("--data") + 1] = f"folder:{tmp_path}"
    r = invoke(*args, "--out", out)
    assert_one_line_error(r.exit_code, r.stderr, "refusing to resume")
    assert read_meta(out)["rows_committed"] == 32  # untouched


def test_same_inputs_resume_and_finish(tmp_path, tiny_unfinished):
    out = str(tmp_path / "s.zarr")
    shutil.copytree(tiny_unfinished, out)
    r = invoke(*TINY, "--out", out)
    assert r.exit_code == 0 and "resumed at item 32" in r.stdout
    assert read_meta(out)["complete"] and Store(out).n_images == 64


def test_complete_store_needs_overwrite(uninterrupted):
    before = os.path.getmtime(os.path.join(uninterrupted, "zarr.json"))
    rc, _, err = run_embedx(*CMD, "--out", uninterrupted)
    assert_one_line_error(rc, err, "already complete", "--overwrite")
    assert os.path.getmtime(os.path.join(uninterrupted, "zarr.json")) == before


def test_ctrl_c_keeps_committed_rows_and_rerun_completes(tmp_path):
    """SIGINT: one line, exit 130, committed rows kept; the rerun equals an uninterrupted run."""
    # batch 4: the loop runs for seconds after the first commit is visible, so the signal lands inside it
    args = ["embed", "-m", "embedx-tiny", "--data", "digits", "--batch-size", "4", "--chunk-rows", "64", "--limit",
            "800"]
    ref = str(tmp_path / "ref.zarr")
    assert run_embedx(*args, "--out", ref)[0] == 0
    out = str(tmp_path / "s.zarr")
    # the child starts with SIGINT at its default, whatever this test process inherited or set (a SIGINT ignored
    # by the parent stays ignored in the child, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen(embedx_cmd(*args, "--out", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while _committed(out) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "rerun the same command to resume" in err, err
    assert 0 < _committed(out) < 800
    assert run_embedx(*args, "--out", out)[0] == 0
    np.testing.assert_array_equal(Store(ref).images(), Store(out).images())
    np.testing.assert_array_equal(Store(ref).ids(), Store(out).ids())
