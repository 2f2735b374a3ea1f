"""`python -m app demo`: out of the box, the shipped model segments a synthetic study close to its truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.support.paths import REPO


def test_demo_command_segments_the_synthetic_tumour(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "demo", "--dir", str(tmp_path), "--no-progress", "--log-level", "WARNING"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["model"]["name"] == "segmamba-demo"
    for name in ("segmentation", "report", "preview"):
        assert Path(summary[name]).is_file()
    seg = pydicom.dcmread(summary["segmentation"])
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 3
    volumes = summary["volumes"]
    assert volumes["WT"]["true_ml"] > 10.0  # the demo study always has a tumour
    for region, tolerance in (("WT", 0.2), ("TC", 0.35), ("ET", 0.35)):
        true, segmented = volumes[region]["true_ml"], volumes[region]["segmented_ml"]
        assert abs(segmented - true) <= tolerance * true, (region, segmented, true)
