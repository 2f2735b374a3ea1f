"""One model-card schema (segmamba/card.py) for the exporter and the loader; DICOM codes in the application."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import segmamba.export as export
from operators.label_codes import BRATS_TYPES
from operators.model_card import ModelCardError, load_model_card
from operators.seg_writer import SegmentSpec
from segmamba import SegMamba
from segmamba.card import BRATS_LABELS, CARD_NAME, parse_card, read_card
from tests.support.model_cards import THRESHOLD_MODEL
from tests.support.paths import REPO

ROOT = REPO
DEMO_MODEL = ROOT / "models" / "segmamba-demo"


def _codes(card: Any) -> list[tuple[str, str, str]]:
    return [SegmentSpec.from_dict(label.to_dict()).property_type for label in card.labels]


def _table_codes() -> list[tuple[str, str, str]]:
    return [BRATS_TYPES[str(label.key)] for label in BRATS_LABELS]


def _written(folder: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((folder / CARD_NAME).read_text())
    return raw


def _check_exported(folder: Path) -> None:
    raw = _written(folder)
    assert all("type" not in entry for entry in raw["labels"])  # the exporter writes no DICOM codes
    assert [(e["label"], e["name"], e["key"], e["color"]) for e in raw["labels"]] == [
        (1, "Necrotic tumour core", "necrotic_core", [230, 60, 60]), (2, "Peritumoral oedema", "edema", [90, 200, 90]),
        (3, "Enhancing tumour", "enhancing", [250, 220, 60])]
    assert parse_card(raw).to_dict() == raw  # the schema reads back what it wrote
    card = load_model_card(folder)
    assert _codes(card) == _table_codes() == _codes(load_model_card(DEMO_MODEL))
    assert card.label_names == {1: "Necrotic tumour core", 2: "Peritumoral oedema", 3: "Enhancing tumour"}
    assert card.label_colours[3] == (250, 220, 60) and card.regions["WT"] == (1, 2, 3)


def test_demo_style_export_round_trips_and_gets_the_table_codes(tmp_path: Path) -> None:
    args = {"in_chans": 4, "out_chans": 4, "feat_size": [8, 16, 32, 64], "hidden_size": 64}
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": SegMamba(**args).state_dict(), "network_args": args, "iteration": 3,
                "config": {"patch": 32, "orientation": ["S", "P", "L"]}}, checkpoint)
    folder = export.export_model(checkpoint, tmp_path / "model", name="demo", version="0.1.0", description="test",
                                 intended_use=export.DEMO_INTENDED_USE, overlap=0.25, min_tumour_ml=2.0,
                                 input_convention="brats")
    _check_exported(folder)
    raw = _written(folder)
    assert list(raw) == ["name", "version", "description", "intended_use", "network", "channel_order",
                         "preprocessing", "inference", "postprocessing", "labels", "regions", "input_convention",
                         "training", "validation"]
    assert raw["inference"] == {"roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1,
                                "mirror_tta": False}
    assert raw["preprocessing"] == {"spacing_mm": 1.0, "crop_foreground": True, "normalize": "zscore_nonzero"}
    assert raw["network"] == {"type": "segmamba", "args": args, "weights": "model.pt", "dtype": "float16"}
    assert load_model_card(folder).convention.orientation == ("S", "P", "L")


def test_reference_export_round_trips_and_gets_the_table_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small weights stand in for the reference network's (the strict check is test_export_reference's).
    checkpoint = tmp_path / "final_model.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.float32)}, checkpoint)
    monkeypatch.setattr(export, "reference_state_dict", lambda obj: obj)
    folder = export.export_reference_model(checkpoint, tmp_path / "model")
    _check_exported(folder)
    raw = _written(folder)
    assert raw["input_convention"] == export.REFERENCE_CONVENTION and "validation" not in raw
    assert raw["network"]["args"] == export.REFERENCE_ARGS and raw["network"]["dtype"] == "float32"
    assert raw["training"]["checkpoint"]["file"] == "final_model.pt"


def test_shipped_cards_load_unchanged_with_their_own_codes() -> None:
    for folder in (DEMO_MODEL, THRESHOLD_MODEL):
        raw = _written(folder)
        card = load_model_card(folder)
        assert [dict(label.type or {}) for label in card.labels] == [entry["type"] for entry in raw["labels"]]
        assert _codes(card) == _table_codes()
    assert read_card(DEMO_MODEL).to_dict() == _written(DEMO_MODEL)


def _threshold_with(tmp_path: Path, change: Any) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(THRESHOLD_MODEL, folder)
    raw = _written(folder)
    change(raw)
    (folder / CARD_NAME).write_text(json.dumps(raw))
    return folder


def test_a_card_with_its_own_type_keeps_it_and_a_key_fills_a_missing_one(tmp_path: Path) -> None:
    own = {"scheme": "SCT", "value": "86049000", "meaning": "Malignant neoplasm, primary"}

    def change(raw: dict[str, Any]) -> None:
        raw["labels"][0]["type"] = own
        raw["labels"][0]["category"] = {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered"}
        del raw["labels"][1]["type"]
        raw["labels"][1]["key"] = "edema"

    card = load_model_card(_threshold_with(tmp_path, change))
    assert card.labels[0].type == own and SegmentSpec.from_dict(card.labels[0].to_dict()).property_category[1] == (
        "49755003")
    assert _codes(card)[1:] == _table_codes()[1:]


def test_a_label_without_type_or_known_key_is_refused(tmp_path: Path) -> None:
    def change(raw: dict[str, Any]) -> None:
        del raw["labels"][2]["type"]
        raw["labels"][2]["key"] = "cyst"

    with pytest.raises(ModelCardError, match=r"label 3 \('Enhancing tumour'\) has no type and its key 'cyst'"):
        load_model_card(_threshold_with(tmp_path, change))


@pytest.mark.parametrize(("path", "message"), [
    (("name",), r"'name' is missing or not a str"), (("version",), r"'version' is missing or not a str"),
    (("network",), r"'network' is missing or not a dict"), (("network", "type"), r"'network\.type' is missing"),
    (("channel_order",), r"'channel_order' is missing or not a list"),
    (("labels",), r"'labels' is missing or not a list"), (("labels", 0, "color"), r"'color' is missing"),
])
def test_a_card_missing_a_required_key_is_refused_naming_it(tmp_path: Path, path: tuple[Any, ...],
                                                            message: str) -> None:
    def change(raw: dict[str, Any]) -> None:
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        del parent[path[-1]]

    with pytest.raises(ModelCardError, match=message) as error:
        load_model_card(_threshold_with(tmp_path, change))
    assert CARD_NAME in str(error.value)


def test_an_unknown_key_in_a_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match=r"inference: unknown key\(s\) \['windows'\]"):
        load_model_card(_threshold_with(tmp_path, lambda raw: raw["inference"].update(windows=2)))


def test_segmamba_holds_no_dicom_vocabulary() -> None:
    pattern = re.compile(r"pydicom|highdicom|\bSCT\b|\bNCIt\b|SNOMED")
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "segmamba").rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), start=1) if pattern.search(line)]
    assert hits == []
