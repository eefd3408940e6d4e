"""The README's "Walk-through: did fine-tuning help?" runs as written (the installed `embedx` console script, in
a fresh folder) and fine-tuning with the defaults helps: zero-shot accuracy on digits:test rises."""
import os
import re
import shlex
import subprocess
import sys

import embedx

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
HEADING = "## Walk-through: did fine-tuning help?"
EMBEDX = os.path.join(os.path.dirname(sys.executable), "embedx")  # the venv's installed console script


def walkthrough_commands() -> list[list[str]]:
    """The commands of the first ```bash block under HEADING, comments dropped, continuation lines joined."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert HEADING in text, f"README.md has no {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the walk-through has no bash block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [cmd for cmd in (shlex.split(ln, comments=True) for ln in lines) if cmd]


def test_the_readme_walkthrough_runs_and_fine_tuning_helps(tmp_path):
    assert os.access(EMBEDX, os.X_OK), f"no installed embedx console script at {EMBEDX} (pip install -e .)"
    cmds = walkthrough_commands()
    assert [c[1] for c in cmds] == ["embed", "embed", "finetune", "embed", "embed", "drift"]
    finetune = cmds[2]
    assert "--optimizer" not in finetune and "--lr" not in finetune  # the method's defaults
    for i, cmd in enumerate(cmds):
        p = subprocess.run([EMBEDX, *cmd[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, EMBEDX_PROGRESS="0"))
        assert p.returncode == 0, (cmd, p.stderr)
        assert "did not move" not in p.stderr, p.stderr
        if cmd[1] == "embed" and "--checkpoint" in cmd:  # the tuned model is not called untrained
            assert "untrained" not in p.stderr, p.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
    before, after = (embedx.measure(str(tmp_path / s), ["zeroshot_top1"], device="cpu")["zeroshot_top1"]
                     for s in ("before.zarr", "after.zarr"))
    assert after > before + 0.05, (before, after)
    # the drift JSON of the same stores: the headline's gain is that change, and the other task was measured
    p = subprocess.run([EMBEDX, *cmds[-1][1:], "--json", "-q"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    import json

    s = json.loads(p.stdout)
    assert abs(s["headline"]["task_gain"] - (after - before)) < 1e-9
    assert s["headline"]["n_other_tasks"] == 1 and s["forgetting"]["mean_delta"] is not None
