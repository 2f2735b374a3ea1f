"""Which role a series is a candidate for: description rules (contrast attributes overruling the
words), the acquisition-attribute class, and the study-wide readings of contrast attributes.

For T1 descriptions, attributes saying post-contrast make a t1c and a ContrastBolusStartTime after
the series makes a t1n; the reason says that the attributes won. Attributes that every candidate
carries without a ContrastBolusStartTime were entered once for the whole exam and are no evidence;
one ContrastBolusStartTime in the exam times the injection for every series. Attribute classes
(`attributes` thresholds): long-TI inversion recovery with long TE is FLAIR (t2f); long TR and TE
is t2w; short TE with short TR or a T1-range inversion (MPRAGE, T1-FLAIR) is T1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydicom import Dataset

from operators.roles import ROLES, Role
from operators.series_selection.evidence import Kind, SeriesEvidence
from operators.series_selection.matching import match_conditions
from operators.series_selection.rules import AttributeEvidence, SelectionRules
from operators.series_selection.values import as_list, format_time, to_float


def classify(series: SeriesEvidence, rules: SelectionRules) -> None:
    """Fill the description roles (contrast attributes overruling words) and the attribute class."""
    attrs = rules.attributes
    header = series.header
    roles = [role for role in ROLES if any(match_conditions(r.conditions, header) for r in rules.rules_for(role))]
    t1_role = next((r for r in roles if r in ("t1n", "t1c")), None)
    if t1_role is not None and len(set(roles) & {"t1n", "t1c"}) == 1 and series.contrast and attrs.use:
        target: Role = "t1c" if series.contrast == "post" else "t1n"
        if target != t1_role:
            if t1_role == "t1c":
                said = "says post-contrast"
            elif re.search(attrs.explicit_pre_contrast, series.description):
                said = "says pre-contrast"
            else:
                said = "has no contrast words"
            roles = [target if r == t1_role else r for r in roles]
            series.role_note = f" (matches the {t1_role} rule: the description {said}, but {series.contrast_text}:" \
                               " attributes win)"  # fmt: skip
    series.roles = tuple(roles)
    series.kind, series.kind_text = attribute_kind(header, attrs)


def attribute_kind(header: Dataset, attrs: AttributeEvidence) -> tuple[Kind | None, str]:
    """(t1 | t2w | t2f | None, the facts and the verdict) from TR, TE, TI and ScanningSequence."""
    tr, te, ti = (to_float(header.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    ti = ti or None
    sequence = {str(v).upper() for v in as_list(header.get("ScanningSequence"))}
    parts = [f"TR {tr:g} ms" if tr else "no TR", f"TE {te:g} ms" if te else "no TE"]
    if ti:
        parts.append(f"TI {ti:g} ms")
    if sequence:
        parts.append("/".join(sorted(sequence)))
    if header.get("MRAcquisitionType"):
        parts.append(str(header.get("MRAcquisitionType")))
    facts = ", ".join(parts)
    if "EP" in sequence:
        return None, f"{facts}: echo-planar (diffusion/perfusion/BOLD), unclassified"
    if tr is None or te is None:
        return None, f"{facts}: unclassified"
    flair_low, flair_high = attrs.flair_inversion_ms
    t1_low, t1_high = attrs.t1_inversion_ms
    if ti is not None and flair_low <= ti <= flair_high and te >= attrs.flair_min_echo_ms:
        return "t2f", f"{facts}: long-TI inversion recovery with long TE, FLAIR"
    if te >= attrs.t2_min_echo_ms and tr >= attrs.t2_min_repetition_ms and ti is None:
        return "t2w", f"{facts}: long TR and TE, T2-weighted"
    t1_inversion = ti is not None and t1_low <= ti <= t1_high
    if te <= attrs.t1_max_echo_ms and (tr <= attrs.t1_max_repetition_ms or t1_inversion):
        return "t1", f"{facts}: short TE with short TR or T1-range inversion, T1-weighted"
    return None, f"{facts}: fits none of T1, T2, FLAIR"


def discount_exam_wide_contrast(candidates: Sequence[SeriesEvidence]) -> None:
    """Contrast attributes on every candidate, none timed, were entered for the whole exam: no evidence."""
    if len(candidates) < 2 or not all(s.contrast == "post" and not s.bolus_timed for s in candidates):
        return
    for s in candidates:
        s.contrast = None
        s.contrast_text = f"{s.contrast_text.removesuffix(' says post-contrast')} on every series, untimed: no evidence"


def apply_exam_bolus_time(candidates: Sequence[SeriesEvidence]) -> None:
    """One ContrastBolusStartTime in the exam times the injection for every series: a series without
    contrast attributes is pre-contrast when acquired before it, post-contrast when after."""
    timed = [s for s in candidates if s.bolus_timed]
    starts = {s.bolus for s in timed if s.bolus is not None}
    if len(starts) != 1:
        return
    bolus = starts.pop()
    shown, source = format_time("00000000" + bolus), timed[0].label
    for s in candidates:
        if s.contrast is not None or s.bolus_timed or not s.time_key:
            continue
        before = s.time_key[8:] < bolus
        s.contrast = "pre" if before else "post"
        s.contrast_text = (f"acquired at {format_time(s.time_key)}, {'before' if before else 'after'} the exam's "
                           f"ContrastBolusStartTime {shown} (series {source}): {s.contrast}-contrast")
