"""Where the repository and the test data are, for tests at any depth of the tree."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
THRESHOLD_MODEL = TESTS / "models" / "threshold"
