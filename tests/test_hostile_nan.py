"""No NaN crosses a boundary: a diverging fine-tune stops before it saves NaN parameters, `embed` commits no row
the store would refuse, `info`/`verify` report such rows in a store, and an undefined silhouette is null while the
other measures are still reported (sklearn's rule). Real run folders, real open_clip tiny models, real stores;
every CLI case runs in a child bounded in time and memory (``run_bounded``)."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file
from sklearn.metrics import silhouette_score

from embedx import measures as M
from embedx.embedding.options import ClusterOptions, EncodeOptions, SourceOptions, WriteOptions
from embedx.embedding.serial import embed_to_store
from embedx.errors import EmbedxError
from embedx.finetune import build, finetune, methods
from embedx.formats.arrays import import_arrays
from embedx.store.integrity import inventory
from embedx.models.factory import resolve_model
from embedx.store import Store
from embedx.store.layout import ARRAYS
from tests.conftest import assert_one_line_error, invoke, run_bounded, write_behind_embedx

TINY = "embedx-tiny"
TIMEOUT = 120  # s: every case here takes a few seconds; a hang fails instead of stalling CI


def _strict_json(path):
    """The file's JSON, refusing NaN/Infinity (not JSON)."""
    def refuse(c):
        raise AssertionError(f"{path} holds {c}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


# -- finetune ----------------------------------------------------------------------------------------------------
def test_finetune_diverging_lr_stops_at_the_step_and_saves_no_nan_params(tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_bounded("-q", "finetune", "-m", TINY, "--method", "full", "--lr", "1e12", "--epochs", "2",
                               "--data", "digits:train", "--limit", "64", "--batch-size", "32", "--workers", "0",
                               "--out", run, timeout=TIMEOUT)
    assert rc == 2, (rc, out, err)
    assert_one_line_error(rc, err, "training diverged at epoch 1, step", "loss is nan", "try a lower --lr",
                          "holds no trained epoch")
    assert not [f for f in os.listdir(run) if f.endswith((".safetensors", ".pt"))]  # no checkpoint of NaN params
    cfg = _strict_json(run / "config.json")
    assert (cfg["complete"], cfg["best_epoch"], cfg["params"], cfg["history"]) == (False, None, None, [])
    assert cfg["diverged"]["epoch"] == 1
    # the same command again would diverge again: refused before any model loads
    rc, _, err = run_bounded("-q", "finetune", "-m", TINY, "--method", "full", "--lr", "1e12", "--epochs", "2",
                             "--data", "digits:train", "--limit", "64", "--batch-size", "32", "--workers", "0",
                             "--out", run, timeout=TIMEOUT)
    assert_one_line_error(rc, err, "refusing to resume", "diverged at epoch 1", "lower --lr and --overwrite")


def test_finetune_parameters_that_turn_inf_stop_the_run_at_that_step(tmp_path):
    # SGD's first step subtracts lr * weight_decay * p ~ 1e58 from every parameter: beyond float32, while the
    # step's own loss (computed before it) is finite; no hold-out either, so only the parameters show it
    with pytest.raises(EmbedxError, match=r"diverged at epoch 1, step 1 of 1: parameter \S+ holds NaN or inf") as e:
        finetune(str(tmp_path / "run"), "digits:train", TINY, method="full", optimizer="sgd", lr=1e30,
                 weight_decay=1e30, epochs=1, limit=64, batch_size=64, val_fraction=0, progress=False, workers=0)
    assert e.value.param == "lr"
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith((".safetensors", ".pt"))]


@pytest.mark.parametrize("opt", [["--lr", "1e39"], ["--lr", "inf"], ["--weight-decay", "1e31"]])
def test_finetune_refuses_rates_past_float32_before_any_work(tmp_path, opt):
    rc, _, err = run_bounded("finetune", "-m", TINY, "--method", "full", *opt, "--data", "digits:train",
                             "--out", tmp_path / "run", timeout=TIMEOUT)
    assert_one_line_error(rc, err, f"{opt[0]} must be at most 1e+30")
    assert rc == 2 and not (tmp_path / "run").exists()


def test_finetune_divergence_keeps_the_best_checkpoint_of_earlier_epochs(tmp_path):
    """Epoch 1 trains soundly; in epoch 2 a parameter turns NaN (as a fault would make it) and the step's loss is
    NaN: the run stops there and keeps epoch 1's checkpoint and resume state, finite, as its config names them."""
    run = tmp_path / "run"
    enc = build(TINY, "none", "full", methods.resolve_options("full", {}), 0, device="cpu")
    steps = []

    def fault(module, inputs):
        if module.training:
            steps.append(1)
            if len(steps) == 3:  # 2 steps an epoch: epoch 2, step 1
                with torch.no_grad():
                    next(module.parameters()).fill_(float("nan"))

    enc.model.clip.visual.register_forward_pre_hook(fault)
    with pytest.raises(EmbedxError, match=r"diverged at epoch 2, step 1 of 2: the training loss is nan .*keeps "
                                          r"epoch 1 \(best epoch 1\); nothing of epoch 2 was saved"):
        finetune(str(run), "digits:train", TINY, method="full", epochs=3, limit=64, batch_size=32,
                 val_fraction=0.3, progress=False, workers=0, encoder=enc)
    cfg = _strict_json(run / "config.json")
    assert (cfg["complete"], cfg["best_epoch"], len(cfg["history"])) == (False, 1, 1)
    saved = load_file(run / cfg["params"])
    assert hashlib.sha256((run / cfg["params"]).read_bytes()).hexdigest() == cfg["params_sha256"]
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert sorted(os.listdir(run)) == ["best-001.safetensors", "config.json", "state-001.pt"]
    with pytest.raises(EmbedxError, match="diverged at epoch 2 .*retrain it with a lower lr and overwrite=True"):
        resolve_model(None, None, checkpoint=str(run))  # what embed --checkpoint opens


# -- embed -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """A finished bitfit run of embedx-tiny (one epoch, a few images)."""
    run = tmp_path_factory.mktemp("tuned") / "run"
    finetune(str(run), "digits:train", TINY, method="bitfit", epochs=1, limit=32, progress=False, workers=0)
    return run


def _poisoned(run, dst, tower: str):
    """A copy of the finished ``run`` whose trainable parameters of ``tower`` (visual: the image tower; text: the
    rest) are finite but so large (3e38) that the tower's forward pass overflows to NaN/inf, its config's sha256
    updated. (NaN or inf weights themselves are refused when the run is loaded: tests/test_hostile_reports.py.)"""
    shutil.copytree(run, dst)
    params = load_file(dst / "params.safetensors")
    for k, v in params.items():
        if k.startswith("visual.") == (tower == "visual"):
            params[k] = torch.full_like(v, 3e38)
    save_file(params, dst / "params.safetensors", metadata={"embedx-finetune": "bitfit"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["params_sha256"] = hashlib.sha256((dst / "params.safetensors").read_bytes()).hexdigest()
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("tower,fragments", [
    ("visual", ("images row 0 contains nan or inf", "embedding of image 'digits:")),
    ("text", ("texts row 0 contains nan or inf", "embedding of class '0'")),
])
def test_embed_with_a_nan_checkpoint_commits_no_row(tmp_path, tuned_run, tower, fragments):
    run = _poisoned(tuned_run, tmp_path / "nan-run", tower)
    out = tmp_path / "s.zarr"
    rc, _, err = run_bounded("-q", "embed", "--checkpoint", run, "--data", "digits:test", "--limit", "40",
                             "--batch-size", "16", "--workers", "0", "--out", out, timeout=TIMEOUT)
    assert_one_line_error(rc, err, *fragments, "nothing of its batch was committed")
    assert rc == 2
    meta = Store(str(out), allow_partial=True).meta
    assert (meta["complete"], meta["rows_committed"]) == (False, 0)


def test_cluster_embed_with_a_nan_checkpoint_commits_no_row(tmp_path, tuned_run, dask_client):
    run = _poisoned(tuned_run, tmp_path / "nan-run", "visual")
    out = str(tmp_path / "s.zarr")
    with pytest.raises(EmbedxError, match=r"images row \d+ contains NaN or inf .*: the model's embedding of image "
                                          r"'digits:\d+'; nothing of its batch was committed"):
        embed_to_store(out, "digits:test", None, None, checkpoint=str(run), source=SourceOptions(limit=40),
                       encode=EncodeOptions(batch_size=16, workers=0), write=WriteOptions(chunk_rows=16),
                       cluster=ClusterOptions(client=dask_client, task_bytes=2048), progress=False)
    meta = Store(out, allow_partial=True).meta
    assert (meta["complete"], meta["rows_committed"]) == (False, 0)


def test_embed_keeps_the_rows_committed_before_a_bad_row(tmp_path):
    """The model turns bad after two batches (a parameter becomes NaN, as a fault would make it): the two
    batches committed before stay, finite; a rerun with a sound model resumes after them."""
    out = str(tmp_path / "s.zarr")
    args = dict(seed=0, source=SourceOptions(limit=64), encode=EncodeOptions(batch_size=16, workers=0),
                write=WriteOptions(chunk_rows=16, commit_every_s=0), progress=False)
    enc = resolve_model(TINY, "none", seed=0).load("cpu")
    calls = []

    def fault(module, inputs):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))

    enc.model.visual.register_forward_pre_hook(fault)
    with pytest.raises(EmbedxError, match=r"images row 32 contains NaN or inf \(16 rows in all\): the model's "
                                          r"embedding of image 'digits:32'"):
        embed_to_store(out, "digits", TINY, "none", encoder=enc, **args)
    s = Store(out, allow_partial=True)
    assert (s.complete, s.n_images) == (False, 32)
    assert np.isfinite(s.images(dtype=np.float32)).all()
    res = embed_to_store(out, "digits", TINY, "none", encoder=resolve_model(TINY, "none", seed=0).load("cpu"),
                         **args)
    assert (res.resumed_from, res.rows_written) == (32, 32)
    s = Store(out)
    assert s.n_images == 64 and np.isfinite(s.images(dtype=np.float32)).all()


# -- info / verify -----------------------------------------------------------------------------------------------
def _store(tmp_path, n=50, c=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    for name, a in (("x", rng.standard_normal((n, d))), ("t", rng.standard_normal((c, d))),
                    ("y", rng.integers(0, c, n))):
        np.save(tmp_path / f"{name}.npy", a.astype(np.float32) if name != "y" else a)
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), chunk_rows=16)
    return out


def _rewrite_with_checksums(path, name, index, values):
    """Write ``values`` into the store and record its inventory again, as a writer that commits whatever it is
    given (an embedx before the row check) would have finalized it: every checksum matches the rows."""
    g = zarr.open_group(path, mode="r+")
    g[name][index] = values
    meta = dict(g.attrs["embedx"])
    meta["integrity"] = inventory(path, g, meta, ARRAYS)
    g.attrs["embedx"] = meta


@pytest.mark.parametrize("cmd", ["verify", "info"])
def test_info_and_verify_report_rows_no_measure_accepts(tmp_path, cmd):
    out = _store(tmp_path)
    r = invoke(cmd, out)
    assert r.exit_code == 0 and "damaged" not in r.output  # sound rows: nothing reported
    _rewrite_with_checksums(out, "images/embeddings", 20, np.full(8, np.nan, np.float16))
    _rewrite_with_checksums(out, "images/embeddings", 41, np.zeros(8, np.float16))
    _rewrite_with_checksums(out, "texts/embeddings", 1, np.full(8, np.inf, np.float16))
    rc, stdout, err = run_bounded(cmd, out, timeout=TIMEOUT)
    assert_one_line_error(rc, err, "damaged")
    assert rc == 2
    assert ("damaged: images/embeddings row 20 contains NaN or inf (or its norm is beyond 1e+15) (2 refused rows "
            "in all)") in stdout
    assert "damaged: texts/embeddings row 1 contains NaN or inf" in stdout
    assert "checksum mismatch" not in stdout  # the bytes are as recorded: only the rows are wrong


def test_verify_reports_bad_rows_of_a_store_without_content_checksums(tmp_path):
    out = _store(tmp_path)
    write_behind_embedx(out, "images/embeddings", 5, np.zeros(8, np.float16))
    rc, stdout, err = run_bounded("verify", out, timeout=TIMEOUT)
    assert rc == 2
    assert "damaged: images/embeddings row 5 is all zeros" in stdout


# -- undefined silhouettes ---------------------------------------------------------------------------------------
def _sk(points, labels, metric):
    """sklearn's silhouette_score, None where sklearn says it is undefined (2 <= n_labels <= n_samples - 1)."""
    try:
        return float(silhouette_score(points, labels, metric=metric))
    except ValueError as e:
        assert "Number of labels" in str(e)
        return None


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _same(got, want):
    assert (got is None) == (want is None), (got, want)
    if want is not None:
        assert got == pytest.approx(want, abs=1e-5)


CASES = [  # (images, texts, paired, labels): sklearn decides which silhouettes are defined
    (1, 1, True, None),           # a 1-pair store: 2 points, undefined
    (2, 2, True, None),           # 4 points: defined
    (1, 1, False, [0]),           # 1 image, 1 class: 2 points, undefined
    (1, 2, False, [1]),           # 1 image, 2 classes: 3 points, defined; one labelled image: class undefined
    (3, 2, False, [0, 0, 0]),     # the labelled images in one class: class silhouette undefined
    (3, 3, False, [0, 1, 2]),     # each image its own class: class silhouette undefined
    (3, 2, False, [-1, -1, -1]),  # no labelled image: class silhouette undefined
    (4, 2, False, [0, 0, 1, -1]),  # defined throughout
]


def test_undefined_silhouettes_are_null_by_sklearns_rule(tmp_path):
    for k, (n, c, paired, y) in enumerate(CASES):
        _check_case(tmp_path / str(k), n, c, paired, y)


def _check_case(tmp_path, n, c, paired, y):
    tmp_path.mkdir()
    rng = np.random.default_rng(n * 10 + c)
    x, t = rng.standard_normal((n, 8)).astype(np.float32), rng.standard_normal((c, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    args = {"paired": True} if paired else {"labels": str(tmp_path / "y.npy")}
    if not paired:
        np.save(tmp_path / "y.npy", np.asarray(y))
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), dtype="float32", **args)
    r = invoke("measure", out, "--json", *(() if paired else ("--silhouette-labels", "class")))
    assert r.exit_code == 0, (n, c, y, r.output)
    res = json.loads(r.output)
    pts, modality = np.vstack([_unit(x), _unit(t)]), [1] * n + [0] * c
    _same(res["silhouette_euclidean"], _sk(pts, modality, "euclidean"))
    _same(res["silhouette_cosine"], _sk(pts, modality, "cosine"))
    if not paired:
        keep = np.asarray(y) >= 0
        _same(res["silhouette_class_euclidean"], _sk(_unit(x)[keep], np.asarray(y)[keep], "euclidean")
              if keep.any() else None)
    assert res["gap"] is not None  # the other measures are still reported (gap is defined on any store)
    # the text report: "undefined", never a number, for the same measures
    r = invoke("measure", out, *(() if paired else ("--silhouette-labels", "class")))
    assert r.exit_code == 0, r.output
    for key in ("silhouette_euclidean", "silhouette_cosine") + (() if paired else ("silhouette_class_euclidean",)):
        line = next(ln for ln in r.output.splitlines() if ln.startswith(key + " "))
        assert ("undefined" in line) == (res[key] is None), line


def _one_pair_store(tmp_path) -> str:
    """A paired store of one image and its caption (random 8-d rows): every silhouette is undefined there."""
    rng = np.random.default_rng(0)
    for name in ("x", "t"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((1, 8)).astype(np.float32))
    out = str(tmp_path / "s.zarr")
    import_arrays(out, images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), paired=True)
    return out


def test_default_measure_of_a_one_pair_store_reports_every_defined_measure(tmp_path):
    out = _one_pair_store(tmp_path)
    rc, stdout, err = run_bounded("measure", out, "--json", timeout=TIMEOUT)
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["silhouette_euclidean"] is None and res["silhouette_cosine"] is None
    assert res["i2t_recall@1"] == 1.0 and res["zeroshot_top1"] == 1.0 and res["acs"] is not None


def test_sampled_silhouette_of_two_points_is_null_too(tmp_path):
    out = _one_pair_store(tmp_path)
    res = M.compute(Store(out), silhouette_mode="sample")
    assert np.isnan(res["silhouette_euclidean"]) and np.isnan(res["silhouette_cosine"])
    assert "silhouette_euclidean" not in res.estimates
    assert np.isfinite(res["acs"])
