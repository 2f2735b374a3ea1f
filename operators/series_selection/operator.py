"""`DicomSeriesSelector`, the MONAI Deploy operator of series selection (imports the SDK and holoscan;
the rest of the package does not)."""

from __future__ import annotations

from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from operators.series_selection.results import SeriesSelection
from operators.series_selection.rules import parse_rules
from operators.series_selection.sdk import select_from_studies
from operators.series_selection.selection import Rules


class DicomSeriesSelector(Operator):  # type: ignore[misc]
    """Selects t1n/t1c/t2w/t2f in the loaded study (MONAI Deploy operator).

    Input `dicom_study_list`: List[DICOMStudy] from DICOMDataLoaderOperator.
    Output `selected_series`: dict role -> DICOMSeries. Output `series_selection`: the
    SeriesSelection (reasons, ignored series). Both outputs may be left unconnected.
    The rules are read and validated when the operator is made (RulesError then);
    compute() raises SeriesSelectionError when the study does not qualify.
    """

    INPUT = "dicom_study_list"
    OUTPUT = "selected_series"
    OUTPUT_SELECTION = "series_selection"

    def __init__(self, fragment: Fragment, *args: Any, rules: Rules = None, **kwargs: Any) -> None:
        self.rules = parse_rules(rules)
        self.last_selection: SeriesSelection | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT).condition(ConditionType.NONE)
        spec.output(self.OUTPUT_SELECTION).condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        studies = op_input.receive(self.INPUT)
        series, selection = select_from_studies(list(studies or []), self.rules)
        self.last_selection = selection
        op_output.emit(series, self.OUTPUT)
        op_output.emit(selection, self.OUTPUT_SELECTION)
