"""operators/series_selection/values.py: times and header values."""

from __future__ import annotations

import pydicom

from operators.series_selection.values import as_list, bolus_key, clock_key, format_time, join, time_key, to_float


def test_one_clock_parser_for_acquisition_and_bolus_times() -> None:
    assert clock_key("12:05") == clock_key("1205") == clock_key("120500") == "120500.000000"
    assert clock_key("120500.5") == "120500.500000"
    assert clock_key("120500+0100") == "120500.000000"
    assert clock_key("") is None and clock_key(None) is None and clock_key("  ") is None
    ds = pydicom.Dataset()
    ds.AcquisitionDate, ds.AcquisitionTime, ds.ContrastBolusStartTime = "20240301", "0830", "083000"
    assert time_key(ds) == "20240301083000.000000"
    assert bolus_key(ds) == time_key(ds)[8:]  # comparable as the selection compares them
    assert format_time(time_key(ds)) == "08:30:00" and format_time(None) == "at unknown time"


def test_acquisition_datetime_wins_and_series_time_is_the_fallback() -> None:
    ds = pydicom.Dataset()
    ds.SeriesDate, ds.SeriesTime = "20240301", "101000"
    assert time_key(ds) == "20240301101000.000000"
    ds.AcquisitionDateTime = "20240302093000.25"
    assert time_key(ds) == "20240302093000.250000"
    assert time_key(pydicom.Dataset()) is None


def test_header_values() -> None:
    assert as_list(None) == [] and as_list("") == [] and as_list("M") == ["M"]
    assert join(["ORIGINAL", "PRIMARY"]) == "ORIGINAL\\PRIMARY"
    assert to_float("2.5") == 2.5 and to_float("nan") is None and to_float("x") is None
