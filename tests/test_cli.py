"""The command group: every command loads under its name and is listed by --help; library errors name Python
parameters and the group shows the running command's flag for them."""
import click
import pytest
from click.testing import CliRunner

from embedx.cli.main import COMMANDS, EmbedxGroup, cli, error_line, flag_for
from embedx.errors import EmbedxError, StoreError

from tests.conftest import invoke


def command(name):
    return cli.get_command(None, name)


@pytest.mark.parametrize("cmd, param, flag", [
    ("drift", "knn_k", "--knn-k"),
    ("measure", "silhouette_mode", "--silhouette"),
    ("import", "paired_array", "--paired-array"),
    ("embed", "chunk_rows", "--chunk-rows"),
    ("finetune", "weight_decay", "--weight-decay"),
    ("transfer", "out", "--out"),
    ("info", "store", "STORE"),
    ("predict", "history_path", "--history"),
])
def test_flag_for_a_parameter(cmd, param, flag):
    assert flag_for(command(cmd), param) == flag


def test_flag_for_an_unknown_parameter_or_no_command():
    assert flag_for(command("measure"), "knn_k") is None
    assert flag_for(None, "knn_k") is None


def test_error_line_puts_the_flag_in_place_of_the_parameter():
    e = EmbedxError("knn_k must be >= 1, got 0", param="knn_k")
    assert str(e) == "knn_k must be >= 1, got 0" and e.param == "knn_k"
    assert error_line(e, command("drift")) == "error: --knn-k must be >= 1, got 0"
    # a parameter the message does not spell out is named in front; a longer identifier is left alone
    assert error_line(EmbedxError("must be >= 1", param="knn_k"), command("drift")) == "error: --knn-k: must be >= 1"
    assert (error_line(EmbedxError("knn_k_max and knn_k differ", param="knn_k"), command("drift"))
            == "error: knn_k_max and --knn-k differ")
    # several parameters: each shown as its flag, once
    clash = EmbedxError("paired_array replaces images, texts and labels; give one or the other (images: x.npy)",
                        param=("paired_array", "images", "texts", "labels"))
    assert error_line(clash, command("import")) == ("error: --paired-array replaces --images, --texts and --labels; "
                                                    "give one or the other (images: x.npy)")
    # a name inside a path the message quotes is data: the flag goes in front
    assert (error_line(EmbedxError("out/s.zarr and a/out exist", param="out"), command("import"))
            == "error: --out: out/s.zarr and a/out exist")
    # spelled as Python: name=VALUE is the flag and its value; a switch's name=True is the flag, whatever the
    # command (PARAM_FLAGS: a hint naming another command's switch)
    assert (error_line(EmbedxError("a row overflows float16; use dtype='float32'", param="dtype"), command("import"))
            == "error: a row overflows float16; use --dtype float32")
    assert (error_line(EmbedxError("no rows left with val_fraction=0.9", param="val_fraction"), command("finetune"))
            == "error: no rows left with --val-fraction 0.9")
    assert (error_line(StoreError("x is unfinished; rerun the import with overwrite=True"), command("measure"))
            == "error: x is unfinished; rerun the import with --overwrite")
    assert (error_line(EmbedxError("cannot read 'a.jpg'; drop strict=True to skip it"), command("embed"))
            == "error: cannot read 'a.jpg'; drop --strict to skip it")
    # no parameter, or one the command has no flag for (a Python-API-only argument): the message as it is
    assert error_line(StoreError("no store at x"), command("info")) == "error: no store at x"
    assert error_line(EmbedxError("knn_k must be >= 1", param="knn_k"), command("info")) == "error: knn_k must be >= 1"


def test_group_renders_a_parameter_error_as_one_line_with_the_flag():
    group = EmbedxGroup(name="embedx")

    @group.command("rank")
    @click.option("--knn-k", default=10)
    def rank(knn_k):
        raise EmbedxError(f"knn_k must be >= 1, got {knn_k}", param="knn_k")

    r = CliRunner().invoke(group, ["rank", "--knn-k", "0"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --knn-k must be >= 1, got 0"


def test_every_command_in_the_table_loads_under_its_name():
    for name in COMMANDS:
        assert command(name).name == name
    assert cli.list_commands(None) == sorted(COMMANDS)


def test_help_lists_every_command_with_the_first_words_of_its_docstring():
    r = invoke("--help")
    assert r.exit_code == 0
    listing = {ln.split()[0]: ln for ln in r.output.split("Commands:")[1].splitlines() if ln.strip()}
    assert sorted(listing) == sorted(COMMANDS)
    for name in COMMANDS:
        first_words = " ".join(command(name).help.split()[:3])
        assert first_words in listing[name], (name, listing[name])


# -- issue 15: -q/-v anywhere, outputs checked before the work, a closed pipe, provenance, clip-benchmark ---------
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tests.conftest import assert_one_line_error, embedx_cmd, run_embedx  # noqa: E402


@pytest.fixture
def class_store(tmp_path):
    """A class store of known arrays: (path, x, t, y)."""
    from embedx.formats.arrays import import_arrays

    r = np.random.default_rng(15)
    x = r.standard_normal((150, 12)).astype(np.float32)
    t = r.standard_normal((6, 12)).astype(np.float32)
    y = r.integers(0, 6, 150)
    y[:3] = -1
    x[y >= 0] += 0.8 * t[y[y >= 0]]  # zero-shot neither 0 nor 1
    for name, a in (("x", x), ("t", t), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
    import_arrays(str(tmp_path / "s.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), dtype="float32", model="toy", dataset="toyset")
    return str(tmp_path / "s.zarr"), x, t, y


@pytest.mark.parametrize("flag", ["-q", "--quiet", "-v", "--verbose"])
def test_every_command_takes_quiet_and_verbose_after_its_name(flag):
    for name in COMMANDS:
        r = invoke(name, flag, "--help")
        assert r.exit_code == 0, (name, flag, r.output)
        assert "--quiet" in r.output and "--verbose" in r.output, name


def test_verbosity_flags_set_the_log_level_before_or_after_the_command(class_store):
    log = logging.getLogger("embedx")
    for args, level in ((("info", class_store[0], "--quick"), logging.INFO),
                        (("info", class_store[0], "--quick", "-v"), logging.DEBUG),
                        (("-v", "info", class_store[0], "--quick"), logging.DEBUG),
                        (("info", class_store[0], "--quick", "-q"), logging.WARNING),
                        (("-q", "info", class_store[0], "--quick"), logging.WARNING)):
        r = invoke(*args)
        assert r.exit_code == 0, (args, r.output)
        assert log.level == level, args


def test_measure_out_in_a_missing_folder_fails_before_any_work(tmp_path, class_store):
    t0 = time.perf_counter()
    r = invoke("measure", class_store[0], "--out", tmp_path / "nodir" / "m.json")
    assert_one_line_error(r.exit_code, r.stderr, "--out", "nodir", "does not exist")
    assert r.exit_code == 2 and r.stdout == "" and time.perf_counter() - t0 < 5
    # before opening the store and before reaching a cluster: their errors would come first otherwise
    r = invoke("measure", tmp_path / "absent.zarr", "--cluster", "tcp://127.0.0.1:9", "--out",
               tmp_path / "nodir" / "m.json")
    assert_one_line_error(r.exit_code, r.stderr, "--out", "does not exist")
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("args", [("export", "{s}", "--format", "npy", "--out", "{d}/nodir/e"),
                                  ("import", "--images", "{d}/x.npy", "--texts", "{d}/t.npy", "--out", "{d}/nodir/s"),
                                  ("transfer", "{d}/absent.zarr", "--out", "{d}/nodir/t.json"),
                                  ("embed", "-m", "nope", "-d", "digits:test", "--out", "{d}/nodir/e.zarr")])
def test_every_output_is_checked_before_the_work(tmp_path, class_store, args):
    r = invoke(*[a.format(s=class_store[0], d=tmp_path) for a in args])
    assert_one_line_error(r.exit_code, r.stderr, "--out", "nodir", "does not exist")


def test_a_closed_stdout_pipe_ends_quietly(class_store):
    """`embedx info s.zarr | head -1`: the reader is gone before embedx writes; no traceback, no error line."""
    for extra in ((), ("--json",)):
        p = subprocess.Popen(embedx_cmd("info", class_store[0], *extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()  # the reader leaves at once: every write of embedx meets a closed pipe
        err = p.stderr.read().decode()
        rc = p.wait(timeout=120)
        assert "BrokenPipe" not in err and "error" not in err and "Traceback" not in err, err
        assert rc in (0, 141), (rc, err)
    shell = subprocess.run(" ".join(embedx_cmd("info", class_store[0])) + " | head -1", shell=True,
                           capture_output=True, text=True, timeout=120)
    assert shell.stdout.startswith("store") and shell.stderr == "", shell.stderr


def test_measure_json_carries_provenance_and_text_ends_with_a_labelled_time(class_store):
    path = class_store[0]
    r = invoke("measure", path, "--metrics", "gap,zeroshot_top1", "--silhouette", "sample", "--seed", "3", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    import embedx

    assert d["schema"] == "embedx.measure/1" and d["embedx_version"] == embedx.__version__
    st = d["stores"]["store"]
    assert (st["path"], st["model"], st["dataset"], st["n_images"], st["n_texts"]) == (path, "toy", "toyset", 150, 6)
    assert d["options"]["metrics"] == ["gap", "zeroshot_top1"] and d["options"]["seed"] == 3
    r = invoke("measure", path, "--metrics", "gap")
    assert r.exit_code == 0
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("time: ") and last.endswith(" s") and float(last.split()[1]) >= 0


def test_measure_format_clip_benchmark_classification(tmp_path, class_store):
    """CLIP_benchmark's result file (clip_benchmark/cli.py: dataset, model, pretrained, task, metrics, language;
    zeroshot_classification metrics acc1, acc5, mean_per_class_recall) with numpy references."""
    path, x, t, y = class_store
    out = tmp_path / "cb.json"
    r = invoke("measure", path, "--format", "clip-benchmark", "--out", out)
    assert r.exit_code == 0, r.stderr
    d = json.loads(out.read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(d)
    assert (d["dataset"], d["model"], d["task"], d["language"]) == ("toyset", "toy", "zeroshot_classification", "en")
    assert set(d["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    lab = y >= 0
    xn = x[lab] / np.linalg.norm(x[lab], axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = xn.astype(np.float64) @ tn.T.astype(np.float64)
    pred, top5 = logits.argmax(1), np.argsort(-logits, 1)[:, :5]
    assert d["metrics"]["acc1"] == pytest.approx((pred == y[lab]).mean(), abs=1e-9)
    assert d["metrics"]["acc5"] == pytest.approx((top5 == y[lab][:, None]).any(1).mean(), abs=1e-9)
    from sklearn.metrics import balanced_accuracy_score

    assert d["metrics"]["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y[lab], pred), abs=1e-9)
    assert d["embedx"]["schema"] == "embedx.measure/1"
    r = invoke("measure", path, "--format", "clip-benchmark", "--metrics", "gap")
    assert_one_line_error(r.exit_code, r.stderr, "--metrics")


def test_measure_format_clip_benchmark_retrieval(tmp_path):
    from embedx.formats.arrays import import_arrays

    r_ = np.random.default_rng(7)
    x = r_.standard_normal((80, 10)).astype(np.float32)
    t = (x + 1.2 * r_.standard_normal((80, 10))).astype(np.float32)
    np.save(tmp_path / "p.npy", np.stack([x, t]))
    import_arrays(str(tmp_path / "p.zarr"), paired_array=str(tmp_path / "p.npy"), dtype="float32")
    r = invoke("measure", tmp_path / "p.zarr", "--format", "clip-benchmark")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["task"] == "zeroshot_retrieval"
    assert set(d["metrics"]) == {f"{w}_retrieval_recall@{k}" for w in ("image", "text") for k in (1, 5, 10)}
    s = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64) @ (
        t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float64).T
    for k in (1, 5, 10):
        # CLIP_benchmark: image retrieval = each text ranks the images; text retrieval = each image ranks the texts
        img = (np.argsort(-s.T, 1)[:, :k] == np.arange(80)[:, None]).any(1).mean()
        txt = (np.argsort(-s, 1)[:, :k] == np.arange(80)[:, None]).any(1).mean()
        assert d["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(img, abs=1e-9)
        assert d["metrics"][f"text_retrieval_recall@{k}"] == pytest.approx(txt, abs=1e-9)


def test_metrics_help_lists_the_registry_and_a_bad_name_is_one_line(class_store):
    from embedx.engine import registry

    r = invoke("measure", "--help")
    flat = " ".join(r.output.split())
    for name in registry.names("measure"):
        assert name in flat, name
    r = invoke("measure", class_store[0], "--metrics", "gap,bogus")
    assert_one_line_error(r.exit_code, r.stderr, "--metrics", "'bogus'", "zeroshot_top1")
    r = invoke("transfer", class_store[0], "--scores", "nope")
    assert_one_line_error(r.exit_code, r.stderr, "--scores", "'nope'", "logme")


def test_profile_table_columns_line_up():
    r = invoke("profile", "--n", "64", "--d", "8", "--k", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if " | " in ln]
    assert len(lines) >= 3 and lines[0].startswith("kernel")
    cols = lines[0].count(" | ")
    seps = [[i for i in range(len(ln)) if ln.startswith(" | ", i)] for ln in lines]
    assert all(len(s) == cols for s in seps) and all(s == seps[0] for s in seps), r.output


def test_pretrained_file_that_is_no_checkpoint_says_what_it_should_hold(tmp_path):
    (tmp_path / "plain.txt").write_text("hello\n")
    r = invoke("embed", "-m", "embedx-tiny", "-p", tmp_path / "plain.txt", "-d", "digits:test", "--limit", "4",
               "--out", tmp_path / "e.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "plain.txt", "not a checkpoint", "state dict", ".safetensors")


@pytest.mark.parametrize("args, fragments", [
    (["finetune", "-m", "embedx-tiny", "--method", "nope", "--data", "digits", "--out", "r"],
     ["--method", "'nope' is not one of", "embedx finetune --help"]),
    (["measure", "{store}", "--knn", "bad"], ["--knn", "'bad' is not one of 'blocked', 'faiss'"]),
    (["embed", "--out", "x.zarr"], ["missing option", "--data", "embedx embed --help"]),
    (["drift", "{store}"], ["missing argument", "AFTER"]),
])
def test_usage_errors_are_one_line_through_the_entry_point(class_store, args, fragments):
    """click's own errors (bad choice, missing option or argument) end as every error does: one line, exit 2."""
    rc, _, err = run_embedx(*[a.format(store=class_store[0]) for a in args])
    assert rc == 2
    assert_one_line_error(rc, err, "error:", *fragments)


@pytest.mark.parametrize("args, flags, when", [
    (["measure", "{s}", "--silhouette", "exact", "--sample-size", "10"], ["--sample-size"],
     "--silhouette sample or auto"),
    (["measure", "{s}", "--silhouette", "exact", "--seed", "3", "--sample-size", "9"], ["--sample-size", "--seed"],
     "--silhouette sample or auto"),
    (["drift", "{s}", "{s}", "--silhouette", "exact", "--sample-size", "10"], ["--sample-size"],
     "--silhouette sample or auto"),
    (["drift", "{s}", "{s}", "--task", "pets", "--logit-scale", "50"], ["--task", "--logit-scale"], "--history"),
    (["drift", "{s}", "{s}", "--plot-sample", "100"], ["--plot-sample"], "--report"),
])
def test_options_that_would_be_ignored_are_refused_before_work(class_store, args, flags, when):
    t = time.perf_counter()
    r = invoke(*[a.format(s=class_store[0]) for a in args])
    assert_one_line_error(r.exit_code, r.stderr, f"only with {when}", *flags)
    assert time.perf_counter() - t < 5


def test_options_used_by_the_mode_asked_for_are_taken(class_store):
    r = invoke("measure", class_store[0], "--metrics", "silhouette_euclidean", "--silhouette", "sample",
               "--sample-size", "40", "--seed", "2", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["options"]["sample_size"] == 40
