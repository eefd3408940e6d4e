"""Fine-tuning open_clip models with the papers' methods (full, BitFit, A-CLIP attention, LoRA through
peft, CLIP-Adapter) into small, resumable run folders that ``embedx embed --checkpoint`` re-embeds with."""
from embedx.models import methods
from embedx.finetune.train import build, dry_run, finetune
from embedx.models.factory import load_tuned, read_run
from embedx.models.methods import METHODS

__all__ = ["METHODS", "build", "dry_run", "finetune", "load_tuned", "methods", "read_run"]
