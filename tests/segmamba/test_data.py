"""Training data in the BraTS convention: skull-stripped, co-registered cases handed to the network in
the array orientation the application's model grid gives (axis codes S, P, L), whatever the file's
voxel order."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from operators.reorientation import REFERENCE_ORIENTATION, model_grid, to_model_grid
from operators.volume import ImageVolume
from segmamba.data import BRATS_ORIENTATION, CHANNEL_ORDER, find_cases, load_case
from segmamba.synthetic import CaseConfig, generate_case, write_brats_case

SMALL_BRATS = CaseConfig(head_scale=(0.45, 0.5), lesion_radius_mm=(8.0, 10.0), tumour_probability=1.0,
                         margin_mm=3.0, skull_strip_probability=1.0)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    case = generate_case(4242, SMALL_BRATS)
    out = tmp_path_factory.mktemp("brats")
    write_brats_case(case, out)
    return case, out


def _model_grid_array(array: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """The application's reorientation of a native array onto the S,P,L model grid (nearest neighbour)."""
    volume = ImageVolume(array=array, affine=affine_lps)
    shape, grid_affine = model_grid(volume, REFERENCE_ORIENTATION, 1.0)
    return to_model_grid(volume, shape, grid_affine, order=0)


def test_generated_training_case_is_skull_stripped_and_co_registered(written: tuple) -> None:
    case, out = written
    assert case.skull_stripped
    for contrast, image in case.images.items():
        assert not image[~case.brain].any(), contrast  # nothing outside the brain, as in BraTS
        assert image[case.brain].mean() > 0
    files = find_cases(out)[0]
    affines = [nib.load(p).affine for p in (*files.images.values(), files.seg)]
    assert all(np.array_equal(a, affines[0]) for a in affines)  # one grid for all four sequences


def test_loaded_arrays_have_the_model_grid_axis_order(written: tuple) -> None:
    case, out = written
    assert tuple(BRATS_ORIENTATION) == REFERENCE_ORIENTATION
    raw = load_case(find_cases(out)[0])
    expected_label = _model_grid_array(case.label, case.affine_lps).astype(np.uint8)
    assert raw["label"][0].shape == expected_label.shape
    assert np.array_equal(raw["label"][0], expected_label)
    t1c = np.clip(np.rint(case.images["t1c"]), 0, np.iinfo(np.int16).max)  # as written (int16)
    channel = CHANNEL_ORDER.index("t1c")
    assert np.array_equal(raw["image"][channel], _model_grid_array(t1c, case.affine_lps))
    assert nib.aff2axcodes(raw["affine"]) == REFERENCE_ORIENTATION
    # The returned affine places the label where the truth is: its tumour centroid in world mm.
    world = nib.affines.apply_affine(raw["affine"], np.argwhere(raw["label"][0] > 0).mean(axis=0))
    truth = nib.affines.apply_affine(case.affine_ras, np.argwhere(case.label > 0).mean(axis=0))
    assert np.allclose(world, truth, atol=1e-6)


def test_file_voxel_order_does_not_change_the_arrays(written: tuple, tmp_path: Path) -> None:
    """The same case stored in another voxel order (R->L flipped, axes permuted) loads identically."""
    _, out = written
    original = find_cases(out)[0]
    folder = tmp_path / original.name
    folder.mkdir()
    for path in (*original.images.values(), original.seg):
        image = nib.load(path)
        shuffle = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                                  nib.orientations.axcodes2ornt(("A", "S", "R")))
        moved = image.as_reoriented(shuffle)
        assert nib.aff2axcodes(moved.affine) != nib.aff2axcodes(image.affine)
        nib.save(moved, folder / path.name)
    expected, actual = load_case(original), load_case(find_cases(tmp_path)[0])
    assert np.array_equal(actual["label"], expected["label"])
    assert np.array_equal(actual["image"], expected["image"])
    assert np.allclose(actual["affine"], expected["affine"])
    native = load_case(find_cases(tmp_path)[0], orientation=None)
    assert native["label"][0].shape == nib.load(folder / original.seg.name).shape


def test_bad_orientation_is_refused(written: tuple) -> None:
    _, out = written
    with pytest.raises(ValueError, match="orientation"):
        load_case(find_cases(out)[0], orientation=("S", "I", "L"))
