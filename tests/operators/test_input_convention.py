"""The model card's input_convention: parsed and validated, each option on and off, today's cards unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.config import ConfigError, load_settings
from operators.input_convention import InputConvention, parse_convention, with_overrides
from operators.model_card import ModelCardError, load_model_card
from operators.segmenters import SegMambaSegmenter
from segmamba import SegMamba
from segmamba.export import REFERENCE_CONVENTION
from tests.support.model_cards import THRESHOLD_MODEL, threshold_model_with_convention


def test_card_without_the_block_keeps_todays_convention() -> None:
    card = load_model_card(THRESHOLD_MODEL)
    assert card.input_convention is None
    convention = card.convention
    assert not convention.declared and convention.orientation is None  # the reference series' own axes
    assert not convention.registration.enabled and not convention.brain_extraction.enabled
    assert not convention.atlas.enabled
    assert convention.spacing_mm == card.preprocessing.spacing_mm
    assert convention.normalize == card.preprocessing.normalize == "none"


def test_reference_recipe_convention_is_read_as_written(tmp_path: Path) -> None:
    convention = load_model_card(threshold_model_with_convention(tmp_path, REFERENCE_CONVENTION)).convention
    assert convention.declared
    assert convention.orientation == ("S", "P", "L") and convention.spacing_mm == 1.0
    assert convention.normalize == "zscore_crop" and convention.mirror_axes == (0, 1, 2)
    assert convention.registration.enabled and convention.registration.onto == "t1c"
    assert convention.registration.max_translation_mm == 15.0 and convention.registration.on_failure == "refuse"
    assert convention.brain_extraction.enabled and convention.brain_extraction.contrast == "t1n"
    assert convention.brain_extraction.normalize_within_mask
    assert not convention.atlas.enabled
    assert convention.to_dict()["orientation"] == ["S", "P", "L"]


@pytest.mark.parametrize("step", ["registration", "brain_extraction", "atlas"])
@pytest.mark.parametrize("enabled", [True, False])
def test_each_step_on_and_off(tmp_path: Path, step: str, enabled: bool) -> None:
    convention = load_model_card(threshold_model_with_convention(tmp_path, {step: {"enabled": enabled}})).convention
    states = {"registration": convention.registration.enabled,
              "brain_extraction": convention.brain_extraction.enabled, "atlas": convention.atlas.enabled}
    assert states == {name: (enabled and name == step) for name in states}
    assert convention.orientation is None  # not declared: the reference series' axes, as before


@pytest.mark.parametrize(("block", "key"), [
    ({"orientation": ["S", "P", "P"]}, "orientation"),
    ({"orientation": ["S", "P"]}, "orientation"),
    ({"orientation": "SPL"}, "orientation"),
    ({"spacing_mm": 0}, "spacing_mm"),
    ({"spacing_mm": "1"}, "spacing_mm"),
    ({"normalize": "minmax"}, "normalize"),
    ({"reference_role": "dwi"}, "reference_role"),
    ({"registration": {"enabled": "yes"}}, "registration.enabled"),
    ({"registration": {"method": "affine"}}, "registration.method"),
    ({"registration": {"onto": "ct"}}, "registration.onto"),
    ({"registration": {"max_rotation_deg": -1}}, "registration.max_rotation_deg"),
    ({"registration": {"on_failure": "ignore"}}, "registration.on_failure"),
    ({"registration": {"iterations": 5}}, "registration: unknown keys"),
    ({"brain_extraction": {"method": "hd-bet"}}, "brain_extraction.method"),
    ({"brain_extraction": {"contrast": "pd"}}, "brain_extraction.contrast"),
    ({"brain_extraction": {"apply_to": "t1n"}}, "brain_extraction.apply_to"),
    ({"brain_extraction": True}, "brain_extraction must be an object"),
    ({"atlas": {"enabled": True, "template": "icbm"}}, "atlas: unknown keys"),
    ({"mirror_axes": [0, 3]}, "mirror_axes"),
    ({"declared": False}, "unknown keys"),
    ([], "input_convention must be an object"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, block: Any, key: str) -> None:
    with pytest.raises(ModelCardError, match=key.replace(".", r"\.")) as error:
        load_model_card(threshold_model_with_convention(tmp_path, block))
    assert "metadata.json" in str(error.value)


def test_ablation_overrides_force_a_step_on_or_off() -> None:
    card = parse_convention(REFERENCE_CONVENTION)
    assert with_overrides(card) == card
    off = with_overrides(card, registration="off", brain_extraction="off")
    assert not off.registration.enabled and not off.brain_extraction.enabled
    assert off.orientation == card.orientation and off.registration.onto == "t1c"
    legacy = with_overrides(InputConvention(declared=False), registration="on", brain_extraction="on")
    assert legacy.registration.enabled and legacy.brain_extraction.enabled
    with pytest.raises(ValueError, match="registration"):
        with_overrides(card, registration="maybe")


def test_settings_registration_and_brain_extraction(tmp_path: Path) -> None:
    assert load_settings(environ={}).registration == "card"
    settings = load_settings(environ={"SEGMAMBA_REGISTRATION": "OFF"}, overrides={"brain_extraction": "on"})
    assert (settings.registration, settings.brain_extraction) == ("off", "on")
    yaml_file = tmp_path / "app.yaml"
    yaml_file.write_text("settings:\n  brain_extraction: 'off'\n")
    assert load_settings(yaml_file, environ={}).brain_extraction == "off"
    with pytest.raises(ConfigError, match="brain_extraction"):
        load_settings(environ={"SEGMAMBA_BRAIN_EXTRACTION": "sometimes"})


@pytest.mark.parametrize(("axes", "expected"), [([0, 1, 2], 8), ([2], 2), ([], 1)])
def test_mirror_tta_flips_exactly_the_cards_mirror_axes(tmp_path: Path, axes: list[int], expected: int) -> None:
    args = {"in_chans": 4, "out_chans": 4, "depths": [1, 1, 1, 1], "feat_size": [8, 16, 32, 64], "hidden_size": 64,
            "nslices": [4, 2, 1, 1]}
    folder = threshold_model_with_convention(tmp_path, {"mirror_axes": axes})
    card = json.loads((folder / "metadata.json").read_text())
    card.update(network={"type": "segmamba", "args": args, "weights": "model.pt"},
                inference={"roi_size": [32, 32, 32], "mirror_tta": True})
    (folder / "metadata.json").write_text(json.dumps(card))
    torch.save(SegMamba(**args).state_dict(), folder / "model.pt")
    segmenter = SegMambaSegmenter(load_model_card(folder), device="cpu", progress=False, precision="float32")
    seen: list[torch.Tensor] = []
    segmenter.model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    image = np.random.default_rng(0).standard_normal((4, 32, 32, 32)).astype(np.float32)
    segmenter(image)

    x = torch.from_numpy(image)[None]
    assert segmenter.passes == len(seen) == expected
    flipped = [dims for dims in segmenter.flips if dims]
    assert all(torch.equal(window, x.flip(dims)) for window, dims in zip(seen[1:], flipped, strict=True))
    assert {d for dims in flipped for d in dims} == {axis + 2 for axis in axes}
    assert segmenter.describe(image.shape[1:])["mirror_axes"] == axes
