"""Random BraTS-like cases: determinism per seed, label geometry vs images, NIfTI layout and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segmamba.synthetic import CONTRASTS, CaseConfig, generate_case, grid_points, write_brats_case

# Small heads keep each case to ~60^3 voxels (the analytic phantom; tests/segmamba/synthetic/test_template.py
# covers the default MNI152 anatomy).
TINY = CaseConfig(anatomy="phantom", head_scale=(0.3, 0.34), lesion_radius_mm=(6.0, 9.0), tumour_probability=1.0,
                  margin_mm=3.0, noise_sigma=(0.0, 0.01), blur_sigma_mm=(0.0, 0.0))


def test_same_seed_same_case_other_seed_other_case() -> None:
    a, b, c = generate_case(5, TINY), generate_case(5, TINY), generate_case(6, TINY)
    assert a.name == "SYN-00005-000" and a.anatomy == b.anatomy
    assert np.array_equal(a.label, b.label) and np.array_equal(a.affine_lps, b.affine_lps)
    for contrast in CONTRASTS:
        assert np.array_equal(a.images[contrast], b.images[contrast])
    assert a.anatomy != c.anatomy
    assert a.label.shape != c.label.shape or not np.array_equal(a.label, c.label)


def test_label_geometry_matches_phantom_and_images() -> None:
    case = generate_case(11, TINY)
    assert case.anatomy.lesion is not None
    expected = case.anatomy.sample(grid_points(case.label.shape, case.affine_lps))["label"]
    assert np.array_equal(case.label, expected)
    counts = np.bincount(case.label.ravel(), minlength=4)
    assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0
    # Lesion voxels carry signal in every contrast; the enhancing rim is bright on t1c and the
    # oedema is bright on FLAIR, as in the phantom's signal table (up to the random jitter).
    for contrast in CONTRASTS:
        assert np.all(case.images[contrast][case.label > 0] > 0)
    t1c, t2f = case.images["t1c"], case.images["t2f"]
    assert t1c[case.label == 3].mean() > 1.5 * t1c[case.label == 2].mean()
    assert t1c[case.label == 3].mean() > 1.5 * t1c[case.label == 1].mean()
    assert t2f[case.label == 2].mean() > 1.5 * t2f[(case.label == 0) & (t2f > 0)].mean()
    # The lesion lies inside the head, away from the grid border.
    idx = np.argwhere(case.label > 0)
    assert idx.min() > 0 and np.all(idx.max(axis=0) < np.array(case.label.shape) - 1)


def test_no_tumour_cases_have_empty_labels() -> None:
    for anatomy in ("phantom", "mni152"):
        config = CaseConfig(anatomy=anatomy, head_scale=(0.3, 0.34), tumour_probability=0.0, margin_mm=3.0)
        case = generate_case(2, config)
        assert case.anatomy.lesion is None and not case.label.any()
        assert case.images["t1n"].max() > 0


@pytest.mark.parametrize("anatomy", ["phantom", "mni152"])
def test_brats_layout_with_ras_affine(tmp_path: Path, anatomy: str) -> None:
    import dataclasses

    import nibabel as nib
    case = generate_case(3, dataclasses.replace(TINY, anatomy=anatomy))
    folder = write_brats_case(case, tmp_path)
    assert folder == tmp_path / case.name
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{case.name}-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))
    seg = nib.load(folder / f"{case.name}-seg.nii.gz")
    assert np.array_equal(np.asarray(seg.dataobj), case.label)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    # A voxel's RAS position is its LPS position with x and y negated.
    voxel = np.array([4, 7, 9, 1.0])
    lps, ras = case.affine_lps @ voxel, seg.affine @ voxel
    assert np.allclose(ras[:3], lps[:3] * np.array([-1, -1, 1]))
    t1c = nib.load(folder / f"{case.name}-t1c.nii.gz")
    assert t1c.get_data_dtype() == np.int16
    assert np.allclose(np.asarray(t1c.dataobj), np.rint(case.images["t1c"]), atol=0)
    assert np.allclose(t1c.header.get_zooms()[:3], (1.0, 1.0, 1.0))


def test_cli_writes_the_seeded_cases(tmp_path: Path) -> None:
    from segmamba.synthetic.__main__ import main

    main(["--out", str(tmp_path), "--cases", "2", "--seed", "40", "--tumour-probability", "1.0",
          "--head-scale", "0.3", "0.32", "--lesion-radius", "5", "7", "--anatomy", "phantom"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SYN-00040-000", "SYN-00041-000"]
    config = CaseConfig(anatomy="phantom", tumour_probability=1.0, head_scale=(0.3, 0.32),
                        lesion_radius_mm=(5.0, 7.0))
    import nibabel as nib
    written = nib.load(tmp_path / "SYN-00041-000" / "SYN-00041-000-seg.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), generate_case(41, config).label)
