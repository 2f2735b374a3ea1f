"""Synthetic brain-like volumes with exact ground truth (numpy only)."""

from segmamba.synthetic.phantom import CONTRASTS, Lesion, Phantom, Tissue, grid_points

__all__ = ["CONTRASTS", "Lesion", "Phantom", "Tissue", "grid_points"]
