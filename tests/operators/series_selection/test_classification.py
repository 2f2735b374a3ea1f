"""operators/series_selection/classification.py: description roles, attribute class, exam-wide contrast."""

from __future__ import annotations

from typing import Any

from operators.series_selection.classification import (
    apply_exam_bolus_time,
    attribute_kind,
    classify,
    discount_exam_wide_contrast,
)
from operators.series_selection.evidence import SeriesEvidence, describe_series
from operators.series_selection.rules import AttributeEvidence, parse_rules
from tests.operators.series_selection.test_vendor_studies import EPI, FLAIR, MPRAGE, T1_SE, TSE, make_series

RULES = parse_rules()


def _series(description: str, params: dict[str, Any], number: int = 1, time: str = "080000",
            **kwargs: Any) -> SeriesEvidence:  # fmt: skip
    uid, instances = make_series(description, params, number=number, time=time, **kwargs)
    return describe_series(uid, instances, RULES)


def test_attribute_class_from_tr_te_ti() -> None:
    attrs = AttributeEvidence()
    assert attribute_kind(_series("x", FLAIR).header, attrs)[0] == "t2f"
    assert attribute_kind(_series("x", TSE).header, attrs)[0] == "t2w"
    assert attribute_kind(_series("x", MPRAGE).header, attrs)[0] == "t1"
    assert attribute_kind(_series("x", T1_SE).header, attrs)[0] == "t1"
    kind, text = attribute_kind(_series("x", EPI).header, attrs)
    assert kind is None and "echo-planar" in text
    assert attribute_kind(_series("x", FLAIR).header, AttributeEvidence(flair_min_echo_ms=100))[0] is None


def test_contrast_attributes_overrule_t1_words() -> None:
    native_words = _series("t1_mprage_sag_p2_iso", MPRAGE, agent="Gadovist")
    classify(native_words, RULES)
    assert native_words.roles == ("t1c",)
    assert "the description has no contrast words, but ContrastBolusAgent 'Gadovist'" in native_words.role_note
    plain = _series("t1_mprage_sag_p2_iso", MPRAGE)
    classify(plain, RULES)
    assert plain.roles == ("t1n",) and plain.kind == "t1" and plain.attribute_role == "t1n"


def test_one_exam_bolus_time_times_every_series() -> None:
    timed = _series("t1 post", MPRAGE, number=7, time="083500", agent="Gadovist", bolus_start="0830")
    before = _series("series a", MPRAGE, number=2, time="080500")
    after = _series("series b", MPRAGE, number=9, time="084000")
    apply_exam_bolus_time([timed, before, after])
    assert (before.contrast, after.contrast) == ("pre", "post")
    assert after.contrast_text == ("acquired at 08:40:00, after the exam's ContrastBolusStartTime 08:30:00 "
                                   "(series #7 't1 post'): post-contrast")  # fmt: skip


def test_untimed_contrast_on_every_series_is_no_evidence() -> None:
    series = [_series(f"s{n}", MPRAGE, number=n, agent="Dotarem") for n in (1, 2)]
    assert all(s.contrast == "post" for s in series)
    discount_exam_wide_contrast(series)
    assert all(s.contrast is None and s.contrast_text.endswith("on every series, untimed: no evidence") for s in series)
