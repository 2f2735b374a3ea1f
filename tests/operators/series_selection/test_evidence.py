"""operators/series_selection/evidence.py: what one series says about itself."""

from __future__ import annotations

from operators.series_selection.evidence import describe_series
from operators.series_selection.rules import parse_rules
from tests.operators.series_selection.test_vendor_studies import MPRAGE, TSE, make_series

RULES = parse_rules()


def test_derivation_is_read_from_image_type_before_the_description() -> None:
    uid, instances = make_series("t1_mpr_sag_p2_iso", MPRAGE, number=2, time="080500", slices=16)
    original = describe_series(uid, instances, RULES)
    assert original.derived == "original" and not original.ignore_reasons
    assert "'mpr' in the description is not a reformat" in original.derived_note
    uid, instances = make_series("Ax T1 reformat", MPRAGE, number=3, time="080500", slices=16,
                                 image_type=("DERIVED", "SECONDARY", "MPR"))  # fmt: skip
    assert describe_series(uid, instances, RULES).derived == "reformat"
    uid, instances = make_series("T1 processed", MPRAGE, number=4, time="080500", slices=16,
                                 image_type=("DERIVED", "SECONDARY"))  # fmt: skip
    never = describe_series(uid, instances, RULES)
    assert never.derived == "never" and "processing unknown" in never.ignore_reasons[0]
    uid, instances = make_series("T2 MIP", TSE, number=5, time="080500", image_type=("DERIVED", "PRIMARY", "MIP"))
    assert "MIP is never used" in describe_series(uid, instances, RULES).ignore_reasons[0]


def test_geometry_takes_the_larger_of_thickness_and_spacing() -> None:
    uid, instances = make_series("T2", TSE, number=3, time="081200", thickness=3.0, pixel=0.5,
                                 extra={"SliceThickness": 1.0})  # fmt: skip
    series = describe_series(uid, instances, RULES)
    assert series.slice_mm == 3.0 and series.in_plane_mm == 0.5 and series.plane == "Axial"


def test_lossy_copies_and_too_few_slices() -> None:
    uid, instances = make_series("T2", TSE, number=3, time="081200", image_type=("DERIVED", "PRIMARY", "M"),
                                 extra={"LossyImageCompression": "01", "LossyImageCompressionRatio": "10"})
    lossy = describe_series(uid, instances, RULES)
    assert lossy.derived == "derived-primary" and lossy.lossy == "LossyImageCompression 01 (method not given, ratio 10)"
    uid, instances = make_series("T2", TSE, number=3, time="081200", slices=4)
    assert describe_series(uid, instances, RULES).ignore_reasons == ["4 instance(s), fewer than the minimum of 5"]


def test_bolus_start_after_the_series_says_pre_contrast() -> None:
    uid, instances = make_series("t1 post", MPRAGE, number=2, time="080500", slices=16, agent="Gadovist",
                                 bolus_start="0830")  # fmt: skip
    series = describe_series(uid, instances, RULES)
    assert series.bolus == "083000.000000" and series.bolus_timed
    assert series.contrast == "pre"
    assert series.contrast_text == "ContrastBolusStartTime 08:30:00 is after this series (08:05:00)"
    uid, instances = make_series("t1 post", MPRAGE, number=7, time="083500", slices=16, agent="Gadovist",
                                 bolus_start="083000")  # fmt: skip
    after = describe_series(uid, instances, RULES)
    assert after.contrast == "post" and "ContrastBolusAgent 'Gadovist'" in after.contrast_text
