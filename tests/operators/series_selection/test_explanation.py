"""operators/series_selection/explanation.py: the report's entries, the policy, the failure message."""

from __future__ import annotations

import dataclasses

from operators.series_selection.classification import classify
from operators.series_selection.evidence import describe_series
from operators.series_selection.explanation import entry, failure_message, policy, why_not
from operators.series_selection.resolver import Resolver
from operators.series_selection.rules import DEFAULT_PREFER, parse_rules
from tests.operators.series_selection.test_vendor_studies import FLAIR, TSE, make_series


def test_policy_names_the_preferences_and_derived_image_rules() -> None:
    shown = policy(parse_rules())
    assert shown["prefer"] == list(DEFAULT_PREFER)
    assert "MIP" in shown["never_used_image_types"] and "MPR" in shown["lowest_preference_image_types"]


def test_entries_and_failure_message_of_a_study_without_t1() -> None:
    rules = dataclasses.replace(parse_rules(), prefer=())
    made = [make_series("T2W_TSE", TSE, number=401, time="101000"), make_series("T2W_TSE", TSE, number=402,
            time="101200"), make_series("T2W_FLAIR", FLAIR, number=501, time="101500", slices=3)]  # fmt: skip
    series = [describe_series(uid, instances, rules) for uid, instances in made]
    candidates = [s for s in series if not s.ignore_reasons]
    for s in candidates:
        classify(s, rules)
    resolver = Resolver(candidates, rules)
    resolver.run()
    message = failure_message("1.2.3", "ACC9", series, resolver).splitlines()
    assert message[0].startswith("Series selection failed for study 1.2.3 (accession ACC9): no t1n series; no t1c "
                                 "series; no t2f series; 2 series tie for t2w (#401 'T2W_TSE' (")  # fmt: skip
    assert "Series found (3):" in message
    assert any("#501 'T2W_FLAIR' MR, 3 instances" in line and "fewer than the minimum of 5" in line for line in message)
    assert any(line.startswith('  set "prefer" in the rules') for line in message)
    flair_entry = entry(series[2], resolver, {})
    assert flair_entry.status == "ignored" and flair_entry.role is None
    assert why_not(resolver, candidates[0], "t1n") == "description matches the t2w rule"
