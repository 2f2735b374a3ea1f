"""operators/series_selection/results.py: the returned types."""

from __future__ import annotations

import json

from operators.errors import StudyError
from operators.series_selection.results import RoleChoice, RunnerUp, SeriesSelection, SeriesSelectionError


def test_selection_error_is_a_study_error_whose_line_is_the_first_line_of_the_message() -> None:
    error = SeriesSelectionError(
        "Series selection failed for study 1.2.3 (accession ACC9): no t2f series\nSeries found (1):\n  ...",
        study_instance_uid="1.2.3", accession="ACC9", missing=["t2f"],
    )  # fmt: skip
    assert isinstance(error, StudyError) and isinstance(error, ValueError)
    assert str(error) == "study 1.2.3 (ACC9): series selection: no t2f series"
    assert error.missing == ("t2f",) and error.details.startswith("Series selection failed")
    assert SeriesSelectionError("Series selection failed: no DICOM study in the input").reason == (
        "series selection: no DICOM study in the input"
    )


def test_selection_to_dict_is_json_ready() -> None:
    runner = RunnerUp("1.2.3.9", "T2 old", 3, "prefer=latest: earlier")
    selection = SeriesSelection("1.2.3", "ACC9", {"t2w": RoleChoice("1.2.3.4", "T2", 4, "matches", (runner,))})
    assert selection.series_uids == {"t2w": "1.2.3.4"} and selection.reasons == {"t2w": "matches"}
    assert json.loads(json.dumps(selection.to_dict()))["t2w"]["runners_up"][0]["series_number"] == 3
    assert "runner-up #3 'T2 old': prefer=latest: earlier" in selection.describe()
