"""Choosing one series per role among the candidates, role by role.

Roles are resolved in the order t2f, t2w, t1c, t1n; a series serves at most one role. A role's
pool is the series whose description matches its rule, else (attribute evidence on) the series
matching no rule whose attributes point to it. With no t1c candidate and exactly two T1 series
for t1n and no contrast evidence, the later one is t1c (order fallback). Several candidates are
narrowed: attribute class agreeing with the role, for t1n acquired before the chosen t1c, then
the `prefer` criteria in order. Every candidate dropped is a runner-up with the reason it lost;
a tie that remains is recorded in ``ambiguous``, a role without candidates in ``missing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from operators.roles import Role
from operators.series_selection.evidence import Kind, SeriesEvidence
from operators.series_selection.preferences import acquired_before, acquisition_order, prefer, why_lost
from operators.series_selection.rules import SelectionRules
from operators.series_selection.values import format_time

RESOLUTION_ORDER: tuple[Role, ...] = ("t2f", "t2w", "t1c", "t1n")
ROLE_KIND: dict[Role, Kind] = {"t1n": "t1", "t1c": "t1", "t2w": "t2w", "t2f": "t2f"}
KIND_NAMES: dict[Kind, str] = {"t1": "T1-weighted", "t2w": "T2-weighted", "t2f": "FLAIR"}
Tier = Literal["description", "attributes", ""]


class Resolver:
    """Applies the description / attribute / order / preference policy role by role (`run`)."""

    def __init__(self, candidates: list[SeriesEvidence], rules: SelectionRules) -> None:
        self.candidates = candidates
        self.rules = rules
        self.use_attributes = rules.attributes.use
        self.chosen: dict[Role, SeriesEvidence] = {}
        self.reasons: dict[Role, str] = {}
        self.lost: dict[Role, list[tuple[SeriesEvidence, str]]] = {}
        self.missing: dict[Role, str] = {}
        self.ambiguous: dict[Role, tuple[list[SeriesEvidence], list[str]]] = {}

    def taken(self, s: SeriesEvidence) -> Role | None:
        """The role `s` was chosen for, if any."""
        return next((role for role, c in self.chosen.items() if c is s), None)

    def run(self) -> None:
        """Resolve every role; fills chosen/reasons/lost, missing and ambiguous."""
        for role in RESOLUTION_ORDER:
            if role in self.chosen:  # t1n, already set by the order fallback
                continue
            pool, tier = self._pool(role)
            if role == "t1c" and not pool and self.rules.order_fallback and self._order_fallback():
                continue
            if not pool:
                self.missing[role] = ""
                continue
            notes: list[str] = []
            pool = self._narrow(role, pool, notes)
            if len(pool) == 1:
                self._choose(role, pool[0], self._why(pool[0], role, tier) + "".join(notes))
            else:
                self.ambiguous[role] = (pool, notes)

    def _pool(self, role: Role) -> tuple[list[SeriesEvidence], Tier]:
        free = [s for s in self.candidates if self.taken(s) is None]
        by_description = [s for s in free if role in s.roles]
        if by_description:
            return by_description, "description"
        if self.use_attributes:
            by_attributes = [s for s in free if not s.roles and s.attribute_role == role]
            if by_attributes:
                return by_attributes, "attributes"
        return [], ""

    def _choose(self, role: Role, s: SeriesEvidence, reason: str) -> None:
        self.chosen[role] = s
        self.reasons[role] = reason + (f"; {s.derived_note}" if s.derived_note else "")

    def _why(self, s: SeriesEvidence, role: Role, tier: Tier) -> str:
        if tier == "description":
            reason = f"description {s.description!r} matches the {role} rule{s.role_note}"
            if s.contrast is None and s.contrast_text:  # exam-wide contrast attributes, disregarded
                reason += f"; {s.contrast_text}"
            return reason + (f"; attributes: {s.kind_text}" if s.kind_text else "")
        reason = f"description {s.description!r} matches no rule; attributes: {s.kind_text}"
        if role == "t1c":
            reason += f"; {s.contrast_text}"
        elif role == "t1n":
            reason += f"; {s.contrast_text}" if s.contrast_text else "; no contrast attributes"
        return reason

    def _order_fallback(self) -> bool:
        pool, tier = self._pool("t1n")
        if len(pool) != 2 or any(s.contrast == "post" for s in pool):
            return False
        ordered = acquisition_order(pool)
        if ordered is None:
            return False
        early, late = ordered
        self._choose(
            "t1c",
            late,
            f"{self._why(late, 't1n', tier)}; no contrast evidence in the study: the later of two T1 series "
            f"({format_time(late.time_key)}, series {late.number}) is taken as post-contrast (order fallback)",
        )
        self._choose(
            "t1n",
            early,
            f"{self._why(early, 't1n', tier)}; the earlier of two T1 series "
            f"({format_time(early.time_key)}, series {early.number}), order fallback",
        )
        return True

    def _narrow(self, role: Role, pool: list[SeriesEvidence], notes: list[str]) -> list[SeriesEvidence]:
        lost = self.lost.setdefault(role, [])
        if len(pool) > 1 and self.use_attributes:
            agree = [s for s in pool if s.kind == ROLE_KIND[role]]
            if 0 < len(agree) < len(pool):
                dropped = [s for s in pool if s not in agree]
                kind = KIND_NAMES[ROLE_KIND[role]]
                notes.append(f"; preferred over {labels(dropped)}, whose attributes do not say {kind}")
                lost.extend((s, f"its attributes do not say {kind} ({s.kind_text})") for s in dropped)
                pool = agree
        post = self.chosen.get("t1c")
        if role == "t1n" and len(pool) > 1 and post is not None:
            before = [s for s in pool if acquired_before(s, post)]
            if 0 < len(before) < len(pool):
                dropped = [s for s in pool if s not in before]
                notes.append(f"; preferred over {labels(dropped)}, acquired after the chosen t1c")
                lost.extend((s, f"acquired after the chosen t1c {post.label}") for s in dropped)
                pool = before
        for criterion in self.rules.prefer:
            if len(pool) < 2:
                break
            kept = prefer(criterion, pool)
            if len(kept) < len(pool):
                dropped = [s for s in pool if s not in kept]
                notes.append(f"; preferred over {labels(dropped)} by prefer={criterion}")
                lost.extend((s, f"prefer={criterion}: {why_lost(criterion, s, kept)}") for s in dropped)
                pool = kept
        return pool


def labels(series: Sequence[SeriesEvidence]) -> str:
    """'#3 'T2', #4 'T2 repeat'' for a list of series."""
    return ", ".join(s.label for s in series)
