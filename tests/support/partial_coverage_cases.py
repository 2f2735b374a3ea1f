"""Studies whose series cover only part of the head, with the truth restricted to the covered region.

Three shapes that hospitals send: a FLAIR slab of a few centimetres, a T2 with a smaller in-plane
field of view, a coronal T1 slab beside an axial FLAIR slab. Each case is a template head (what the
demo model was trained on) with a known lesion, written with app.synthetic_study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from app.synthetic_study import SeriesSpec, StudyInfo, series_grid, truth_labels, write_study
from segmamba.synthetic import CaseConfig, random_template_head
from segmamba.synthetic.template import TemplateHead

REFERENCE = "AX T1 POST GAD"
CASES = ("flair_slab", "t2_small_fov", "coronal_t1_axial_flair")


def full_protocol() -> list[SeriesSpec]:
    """Four series that each cover the whole head (the demo protocol without its distractors)."""
    return [
        SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", rows=192, columns=176, slices=120,
                   pixel_spacing=(1.3, 1.3), slice_thickness=1.5),
        SeriesSpec("t1c", REFERENCE, "axial", rows=208, columns=176, slices=60,
                   pixel_spacing=(1.1, 1.1), slice_thickness=3.0),
        SeriesSpec("t2w", "Ax T2 FSE", "axial", rows=192, columns=160, slices=44,
                   pixel_spacing=(1.2, 1.2), slice_thickness=4.0, slice_spacing=4.4),
        SeriesSpec("t2f", "Ax T2 FLAIR", "axial", rows=192, columns=160, slices=46,
                   pixel_spacing=(1.2, 1.2), slice_thickness=4.0),
    ]


def case_protocol(case: str, head: TemplateHead) -> list[SeriesSpec]:
    """The full protocol with one or two series narrowed as the case says."""
    assert head.lesion is not None
    lesion = np.asarray(head.lesion.center, dtype=float)
    centre = np.asarray(head.center, dtype=float)
    specs = {spec.contrast: spec for spec in full_protocol()}
    if case == "flair_slab":  # 12 slices of 4 mm: a 48 mm slab that cuts through the lesion
        specs["t2f"] = dataclasses.replace(specs["t2f"], slices=12, center=(*centre[:2], lesion[2] + 12.0))
    elif case == "t2_small_fov":  # 100 mm in plane, centred on the head, all slices
        specs["t2w"] = dataclasses.replace(specs["t2w"], rows=84, columns=84, center=tuple(centre))
    elif case == "coronal_t1_axial_flair":  # 96 mm coronal T1 slab, 60 mm axial FLAIR slab
        specs["t1n"] = dataclasses.replace(
            specs["t1n"], description="t1_mprage_cor", orientation="coronal", slices=64,
            center=(centre[0], lesion[1] + 10.0, centre[2]))
        specs["t2f"] = dataclasses.replace(specs["t2f"], slices=15, center=(*centre[:2], lesion[2] - 8.0))
    else:
        raise ValueError(f"unknown case {case!r}")
    return [specs[role] for role in ("t1n", "t1c", "t2w", "t2f")]


def demo_head(seed: int) -> TemplateHead:
    """A template head with a lesion, as the demo command draws it."""
    return random_template_head(seed, CaseConfig(tumour_probability=1.0, lesion_radius_mm=(18.0, 26.0)))


@dataclass(frozen=True)
class CaseTruth:
    """A written case: the study, the reference grid, the true labels and the covered region on it."""

    study: StudyInfo
    shape: tuple[int, int, int]
    affine: np.ndarray
    labels: np.ndarray
    covered: np.ndarray


def covered_on(shape: Sequence[int], affine: np.ndarray, grids: Sequence[tuple[tuple[int, int, int], np.ndarray]],
               margin: float = 0.5) -> np.ndarray:
    """Voxels of a grid whose centres lie inside every one of ``grids``: within ``margin`` voxels beyond
    their outer voxel centres (half a voxel: each slice stands for its own thickness)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    inside = np.ones(len(world), dtype=bool)
    for grid_shape, grid_affine in grids:
        inverse = np.linalg.inv(grid_affine)
        source = world @ inverse[:3, :3].T + inverse[:3, 3]
        inside &= np.all((source >= -margin - 1e-6) & (source <= np.asarray(grid_shape) - 1 + margin + 1e-6), axis=1)
    return inside.reshape(tuple(shape))


def write_case(case: str, head: TemplateHead, out_dir: Path, seed: int) -> CaseTruth:
    """Write the case's study into ``out_dir`` and describe its truth on the reference grid."""
    specs = case_protocol(case, head)
    study = write_study(out_dir, head, specs, seed=seed, shuffle_files=True)
    reference = study.by_description(REFERENCE)
    assert reference.shape is not None and reference.affine is not None
    covered = covered_on(reference.shape, reference.affine, [series_grid(spec, head) for spec in specs])
    return CaseTruth(study, reference.shape, reference.affine, truth_labels(head, reference), covered)


def far_from(mask: np.ndarray, affine: np.ndarray, distance_mm: float) -> np.ndarray:
    """Voxels farther than ``distance_mm`` from every voxel of ``mask`` (on the grid of ``affine``)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not mask.any():
        return np.ones_like(mask, dtype=bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) > distance_mm


def measure(seeds: Sequence[int], work_dir: Path) -> list[dict[str, float | str]]:
    """Each case of each seed through the application with the shipped (demo) model: WT mL inside the
    covered region (segmented and true), outside it, and more than 5 mm from the true lesion."""
    import pydicom

    from app.batch import load_model, process_study
    from app.config import Settings
    from app.seg_reader import seg_on_grid
    from operators.volume import voxel_volume_ml

    settings = Settings(progress=False, log_level="WARNING")
    card, segmenter = load_model(settings)
    rows: list[dict[str, float | str]] = []
    for seed in seeds:
        head = demo_head(seed)
        for case in CASES:
            folder = work_dir / f"{case}-{seed}"
            truth = write_case(case, head, folder / "in", seed)
            files, _ = process_study(settings, card, segmenter, folder / "in", folder / "out")
            found = seg_on_grid(pydicom.dcmread(files.segmentation), truth.shape, truth.affine, {1: 1, 2: 2, 3: 3}) > 0
            true_wt, ml = truth.labels > 0, voxel_volume_ml(truth.affine)
            rows.append({"case": case, "seed": seed,
                         "true_ml": float((true_wt & truth.covered).sum()) * ml,
                         "segmented_ml": float((found & truth.covered).sum()) * ml,
                         "outside_ml": float((found & ~truth.covered).sum()) * ml,
                         "far_ml": float((found & far_from(true_wt, truth.affine, 5.0)).sum()) * ml})
    return rows


if __name__ == "__main__":  # python -m tests.support.partial_coverage_cases WORK_DIR [SEED ...]
    import sys
    import tempfile

    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    print(f"{'case':<24}{'seed':>5}{'true mL':>9}{'seg mL':>9}{'ratio':>7}{'outside':>9}{'far':>7}")
    for row in measure([int(s) for s in sys.argv[2:]] or [3, 5, 7], work):
        ratio = float(row["segmented_ml"]) / max(float(row["true_ml"]), 1e-9)
        print(f"{row['case']:<24}{row['seed']:>5}{row['true_ml']:>9.2f}{row['segmented_ml']:>9.2f}{ratio:>7.3f}"
              f"{row['outside_ml']:>9.2f}{row['far_ml']:>7.2f}")
