"""The words of a selection: every series' entry for the report's ``series_selection`` section, the
policy that was applied, and the failure message listing every series and why each candidate was
rejected (the details of a SeriesSelectionError)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from operators.roles import ROLES, Role
from operators.series_selection.evidence import SeriesEvidence
from operators.series_selection.resolver import Resolver
from operators.series_selection.results import RoleChoice, SeriesEntry
from operators.series_selection.rules import PREFER_CRITERIA, SelectionRules


def policy(rules: SelectionRules) -> dict[str, Any]:
    """The preferences and derived-image policy applied, for the report."""
    return {
        "prefer": list(rules.prefer),
        "never_used_image_types": list(rules.derived.never_usable),
        "lowest_preference_image_types": list(rules.derived.reformat),
        "derived_primary": "eligible like an original (e.g. lossy-compressed copies); lossy compression is reported",
        "derived_secondary_other": "never used (processing unknown)",
    }


def entry(s: SeriesEvidence, resolver: Resolver, choices: Mapping[Role, RoleChoice]) -> SeriesEntry:
    """The report's entry of one series: selected, runner-up, not used or ignored, and why."""
    role = resolver.taken(s)
    if role is not None:
        status, reason = "selected", choices[role].reason
    elif s.ignore_reasons:
        status, reason = "ignored", "; ".join(s.ignore_reasons)
    else:
        lost = next(((r, why) for r, pairs in resolver.lost.items() for c, why in pairs if c is s), None)
        if lost is not None:
            role, status, reason = lost[0], "runner-up", lost[1]
        else:
            status, reason = "not used", why_unused(resolver, s)
    facts = {
        "image_type": s.image_type,
        "acquisition": s.acquisition_type,
        "plane": s.plane or "",
        "slice_mm": s.slice_mm,
        "lossy": bool(s.lossy),
    }
    if s.lossy and status != "selected":
        reason += f"; lossy-compressed ({s.lossy})"
    return SeriesEntry(s.uid, s.number, s.description, s.modality, s.n_instances, status, role, reason, **facts)


def why_not(resolver: Resolver, s: SeriesEvidence, role: Role) -> str:
    """Why candidate `s` is not the series for `role`."""
    taken = resolver.taken(s)
    if taken is not None:
        return f"chosen for {taken}"
    if s.roles:
        return f"description matches the {'/'.join(s.roles)} rule{s.role_note}"
    if not resolver.use_attributes:
        return "description matches no rule (attribute evidence disabled)"
    text = f"description matches no rule; attributes: {s.kind_text}"
    if s.kind == "t1" and role == "t1c" and s.contrast != "post":
        text += f"; {s.contrast_text}" if s.contrast_text else "; no ContrastBolusAgent"
    return text


def why_unused(resolver: Resolver, s: SeriesEvidence) -> str:
    """Why a usable series that competed for no role was not used."""
    if s.roles:
        return f"description matches the {'/'.join(s.roles)} rule{s.role_note}, but that role was filled first"
    if not resolver.use_attributes:
        return "description matches no rule (attribute evidence disabled)"
    role = s.attribute_role
    if role is None:
        return f"description matches no rule; attributes: {s.kind_text}"
    return (
        f"description matches no rule; attributes say {role} ({s.kind_text}), but a series whose description "
        f"matches the {role} rule was chosen"
    )


def failure_message(study_uid: str, accession: str, infos: list[SeriesEvidence], resolver: Resolver) -> str:
    """The whole reason on the first line, then every series found and why each candidate was rejected."""
    problems = [f"no {role} series" for role in ROLES if role in resolver.missing]
    problems += [
        f"{len(tied)} series tie for {role} ({', '.join(s.full_label for s in tied)}) and no preference separates them"
        for role, (tied, _) in resolver.ambiguous.items()
    ]
    if not any(s.modality.upper() == "MR" for s in infos):
        found = sorted({s.modality or "?" for s in infos})
        problems = [f"no MR series in the study (modalities found: {', '.join(found)})"]
    lines = [
        f"Series selection failed for study {study_uid or '(no StudyInstanceUID)'} "
        f"(accession {accession or '-'}): {'; '.join(problems)}",
        f"Series found ({len(infos)}):",
    ]
    for s in infos:
        status = "ignored: " + "; ".join(s.ignore_reasons) if s.ignore_reasons else "candidate"
        lines.append(f"  {s.label} {s.modality or '?'}, {s.n_instances} instances, uid {s.uid}: {status}")
    if resolver.chosen:
        chosen = ", ".join(f"{role} = {s.label}" for role, s in resolver.chosen.items())
        lines.append(f"Chosen so far: {chosen}")
    for role in ROLES:
        if role in resolver.missing:
            lines.append(f"{role}: no candidate among {len(resolver.candidates)} usable series")
            lines.extend(f"  {s.label}: {why_not(resolver, s, role)}" for s in resolver.candidates)
        elif role in resolver.ambiguous:
            tied, notes = resolver.ambiguous[role]
            lines.append(f"{role}: {len(tied)} candidates tie{''.join(notes)}")
            lines.extend(f"  {s.label}: {s.details()}; {why_not(resolver, s, role)}" for s in tied)
            lines.append(
                f'  set "prefer" in the rules ({", ".join(PREFER_CRITERIA)}) to choose among them automatically'
                if not resolver.rules.prefer
                else f"  prefer={list(resolver.rules.prefer)} did not separate them"
            )
    return "\n".join(lines)
