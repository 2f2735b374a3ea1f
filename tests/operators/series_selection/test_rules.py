"""operators/series_selection/rules.py: the policy as a frozen, validated object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from operators.errors import ConfigurationError
from operators.series_selection.rules import (
    DEFAULT_PREFER,
    DEFAULT_RULES_PATH,
    AttributeEvidence,
    RulesError,
    SelectionRules,
    load_rules,
    parse_rules,
)


def test_shipped_rules_parse_into_a_frozen_typed_policy() -> None:
    rules = parse_rules()
    assert isinstance(rules, SelectionRules)
    assert rules.prefer == DEFAULT_PREFER and rules.min_slices == 5 and rules.order_fallback
    assert {r.name for r in rules.selections} == {"t1n", "t1c", "t2w", "t2f"}
    assert rules.rules_for("t2f") and all(r.name == "t2f" for r in rules.rules_for("t2f"))
    assert rules.attributes.flair_inversion_ms == AttributeEvidence().flair_inversion_ms  # a default kept
    assert "ohne" in rules.attributes.explicit_pre_contrast  # the file's own words (German "ohne")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.min_slices = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        rules.selections[0].conditions["Modality"] = "CT"  # type: ignore[index]
    assert parse_rules(rules) is rules


def test_dict_form_round_trips_and_is_a_fresh_copy() -> None:
    first = load_rules()
    first["attributes"]["use"] = False
    first["prefer"].append("most_slices")
    assert load_rules()["attributes"]["use"] is True and "most_slices" not in load_rules()["prefer"]
    assert parse_rules(load_rules()) == parse_rules(None) == parse_rules(DEFAULT_RULES_PATH)
    variant = parse_rules({**load_rules(), "prefer": "none", "attributes": {"flair_min_echo_ms": 70}})
    assert variant.prefer == () and variant.attributes.flair_min_echo_ms == 70
    assert variant.attributes.t1_max_echo_ms == AttributeEvidence().t1_max_echo_ms


def test_a_broken_rules_file_is_a_configuration_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "rules.json"
    broken.write_text('{"selections": [', encoding="utf-8")
    with pytest.raises(RulesError, match=r"selection rules .*rules\.json: JSONDecodeError") as failure:
        parse_rules(broken)
    assert isinstance(failure.value, ConfigurationError)
    with pytest.raises(RulesError, match=r"missing\.json: FileNotFoundError"):
        parse_rules(tmp_path / "missing.json")
    broken.write_text(json.dumps({"selections": [], "min_slices": 0}), encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules\.json: min_slices must be a positive integer, not 0"):
        parse_rules(str(broken))


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"selections": [{"name": "t2f", "conditions": {"SeriesDescription": "(flair"}}]},
         r"selections\[0\] \(t2f\) condition SeriesDescription: '\(flair' is not a regular expression"),
        ({"selections": [], "attributes": {"flair_min_echo_ms": "60"}},
         r"attributes.flair_min_echo_ms must be a number of milliseconds"),
        ({"selections": [], "attributes": {"t1_inversion_ms": [1300, 300]}},
         r"attributes.t1_inversion_ms must be \[low"),
        ({"selections": [], "attributes": {"use": "yes"}}, "attributes.use must be true or false"),
        ({"selections": [], "derived": {"reformat": "MPR"}}, "derived.reformat must be a list"),
        ({"selections": [], "derived": {"mpr": []}}, r"unknown keys in derived: \['mpr'\]"),
        ({"selections": [{"name": "t1c", "conditions": {}}]}, r"selections\[0\] \(t1c\) needs a non-empty"),
        ({"ignore": []}, 'need a "selections" list'),
    ],
)  # fmt: skip
def test_malformed_rules_are_refused_with_the_key(rules: dict, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(rules)
