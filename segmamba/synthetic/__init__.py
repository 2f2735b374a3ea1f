"""Synthetic brain-like volumes with exact ground truth: an analytic phantom and the MNI152 template head."""

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
from segmamba.synthetic.template import Appearance, TemplateHead, random_template_head

__all__ = [
    "CONTRASTS",
    "Appearance",
    "CaseConfig",
    "Lesion",
    "Phantom",
    "SyntheticCase",
    "TemplateHead",
    "Tissue",
    "case_name",
    "generate_case",
    "grid_points",
    "random_phantom",
    "random_template_head",
    "write_brats_case",
    "write_brats_dataset",
]
