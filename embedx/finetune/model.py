"""The tuned model under its old path (bench/gpu/parts.py imports it here); it lives in ``embedx.tunedclip``,
below the model factory. Delete this module once nothing imports ``embedx.finetune.model``."""
from embedx.tunedclip import ADAPTER_RATIO, Adapter, TunedCLIP, count_params, feature_dim  # noqa: F401
