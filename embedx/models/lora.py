"""LoRA through HF ``peft`` on every open_clip family: low-rank updates of the q and v projections of every attention
block of the chosen towers.

Attention is found by :mod:`embedx.models.families`. Where q, k and v are one fused weight, peft cannot target a slice,
so :func:`split_attention` first swaps in an equivalent module with separate ``q_proj``/``k_proj``/``v_proj`` Linear
layers (weights copied exactly):

* ``nn.MultiheadAttention`` (open_clip's blocks: a stacked ``in_proj_weight``) becomes :class:`QKVAttention`;
* a fused ``qkv`` Linear (timm ViT, FastViT) becomes :class:`SplitQKV`, ``cat(q(x), k(x), v(x))``.

Separate projections (timm EVA's ``q_proj``/``v_proj``, Hugging Face ``query``/``value``) are targeted as they are.
:func:`apply_lora` then injects peft LoRA layers into exactly those q and v Linear layers (by full module name). peft
keeps the base weights frozen and untouched (unlike the authors' code, which adds the update into the stored weight in
place on every forward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedx.errors import EmbedxError
from embedx.models.families import Tower, towers as find_towers

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
        if attn_mask is not None and attn_mask.dim() == 3:  # MHA: (batch * heads, L, S); SDPA: (batch, heads, L, S)
            attn_mask = attn_mask.view(b, h, *attn_mask.shape[1:])
        out = F.scaled_dot_product_attention(heads(query, self.q_proj), heads(key, self.k_proj),
                                             heads(value, self.v_proj), attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear (d -> 3e) as three Linear layers ``q_proj``, ``k_proj``, ``v_proj`` (d -> e, weights and
    biases copied exactly); ``forward(x) = cat(q_proj(x), k_proj(x), v_proj(x))``, the fused layer's output."""

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        if qkv.out_features % 3:
            raise EmbedxError(f"a fused qkv layer of {qkv.out_features} outputs does not split in three")
        e, w = qkv.out_features // 3, qkv.weight.detach()
        self.in_features, self.out_features = qkv.in_features, qkv.out_features
        for k, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(qkv.in_features, e, bias=qkv.bias is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k * e:(k + 1) * e])
                if qkv.bias is not None:
                    lin.bias.copy_(qkv.bias.detach()[k * e:(k + 1) * e])
            setattr(self, name, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


def _set(clip: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(clip.get_submodule(parent) if parent else clip, leaf, module)


def _split_one(clip: nn.Module, att) -> None:
    if isinstance(att.module, nn.MultiheadAttention):
        _set(clip, att.name, QKVAttention(att.module))
    elif getattr(att.module, "q_bias", None) is not None:  # timm EVA with qkv_fused: F.linear(x, qkv.weight, biases)
        raise EmbedxError(f"lora cannot split {att.name} ({type(att.module).__name__}): it adds separate q and v "
                          "biases to its fused qkv weight")
    else:
        att.module.qkv = SplitQKV(att.module.qkv)


def split_attention(clip: nn.Module, towers: list[Tower] | None = None) -> list[str]:
    """Split, in place, every fused q/k/v projection in the attention blocks of ``towers`` (default: both) into
    equivalent separate layers; -> the full names of the q and v Linear layers LoRA targets."""
    towers = list(find_towers(clip).values()) if towers is None else towers
    targets = []
    for tower in towers:
        for atts in tower.attention:
            for att in atts:
                if att.kind.split:
                    _split_one(clip, att)
                targets += [f"{att.name}.{t}" for t in att.kind.lora]
    for t in targets:
        if not isinstance(clip.get_submodule(t), nn.Linear):
            raise EmbedxError(f"lora: {t} is {type(clip.get_submodule(t)).__name__}, not a Linear layer")
    return targets


def apply_lora(clip: nn.Module, rank: int, towers: list[Tower] | None = None) -> list[str]:
    """Split the attention projections of ``towers`` and inject peft LoRA (rank ``rank``, scaling
    :data:`LORA_SCALING`) into their q and v layers; -> the targeted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = split_attention(clip, towers)
    if not targets:
        raise EmbedxError("lora found no attention blocks to adapt", param="towers")
    cfg = LoraConfig(r=rank, lora_alpha=LORA_SCALING * rank, lora_dropout=0.0, bias="none", target_modules=targets)
    inject_adapter_in_model(cfg, clip)
    return targets
