"""Data shipped with embedx (see ``modality_gap/README.md`` for the attribution of the embeddings)."""
from embedx.data.paths import DATA_DIR, MODALITY_GAP_DIR

__all__ = ["DATA_DIR", "MODALITY_GAP_DIR"]
