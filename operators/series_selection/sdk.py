"""Series selection on the MONAI Deploy App SDK's objects (duck-typed, so no holoscan is needed).

`select_from_studies` runs `select_series` on each DICOMStudy of the input: exactly one must yield
a complete selection; the series of the other studies/patients are listed (and warned about) as
foreign; the loader's StudyInventory fails the study when an unreadable file belongs, or may
belong, to a selected series, and otherwise travels on the selection for the report.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from pydicom import Dataset

from operators.errors import StudyError
from operators.roles import Role
from operators.series_selection.results import ForeignSeries, SeriesSelection, SeriesSelectionError
from operators.series_selection.rules import parse_rules
from operators.series_selection.selection import Rules, select_series
from operators.series_selection.values import to_int
from operators.study_inventory import StudyInventory, inventory_of

log = logging.getLogger(__name__)


class SopInstanceLike(Protocol):
    """The part of the SDK's DICOMSOPInstance used here."""

    def get_native_sop_instance(self) -> Dataset: ...


class SeriesLike(Protocol):
    """The part of the SDK's DICOMSeries used here."""

    @property
    def SeriesInstanceUID(self) -> str: ...

    def get_sop_instances(self) -> Sequence[SopInstanceLike]: ...


class StudyLike(Protocol):
    """The part of the SDK's DICOMStudy used here."""

    @property
    def StudyInstanceUID(self) -> str: ...

    def get_all_series(self) -> Sequence[SeriesLike]: ...


def select_from_studies(
    studies: Sequence[StudyLike], rules: Rules = None
) -> tuple[dict[Role, SeriesLike], SeriesSelection]:
    """Run `select_series` on SDK DICOMStudy objects; returns (role -> DICOMSeries, selection).

    With several studies, exactly one must yield a complete selection; otherwise (none, or more
    than one) SeriesSelectionError explains each study. The series of the other studies are
    listed in `SeriesSelection.foreign` (and logged as a warning). The loader's StudyInventory
    (`inventory_of`) is checked: an unreadable file of a selected series, or of an unknown series
    of this study, fails the study (StudyError naming series and file); otherwise it travels on
    the selection for the report.
    """
    config = parse_rules(rules)
    if not studies:
        raise SeriesSelectionError("Series selection failed: no DICOM study in the input")
    results: list[tuple[dict[Role, SeriesLike], SeriesSelection, StudyLike]] = []
    errors: dict[int, SeriesSelectionError] = {}
    headers_of: dict[int, dict[str, list[Dataset]]] = {}
    for index, study in enumerate(studies):
        by_uid = {str(series.SeriesInstanceUID): series for series in study.get_all_series()}
        headers = {
            uid: [sop.get_native_sop_instance() for sop in series.get_sop_instances()] for uid, series in by_uid.items()
        }
        headers_of[index] = headers
        try:
            selection = select_series(headers, config)
        except SeriesSelectionError as error:
            errors[index] = error
            continue
        results.append(({role: by_uid[uid] for role, uid in selection.series_uids.items()}, selection, study))
    if len(results) == 1:
        by_role, selection, chosen = results[0]
        others = [i for i, study in enumerate(studies) if study is not chosen]
        foreign = tuple(f for i in others for f in _foreign(headers_of[i], selection, errors.get(i)))
        if foreign:
            log.warning(
                "study %s: %d series of other studies/patients in the input are not used: %s",
                selection.study_instance_uid,
                len(foreign),
                "; ".join(f"{f.description!r} ({f.series_instance_uid}): {f.reason}" for f in foreign),
            )
        inventory = inventory_of(chosen)
        if inventory is not None:
            _check_unreadable(selection, inventory)
        return by_role, dataclasses.replace(selection, foreign=foreign, inventory=inventory)
    if len(studies) == 1:
        raise errors[0]
    if not results:
        raise SeriesSelectionError(
            f"Series selection failed: none of the {len(studies)} studies in the input has all four series\n"
            + "\n".join(str(e) for e in errors.values())
        )
    uids = ", ".join(selection.study_instance_uid for _, selection, _ in results)
    raise SeriesSelectionError(
        f"Series selection failed: {len(results)} studies in the input each have all four series "
        f"({uids}); send one study at a time"
    )


def _foreign(
    headers: Mapping[str, Sequence[Dataset]], selection: SeriesSelection, error: SeriesSelectionError | None
) -> list[ForeignSeries]:
    """The series of another study of the input, each with why it is not used."""
    found = []
    for uid, instances in headers.items():
        header = instances[0] if instances else Dataset()
        study = str(header.get("StudyInstanceUID", "") or "")
        patient = str(header.get("PatientID", "") or "").strip()
        if patient and selection.patient_id and patient != selection.patient_id:
            whose = f"another patient (PatientID {patient!r}; the selected study's is {selection.patient_id!r})"
        else:
            whose = "another study of the same patient"
        why = f"{whose}: study {study}, not the selected study {selection.study_instance_uid}"
        if error is not None:
            why += f" (that study is incomplete: {error.reason.removeprefix('series selection: ')})"
        number = to_int(header.get("SeriesNumber"), -1)
        description = str(header.get("SeriesDescription", "") or "")
        found.append(
            ForeignSeries(study, patient, uid, None if number < 0 else number, description, len(instances), why)
        )
    return found


def _check_unreadable(selection: SeriesSelection, inventory: StudyInventory) -> None:
    """StudyError for an unreadable file that belongs to, or may belong to, a selected series."""
    selected = {c.series_instance_uid: (role, c) for role, c in selection.choices.items()}
    for file in inventory.unreadable:
        if file.study_instance_uid and file.study_instance_uid != selection.study_instance_uid:
            continue
        where = {"accession": selection.accession_number, "folder": inventory.folder, "file": file.path}
        if file.series_instance_uid in selected:
            role, choice = selected[file.series_instance_uid]
            label = f"#{choice.series_number} {choice.description!r} ({choice.series_instance_uid})"
            raise StudyError(
                selection.study_instance_uid,
                f"unreadable file {file.path} in the {role} series {label}: {file.reason}",
                series=label,
                **where,
            )
        if not file.series_instance_uid:
            raise StudyError(
                selection.study_instance_uid,
                f"unreadable file {file.path} of unknown series may belong to a selected series "
                f"({', '.join(selected_role for selected_role, _ in selected.values())}): {file.reason}",
                **where,
            )
