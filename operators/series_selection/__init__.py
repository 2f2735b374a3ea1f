"""Pick the four structural MR series of a brain-tumour study: t1n, t1c, t2w, t2f.

Input is the headers of a study's series (SeriesInstanceUID -> instances; pixel data is not
needed; an Enhanced MR file arrives split into per-frame datasets, so "instances" are frames) and
the rules (`operators/series_rules.json` by default). Output is a `SeriesSelection` (role ->
series with the reason and the runners-up, plus one entry per series of the study for the
report), or a `SeriesSelectionError` whose first line is the whole reason and whose details list
every series found and why each candidate was rejected.

Policy, in order, module by module:

1. `rules`: the policy file as a validated frozen `SelectionRules` (RulesError, a
   ConfigurationError, when malformed); `matching`: DICOMSeriesSelectorOperator's condition
   semantics on plain headers.
2. `evidence`: what each series says. Ignored, whatever the rules say: modality other than MR;
   ImageType LOCALIZER; diffusion; derived kinds that are never usable (MIP, projections,
   subtractions, phase, maps, or DERIVED\\SECONDARY that is not a reformat); 4D series; fewer
   than `min_slices` instances; then every series matching an `ignore` rule. Reformats stay
   eligible at the lowest preference; DERIVED\\PRIMARY (e.g. a lossy copy) is eligible like an
   original, and lossy compression is recorded. Geometry (slice and pixel size, plane), bolus time.
3. `classification`: a series is a candidate for a role when its description matches that
   role's `selections` rule; contrast attributes overrule T1 words; series matching no rule are
   classified from ScanningSequence, TR, TE and TI (`attributes` thresholds); exam-wide
   contrast attributes are no evidence, one exam bolus time times every series.
4. `resolver` (with `preferences`): roles in the order t2f, t2w, t1c, t1n, a series serving at
   most one; order fallback for two T1 series without contrast evidence; several candidates are
   narrowed by attribute agreement, t1n before t1c, then the `prefer` criteria (shipped: original,
   3D, thinnest, finest in-plane, axial, distortion-corrected, lossless, full coverage, latest).
   A tie that remains is an error naming the candidates.
5. `explanation`: each series' entry and the policy for the report's ``series_selection``
   section, and the failure message; `results`: the returned types.
6. `selection`: `select_series` / `classify_series` on headers; `sdk`: `select_from_studies` on
   the SDK's DICOMStudy objects (foreign series, unreadable files); `operator`:
   `DicomSeriesSelector`, the MONAI Deploy operator (the only module importing holoscan; import
   it from `operators.series_selection.operator`).
"""

from operators.roles import ROLES, Role
from operators.series_selection.matching import match_conditions
from operators.series_selection.results import (
    ForeignSeries,
    RoleChoice,
    RunnerUp,
    SeriesEntry,
    SeriesSelection,
    SeriesSelectionError,
)
from operators.series_selection.rules import (
    DEFAULT_PREFER,
    DEFAULT_RULES_PATH,
    PREFER_CRITERIA,
    RulesError,
    SelectionRules,
    load_rules,
    parse_rules,
)
from operators.series_selection.sdk import select_from_studies
from operators.series_selection.selection import classify_series, select_series

__all__ = [
    "DEFAULT_PREFER",
    "DEFAULT_RULES_PATH",
    "PREFER_CRITERIA",
    "ROLES",
    "ForeignSeries",
    "Role",
    "RoleChoice",
    "RulesError",
    "RunnerUp",
    "SelectionRules",
    "SeriesEntry",
    "SeriesSelection",
    "SeriesSelectionError",
    "classify_series",
    "load_rules",
    "match_conditions",
    "parse_rules",
    "select_from_studies",
    "select_series",
]
