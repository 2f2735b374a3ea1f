"""operators/series_selection/sdk.py: selection on SDK study objects, foreign series, unreadable files."""

from __future__ import annotations

import pytest

from operators.errors import StudyError
from operators.series_selection.sdk import select_from_studies
from operators.series_selection.selection import select_series
from operators.study_inventory import StudyInventory, UnreadableFile
from tests.operators.series_selection.test_vendor_studies import _SdkStudy, ge_study


def test_an_unreadable_file_of_a_selected_series_fails_the_study_naming_role_and_file() -> None:
    series, uids = ge_study()
    study_uid = next(iter(series.values()))[0].StudyInstanceUID
    bad = UnreadableFile("IMG/0042", "truncated", study_uid, uids["t2w"])
    expected = r"unreadable file IMG/0042 in the t2w series #4 'Ax T2 FSE' \(.*\): truncated"
    with pytest.raises(StudyError, match=expected):
        select_from_studies([_SdkStudy(series, StudyInventory("in", unreadable=[bad]))])


def test_one_study_gives_its_series_by_role_and_the_inventory() -> None:
    series, uids = ge_study()
    inventory = StudyInventory("in")
    by_role, selection = select_from_studies([_SdkStudy(series, inventory)])
    assert {role: s.SeriesInstanceUID for role, s in by_role.items()} == select_series(series).series_uids
    assert selection.inventory is inventory and selection.foreign == ()
    assert by_role["t1c"].SeriesInstanceUID == uids["t1c"]
