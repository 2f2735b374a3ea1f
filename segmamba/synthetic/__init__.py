"""Synthetic brain-like volumes with exact ground truth (numpy only)."""

from segmamba.synthetic.cases import (
    CaseConfig,
    SyntheticCase,
    case_name,
    generate_case,
    random_phantom,
    write_brats_case,
    write_brats_dataset,
)
from segmamba.synthetic.phantom import CONTRASTS, Lesion, Phantom, Tissue, grid_points

__all__ = [
    "CONTRASTS",
    "CaseConfig",
    "Lesion",
    "Phantom",
    "SyntheticCase",
    "Tissue",
    "case_name",
    "generate_case",
    "grid_points",
    "random_phantom",
    "write_brats_case",
    "write_brats_dataset",
]
