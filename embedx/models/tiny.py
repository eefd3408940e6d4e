"""Shrunken image trunks for the tiny configs of every family (``embedx-tiny-*``, tests and smoke runs).

Each is the real timm architecture of a family's image tower, built by timm's own entry point with smaller depth and
width, and registered with timm under an ``embedx_tiny_*`` name that the configs in ``configs/`` name:

=====================  ==============================  ==========================================
timm name              built as                        family (config)
=====================  ==============================  ==========================================
embedx_tiny_siglip     vit_base_patch16_siglip_224     SigLIP (``embedx-tiny-siglip``)
embedx_tiny_eva02      eva02_base_patch16_clip_224     EVA-02-CLIP (``embedx-tiny-eva02``)
embedx_tiny_convnext   convnext_base                   ConvNeXt-CLIP (``embedx-tiny-convnext``)
embedx_tiny_fastvit    fastvit_mci1                    MobileCLIP (``embedx-tiny-mobileclip``)
=====================  ==============================  ==========================================

Depth: 2 blocks (ViT, EVA) or 1 per stage (ConvNeXt, FastViT, whose last stage keeps its attention); width 64 or
less; 32 px images (64 px for FastViT, whose last stage needs 2 x 2 tokens).
"""
from __future__ import annotations

_done = False

TINY = {
    "embedx_tiny_siglip": ("vision_transformer", "vit_base_patch16_siglip_224",
                           dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)),
    "embedx_tiny_eva02": ("eva", "eva02_base_patch16_clip_224",
                          dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, ref_feat_shape=(4, 4))),
    "embedx_tiny_convnext": ("convnext", "convnext_base", dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64))),
    "embedx_tiny_fastvit": ("fastvit", "fastvit_mci1", dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128))),
}


def register() -> None:
    """Register the shrunken trunks with timm (once per process)."""
    global _done
    if _done:
        return
    import importlib

    from timm.models import is_model, register_model

    for name, (module, entry, shrink) in TINY.items():
        if is_model(name):
            continue
        build = getattr(importlib.import_module(f"timm.models.{module}"), entry)

        def tiny(pretrained=False, _build=build, _shrink=shrink, **kwargs):
            return _build(pretrained=False, **{**_shrink, **kwargs})

        tiny.__name__ = name
        tiny.__module__ = __name__
        register_model(tiny)
    _done = True
