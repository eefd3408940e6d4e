"""TensorBoard logging of ``finetune`` (issue 26): a real run (embedx-tiny, LoRA, digits) writes event files that
TensorBoard's own reader (``EventAccumulator``) reads back equal to what the run recorded in config.json: every
step's loss and learning rate, the hold-out metrics per epoch; ``study`` logs per tuned cell; a missing
tensorboard package is one line naming the extra."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import embedx
from embedx.errors import EmbedxError
from embedx.finetune import finetune
from tests.conftest import assert_one_line_error, invoke


def _scalars(log_dir) -> dict:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def f32(v):
    return float(np.float32(v))


def test_cli_log_dir_events_equal_the_recorded_run(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "tb"
    r = invoke("finetune", "-m", "embedx-tiny", "--method", "lora", "--rank", "2", "--epochs", "2", "--data", "digits",
               "--limit", 80, "--batch-size", 16, "--optimizer", "adam", "--lr", "1e-2", "--out", run,
               "--log-dir", logs)
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    n_train, bs = cfg["n_train"], cfg["batch_size"]
    steps = math.ceil(n_train / bs)
    assert (n_train, steps) == (72, 5)
    s = _scalars(logs)
    assert set(s) == {"train/loss", "train/lr", "epoch/train_loss", "epoch/train_acc", "holdout/loss", "holdout/acc"}
    recorded = [v for e in cfg["history"] for v in e["step_loss"]]
    assert [len(e["step_loss"]) for e in cfg["history"]] == [steps, steps]
    # every step's loss, at global step 1..10, equal to the run's record (TensorBoard keeps float32)
    assert [st for st, _ in s["train/loss"]] == list(range(1, 2 * steps + 1))
    assert [v for _, v in s["train/loss"]] == [f32(v) for v in recorded]
    assert all(v == f32(cfg["lr"]) for _, v in s["train/lr"]) and len(s["train/lr"]) == 2 * steps
    # the epoch's mean loss is the batch-size weighted mean of its step losses (the last batch holds 8 images)
    sizes = [bs] * (steps - 1) + [n_train - bs * (steps - 1)]
    for e in cfg["history"]:
        assert e["train_loss"] == pytest.approx(np.dot(e["step_loss"], sizes) / n_train, rel=1e-12)
    # hold-out metrics: the zero-shot model at step 0, then after each epoch at its last step
    assert s["holdout/loss"] == [(0, f32(cfg["zeroshot_val_loss"]))] + [
        (e["epoch"] * steps, f32(e["val_loss"])) for e in cfg["history"]]
    assert s["holdout/acc"] == [(0, f32(cfg["zeroshot_val_acc"]))] + [
        (e["epoch"] * steps, f32(e["val_acc"])) for e in cfg["history"]]
    assert s["epoch/train_loss"] == [(e["epoch"] * steps, f32(e["train_loss"])) for e in cfg["history"]]
    assert s["epoch/train_acc"] == [(e["epoch"] * steps, f32(e["train_acc"])) for e in cfg["history"]]
    # the run reads back (its config.json with the step losses is a valid run) and re-embeds
    assert embedx.finetune.read_run(str(run))["history"][1]["step_loss"] == cfg["history"][1]["step_loss"]
    # --overwrite into the same log folder: the old curves are superseded (TensorBoard's purge), not doubled
    r = invoke("finetune", "-m", "embedx-tiny", "--method", "lora", "--rank", "2", "--epochs", "2", "--data", "digits",
               "--limit", 80, "--batch-size", 16, "--optimizer", "adam", "--lr", "2e-2", "--out", run,
               "--log-dir", logs, "--overwrite")
    assert r.exit_code == 0, r.stderr
    cfg2 = json.loads((run / "config.json").read_text())
    s = _scalars(logs)
    assert [v for _, v in s["train/loss"]] == [f32(v) for e in cfg2["history"] for v in e["step_loss"]]
    assert [v for _, v in s["train/lr"]] == [f32(2e-2)] * 2 * steps


def test_log_dir_refusals_are_one_line(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(EmbedxError, match="exists and is not a folder") as e:
        finetune(str(tmp_path / "run"), "digits", "embedx-tiny", method="lora", limit=20, log_dir=str(afile))
    assert e.value.param == "log_dir" and not (tmp_path / "run").exists()
    r = invoke("finetune", "-m", "embedx-tiny", "--method", "lora", "--dry-run", "--log-dir", tmp_path / "tb")
    assert_one_line_error(r.exit_code, r.stderr, "--log-dir applies only to a run that trains")
    # without the tensorboard package: one line naming the extra, exit 2, before any work
    code = ("import sys; sys.modules['tensorboard'] = None; sys.argv = ['embedx'] + sys.argv[1:]; "
            "from embedx.cli.main import main; main()")
    p = subprocess.run([sys.executable, "-c", code, "finetune", "-m", "embedx-tiny", "--method", "lora", "--data",
                        "digits", "--limit", "20", "--out", str(tmp_path / "run2"), "--log-dir", str(tmp_path / "tb")],
                       capture_output=True, text=True, timeout=300)
    assert_one_line_error(p.returncode, p.stderr, "--log-dir needs the tensorboard package",
                          "pip install 'embedx[tensorboard]'")
    assert p.returncode == 2 and not (tmp_path / "run2").exists() and not (tmp_path / "tb").exists()


def test_study_logs_each_tuned_cell_into_its_folder(tmp_path):
    spec = tmp_path / "STUDY.toml"
    spec.write_text("""
[study]
seeds = [0]
limit = 30
tensorboard = true

[[models]]
name = "embedx-tiny"

[[tasks]]
name = "d012"
train = "digits:train:classes=0,1,2"
test = "digits:test:classes=0,1,2"

[[methods]]
name = "lora"
lr = 0.01
options = { rank = 2 }
""")
    embedx.study(spec, tmp_path / "out", progress=False)
    cells = tmp_path / "out" / "cells"
    tuned = [c for c in sorted(os.listdir(cells)) if (cells / c / "run").is_dir()]
    assert len(tuned) == 1
    folder = cells / tuned[0]
    cfg = json.loads((folder / "run" / "config.json").read_text())
    s = _scalars(folder / "tensorboard")
    assert [v for _, v in s["train/loss"]] == [f32(v) for e in cfg["history"] for v in e["step_loss"]]
    assert len(s["holdout/acc"]) == 1 + cfg["epochs"]
    zs = [c for c in os.listdir(cells) if c != tuned[0] and (cells / c).is_dir()]
    assert zs and not any((cells / c / "tensorboard").exists() for c in zs)  # zero-shot cells train nothing


def test_sigkill_then_resume_logs_each_step_once(tmp_path):
    """A run killed inside epoch 2 (after some of its step events reached the file) and rerun: the resumed
    session purges what the killed epoch had logged, so TensorBoard's reader sees every step once, equal to the
    step losses of the finished run's config.json."""
    import signal
    import time

    from tests.conftest import embedx_cmd

    run, logs = tmp_path / "run", tmp_path / "tb"
    args = ["finetune", "-m", "embedx-tiny", "--method", "bitfit", "--epochs", "3", "--seed", "5", "--data", "digits",
            "--limit", "160", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.05", "--out", run,
            "--log-dir", logs]

    def history():
        try:
            return len(json.loads((run / "config.json").read_text())["history"])
        except (OSError, ValueError, KeyError):
            return 0

    def logged():
        return sum(os.path.getsize(logs / f) for f in os.listdir(logs)) if logs.is_dir() else 0

    proc = subprocess.Popen(embedx_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while history() < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        after_epoch1 = logged()
        while logged() == after_epoch1 and history() < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)  # some of epoch 2's step events are in the file
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = history()
    assert 1 <= done < 3
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert f"after epoch {done} of 3" in r.stderr
    cfg = json.loads((run / "config.json").read_text())
    steps = math.ceil(cfg["n_train"] / cfg["batch_size"])
    s = _scalars(logs)
    assert [st for st, _ in s["train/loss"]] == list(range(1, 3 * steps + 1))  # each step once, in order
    assert [v for _, v in s["train/loss"]] == [f32(v) for e in cfg["history"] for v in e["step_loss"]]
    assert [st for st, _ in s["holdout/acc"]] == [0, steps, 2 * steps, 3 * steps]


def test_a_session_resumed_within_the_same_second_sorts_after_the_killed_one(tmp_path):
    """TensorBoard reads event files in name order (events.out.tfevents.<second>.<host>.<pid>...): a killed run's
    file from this very second with a higher pid would sort after the resumed session's, and the reader would
    purge the resumed steps as out of order (the flake of the SIGKILL test on a quiet, fast machine)."""
    import socket
    import time

    from torch.utils.tensorboard import SummaryWriter

    from embedx.finetune.events import EventLog

    logs = tmp_path / "tb"
    w = SummaryWriter(str(logs))
    for s in range(1, 30):
        w.add_scalar("train/loss", float(s), s)
    w.close()
    (old,) = os.listdir(logs)
    now = int(time.time())
    host = socket.gethostname()  # this second, this host, a higher pid than ours: it sorts after a file opened now
    os.rename(logs / old, logs / f"events.out.tfevents.{now}.{host}.{2 ** 31 - 1}.0")
    log = EventLog(str(logs), purge_step=20)
    for s in range(20, 40):
        log.step(s, float(s), 0.1)
    log.close()
    assert [st for st, _ in _scalars(logs)["train/loss"]] == list(range(1, 40))
