"""operators/series_selection/operator.py: the MONAI Deploy operator is a plain class."""

from __future__ import annotations

from pathlib import Path

import pytest

import operators.series_selection as package
from operators.series_selection.rules import RulesError, SelectionRules, load_rules


def test_the_package_makes_no_class_on_attribute_access_and_imports_without_the_sdk() -> None:
    assert not hasattr(package, "__getattr__")
    assert "DicomSeriesSelector" not in vars(package)


def test_operator_reads_its_rules_when_made(tmp_path: Path) -> None:
    from monai.deploy.core import Fragment, Operator

    from operators.series_selection.operator import DicomSeriesSelector

    assert issubclass(DicomSeriesSelector, Operator)
    fragment = Fragment()
    selector = DicomSeriesSelector(fragment, rules={**load_rules(), "prefer": ["latest"]}, name="selector")
    assert isinstance(selector.rules, SelectionRules) and selector.rules.prefer == ("latest",)
    broken = tmp_path / "rules.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules\.json"):
        DicomSeriesSelector(fragment, rules=broken, name="broken")
