"""Model folders for tests: the threshold model (tests/models/threshold) with a changed card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.support.paths import THRESHOLD_MODEL


def threshold_model_with_convention(tmp_path: Path, convention: Any, name: str = "model") -> Path:
    """A copy of the threshold model in ``tmp_path/name`` whose card declares ``convention``."""
    folder = tmp_path / name
    shutil.copytree(THRESHOLD_MODEL, folder)
    card = json.loads((folder / "metadata.json").read_text())
    card["input_convention"] = convention
    (folder / "metadata.json").write_text(json.dumps(card))
    return folder
