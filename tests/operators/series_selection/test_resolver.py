"""operators/series_selection/resolver.py: one series per role, runners-up, ties."""

from __future__ import annotations

import dataclasses

from operators.series_selection.classification import classify
from operators.series_selection.evidence import SeriesEvidence, describe_series
from operators.series_selection.resolver import RESOLUTION_ORDER, Resolver
from operators.series_selection.rules import SelectionRules, parse_rules
from tests.operators.series_selection.test_vendor_studies import FLAIR, TSE, make_series


def _candidates(rules: SelectionRules) -> list[SeriesEvidence]:
    made = [make_series("T2W_TSE", TSE, number=401, time="101000"), make_series("T2W_TSE", TSE, number=402,
            time="101200"), make_series("T2W_FLAIR", FLAIR, number=501, time="101500")]  # fmt: skip
    series = [describe_series(uid, instances, rules) for uid, instances in made]
    for s in series:
        classify(s, rules)
    return series


def test_a_repeat_wins_by_the_shipped_preferences_and_the_first_is_a_runner_up() -> None:
    rules = parse_rules()
    first, repeat, flair = _candidates(rules)
    resolver = Resolver([first, repeat, flair], rules)
    resolver.run()
    assert resolver.chosen["t2w"] is repeat and resolver.chosen["t2f"] is flair
    assert [(s, why.split(":")[0]) for s, why in resolver.lost["t2w"]] == [(first, "prefer=latest")]
    assert set(resolver.missing) == {"t1n", "t1c"} and not resolver.ambiguous
    assert RESOLUTION_ORDER == ("t2f", "t2w", "t1c", "t1n")


def test_without_preferences_the_repeat_is_a_tie() -> None:
    rules = dataclasses.replace(parse_rules(), prefer=())
    first, repeat, flair = _candidates(rules)
    resolver = Resolver([first, repeat, flair], rules)
    resolver.run()
    tied, _ = resolver.ambiguous["t2w"]
    assert tied == [first, repeat] and "t2w" not in resolver.chosen
    assert resolver.taken(flair) == "t2f" and resolver.taken(first) is None
