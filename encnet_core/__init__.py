"""encnet core library: EncNet models, datasets, training and inference (no CLI dependencies)."""

__version__ = "0.1.0"
