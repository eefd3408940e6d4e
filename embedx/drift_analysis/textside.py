"""Text-side drift: how the text embeddings of the same prompts / captions moved (float64 throughout).

With s_j, t_j the L2-normalized text rows j of BEFORE and AFTER (class stores: one row per class prompt
ensemble; paired stores: the N captions):

  cosine_j        <s_j, t_j>                       (1 = the prompt did not move)
  displacement_j  |t_j - s_j|  (= sqrt(2 - 2 cosine_j); taken as the norm of the difference, which is exactly
                  0 for a prompt that did not move, where the square root of 2 - 2 cosine_j gives ~1e-8)
  summary         mean / p50 / p95 of displacement_j (numpy's linear percentiles, every row kept), mean and
                  min cosine, and linear CKA  |Sc'Tc|_F^2 / (|Sc'Sc|_F |Tc'Tc|_F)  of the text rows
                  (Kornblith et al. 2019; null with fewer than 2 rows or no variance)
  per_class       class stores: cosine_j and displacement_j of each class prompt, by class name

A fine-tuning method that changes only the text side (or mostly: CLIP-Adapter, LoRA on the text tower) shows
up here even when the images did not move at all.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from embedx.drift_analysis.drift_pass import CkaSums
from embedx.errors import EmbedxError
from embedx.store import Store

TEXT_BLOCK_ROWS = 16384


def unit64(rows: np.ndarray, what: str, start: int = 0) -> np.ndarray:
    """float64 L2-normalized rows; a zero or non-finite row is a one-line error naming it."""
    x = np.asarray(rows, np.float64)
    n = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(n) | (n == 0))
    if len(bad):
        raise EmbedxError(f"{what}: row {start + int(bad[0])} is zero or not finite; it has no direction")
    return x / n[:, None]


def _text_blocks(s: Store, block: int):
    for start in range(0, s.n_texts, block):
        yield start, s.read_texts(start, start + block)


def text_drift(a: Store, b: Store, block_rows: int = TEXT_BLOCK_ROWS) -> dict | None:
    """The text-side drift of two stores of the same samples (see the module docstring); None without texts."""
    if a.n_texts == 0 or b.n_texts == 0:
        return None
    if a.n_texts != b.n_texts:
        raise EmbedxError(f"{a.path} and {b.path} hold different texts: {a.n_texts} vs {b.n_texts}")
    cos = np.empty(a.n_texts, np.float64)
    disp = np.empty(a.n_texts, np.float64)
    sums = CkaSums()
    for (start, sa), (_, sb) in zip(_text_blocks(a, block_rows), _text_blocks(b, block_rows)):
        x, y = unit64(sa, f"{a.path} texts", start), unit64(sb, f"{b.path} texts", start)
        cos[start:start + len(x)] = np.einsum("ij,ij->i", x, y)
        disp[start:start + len(x)] = np.linalg.norm(y - x, axis=1)
        sums.add(torch.from_numpy(x), torch.from_numpy(y))
    cos = np.clip(cos, -1.0, 1.0)
    cka = sums.cka() if sums.n >= 2 else float("nan")
    out = {"rows": "captions" if a.paired else "class prompts", "n_texts": int(a.n_texts),
           "displacement_mean": float(disp.mean()), "displacement_p50": float(np.percentile(disp, 50)),
           "displacement_p95": float(np.percentile(disp, 95)), "displacement_max": float(disp.max()),
           "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
           "cka_linear": cka if math.isfinite(cka) else None, "per_class": None}
    if not a.paired:
        out["per_class"] = {str(name): {"cosine": float(c), "displacement": float(d)}
                            for name, c, d in zip(a.text_names(), cos, disp)}
    return out
