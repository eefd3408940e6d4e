"""Models: open_clip encoders and their fine-tuned variants.

  factory    the one place a (model, pretrained, checkpoint, seed, device) becomes an :class:`Encoder`
  encoder    :class:`Encoder`: open_clip towers, normalized embeddings, zero-shot class texts
  methods    fine-tuning methods (full, bitfit, attention, lora, adapter): trainable sets and recipes
  tuned      :class:`TunedCLIP`: a model with adapters, as the methods change it
  lora       LoRA through peft on the towers' attention projections
  configs/   model configs registered with open_clip (``embedx-tiny``)
"""
from embedx import _lazy

__all__ = ["Encoder", "create_encoder", "load_tuned", "read_run"]
__getattr__ = _lazy.exports(__name__, {"Encoder": "embedx.models.encoder", "create_encoder": "embedx.models.factory",
                                       "load_tuned": "embedx.models.factory", "read_run": "embedx.models.factory"})
