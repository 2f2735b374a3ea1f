"""The four structural MR roles a brain-tumour model reads, as one closed set.

``Role`` is the type (a Literal, so a role is the plain string JSON, DICOM and the model card
hold); ``ROLES`` its values in the BraTS order t1n, t1c, t2w, t2f; ``as_role`` checks a string.
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["t1n", "t1c", "t2w", "t2f"]
ROLES: tuple[Role, ...] = get_args(Role)


def as_role(value: object) -> Role:
    """``value`` as a Role; ValueError naming the allowed values when it is not one."""
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"{value!r} is not one of {ROLES}")
