"""LoRA on open_clip through HF ``peft``: low-rank updates of the q and v projections of every block.

open_clip's blocks use ``nn.MultiheadAttention``, whose q, k and v projections are one stacked
``in_proj_weight`` (3d x d) that peft cannot target by slice. :func:`split_attention` swaps each one for
:class:`QKVAttention`, the same computation with separate ``q_proj``/``k_proj``/``v_proj`` Linear layers
(weights copied exactly), and :func:`apply_lora` injects peft LoRA layers into ``q_proj`` and ``v_proj``.
peft keeps the base weights frozen and untouched (unlike the authors' code, which adds the update into the
stored weight in place on every forward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedx.errors import EmbedxError

TOWERS = ("visual.transformer", "transformer")  # open_clip's image and text transformers
TARGETS = r".*resblocks\.\d+\.attn\.(q_proj|v_proj)"  # peft: a string is a full-match regex on module names
LORA_SCALING = 0.2  # the authors' fixed scaling of B·A (peft: lora_alpha / r)


class QKVAttention(nn.Module):
    """``nn.MultiheadAttention`` (no bias_k/bias_v, no add_zero_attn) with separate q/k/v projections.

    Returns ``(output, None)`` like ``MultiheadAttention(..., need_weights=False)``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or mha.in_proj_bias is None:
            raise EmbedxError("lora supports only plain self-attention blocks (stacked in_proj with bias)")
        d = mha.embed_dim
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = d, mha.num_heads, mha.dropout, mha.batch_first
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
        for k, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(d, d, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k * d:(k + 1) * d])
                lin.bias.copy_(b[k * d:(k + 1) * d])
            lin.weight.requires_grad_(mha.in_proj_weight.requires_grad)
            lin.bias.requires_grad_(mha.in_proj_bias.requires_grad)
            setattr(self, name, lin)
        self.out_proj = mha.out_proj

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None, key_padding_mask=None):
        if need_weights or key_padding_mask is not None:
            raise NotImplementedError("QKVAttention supports need_weights=False without key_padding_mask")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, d = query.shape
        h = self.num_heads

        def heads(x, proj):
            return proj(x).view(b, x.shape[1], h, d // h).transpose(1, 2)

        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True = masked; SDPA: True = kept
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(heads(query, self.q_proj), heads(key, self.k_proj),
                                             heads(value, self.v_proj), attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _blocks(clip: nn.Module):
    for tower in TOWERS:
        try:
            blocks = clip.get_submodule(f"{tower}.resblocks")
        except AttributeError:
            raise EmbedxError(f"lora needs open_clip's built-in transformer towers; this model has no "
                              f"{tower}.resblocks") from None
        yield from blocks


def split_attention(clip: nn.Module) -> nn.Module:
    """Replace, in place, every block's ``nn.MultiheadAttention`` by an equivalent :class:`QKVAttention`."""
    for block in _blocks(clip):
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = QKVAttention(block.attn)
        elif not isinstance(block.attn, QKVAttention):
            raise EmbedxError(f"lora needs nn.MultiheadAttention blocks, found {type(block.attn).__name__}")
    return clip


def apply_lora(clip: nn.Module, rank: int) -> nn.Module:
    """Split the attention projections and inject peft LoRA (rank ``rank``) into q and v of both towers."""
    from peft import LoraConfig, inject_adapter_in_model

    split_attention(clip)
    cfg = LoraConfig(r=rank, lora_alpha=LORA_SCALING * rank, lora_dropout=0.0, bias="none", target_modules=TARGETS)
    return inject_adapter_in_model(cfg, clip)
