"""Where the shipped data lies."""
import os

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
MODALITY_GAP_DIR = os.path.join(DATA_DIR, "modality_gap")
