"""Retrain the ``embedx-lit`` heads (LiT): ``python -m embedx.models.lit.train``.

1. Pairs: :func:`embedx.models.lit.pairs.find_pairs` (OpenClipArt, de-duplicated, captions from the SVGs).
2. Frozen features, computed once: the image trunk's pooled 1280-d output x (pixels as ``embedx-lit``'s
   preprocess gives them) and the text tower's mean-pooled 384-d output y (the inputs of the two heads).
3. Heads on the features: image ``u = W_i (x - mu) `` (mu: the mean training image feature, folded into the bias
   ``b_i = -W_i mu`` at the end), text ``v = W_t y``, both L2-normalized; logits ``L = exp(t) U V^T`` over a batch;
   loss = (CE(L, diag) + CE(L^T, diag)) / 2 (symmetric InfoNCE), ``t`` clamped to log(100). AdamW, seeded
   initialization and batch order, one thread: the same features give the same heads bit for bit.

Writes the heads (safetensors, default: the file embedx ships) and its figures as JSON and Markdown.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time

import click
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_towers():
    """(model, preprocess, tokenizer) of ``embedx-lit`` on the CPU with the wheels' towers and untrained heads:
    what :mod:`embedx.models.lit.train` computes its features with."""
    from embedx.models.encoder import _quiet_root_logger, register_model_configs
    from embedx.models.lit.model import NAME, check_wheels, create_kwargs, image_weights_path

    register_model_configs()
    check_wheels(pretrained=True)
    import open_clip

    from embedx.models.lit.weights import load_image_tower

    with _quiet_root_logger():
        net, _, preprocess = open_clip.create_model_and_transforms(NAME, pretrained=None, pretrained_text=True,
                                                                   **create_kwargs(NAME))
    load_image_tower(net.visual.trunk, image_weights_path())
    net.eval()
    return net, preprocess, open_clip.get_tokenizer(NAME)


def extract_features(towers, pairs, batch: int = 64, threads: int = 0):
    """(x [N, 1280], y [N, 384], kept indices): the inputs of the two heads; images Pillow refuses are dropped."""
    import torch
    from tqdm import tqdm

    from embedx.models.lit.pairs import load_rgb

    if threads:
        torch.set_num_threads(threads)
    net, preprocess, tokenizer = towers
    grabbed = {}
    hooks = [net.visual.head.proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("x", i[0])),
             net.text.proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("y", i[0]))]
    xs, ys, kept = [], [], []
    try:
        with torch.no_grad():
            for s in tqdm(range(0, len(pairs), batch), desc="features", unit="batch"):
                imgs, idx = [], []
                for j in range(s, min(s + batch, len(pairs))):
                    im = load_rgb(pairs[j].png)
                    if im is not None:
                        imgs.append(preprocess(im))
                        idx.append(j)
                if not idx:
                    continue
                net.encode_image(torch.stack(imgs))
                xs.append(grabbed["x"].float().numpy().copy())
                net.encode_text(tokenizer([pairs[j].caption for j in idx]))
                ys.append(grabbed["y"].float().numpy().copy())
                kept += idx
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(xs), np.concatenate(ys), np.asarray(kept)


def train_heads(x: np.ndarray, y: np.ndarray, *, dim: int = 256, epochs: int = 40, batch: int = 512,
                lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, log=None) -> tuple[dict, list]:
    """The heads {image.weight, image.bias, text.weight, logit_scale} and the per-epoch mean loss."""
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.use_deterministic_algorithms(True)
        g = torch.Generator().manual_seed(seed)
        X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        Y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        mu = X.mean(0)
        Xc = X - mu
        Wi = torch.nn.Parameter(torch.randn(dim, X.shape[1], generator=g) / math.sqrt(X.shape[1]))
        Wt = torch.nn.Parameter(torch.randn(dim, Y.shape[1], generator=g) / math.sqrt(Y.shape[1]))
        t = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        opt = torch.optim.AdamW([Wi, Wt, t], lr=lr, weight_decay=weight_decay)
        n, history = len(X), []
        for ep in range(epochs):
            order = torch.randperm(n, generator=g)
            total, count = 0.0, 0
            for s in range(0, n - batch // 2, batch):  # a last batch under half size joins no step
                b = order[s:s + batch]
                u = F.normalize(Xc[b] @ Wi.T, dim=-1)
                v = F.normalize(Y[b] @ Wt.T, dim=-1)
                logits = t.exp() * u @ v.T
                target = torch.arange(len(b))
                loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    t.clamp_(max=math.log(100))
                total += loss.item() * len(b)
                count += len(b)
            history.append(total / count)
            if log:
                log(f"epoch {ep + 1}/{epochs}: loss {history[-1]:.4f}, scale {float(t.exp()):.1f}")
        with torch.no_grad():
            heads = {"image.weight": Wi.detach().clone(), "image.bias": -(Wi @ mu).detach(),
                     "text.weight": Wt.detach().clone(), "logit_scale": t.detach().clone()}
        return heads, history
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def retrieval_at_1(x, y, heads) -> float:
    """Image->text top-1 accuracy among ``len(x)`` captions (chance 1/len(x))."""
    u = x @ heads["image.weight"].numpy().T.astype(np.float64) + heads["image.bias"].numpy()
    v = y @ heads["text.weight"].numpy().T.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return float(np.mean(np.argmax(u @ v.T, axis=1) == np.arange(len(x))))


def zero_shot_categories(x, cats, heads, towers, template: str = "a clip art of {}.") -> dict:
    """Balanced accuracy of zero-shot top-level-category prediction on image features ``x`` (one prompt per
    category, the categories present in ``cats``), with chance = 1 / number of categories."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    net, _, tokenizer = towers
    names = sorted(set(cats))
    grabbed = {}
    h = net.text.proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("y", i[0]))
    try:
        with torch.no_grad():
            net.encode_text(tokenizer([template.format(n.replace("_", " ")) for n in names]))
    finally:
        h.remove()
    v = grabbed["y"].double().numpy() @ heads["text.weight"].double().numpy().T
    u = x.astype(np.float64) @ heads["image.weight"].double().numpy().T + heads["image.bias"].double().numpy()
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pred = np.asarray(names)[np.argmax(u @ v.T, axis=1)]
    return {"balanced_accuracy": float(balanced_accuracy_score(cats, pred)), "classes": len(names),
            "chance": 1 / len(names), "n": int(len(cats)), "template": template}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", default="/usr/share/openclipart", show_default=True,
              help="OpenClipArt folder with png/ and svg/ (apt-get install openclipart-png openclipart-svg).")
@click.option("--out", default=os.path.join(HERE, "heads.safetensors"), show_default=True,
              help="Where the heads go (default: the file embedx ships).")
@click.option("--features", "features_file", default=None,
              help="An .npz of precomputed features: read when it exists, else written after extraction.")
@click.option("--results", default="bench/results/lit_heads", show_default=True,
              help="Figures as RESULTS.json and RESULTS.md ('' to skip).")
@click.option("--epochs", default=40, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--holdout", default=0.05, show_default=True,
              help="Fraction of pairs held out for a retrieval figure (not trained on).")
def main(root, out, features_file, results, epochs, seed, holdout):
    """Retrain embedx-lit's heads from OpenClipArt pairs, bit for bit from the same features.

    Caption = the SVG's <dc:title> + up to 8 <dc:subject> keywords; PNGs composited on white, de-duplicated by MD5;
    5% of the pairs (seeded) held out for the figures. The defaults rewrite the shipped heads file."""
    from embedx.errors import EmbedxError

    try:
        _main(root, out, features_file, results, epochs, seed, holdout)
    except EmbedxError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None


def _main(root, out, features_file, results, epochs, seed, holdout):
    import torch

    from embedx.models.lit import model as lit
    from embedx.models.encoder import file_sha256
    from embedx.models.lit.heads import save_heads
    from embedx.models.lit.pairs import find_pairs

    t0 = time.time()
    pairs = find_pairs(root)
    towers = None
    if features_file and os.path.isfile(features_file):
        z = np.load(features_file)
        x, y, kept = z["x"], z["y"], z["kept"]
        click.echo(f"features from {features_file}")
    else:
        towers = load_towers()
        x, y, kept = extract_features(towers, pairs)
        if features_file:
            np.savez(features_file, x=x, y=y, kept=kept)
    t_feat = time.time() - t0
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(x), bool)
    is_val[rng.permutation(len(x))[:int(round(holdout * len(x)))]] = True
    t1 = time.time()
    heads, history = train_heads(x[~is_val], y[~is_val], epochs=epochs, seed=seed, log=click.echo)
    t_train = time.time() - t1
    save_heads(heads, out)
    towers = towers or load_towers()
    cats = np.asarray([pairs[j].category for j in kept])
    zs = zero_shot_categories(x[is_val], cats[is_val], heads, towers) if is_val.any() else None
    r1 = retrieval_at_1(x[is_val].astype(np.float64), y[is_val].astype(np.float64), heads) if is_val.any() else None
    fig = {
        "pairs_found": len(pairs), "pairs_used": int(len(x)), "refused_by_pillow": int(len(pairs) - len(x)),
        "train_pairs": int((~is_val).sum()), "holdout_pairs": int(is_val.sum()),
        "epochs": epochs, "seed": seed, "final_loss": history[-1], "first_loss": history[0],
        "holdout_image_to_text_r1": r1, "holdout_chance": 1 / max(1, int(is_val.sum())),
        "holdout_zero_shot_categories": zs,
        "logit_scale": float(heads["logit_scale"].exp()),
        "seconds_features": round(t_feat, 1), "seconds_train": round(t_train, 1),
        "features_sha256": {"x": _sha(x), "y": _sha(y)}, "heads_sha256": file_sha256(out),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "threads_features": torch.get_num_threads(), "threads_train": 1,
    }
    click.echo(json.dumps(fig, indent=1))
    if results:
        os.makedirs(os.path.dirname(results) or ".", exist_ok=True)
        with open(results + ".json", "w") as f:
            json.dump(fig, f, indent=1)
        with open(results + ".md", "w") as f:
            f.write("# embedx-lit heads (LiT on OpenClipArt)\n\n`python -m embedx.models.lit.train` "
                    f"(seed {seed}, {epochs} epochs, torch {torch.__version__}, CPU)\n\n| figure | value |\n|---|---|\n")
            for k, v in fig.items():
                if not isinstance(v, dict):
                    f.write(f"| {k} | {v} |\n")
            if zs:
                f.write(f"| holdout zero-shot balanced accuracy, {zs['classes']} top-level categories, n = {zs['n']} "
                        f"| {zs['balanced_accuracy']:.3f} (chance {zs['chance']:.3f}) |\n")
            f.write(f"| heads sha256 | `{fig['heads_sha256']}` |\n")


if __name__ == "__main__":
    main()
