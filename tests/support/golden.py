"""Access to the reference network's golden outputs in ../shared/golden (read directly)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

from tests.support.paths import REPO

CANDIDATES = [REPO.parent / "shared" / "golden", Path("/work/shared/golden")]


def golden_dir() -> Path:
    """The golden folder: $SEGMAMBA_GOLDEN_DIR, else ../shared/golden beside the checkout."""
    env = os.environ.get("SEGMAMBA_GOLDEN_DIR")
    for candidate in ([Path(env)] if env else []) + CANDIDATES:
        if (candidate / "golden_public.npz").is_file():
            return candidate
    raise FileNotFoundError(f"golden outputs not found; set SEGMAMBA_GOLDEN_DIR (looked in {CANDIDATES})")


def seeded() -> ModuleType:
    """The golden folder's seeded.py (weights and inputs made from names and seeds)."""
    spec = importlib.util.spec_from_file_location("golden_seeded", golden_dir() / "seeded.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a golden state_dict json, in the reference's order."""
    return {k: tuple(v) for k, v in json.loads((golden_dir() / name).read_text()).items()}
