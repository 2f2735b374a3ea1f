"""SegMamba: the network, its selective-scan kernels, training and synthetic data (pure torch)."""

from segmamba.checkpoint import CheckpointError, load_checkpoint
from segmamba.model import SegMamba

__all__ = ["CheckpointError", "SegMamba", "load_checkpoint"]
