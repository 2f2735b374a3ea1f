"""operators/roles.py: the closed set of roles."""

from __future__ import annotations

from typing import get_args

import pytest

from operators.roles import ROLES, Role, as_role
from operators.series_selection import ROLES as SELECTION_ROLES


def test_roles_are_the_brats_four_in_order_and_one_set() -> None:
    assert ROLES == ("t1n", "t1c", "t2w", "t2f") == get_args(Role)
    assert SELECTION_ROLES is ROLES


def test_as_role_accepts_a_role_and_refuses_anything_else() -> None:
    assert as_role("t1c") == "t1c"
    with pytest.raises(ValueError, match=r"'dwi' is not one of \('t1n', 't1c', 't2w', 't2f'\)"):
        as_role("dwi")
    with pytest.raises(ValueError):
        as_role("T1C")
