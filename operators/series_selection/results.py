"""What series selection returns: the chosen series per role with reasons and runners-up, every
series' fate for the report, or `SeriesSelectionError` when the study does not qualify."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.errors import StudyError
from operators.roles import Role
from operators.study_inventory import StudyInventory


@dataclass(frozen=True)
class RunnerUp:
    """A candidate for a role that lost to the chosen series, and why."""

    series_instance_uid: str
    description: str
    series_number: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoleChoice:
    """The series chosen for one role, why, the candidates it beat, and whether it was lossy."""

    series_instance_uid: str
    description: str
    series_number: int | None
    reason: str
    runners_up: tuple[RunnerUp, ...] = ()
    lossy: bool = False


@dataclass(frozen=True)
class SeriesEntry:
    """One series of the study for the report: what became of it and why.

    ``status`` is "selected" (``role`` set), "runner-up" (lost the ``role`` it competed for),
    "not used" (a usable series no role needed) or "ignored" (never a candidate).
    """

    series_instance_uid: str
    series_number: int | None
    description: str
    modality: str
    instances: int
    status: str
    role: Role | None
    reason: str
    image_type: str = ""
    acquisition: str = ""
    plane: str = ""
    slice_mm: float | None = None
    lossy: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ForeignSeries:
    """A series of another study or patient in the same input, and why it was not used."""

    study_instance_uid: str
    patient_id: str
    series_instance_uid: str
    series_number: int | None
    description: str
    instances: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SeriesSelection:
    """Role -> chosen series for one study, plus every series' fate (for the report).

    ``ignored`` maps uid -> reason for the series that were never candidates; ``series`` has one
    entry per series of the study; ``foreign`` the series of other studies/patients in the same
    input; ``inventory`` the loader's record of files it did not load; ``policy`` the preferences
    and derived-image policy that were applied.
    """

    study_instance_uid: str
    accession_number: str
    choices: Mapping[Role, RoleChoice]
    ignored: Mapping[str, str] = field(default_factory=dict)
    series: tuple[SeriesEntry, ...] = ()
    foreign: tuple[ForeignSeries, ...] = ()
    inventory: StudyInventory | None = None
    patient_id: str = ""
    policy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def series_uids(self) -> dict[Role, str]:
        """Role -> SeriesInstanceUID."""
        return {role: choice.series_instance_uid for role, choice in self.choices.items()}

    @property
    def reasons(self) -> dict[Role, str]:
        """Role -> why that series was chosen."""
        return {role: choice.reason for role, choice in self.choices.items()}

    def to_dict(self) -> dict[Role, dict[str, Any]]:
        """Role -> {series_instance_uid, description, series_number, reason, lossy, runners_up} (JSON-ready)."""
        return {
            role: {
                "series_instance_uid": c.series_instance_uid,
                "description": c.description,
                "series_number": c.series_number,
                "reason": c.reason,
                "lossy": c.lossy,
                "runners_up": [r.to_dict() for r in c.runners_up],
            }
            for role, c in self.choices.items()
        }

    def describe(self) -> str:
        """Multi-line summary for logs."""
        lines = [f"Series selected for study {self.study_instance_uid} (accession {self.accession_number or '-'}):"]
        for role, c in self.choices.items():
            lines.append(f"  {role}: {c.description!r} ({c.series_instance_uid}): {c.reason}")
            lines.extend(f"    runner-up #{r.series_number} {r.description!r}: {r.reason}" for r in c.runners_up)
        lines.extend(f"  not used, {f.description!r} ({f.series_instance_uid}): {f.reason}" for f in self.foreign)
        return "\n".join(lines)


class SeriesSelectionError(StudyError, ValueError):
    """The study lacks a series for some role, or several tie (bad input).

    The first line of ``message`` is the complete reason; the rest (every series found and why
    each candidate was rejected) becomes ``details`` for the log.
    """

    def __init__(
        self,
        message: str,
        *,
        study_instance_uid: str = "",
        accession: str = "",
        missing: Sequence[Role] = (),
        ambiguous: Mapping[Role, Sequence[str]] | None = None,
    ) -> None:
        first = message.partition("\n")[0]
        reason = first.split("): ", 1)[1] if "): " in first else first.removeprefix("Series selection failed: ")
        super().__init__(
            study_instance_uid or "(no StudyInstanceUID)",
            f"series selection: {reason}",
            accession=accession,
            details=message,
        )
        self.message = message
        self.study_instance_uid = study_instance_uid
        self.missing: tuple[Role, ...] = tuple(missing)
        self.ambiguous: dict[Role, tuple[str, ...]] = {k: tuple(v) for k, v in (ambiguous or {}).items()}
