"""Small tumour islands are dropped by the card's postprocessing; real lesions stay whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators.model_card import ModelCardError, load_model_card
from segmamba.postprocess import remove_small_tumours
from tests.support.paths import THRESHOLD_MODEL


def _lesion_and_islands() -> np.ndarray:
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[5:25, 5:25, 5:25] = 2  # oedema 8 mL (at 1 mm)
    labels[10:20, 10:20, 10:20] = 3  # enhancing core inside it
    labels[12:15, 12:15, 12:15] = 1
    labels[30:32, 30:32, 30:32] = 2  # 8-voxel island
    labels[35, 35, 35] = 3  # single voxel
    labels[34, 34, 34] = 1  # touches the voxel above diagonally: one 2-voxel component
    return labels


def test_islands_under_the_threshold_are_removed_and_the_lesion_is_kept_whole() -> None:
    labels = _lesion_and_islands()
    cleaned, removed = remove_small_tumours(labels, voxel_ml=0.001, min_tumour_ml=0.05)
    assert removed == 2
    assert not cleaned[28:, 28:, 28:].any()
    np.testing.assert_array_equal(cleaned[:26, :26, :26], labels[:26, :26, :26])
    assert labels[35, 35, 35] == 3  # the input is not modified


def test_threshold_counts_millilitres_of_the_grid() -> None:
    labels = _lesion_and_islands()
    # 2 mm voxels: the 8-voxel island is 64 mL-thousandths = 0.064 mL, kept at a 0.05 mL threshold.
    cleaned, removed = remove_small_tumours(labels, voxel_ml=0.008, min_tumour_ml=0.05)
    assert removed == 1
    assert cleaned[30:32, 30:32, 30:32].all()


def test_zero_threshold_and_empty_maps_are_left_alone() -> None:
    labels = _lesion_and_islands()
    assert remove_small_tumours(labels, 0.001, 0.0)[0] is labels
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    assert remove_small_tumours(empty, 0.001, 1.0) == (empty, 0)


def _card_with(tmp_path: Path, postprocessing: object) -> Path:
    card = json.loads((THRESHOLD_MODEL / "metadata.json").read_text())
    card["postprocessing"] = postprocessing
    (tmp_path / "metadata.json").write_text(json.dumps(card))
    return tmp_path


def test_model_card_reads_postprocessing(tmp_path: Path) -> None:
    assert load_model_card(THRESHOLD_MODEL).postprocessing.min_tumour_ml == 0.0
    card = load_model_card(_card_with(tmp_path, {"min_tumour_ml": 0.5}))
    assert card.postprocessing.min_tumour_ml == 0.5


@pytest.mark.parametrize(("value", "message"), [({"min_tumour_ml": -1}, ">= 0"), ({"min_size": 3}, "postprocessing")])
def test_model_card_rejects_bad_postprocessing(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(ModelCardError, match=message):
        load_model_card(_card_with(tmp_path, value))
