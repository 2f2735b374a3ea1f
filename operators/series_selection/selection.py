"""Selection for one study's headers: `select_series` (all four roles) and `classify_series` (one
series on its own)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset

from operators.roles import ROLES, Role
from operators.series_selection.classification import apply_exam_bolus_time, classify, discount_exam_wide_contrast
from operators.series_selection.evidence import SeriesEvidence, describe_series
from operators.series_selection.explanation import entry, failure_message, policy
from operators.series_selection.resolver import Resolver
from operators.series_selection.results import RoleChoice, RunnerUp, SeriesSelection, SeriesSelectionError
from operators.series_selection.rules import SelectionRules, parse_rules

Rules = SelectionRules | Mapping[str, Any] | str | Path | None


def select_series(series: Mapping[str, Sequence[Dataset]], rules: Rules = None) -> SeriesSelection:
    """Choose t1n, t1c, t2w and t2f among one study's series (see the package docstring).

    `series` maps SeriesInstanceUID -> that series' instances (headers suffice). `rules` is
    anything `parse_rules` accepts (None: the shipped defaults). Raises SeriesSelectionError when a
    role is missing or ambiguous, when the series belong to several studies, or when they belong
    to several patients in equal numbers.
    """
    config = parse_rules(rules)
    infos = [describe_series(str(uid), instances, config) for uid, instances in series.items()]
    infos.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.time_key or "", s.uid))
    studies = {str(s.header.get("StudyInstanceUID", "")) for s in infos if s.n_instances}
    if len(studies) > 1:
        raise SeriesSelectionError(
            f"Series selection failed: series from {len(studies)} studies given; select per study: {sorted(studies)}"
        )
    header = next((s.header for s in infos if s.n_instances), Dataset())
    study_uid = str(header.get("StudyInstanceUID", "") or "")
    accession = str(header.get("AccessionNumber", "") or "")
    patient = study_patient(infos, study_uid, accession)
    candidates = [s for s in infos if not s.ignore_reasons]
    discount_exam_wide_contrast(candidates)
    apply_exam_bolus_time(candidates)
    for s in candidates:
        classify(s, config)

    resolver = Resolver(candidates, config)
    resolver.run()
    if resolver.missing or resolver.ambiguous:
        raise SeriesSelectionError(
            failure_message(study_uid, accession, infos, resolver),
            study_instance_uid=study_uid,
            accession=accession,
            missing=[r for r in ROLES if r in resolver.missing],
            ambiguous={r: [s.uid for s in tied] for r, (tied, _) in resolver.ambiguous.items()},
        )
    choices: dict[Role, RoleChoice] = {}
    for role in ROLES:
        s = resolver.chosen[role]
        reason = resolver.reasons[role] + (f"; lossy-compressed ({s.lossy}), used" if s.lossy else "")
        runners = tuple(RunnerUp(r.uid, r.description, r.number, why) for r, why in resolver.lost.get(role, []))
        choices[role] = RoleChoice(s.uid, s.description, s.number, reason, runners, bool(s.lossy))
    ignored = {s.uid: "; ".join(s.ignore_reasons) for s in infos if s.ignore_reasons}
    entries = tuple(entry(s, resolver, choices) for s in infos)
    return SeriesSelection(study_uid, accession, choices, ignored, entries, patient_id=patient, policy=policy(config))


def classify_series(instances: Sequence[Dataset], rules: Rules = None) -> tuple[Role | None, str]:
    """The role one series is a candidate for on its own, and why: (role, reason) or (None, reason).

    Description evidence first, else attribute evidence, as `select_series` applies them (study-
    wide steps such as the order fallback and the preferences need the whole study).
    """
    config = parse_rules(rules)
    uid = str(instances[0].get("SeriesInstanceUID", "") or "") if instances else ""
    s = describe_series(uid, instances, config)
    if s.ignore_reasons:
        return None, "ignored: " + "; ".join(s.ignore_reasons)
    classify(s, config)
    if s.roles:
        if len(s.roles) > 1:
            return None, f"description matches the {'/'.join(s.roles)} rules"
        return s.roles[0], f"description {s.description!r} matches the {s.roles[0]} rule{s.role_note}"
    if config.attributes.use and s.attribute_role:
        extra = f"; {s.contrast_text}" if s.contrast_text else ""
        return s.attribute_role, f"description matches no rule; attributes: {s.kind_text}{extra}"
    return None, f"description matches no rule; attributes: {s.kind_text}"


def study_patient(infos: list[SeriesEvidence], study_uid: str, accession: str) -> str:
    """The study's PatientID (held by most series); series of other patients get an ignore reason."""
    counts = Counter(s.patient_id for s in infos if s.patient_id and s.n_instances)
    if not counts:
        return ""
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        holders = ", ".join(f"{pid!r}: {n} series" for pid, n in ranked)
        raise SeriesSelectionError(
            f"Series selection failed for study {study_uid or '(no StudyInstanceUID)'} (accession {accession or '-'}): "
            f"the study holds series of {len(ranked)} patients ({holders}); cannot tell whose study it is",
            study_instance_uid=study_uid,
            accession=accession,
        )
    patient = ranked[0][0]
    for s in infos:
        if s.patient_id and s.patient_id != patient:
            s.ignore_reasons.insert(0, f"another patient (PatientID {s.patient_id!r}; the study's is {patient!r})")
    return patient
