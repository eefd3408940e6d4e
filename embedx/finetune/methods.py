"""The fine-tuning methods under their old path (bench/gpu/parts.py imports them here); they live in
``embedx.tuning``, below the model factory. Delete this module once nothing imports ``embedx.finetune.methods``."""
from embedx.tuning import DEFAULTS, METHODS, Method, apply, get, method, resolve_options  # noqa: F401
