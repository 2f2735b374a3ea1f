"""operators/series_selection/preferences.py: each criterion keeps the best of a pool."""

from __future__ import annotations

from typing import Any

from operators.series_selection.evidence import SeriesEvidence, describe_series
from operators.series_selection.preferences import acquired_before, acquisition_order, prefer, why_lost
from operators.series_selection.rules import parse_rules
from tests.operators.series_selection.test_vendor_studies import TSE, make_series

RULES = parse_rules()


def _t2(number: int, time: str, **kwargs: Any) -> SeriesEvidence:
    uid, instances = make_series("T2", TSE, number=number, time=time, **kwargs)
    return describe_series(uid, instances, RULES)


def test_thinnest_counts_sizes_within_ten_percent_as_equal() -> None:
    a, b, c = _t2(1, "0800", thickness=3.0), _t2(2, "0801", thickness=3.2), _t2(3, "0802", thickness=5.0)
    assert prefer("thinnest", [a, b, c]) == [a, b]
    assert why_lost("thinnest", c, [a, b]) == "5 mm slices; #1 'T2' has 3 mm"


def test_full_coverage_drops_a_slab() -> None:
    whole, slab = _t2(1, "0800", slices=60), _t2(2, "0810", slices=12)
    assert prefer("full_coverage", [whole, slab]) == [whole]
    assert "a partial repeat or slab" in why_lost("full_coverage", slab, [whole])
    assert prefer("latest", [whole, slab]) == [slab]  # full_coverage comes first in the shipped order


def test_order_by_time_else_number_and_unknown_when_equal() -> None:
    early, late = _t2(9, "080000"), _t2(3, "081000")
    assert acquisition_order([late, early]) == [early, late]
    assert acquired_before(early, late) and not acquired_before(late, early)
    twin = _t2(9, "080000")
    assert acquisition_order([early, twin]) is None
    assert prefer("earliest", [early, twin]) == [early, twin]  # cannot tell: both kept
