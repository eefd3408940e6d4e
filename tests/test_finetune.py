"""`embedx finetune` and `embed --checkpoint` on real open_clip models (ViT-B-32 counts, embedx-tiny training),
real peft, real run folders and stores on disk."""
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from embedx.embedding.serial import plan_meta, resolve_templates
from embedx.models.encoder import load_encoder
from embedx.finetune import build, finetune, load_tuned, methods
from embedx.errors import EmbedxError
from embedx.finetune.train import _Images, class_source, evaluate, flat
from embedx.models.lora import split_attention
from embedx.store import Store, StoreWriter
from embedx.models.tuned import ADAPTER_RATIO
from tests.conftest import assert_one_line_error, embedx_cmd, invoke, run_embedx

METHODS = ["full", "bitfit", "attention", "lora", "adapter"]
# DESIGN.md, "Fine-tuning methods": ViT-B-32, --rank 4 --reduction 4.
VIT_B_32 = {"full": 151_277_313, "bitfit": 168_960, "attention": 30_670_848, "lora": 245_760, "adapter": 262_144}
TINY = "embedx-tiny"
FAST = ["--data", "digits", "--limit", "200", "--batch-size", "32", "--optimizer", "adam", "--lr", "1e-3"]


def _fast(**kw):
    return dict(dict(limit=200, batch_size=32, optimizer="adam", lr=1e-3, progress=False, workers=0), **kw)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_vit_b_32_dry_run_counts(method):
    opts = {"lora": ["--rank", "4"], "adapter": ["--reduction", "4"]}.get(method, [])
    r = invoke("finetune", "--model", "ViT-B-32", "--pretrained", "none", "--method", method, *opts, "--dry-run",
               "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert list(got) == ["trainable_params", "total_params", "family", "towers", "per_tower", "what"]
    assert got["family"] == "CLIP" and got["towers"] == "both"
    assert sum(got["per_tower"].values()) == got["trainable_params"]
    assert got["trainable_params"] == VIT_B_32[method]
    added = VIT_B_32[method] if method in ("lora", "adapter") else 0  # new modules add to the total
    assert got["total_params"] == VIT_B_32["full"] + added
    assert r.stdout.strip() == json.dumps(got)


def _expected_tiny(method, k=None, rank=4, reduction=4):
    """Trainable count from the parameter-name rules, on a plain open_clip model (no embedx code)."""
    net = load_encoder(TINY, "none").model
    names = dict(net.named_parameters())

    def in_first_k(name):  # the authors' code trains resblocks 0..k-1 of each tower
        i = re.match(r"(visual\.transformer|transformer)\.resblocks\.(\d+)\.", name).group(2)
        return k is None or int(i) < k

    total = sum(p.numel() for p in names.values())
    if method == "full":
        return total, total
    if method == "bitfit":
        n = sum(p.numel() for s, p in names.items() if re.search(r"resblocks\.\d+\..*bias$", s) and in_first_k(s))
    elif method == "attention":
        n = sum(p.numel() for s, p in names.items() if s.endswith("attn.in_proj_weight") and in_first_k(s))
    elif method == "lora":  # A (r x d) + B (d x r) for q and for v, in every block
        n = sum(2 * 2 * p.shape[1] * rank for s, p in names.items() if s.endswith("attn.in_proj_weight"))
    else:  # two adapters (image, text), each d -> d/red -> d without bias
        d = net.visual.output_dim
        n = 2 * 2 * d * (d // reduction)
    return n, total + (n if method in ("lora", "adapter") else 0)


@pytest.mark.parametrize("method,k", [(m, None) for m in METHODS] + [("bitfit", 1), ("attention", 1)])
def test_tiny_dry_run_counts_follow_the_name_rules(method, k):
    args = ["--train-blocks", k] if k else []
    args += {"lora": ["--rank", 4], "adapter": ["--reduction", 4]}.get(method, [])
    r = invoke("finetune", "-m", TINY, "--method", method, *args, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    trainable, total = _expected_tiny(method, k)
    got = json.loads(r.stdout)
    assert (got["trainable_params"], got["total_params"]) == (trainable, total)
    human = invoke("finetune", "-m", TINY, "--method", method, *args, "--dry-run")  # --data not needed
    assert f"{trainable:,} trainable of {total:,}" in human.stdout


def test_split_attention_equals_multihead_attention():
    enc = load_encoder(TINY, "none", seed=3)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = enc.tokenizer(["a photo of a cat", "7", "a drawing of the number: \"3\"."])
    with torch.no_grad():
        ref = enc.model.encode_image(x), enc.model.encode_text(tokens)
        blocks = list(enc.model.visual.transformer.resblocks) + list(enc.model.transformer.resblocks)
        stacked = [b.attn.in_proj_weight.clone() for b in blocks]
        split_attention(enc.model)
        for w, b in zip(stacked, blocks):
            assert torch.equal(torch.cat([b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight]), w)
        for train in (False, True):
            enc.model.train(train)
            assert (enc.model.encode_image(x) - ref[0]).abs().max() < 1e-6
            assert (enc.model.encode_text(tokens) - ref[1]).abs().max() < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_lowers_the_loss_and_changes_exactly_the_trainable_set(tmp_path, method):
    opts = methods.resolve_options(method, {})
    enc = build(TINY, "none", method, opts, seed=0, device="cpu")
    net = enc.model
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    before = _params(net)
    src = class_source("digits", 200)
    data = _Images(src, np.arange(200), enc.preprocess)
    tokens = enc.tokenizer(resolve_templates(None, src)[0].format(c) for c in src.classnames)
    loss0, _ = evaluate(net, enc, data, tokens, 10, 100)

    cfg = finetune(str(tmp_path / "run"), "digits", TINY, "none", method, epochs=1, encoder=enc, **_fast())
    loss1, _ = evaluate(net, enc, data, tokens, 10, 100)
    assert loss1 < loss0
    after = _params(net)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable
    assert cfg["trainable_params"] == sum(before[n].numel() for n in trainable)

    # the run folder holds the config and exactly the trained parameters, which reload onto a fresh base model
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "params.safetensors"]
    tuned = load_tuned(str(tmp_path / "run"), device="cpu").model
    for n, p in tuned.named_parameters():
        assert torch.equal(p, after[n]), n
    c = json.loads((tmp_path / "run" / "config.json").read_text())
    assert c["method"] == method and c["options"] == opts and c["best_epoch"] == 1 and c["complete"]
    assert c["templates"] == ['a photo of the number: "{}".'] and c["data"] == "digits" and c["seed"] == 0
    assert [h["epoch"] for h in c["history"]] == [1] and 0 <= c["history"][0]["val_acc"] <= 1


def test_lora_keeps_the_base_weights_bit_identical(tmp_path):
    """peft trains only its A/B matrices; the authors' code wrote the update into the frozen weight."""
    base = load_encoder(TINY, "none", seed=0).model
    stacked = {n: p.detach().clone() for n, p in base.named_parameters() if n.endswith("in_proj_weight")}
    enc = build(TINY, "none", "lora", {"rank": 2}, seed=0, device="cpu")
    before = _params(enc.model)
    finetune(str(tmp_path / "run"), "digits", TINY, "none", "lora", rank=2, epochs=1, encoder=enc, **_fast())
    after = _params(enc.model)
    lora = {n for n in before if ".lora_" in n}
    assert lora and all(not torch.equal(before[n], after[n]) for n in lora)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in lora)
    for name, w in stacked.items():  # and they are the original stacked q, k, v weights
        prefix = "clip." + name[: -len("in_proj_weight")]
        d = w.shape[1]
        for k, part in enumerate(("q_proj", "k_proj", "v_proj")):
            key = f"{prefix}{part}.base_layer.weight" if part != "k_proj" else f"{prefix}{part}.weight"
            assert torch.equal(after[key], w[k * d:(k + 1) * d]), key


def test_adapter_blends_its_output_with_the_features():
    enc = build(TINY, "none", "adapter", {"reduction": 4}, seed=0, device="cpu")
    net = enc.model
    layers = list(net.adapters["image"].fc)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert layers[0].bias is None and layers[2].bias is None and layers[0].weight.shape == (8, 32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = net.clip.encode_image(x)
        want = torch.nn.functional.normalize(ADAPTER_RATIO * net.adapters["image"](f) + (1 - ADAPTER_RATIO) * f, dim=-1)
        assert torch.allclose(net.encode_image(x, normalize=True), want, atol=1e-6)


def _history(run):
    try:
        with open(os.path.join(run, "config.json")) as f:
            return len(json.load(f)["history"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    args = ["finetune", "-m", TINY, "--method", "bitfit", "--epochs", "3", "--seed", "5", "--data", "digits",
            "--limit", "200", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.05"]
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    proc = subprocess.Popen(embedx_cmd(*args, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while _history(out) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    r = invoke(*args, "--out", ref)  # the uninterrupted reference
    assert r.exit_code == 0, r.stderr
    done = _history(out)
    assert 1 <= done < 3
    assert any(n.startswith("state-") for n in os.listdir(out))
    r = invoke("embed", "--checkpoint", out, "--data", "digits", "--out", tmp_path / "s.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "unfinished")

    r = invoke(*args, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert f"resuming {out} after epoch {done} of 3" in r.stderr
    a, b = (json.loads(open(os.path.join(p, "config.json")).read()) for p in (ref, out))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and a["best_epoch"] == b["best_epoch"]
    assert a["params_sha256"] == b["params_sha256"]
    assert sorted(os.listdir(out)) == ["config.json", "params.safetensors"]

    # a finished run is kept; another configuration is refused; --overwrite starts over
    r = invoke(*args, "--out", out)
    assert_one_line_error(r.exit_code, r.stderr, "finished run", "--overwrite")
    r = invoke(*args[:-1], "0.1", "--out", out)
    assert_one_line_error(r.exit_code, r.stderr, "refusing to resume", "lr=0.05", "lr=0.1")
    r = invoke(*args[:6], "1", *args[7:], "--out", out, "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert json.loads(open(os.path.join(out, "config.json")).read())["epochs"] == 1


def test_embed_checkpoint_uses_the_tuned_model_and_records_the_run(tmp_path):
    run = str(tmp_path / "run")
    r = invoke("finetune", "-m", TINY, "--method", "lora", "--rank", "8", "--epochs", "1", *FAST[:-1], "1e-2",
               "--out", run)
    assert r.exit_code == 0, r.stderr
    assert "lora, 8,192 trainable of" in r.stdout
    base, tuned = str(tmp_path / "base.zarr"), str(tmp_path / "tuned.zarr")
    assert invoke("embed", "-m", TINY, "--data", "digits", "--limit", 64, "--out", base).exit_code == 0
    r = invoke("embed", "--checkpoint", run, "--data", "digits", "--limit", 64, "--dtype", "float32", "--out", tuned)
    assert r.exit_code == 0, r.stderr
    assert "untrained" not in r.stderr  # random base weights, but trained: no warning that they are not
    a, b = Store(base), Store(tuned)
    assert a.n_images == b.n_images == 64
    assert np.abs(a.images().astype(np.float32) - b.images()).max() > 1e-2
    assert np.abs(a.texts().astype(np.float32) - b.texts()).max() > 1e-2
    sha = hashlib.sha256(open(os.path.join(run, "params.safetensors"), "rb").read()).hexdigest()
    assert b.meta["checkpoint"] == {"path": os.path.abspath(run), "method": "lora", "options": {"rank": 8},
                                    "towers": "both", "family": "CLIP", "sha256": sha,
                                    "rule": "image: rank-8 LoRA on 4 q/v layers in 2 open_clip VisionTransformer "
                                            "blocks; text: rank-8 LoRA on 4 q/v layers in 2 open_clip TextTransformer "
                                            "blocks"}
    assert b.meta["model"] == TINY and b.meta["pretrained"] == "none" and a.meta["checkpoint"] is None
    # the stored rows are the tuned model's embeddings
    enc = load_tuned(run, device="cpu")
    src = class_source("digits", 4)
    x = torch.stack([enc.preprocess(src.load(i)) for i in range(4)])
    np.testing.assert_allclose(b.images()[:4], enc.encode_images(x), atol=1e-5)

    # an unfinished store begun with one checkpoint refuses to resume with another, and resumes with its own
    other = str(tmp_path / "other")
    r = invoke("finetune", "-m", TINY, "--method", "adapter", "--epochs", "1", *FAST, "--out", other, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["options"] == {"reduction": 4}
    part = str(tmp_path / "part.zarr")
    src = class_source("digits", 64)
    meta = plan_meta(src, TINY, "none", 0, "float16", resolve_templates(None, src), None,
                     {"path": os.path.abspath(run), "method": "lora", "options": {"rank": 8}, "sha256": sha})
    StoreWriter.create(part, n_rows=64, dim=32, meta=meta, n_texts=10, background=False).close()
    r = invoke("embed", "--checkpoint", other, "--data", "digits", "--limit", 64, "--out", part)
    assert_one_line_error(r.exit_code, r.stderr, "refusing to resume", "checkpoint")
    r = invoke("embed", "--checkpoint", run, "--data", "digits", "--limit", 64, "--out", part)
    assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(Store(part).images(), b.images().astype(np.float16))
    r = invoke("embed", "--checkpoint", run, "-m", "ViT-B-32", "--data", "digits", "--out", tmp_path / "x.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "disagrees with the checkpoint")


def test_bad_input_gives_one_line(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], ["0.png", "a dark square"], ["1.png", "a grey one"]])
    out = tmp_path / "run"
    cases = [
        (["--method", "lora", "--rank", "0", "--data", "digits"], "--rank must be a positive integer"),
        (["--method", "lora", "--rank", "-2", "--dry-run"], "--rank must be a positive integer"),
        (["--method", "bitfit", "--train-blocks", "3", "--data", "digits"], "exceeds the towers' depth"),
        (["--method", "lora", "--data", f"csv:{tmp_path / 'caps.csv'}"], "image-caption source"),
        (["--method", "lora"], "--data and --out are required"),
        (["--method", "lora", "--data", "digits", "--val-fraction", "1"], "--val-fraction"),
        # options the method does not use: refused, not silently ignored
        (["--method", "bitfit", "--rank", "4", "--data", "digits"], "--rank does not apply to method bitfit",
         "only to lora"),
        (["--method", "bitfit", "--rank", "4", "--dry-run"], "--rank does not apply"),
        (["--method", "lora", "--train-blocks", "1", "--data", "digits"], "--train-blocks does not apply",
         "only to bitfit and attention"),
        (["--method", "full", "--reduction", "2", "--data", "digits"], "--reduction does not apply"),
        (["--method", "adapter", "--rank", "4", "--reduction", "2", "--data", "digits"], "--rank does not apply"),
    ]
    for args, *frags in cases:
        extra = ["--out", out] if "--data" in args else []
        r = invoke("finetune", "-m", TINY, *args, *extra)
        assert_one_line_error(r.exit_code, r.stderr, *frags)
    # --method and --optimizer are choices: click refuses other values and --help lists them
    for args in (["--method", "prompt-tuning"], ["--method", "lora", "--optimizer", "lbfgs"]):
        r = invoke("finetune", "-m", TINY, *args, "--data", "digits", "--out", out)
        assert r.exit_code == 2 and "is not one of" in r.stderr and args[-1] in r.stderr, r.stderr
    assert not out.exists()  # every refusal comes before the run folder is made
    r = invoke("embed", "--checkpoint", tmp_path / "no-such-run", "--data", "digits", "--out", tmp_path / "s.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "no finetune run at")
    r = invoke("embed", "--data", "digits", "--out", tmp_path / "s.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "--model is required")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = invoke("finetune", "-m", TINY, "--method", "lora", "--data", "digits", "--out", tmp_path / "busy",
               "--overwrite")
    assert_one_line_error(r.exit_code, r.stderr, "not an embedx run")
    assert (tmp_path / "busy" / "notes.txt").exists()
    rc, _, err = run_embedx("finetune", "-m", TINY, "--method", "bitfit", "--rank", "2", "--dry-run")  # the
    assert_one_line_error(rc, err, "--rank does not apply")  # console script too, exit 2
    assert rc == 2


def test_method_choices_and_default_recipes_in_help_match_the_registry():
    from embedx.cli.finetune import METHOD_NAMES

    assert METHOD_NAMES == tuple(methods.METHODS)
    r = invoke("finetune", "--help")
    assert r.exit_code == 0
    assert "--method [full|bitfit|attention|lora|adapter]" in r.stdout and "[sgd|adam]" in r.stdout
    table = r.stdout.split("Defaults per method")[1].split("\n\n")[0].splitlines()
    rows = {ln.split()[0]: (ln.split()[1], float(ln.split()[2])) for ln in table[2:]}
    assert rows == {name: (m.optimizer, m.lr) for name, m in methods.METHODS.items()}
    assert methods.recipe("lora") == (methods.METHODS["lora"].optimizer, methods.METHODS["lora"].lr)
    assert methods.recipe("lora", "sgd", 0.5) == ("sgd", 0.5)


def test_options_a_method_does_not_use_are_refused_by_the_library(tmp_path):
    for method, opt in (("bitfit", {"rank": 2}), ("lora", {"train_blocks": 1}), ("attention", {"reduction": 2})):
        with pytest.raises(EmbedxError, match=f"{next(iter(opt))} does not apply to method {method}"):
            finetune(str(tmp_path / "run"), "digits", TINY, "none", method, **opt, **_fast())
    assert not (tmp_path / "run").exists()


def _cfg(history, zs_loss=2.5, zs_acc=0.1):
    return {"method": "lora", "optimizer": "adam", "lr": 1e-9, "zeroshot_val_loss": zs_loss, "zeroshot_val_acc": zs_acc,
            "history": [dict(zip(("val_loss", "val_acc", "train_loss", "train_acc"), h)) for h in history]}


def test_flat_is_no_accuracy_gain_and_no_loss_fall():
    L = 2.5
    assert "did not move" in flat(_cfg([(L, 0.1, L, 0.1), (L * (1 - 0.0009), 0.1, L, 0.1)]))  # 0.09% lower: flat
    assert "did not move" in flat(_cfg([(L * 1.5, 0.05, 3, 0.1)]))  # worse is not better
    assert flat(_cfg([(L, 0.1, L, 0.1), (L * (1 - 0.0011), 0.1, L, 0.1)])) is None  # the loss fell 0.11%
    assert flat(_cfg([(L, 0.1 + 1 / 144, L, 0.1)])) is None  # one more hold-out image right
    # without a hold-out: the training loss and accuracy, epoch 1 as the start; one epoch is not judged
    assert flat(_cfg([(None, None, L, 0.1)], None, None)) is None
    assert "training loss" in flat(_cfg([(None, None, L, 0.1), (None, None, L, 0.1)], None, None))
    assert flat(_cfg([(None, None, L, 0.1), (None, None, L * 0.9, 0.1)], None, None)) is None


def test_a_flat_run_warns_and_fails_only_with_fail_if_flat(tmp_path):
    args = ["finetune", "-m", TINY, "--method", "bitfit", "--epochs", "1", "--data", "digits", "--limit", "200",
            "--batch-size", "32", "--workers", "0"]
    r = invoke(*args, "--lr", "1e-9", "--out", tmp_path / "a")  # too small to move anything
    assert r.exit_code == 0, r.stderr
    assert "warning: fine-tuning did not move: hold-out accuracy" in r.stderr and "wrote" in r.stdout
    r = invoke(*args, "--lr", "1e-9", "--out", tmp_path / "b", "--fail-if-flat")
    lines = r.stderr.strip().splitlines()  # progress lines, the warning, then one error line
    assert r.exit_code == 2 and [ln for ln in lines if ln.startswith("error:")] == lines[-1:], r.stderr
    for frag in ("error: fine-tuning did not move: hold-out accuracy", "adam lr 1e-09", "(--fail-if-flat;", "kept"):
        assert frag in lines[-1], (frag, lines[-1])
    assert "Traceback" not in r.stderr and os.path.isfile(tmp_path / "b" / "params.safetensors")
    # the method's defaults (no --optimizer, no --lr) learn: the same check passes
    r = invoke(*args, "--out", tmp_path / "c", "--fail-if-flat")
    assert r.exit_code == 0, r.stderr
    assert "did not move" not in r.stderr
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (c["optimizer"], c["lr"]) == methods.recipe("bitfit")
    assert c["history"][0]["val_loss"] < c["zeroshot_val_loss"]
