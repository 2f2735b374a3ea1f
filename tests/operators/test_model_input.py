"""Model input under partial coverage: fields of view, the covered region, normalisation, head coverage."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from app.synthetic_study import SeriesSpec, write_study
from operators.errors import StudyError
from operators.model_card import ModelCardError, Preprocessing, load_model_card
from operators.model_input import build_model_input, field_of_view, otsu_threshold, preprocess, zscore_nonzero
from operators.series_selection import SeriesSelection
from operators.volume import ImageVolume
from segmamba.synthetic import Lesion, Phantom
from segmamba.synthetic.phantom import Tissue, grid_points
from tests.support.paths import THRESHOLD_MODEL

PHANTOM = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
SMALL = dict(rows=56, columns=56, slices=30, pixel_spacing=(4.0, 4.0), slice_thickness=6.0)


def test_field_of_view_is_where_the_series_has_its_own_voxels() -> None:
    source = ImageVolume(np.zeros((10, 10, 10), np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    mask = field_of_view(source, (10, 10, 10), shifted)
    assert mask[:5].all() and not mask[5:].any()
    # A tilted, coarser series: every grid centre within half a voxel of its outer voxel centres, and no other.
    tilted = np.eye(4)
    angle = np.radians(20.0)
    tilted[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) * 2.5
    tilted[:3, 3] = (3.0, -4.0, 2.0)
    series = ImageVolume(np.zeros((8, 7, 6), np.float32), tilted)
    grid = np.diag([1.0, 1.0, 1.0, 1.0])
    mask = field_of_view(series, (24, 24, 20), grid)
    index = grid_points((24, 24, 20), grid) @ np.linalg.inv(tilted)[:3, :3].T + np.linalg.inv(tilted)[:3, 3]
    expected = np.all((index >= -0.5 - 1e-3) & (index <= np.array(series.shape) - 0.5 + 1e-3), axis=-1)
    assert np.array_equal(mask, expected) and 0 < mask.sum() < mask.size


def test_otsu_threshold_separates_background_from_tissue() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10.0, 3.0, 6000), rng.normal(500.0, 60.0, 4000)])
    assert 40.0 < otsu_threshold(values) < 380.0


def test_preprocess_zeroes_every_channel_outside_the_covered_region() -> None:
    rng = np.random.default_rng(1)
    image = rng.uniform(100.0, 900.0, size=(2, 12, 10, 8)).astype(np.float32)
    seen = np.ones(image.shape, dtype=bool)
    seen[1, :, :, 5:] = False  # channel 1 is a slab: slices 0-4 only
    image[1, :, :, 5:] = 0.0
    prepared, crop, valid = preprocess(image, seen, Preprocessing(normalize="zscore_nonzero"))
    assert crop == (slice(0, 12), slice(0, 10), slice(0, 5))
    assert valid.all() and valid.shape == prepared.shape[1:]
    # The channel that covers everything keeps its whole-volume statistics (as in training) ...
    assert np.allclose(prepared[0], zscore_nonzero(image[0])[:, :, :5], atol=1e-5)
    # ... the slab is normalised over the slab.
    assert np.allclose(prepared[1], zscore_nonzero(image[1][:, :, :5]), atol=1e-5)
    unnormalised, crop, _ = preprocess(image, seen, Preprocessing(normalize="none", crop_foreground=False))
    assert crop == (slice(0, 12), slice(0, 10), slice(0, 8))
    assert not unnormalised[:, :, :, 5:].any()
    assert np.array_equal(unnormalised[:, :, :, :5], image[:, :, :, :5])


def _model_input(tmp_path: Path, specs: list[SeriesSpec]) -> Any:
    card = load_model_card(THRESHOLD_MODEL)
    card = dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, spacing_mm=2.0))
    study = write_study(tmp_path, PHANTOM, specs, seed=4)
    series = {info.spec.contrast: [pydicom.dcmread(path) for path in info.files] for info in study.series}
    return build_model_input(series, SeriesSelection(study.study_instance_uid, study.accession_number, {}), card)


def _protocol(**flair: Any) -> list[SeriesSpec]:
    return [
        SeriesSpec("t1n", "T1", "sagittal", **SMALL),
        SeriesSpec("t1c", "T1C", "axial", **SMALL),
        SeriesSpec("t2w", "T2", "coronal", **SMALL),
        SeriesSpec("t2f", "FLAIR", "axial", **{**SMALL, **flair}),
    ]


def test_complete_study_covers_the_whole_head_without_warning(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="operators.model_input"):
        model_input = _model_input(tmp_path, _protocol(tilt_deg=(8.0, 0.0, 0.0)))
    coverage = model_input.coverage
    assert coverage.head_fraction >= 0.97 and coverage.warning is None
    assert set(coverage.by_role) == {"t1n", "t1c", "t2w", "t2f"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert coverage.to_dict()["warning"] is None


def test_flair_slab_restricts_the_input_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slab = dict(slices=8, center=(2.0, -8.0, 36.0))  # 48 mm through the lesion
    with caplog.at_level(logging.INFO, logger="operators.model_input"):
        model_input = _model_input(tmp_path, _protocol(**slab))
    image, valid = model_input.image, model_input.valid
    assert not image[:, ~valid].any()  # every channel zero outside the covered region
    # The covered region is the slab with its end slices' outer halves: 8 x 6 mm = 48 mm, 2 mm voxels.
    assert 23 <= image.shape[3] <= 25
    # The head fraction equals the truth: the phantom's head inside the slab over its head on the grid.
    grid_shape, affine = model_input.grid_shape, model_input.grid_affine
    head = PHANTOM.tissue(grid_points(grid_shape, affine)) >= Tissue.SCALP
    in_slab = np.zeros(grid_shape, dtype=bool)
    in_slab[model_input.crop] = valid
    truth = float((head & in_slab).sum()) / float(head.sum())
    coverage = model_input.coverage
    assert abs(coverage.head_fraction - truth) < 0.03, (coverage.head_fraction, truth)
    assert coverage.by_role["t1c"] > 0.97 and abs(coverage.by_role["t2f"] - coverage.head_fraction) < 0.01
    assert coverage.warning is not None and "t2f" in coverage.warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and model_input.study_uid in warnings[0] and "of the head" in warnings[0]


def test_card_minimum_head_coverage(tmp_path: Path) -> None:
    assert load_model_card(THRESHOLD_MODEL).preprocessing.min_head_coverage == 0.9
    card = json.loads((THRESHOLD_MODEL / "metadata.json").read_text())
    for bad in (1.5, -0.1, "most", True):
        folder = tmp_path / f"m{bad}"
        shutil.copytree(THRESHOLD_MODEL, folder)
        card["preprocessing"]["min_head_coverage"] = bad
        (folder / "metadata.json").write_text(json.dumps(card))
        with pytest.raises(ModelCardError, match="min_head_coverage"):
            load_model_card(folder)
    card["preprocessing"] = {"min_brain": 0.5}
    (folder / "metadata.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="preprocessing"):
        load_model_card(folder)


def test_series_without_a_common_region_fail_the_study(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"no region in common: t2f entirely outside the t1c series") as caught:
        _model_input(tmp_path, _protocol(slices=4, center=(2.0, -8.0, 200.0)))  # a FLAIR slab above the head
    assert str(caught.value).startswith("study ")
