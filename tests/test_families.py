"""Every open_clip family x every fine-tuning method (issue 24), on real open_clip / timm / Hugging Face models and
real peft.

The expected trainable sets come from the methods' rules written here a second time, as regular expressions on
parameter names (the issue's wording), with no embedx code: a tower is ``visual.*`` or ``text.*`` (CLIP: the top level
minus ``visual``), a block is ``resblocks.N`` / ``blocks.N`` / ``stages.N.blocks.N`` / ``layerK.N`` / ``encoder.layer.N``
inside it, and the q/k/v weights are named ``in_proj_weight``, ``qkv.weight``, ``q_proj/k_proj/v_proj.weight`` or
``query/key/value.weight``. Full-size counts are also held against docs/DESIGN.md's family table.
"""
import json
import os
import re

import numpy as np
import pytest
import torch

from embedx.errors import EmbedxError
from embedx.finetune import build, finetune, load_tuned, methods
from embedx.finetune.train import train_step
from embedx.models.encoder import load_encoder
from embedx.models.tuned import TunedCLIP
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["full", "bitfit", "attention", "lora", "adapter"]
FULL_SIZE = ["ViT-B-32", "coca_ViT-B-32", "ViT-B-16-SigLIP", "EVA02-B-16", "convnext_base", "RN50", "MobileCLIP-S1"]
TINY = ["embedx-tiny", "embedx-tiny-coca", "embedx-tiny-siglip", "embedx-tiny-eva02", "embedx-tiny-convnext",
        "embedx-tiny-rn", "embedx-tiny-mobileclip"]
CNN_IMAGE = {"convnext_base", "RN50", "embedx-tiny-convnext", "embedx-tiny-rn"}  # image towers without attention
BLOCK = r"(?:transformer\.resblocks|trunk\.blocks|trunk\.stages\.\d+\.blocks|layer[1-4]|transformer\.encoder\.layer)"
QKV = r"(?:in_proj_weight|qkv\.weight|[qkv]_proj\.weight|query\.weight|key\.weight|value\.weight)"


# -- the rules, independently ----------------------------------------------------------------------------------
def tower_of(names, name):
    """'image', 'text' or None (logit scale/bias, CoCa's decoder), from the name alone."""
    if name.startswith("visual."):
        return "image"
    if any(n.startswith("text.") for n in names):
        return "text" if name.startswith("text.") else None
    return None if name in ("logit_scale", "logit_bias") or name.startswith("text_decoder.") else "text"


def block_index(names, name):
    """(tower, index of the block in tower order) or None; blocks are numbered in the order names first appear."""
    t = tower_of(names, name)
    prefix = {"image": r"visual\.", "text": r"text\." if any(n.startswith("text.") for n in names) else ""}.get(t)
    if prefix is None:
        return None
    m = re.match(rf"({prefix}{BLOCK}\.\d+)\.", name)
    if not m:
        return None
    order = []
    for n in names:
        b = re.match(rf"({prefix}{BLOCK}\.\d+)\.", n)
        if b and b.group(1) not in order:
            order.append(b.group(1))
    return t, order.index(m.group(1))


def expected(names_shapes: dict, method, towers=("image", "text"), k=None, rank=4, reduction=4, dim=None):
    """(set of trainable parameter names of the base model, number of parameters the method adds)."""
    names = list(names_shapes)
    pick = set()
    added = 0
    for n, shape in names_shapes.items():
        t = tower_of(names, n)
        if method == "full":
            if len(towers) == 2 or t in towers:
                pick.add(n)
            continue
        b = block_index(names, n)
        if b is None or b[0] not in towers or (k is not None and b[1] >= k):
            continue
        leaf = n.rsplit(".", 1)[-1]
        if method == "bitfit" and leaf.endswith("bias"):
            pick.add(n)
        if method == "attention" and re.search(rf"\.{QKV}$", n):
            pick.add(n)
        if method == "lora" and re.search(rf"\.{QKV}$", n):
            out, d = shape
            if n.endswith(("in_proj_weight", "qkv.weight")):  # q and v of a fused weight: r (d + out/3) each
                added += 2 * rank * (d + out // 3)
            elif re.search(r"(?:q_proj|v_proj|query|value)\.weight$", n):
                added += rank * (d + out)
    if method == "adapter":
        added = len(towers) * 2 * dim * (dim // reduction)
    return pick, added


def shapes(clip):
    return {n: tuple(p.shape) for n, p in clip.named_parameters()}


def trainable_base(net: TunedCLIP):
    """The trainable parameters of the base model: peft's wrapped layers report their base under ``base_layer``."""
    return {n.removeprefix("clip.") for n, p in net.named_parameters() if p.requires_grad}


# -- DESIGN.md's table -----------------------------------------------------------------------------------------
def design_table():
    text = open(os.path.join(ROOT, "docs", "DESIGN.md"), encoding="utf-8").read()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|([^|]+)\|([^|]+)\|(.*)\|\s*$", line)
        if m and m.group(1) in FULL_SIZE:
            cells = [c.strip() for c in m.group(4).split("|")]
            rows[m.group(1)] = {"family": m.group(2).strip(), "total": int(m.group(3).replace(",", "")),
                                **{meth: c for meth, c in zip(METHODS, cells)}}
    return rows


@pytest.mark.parametrize("model", FULL_SIZE)
def test_full_size_counts_follow_the_rules_and_the_design_table(model):
    clip = load_encoder(model, "none", warn_random=False).model
    ns = shapes(clip)
    total = sum(int(np.prod(s)) for s in ns.values())
    row = design_table()[model]
    assert row["total"] == total
    dim = TunedCLIP(clip).embed_dim
    for method in ["full", "bitfit", "attention", "adapter", "lora"]:  # lora last: it changes the model
        net = TunedCLIP(clip)
        towers = ("text",) if model in CNN_IMAGE and method in ("attention", "lora") else ("image", "text")
        if len(towers) == 1:
            with pytest.raises(EmbedxError, match=r"nothing to train in the image tower .*towers='text'"):
                methods.apply(net, method, methods.resolve_options(method, {}))
            net = TunedCLIP(clip)
        sel = methods.apply(net, method, methods.resolve_options(method, {}), "both" if len(towers) == 2 else "text")
        pick, added = expected(ns, method, towers, dim=dim)
        assert trainable_base(net) - {n for n in trainable_base(net) if ".lora_" in n or n.startswith("adapters.")} \
            == pick, method
        count = sum(int(np.prod(ns[n])) for n in pick) + added
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == count, method
        assert sum(sel.counts.values()) == count
        want = row[method]
        assert want == (f"{count:,}" if len(towers) == 2 else f"refused ({count:,})"), (method, want)
        assert row["family"] == sel.family


def test_dry_run_prints_the_family_the_towers_and_the_counts():
    r = invoke("finetune", "-m", "EVA02-B-16", "--method", "attention", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert list(got)[:2] == ["trainable_params", "total_params"]
    assert got["family"] == "EVA-02-CLIP" and got["towers"] == "both"
    assert got["per_tower"] == {"image": 12 * 3 * 768 * 768, "text": 12 * 3 * 512 * 512}
    assert "q_proj/k_proj/v_proj.weight" in got["what"]["image"] and "in_proj_weight" in got["what"]["text"]
    r = invoke("finetune", "-m", "convnext_base", "--method", "lora", "--dry-run")
    assert_one_line_error(r.exit_code, r.stderr, "--towers text", "image tower")
    r = invoke("finetune", "-m", "convnext_base", "--method", "lora", "--towers", "text", "--dry-run")
    assert r.exit_code == 0 and "98,304 trainable" in r.stdout and "text" in r.stdout, r.stderr


def test_a_dry_run_needs_no_tokenizer_download(monkeypatch):
    """SigLIP's tokenizer is a Hugging Face download: counting parameters never loads it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("finetune", "-m", "ViT-B-16-SigLIP", "--method", "lora", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["trainable_params"] == 12 * 2 * 4 * (768 + 768) * 2


# -- tiny configs of every family: selection, LoRA identity, one step, real runs -------------------------------
def hf_text_config(root):
    """A CLIP with a Hugging Face (BERT) text tower and a locally built WordPiece-free tokenizer, registered with
    open_clip; -> the model name. Everything is on disk under ``root``; nothing is downloaded."""
    import open_clip
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, PreTrainedTokenizerFast

    words = sorted({w for t in ["a photo of the number: \"{}\"."] for c in "0123456789" for w in
                    t.format(c).replace('"', ' " ').replace(":", " : ").replace(".", " . ").split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    d = os.path.join(root, "tiny-bert")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(d)
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(d)
    name = "embedx-test-hf-text"
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                           "patch_size": 8},
           "text_cfg": {"hf_model_name": d, "hf_tokenizer_name": d, "hf_model_pretrained": False,
                        "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 32}}
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    open_clip.add_model_config(path)
    return name, d


def siglip_tokenizer(root):
    """A real open_clip HFTokenizer over a tokenizer built on disk (SigLIP's own is a download)."""
    from open_clip.tokenizer import HFTokenizer

    _, d = hf_text_config(root)
    return HFTokenizer(d, context_length=64, clean="canonicalize")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    return hf_text_config(str(tmp_path_factory.mktemp("hf")))[0]


def _tokens(name, n=3, seed=0):
    """Token ids for the text tower of ``name`` (random ids in its vocabulary, the end token last), no tokenizer."""
    import open_clip
    from transformers import AutoConfig

    cfg = open_clip.get_model_config(name)["text_cfg"]
    vocab = AutoConfig.from_pretrained(cfg["hf_model_name"]).vocab_size if "hf_model_name" in cfg else cfg["vocab_size"]
    length = cfg.get("context_length", 77)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, vocab - 1, (n, min(length, 12)), generator=g)
    t[:, -1] = vocab - 1
    return torch.nn.functional.pad(t, (0, length - t.shape[1]))


def _image(enc, n=4, seed=0):
    size = enc.preprocess.transforms[0].size
    size = size if isinstance(size, int) else size[0]
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


ALL_TINY = TINY + ["hf"]


def _name(model, hf_model):
    return hf_model if model == "hf" else model


@pytest.mark.parametrize("model", ALL_TINY)
@pytest.mark.parametrize("method,k", [(m, None) for m in METHODS] + [("bitfit", 1), ("attention", 1)])
def test_tiny_trainable_set_is_the_rule(model, method, k, hf_model):
    name = _name(model, hf_model)
    towers = "text" if name in CNN_IMAGE and method in ("attention", "lora") else "both"
    opts = methods.resolve_options(method, {"train_blocks": k} if k else {})
    base = load_encoder(name, "none", warn_random=False).model
    chosen = ("image", "text") if towers == "both" else (towers,)
    ns = shapes(base)
    pick, added = expected(ns, method, chosen, k=k, dim=TunedCLIP(base).embed_dim)
    empty = [t for t in chosen if method in ("bitfit", "attention") and not any(tower_of(list(ns), n) == t for n in pick)]
    if empty:  # MobileCLIP's first block is a RepMixer: attention in block 1 alone finds nothing in the image tower
        with pytest.raises(EmbedxError, match=f"nothing to train in the {empty[0]} tower") as e:
            build(name, "none", method, opts, seed=0, device="cpu", towers=towers)
        assert e.value.param == "towers"
        return
    enc = build(name, "none", method, opts, seed=0, device="cpu", towers=towers)
    got = {n for n in trainable_base(enc.model) if ".lora_" not in n and not n.startswith("adapters.")}
    assert got == pick
    assert sum(p.numel() for p in enc.model.parameters() if p.requires_grad) == \
        sum(int(np.prod(ns[n])) for n in pick) + added


@pytest.mark.parametrize("model", ALL_TINY)
def test_lora_at_initialization_is_the_base_model_bit_for_bit(model, hf_model):
    """LoRA at initialization adds exact zeros: its outputs are those of the base model with the split layers, bit
    for bit, in train and eval mode. The split is exact where q, k and v are Linear layers (fused qkv, separate,
    Hugging Face); for ``nn.MultiheadAttention`` torch picks among fused attention kernels by mode, mask and
    requires_grad, which the split QKVAttention (scaled_dot_product_attention) cannot follow: the base model and the
    split agree to float32 rounding there."""
    import copy

    from embedx.finetune.train import freeze_batch_norm
    from embedx.models.families import towers as find_towers
    from embedx.models.lora import split_attention

    name = _name(model, hf_model)
    towers = "text" if name in CNN_IMAGE else "both"
    base = load_encoder(name, "none", seed=0, warn_random=False).model
    found = find_towers(base)
    mha = {t.name for t in found.values() if any(a.kind.label == "in_proj_weight" for b in t.attention for a in b)}
    split = copy.deepcopy(base)
    split_attention(split, [t for n, t in find_towers(split).items() if towers in ("both", n)])
    enc = build(name, "none", "lora", {"rank": 2}, seed=0, device="cpu", towers=towers)
    assert any(".lora_B" in n for n, _ in enc.model.named_parameters())
    nets = (base, split, enc.model)
    for net in nets:  # the same requires_grad everywhere (CPU kernels depend on it), LoRA's too
        for p in net.parameters():
            p.requires_grad_(False)
    x, t = _image(load_encoder(name, "none", warn_random=False)), _tokens(name)
    for train in (True, False):  # dropout is 0 in these configs but BERT's: compare in eval mode there
        if train and model == "hf":
            continue
        for net in nets:
            net.train(train)
            freeze_batch_norm(net)
        with torch.no_grad():
            for tower, encode in (("image", "encode_image"), ("text", "encode_text")):
                arg = x if tower == "image" else t
                b, s_, lo = (getattr(net, encode)(arg) for net in nets)
                assert torch.equal(lo, s_), (tower, train)
                if tower in mha:
                    torch.testing.assert_close(lo, b, rtol=0, atol=1e-5)
                else:
                    assert torch.equal(lo, b), (tower, train)


# Parameters the contrastive loss never reaches (full trains them, no gradient arrives): CoCa's captioning decoder.
UNREACHED = re.compile(r"^text_decoder\.")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (torch.equal calls NaN != NaN: open_clip leaves CoCa's unused text_decoder.text_projection as
    torch.empty, whose memory may hold NaN patterns, which then "changed" without a write)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().contiguous().view(-1).view(torch.uint8), b.detach().contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("model", ALL_TINY)
@pytest.mark.parametrize("method", METHODS)
def test_steps_move_only_the_trainable_set_and_lora_keeps_the_base(model, method, hf_model):
    """Two optimizer steps: no frozen parameter or buffer moves (bit for bit), the optimizer holds exactly the
    trainable set and every one of those gets a gradient (but the unreached decoder), and most of them move. (Not all
    need to: random-init towers with layer scale 1e-5 (FastViT) give some parameters gradients that round away.)"""
    from embedx.finetune.train import freeze_batch_norm

    name = _name(model, hf_model)
    towers = "text" if name in CNN_IMAGE and method in ("attention", "lora") else "both"
    enc = build(name, "none", method, methods.resolve_options(method, {}), seed=0, device="cpu", towers=towers)
    net = enc.model
    with torch.no_grad():  # as pretrained weights have them: open_clip zero-initializes each ResNet branch's last BN
        for n, p in net.named_parameters():
            if n.endswith("bn3.weight"):
                p.fill_(1.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    x, y = _image(enc, 4), torch.tensor([0, 1, 2, 0])
    net.train()
    freeze_batch_norm(net)
    for _ in range(2):
        train_step(net, enc, opt, x, y, _tokens(name, 3, seed=1), 3)
    params = dict(net.named_parameters())
    changed = {n for n, p in params.items() if not _same_bits(p, before[n])}
    assert changed <= trainable and all(_same_bits(params[n], before[n]) for n in params if n not in trainable)
    assert all(_same_bits(b, buffers[n]) for n, b in net.named_buffers()), "a buffer (BatchNorm statistics) moved"
    graded = {n for n in trainable if params[n].grad is not None}
    assert graded == {n for n in trainable if not UNREACHED.match(n.removeprefix("clip."))}
    assert len(changed) >= 0.75 * len(graded), sorted(graded - changed)[:5]
    if method == "lora":
        assert changed and all(".lora_" in n for n in changed)


def _one_epoch(tmp_path, name, method, towers="both", encoder=None):
    out = str(tmp_path / f"{name}-{method}")
    return out, finetune(out, "digits", name, "none", method, towers=towers, epochs=1, limit=120, batch_size=40,
                         val_fraction=0.25, progress=False, workers=0, encoder=encoder)


# a real one-epoch run on digits, then embed --checkpoint: every family whose tokenizer is offline
RUNS = [("embedx-tiny-coca", "lora", "both"), ("embedx-tiny-eva02", "lora", "both"),
        ("embedx-tiny-convnext", "lora", "text"), ("embedx-tiny-rn", "bitfit", "both"),
        ("embedx-tiny-mobileclip", "attention", "both")]


@pytest.mark.parametrize("name,method,towers", RUNS)
def test_real_run_and_embed_checkpoint(tmp_path, name, method, towers):
    out, cfg = _one_epoch(tmp_path, name, method, towers)
    assert cfg["complete"] and cfg["towers"] == towers
    sel = cfg["selection"]
    assert sel["family"] == {"embedx-tiny-coca": "CoCa", "embedx-tiny-eva02": "EVA-02-CLIP",
                             "embedx-tiny-convnext": "ConvNeXt-CLIP", "embedx-tiny-rn": "CLIP ResNet",
                             "embedx-tiny-mobileclip": "MobileCLIP"}[name]
    assert sel["towers"] == towers and sel["rule"]
    store = str(tmp_path / "tuned.zarr")
    r = invoke("embed", "--checkpoint", out, "--data", "digits:test", "--limit", "40", "--out", store)
    assert r.exit_code == 0, r.stderr
    s = Store(store)
    ck = s.meta["checkpoint"]
    assert ck["method"] == method and ck["family"] == sel["family"] and ck["towers"] == towers and ck["rule"]
    if name == "embedx-tiny-mobileclip":  # drift names the family and the rule
        base = str(tmp_path / "base.zarr")
        assert invoke("embed", "-m", name, "--data", "digits:test", "--limit", "40", "--out", base).exit_code == 0
        r = invoke("drift", base, store, "--json")
        assert r.exit_code == 0, r.stderr
        run = json.loads(r.stdout)["headline"]["run"]
        assert (run["family"], run["towers"], run["rule"]) == ("MobileCLIP", "both", sel["rule"])
        r = invoke("drift", base, store)
        assert "(MobileCLIP)" in r.stdout and f"rule (both towers): {sel['rule']}" in r.stdout
    # the store holds the tuned model's embeddings: reloaded from the run folder, BatchNorm statistics included
    tuned = load_tuned(out, device="cpu")
    from embedx.sources.catalog import parse_source

    src = parse_source("digits:test").head(4)
    x = torch.stack([tuned.preprocess(src.load(i)) for i in range(4)])
    want = tuned.encode_images(x)
    np.testing.assert_allclose(s.images()[:4].astype(np.float32), want, atol=2e-3)


@pytest.mark.parametrize("model", ["embedx-tiny-siglip", "hf"])
def test_local_tokenizer_trains_siglip_and_hf_text_towers(tmp_path, model, hf_model):
    """SigLIP's tokenizer and a Hugging Face text tower's are downloads; with one built on disk the real training
    loop runs offline."""
    name = _name(model, hf_model)
    enc = build(name, "none", "lora", {"rank": 2}, seed=0, device="cpu")
    if model == "embedx-tiny-siglip":
        enc.tokenizer = siglip_tokenizer(str(tmp_path))
    before = {n: p.detach().clone() for n, p in enc.model.named_parameters()}
    out, cfg = _one_epoch(tmp_path, name, "lora", encoder=enc)
    after = dict(enc.model.named_parameters())
    moved = {n for n in before if not _same_bits(before[n], after[n])}
    assert moved and all(".lora_" in n for n in moved)
    assert cfg["selection"]["family"] == ("SigLIP" if model != "hf" else "CLIP (Hugging Face text tower)")


def test_without_its_tokenizer_a_siglip_run_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("finetune", "-m", "embedx-tiny-siglip", "--method", "lora", "--data", "digits", "--limit", "40",
               "--epochs", "1", "--out", str(tmp_path / "r"))
    assert_one_line_error(r.exit_code, r.stderr, "tokenizer of embedx-tiny-siglip")
    assert not os.path.exists(tmp_path / "r")  # refused before the run folder is made


def test_towers_choices_and_train_blocks_depth():
    enc = build("embedx-tiny-eva02", "none", "bitfit", {"train_blocks": None}, seed=0, device="cpu", towers="image")
    assert set(enc.model.selection.counts) == {"image"}
    assert all(n.startswith("clip.visual.") for n, p in enc.model.named_parameters() if p.requires_grad)
    enc = build("embedx-tiny-eva02", "none", "adapter", {"reduction": 4}, seed=0, device="cpu", towers="text")
    assert list(enc.model.adapters) == ["text"]
    with pytest.raises(EmbedxError, match="towers must be one of") as e:
        build("embedx-tiny", "none", "lora", {"rank": 2}, towers="vision")
    assert e.value.param == "towers"
    with pytest.raises(EmbedxError, match=r"train_blocks 5 exceeds the towers' depth \(4 image, 2 text blocks\)"):
        build("embedx-tiny-rn", "none", "bitfit", {"train_blocks": 5})
