"""Data shipped with embedx (see ``modality_gap/README.md`` for the attribution of the embeddings)."""
import os

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
MODALITY_GAP_DIR = os.path.join(DATA_DIR, "modality_gap")
