"""The four structural MR roles a brain-tumour model reads, as one closed set.

``Role`` is the type and ``ROLES`` its values in the BraTS order t1n, t1c, t2w, t2f: the BraTS
contrasts of ``segmamba.contrasts`` (one definition), named for the series that fill them here;
``as_role`` checks a string.
"""

from __future__ import annotations

from segmamba.contrasts import CONTRASTS, Contrast

Role = Contrast
ROLES: tuple[Role, ...] = CONTRASTS


def as_role(value: object) -> Role:
    """``value`` as a Role; ValueError naming the allowed values when it is not one."""
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"{value!r} is not one of {ROLES}")
