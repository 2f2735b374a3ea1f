"""operators/series_selection/selection.py: one study's headers in, a selection out."""

from __future__ import annotations

import dataclasses

import pytest

from operators.series_selection.rules import load_rules, parse_rules
from operators.series_selection.selection import classify_series, select_series, study_patient
from tests.operators.series_selection.test_vendor_studies import MPRAGE, TSE, make_series, siemens_study


def test_rules_may_be_given_typed_or_as_the_dict_form() -> None:
    series, uids = siemens_study()
    typed = select_series(series, parse_rules())
    assert typed == select_series(series, load_rules()) == select_series(series)
    assert typed.series_uids == {role: uids[role] for role in ("t1n", "t1c", "t2w", "t2f")}
    assert typed.policy["prefer"] == list(parse_rules().prefer)
    with pytest.raises(ValueError, match="2 series tie for t1c"):  # an MPR copy with the same agent
        select_series(series, dataclasses.replace(parse_rules(), prefer=()))


def test_classify_one_series_on_its_own() -> None:
    _, instances = make_series("t2_tse_tra", TSE, number=3, time="081200")
    role, reason = classify_series(instances)
    assert role == "t2w" and reason.startswith("description 't2_tse_tra' matches the t2w rule")
    _, instances = make_series("Series 9", MPRAGE, number=9, time="081200", agent="Gadovist")
    role, reason = classify_series(instances)
    assert role == "t1c" and "ContrastBolusAgent 'Gadovist'" in reason and "matches no rule" in reason


def test_the_patient_of_most_series_owns_the_study() -> None:
    from operators.series_selection.evidence import describe_series

    rules = parse_rules()
    made = [make_series(f"T2 {n}", TSE, number=n, time="0800", extra={"PatientID": pid})
            for n, pid in ((1, "P1"), (2, "P1"), (3, "P2"))]  # fmt: skip
    infos = [describe_series(uid, instances, rules) for uid, instances in made]
    assert study_patient(infos, "1.2.3", "ACC") == "P1"
    assert infos[2].ignore_reasons[0] == "another patient (PatientID 'P2'; the study's is 'P1')"
    with pytest.raises(ValueError, match="holds series of 2 patients"):
        study_patient(infos[1:], "1.2.3", "ACC")
