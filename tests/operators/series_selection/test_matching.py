"""operators/series_selection/matching.py: plane from ImageOrientationPatient, condition errors."""

from __future__ import annotations

import pydicom
import pytest

from operators.series_selection.matching import match_conditions, orientation


def test_plane_is_the_dominant_slice_normal() -> None:
    assert orientation([1, 0, 0, 0, 1, 0]) == "Axial"
    assert orientation([0, 1, 0, 0, 0, -1]) == "Sagittal"
    assert orientation([1, 0, 0, 0, 0, -1]) == "Coronal"
    assert orientation([0.95, 0.31, 0, -0.31, 0.95, 0.05]) == "Axial"  # slightly oblique
    assert orientation([1, 0, 0, 1, 0, 0]) is None  # degenerate
    assert orientation(None) is None and orientation([1, 0, 0]) is None


def test_conditions_the_sdk_cannot_mean_are_refused() -> None:
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SeriesDescription = "T2 FLAIR"
    with pytest.raises(ValueError, match="ImageOrientationPatient condition must be one of"):
        match_conditions({"ImageOrientationPatient": "Oblique"}, ds)
    with pytest.raises(ValueError, match="must be a string"):
        match_conditions({"SeriesDescription": 5}, ds)
    assert match_conditions({"ImageOrientationPatient": "axial", "SeriesDescription": "flair"}, ds)
