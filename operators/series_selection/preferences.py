"""The `prefer` criteria that choose among several candidates for one role, and why each loser lost.

Each criterion keeps the best of a pool (or the whole pool when it cannot tell them apart):
original over reformat, 3D over 2D, thinnest slices and finest pixels (within 10%), axial,
distortion-corrected, lossless, full coverage (at least 70% of the longest extent along the
slices), latest / earliest acquisition, most slices.
"""

from __future__ import annotations

from collections.abc import Sequence

from operators.series_selection.evidence import SeriesEvidence
from operators.series_selection.rules import PreferCriterion
from operators.series_selection.values import format_time

FULL_COVERAGE = 0.7  # "full_coverage" keeps series reaching at least this share of the longest candidate's extent
SIMILAR = 1.1  # sizes within 10% count as equal for "thinnest" and "finest_in_plane"
_DISTORTION_CORRECTED = frozenset({"DIS2D", "DIS3D"})


def prefer(criterion: PreferCriterion, pool: list[SeriesEvidence]) -> list[SeriesEvidence]:
    """The candidates of ``pool`` that ``criterion`` keeps (the whole pool when it cannot tell)."""
    if criterion == "original":
        return [s for s in pool if s.derived != "reformat"] or pool
    if criterion == "full_coverage":
        extents = [extent_mm(s) for s in pool]
        if any(v is None for v in extents):
            return pool
        longest = max(extents)  # type: ignore[type-var]
        return [s for s, v in zip(pool, extents, strict=True) if v >= FULL_COVERAGE * longest]  # type: ignore[operator]
    if criterion == "3d":
        return [s for s in pool if s.acquisition_type == "3D"] or pool
    if criterion in ("thinnest", "finest_in_plane"):
        sizes = [s.slice_mm if criterion == "thinnest" else s.in_plane_mm for s in pool]
        if any(v is None for v in sizes):
            return pool
        best = min(sizes)  # type: ignore[type-var]
        return [s for s, v in zip(pool, sizes, strict=True) if v <= best * SIMILAR]  # type: ignore[operator]
    if criterion == "axial":
        return [s for s in pool if s.plane == "Axial"] or pool
    if criterion == "distortion_corrected":
        return [s for s in pool if s.distortion in _DISTORTION_CORRECTED] or pool
    if criterion == "lossless":
        return [s for s in pool if not s.lossy] or pool
    if criterion == "most_slices":
        most = max(s.n_instances for s in pool)
        return [s for s in pool if s.n_instances == most]
    ordered = acquisition_order(pool)
    if ordered is None:
        return pool
    pick = ordered[-1] if criterion == "latest" else ordered[0]
    return [s for s in pool if _order_key(s, pool) == _order_key(pick, pool)]


def why_lost(criterion: PreferCriterion, s: SeriesEvidence, kept: list[SeriesEvidence]) -> str:
    """Why ``s`` was dropped by ``criterion`` in favour of ``kept``."""
    winner = kept[0]
    if criterion == "full_coverage":
        return (f"covers {extent_mm(s):.0f} mm along its slices; {winner.label} covers "
                f"{extent_mm(winner):.0f} mm (a partial repeat or slab)")
    if criterion == "original":
        return f"{s.derived_note}; an original acquisition ({winner.label}) exists"
    if criterion == "3d":
        return f"{s.acquisition_type or 'unknown'} acquisition; {winner.label} is 3D"
    if criterion == "thinnest":
        return f"{s.slice_mm:g} mm slices; {winner.label} has {winner.slice_mm:g} mm"
    if criterion == "finest_in_plane":
        return f"{s.in_plane_mm:g} mm pixels; {winner.label} has {winner.in_plane_mm:g} mm"
    if criterion == "axial":
        return f"{(s.plane or 'unknown').lower()} plane; {winner.label} is axial"
    if criterion == "distortion_corrected":
        return (
            f"not distortion-corrected (ImageType {s.image_type or 'absent'}); {winner.label} is ({winner.distortion})"
        )
    if criterion == "lossless":
        return f"lossy-compressed ({s.lossy}); {winner.label} is not"
    if criterion == "most_slices":
        return f"{s.n_instances} instances; {winner.label} has {winner.n_instances}"
    when = f"series {s.number}, {format_time(s.time_key)}"
    if criterion == "latest":
        return f"an earlier acquisition ({when}) than the repeat {winner.label} ({format_time(winner.time_key)})"
    return f"a later acquisition ({when}) than {winner.label} ({format_time(winner.time_key)})"


def extent_mm(s: SeriesEvidence) -> float | None:
    """How far the series reaches along its slice normal (slices x slice step), or None when unknown."""
    return s.n_instances * s.slice_mm if s.slice_mm else None


def acquisition_order(pool: Sequence[SeriesEvidence]) -> list[SeriesEvidence] | None:
    """Series in acquisition order, or None when they cannot be told apart."""
    if not all(p.time_key for p in pool) and not all(p.number is not None for p in pool):
        return None
    keys = [_order_key(s, pool) for s in pool]
    if len(set(keys)) != len(keys):
        return None
    return [s for _, s in sorted(zip(keys, pool, strict=True), key=lambda pair: pair[0])]


def acquired_before(s: SeriesEvidence, other: SeriesEvidence) -> bool:
    """Whether ``s`` was acquired before ``other`` (False when the order is unknown)."""
    ordered = acquisition_order([s, other])
    return ordered is not None and ordered[0] is s


def _order_key(s: SeriesEvidence, pool: Sequence[SeriesEvidence]) -> tuple[str, int]:
    """Acquisition time when every series in `pool` has one, else SeriesNumber."""
    if all(p.time_key for p in pool):
        return (s.time_key or "", s.number or 0)
    return ("", s.number or 0)
