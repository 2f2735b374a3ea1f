"""``python -m app demo``: a synthetic brain MRI study (MNI152 anatomy, known tumour), segmented end to end."""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

import numpy as np

from app.batch import run_batch
from app.config import Settings
from app.synthetic_study import SeriesSpec, truth_labels, write_study
from operators.volume import voxel_volume_ml
from segmamba.evaluate import REGIONS
from segmamba.synthetic import CaseConfig, random_template_head

log = logging.getLogger("app.demo")

# A typical clinical brain tumour protocol: 3D T1 sagittal, post-contrast T1 axial, T2 and FLAIR
# axial (2D, thicker slices), plus a localizer and a DWI series that the selector must ignore.
DEMO_PROTOCOL = (
    SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", rows=192, columns=176, slices=144,
               pixel_spacing=(1.2, 1.2), slice_thickness=1.2),
    SeriesSpec("t1c", "AX T1 POST GAD", "axial", rows=208, columns=176, slices=64,
               pixel_spacing=(1.1, 1.1), slice_thickness=3.0),
    SeriesSpec("t2w", "Ax T2 FSE", "axial", rows=192, columns=160, slices=44,
               pixel_spacing=(1.2, 1.2), slice_thickness=4.0, slice_spacing=4.4),
    SeriesSpec("t2f", "Ax T2 FLAIR", "axial", tilt_deg=(8.0, 0.0, 0.0), rows=192, columns=160, slices=48,
               pixel_spacing=(1.2, 1.2), slice_thickness=4.0),
    SeriesSpec("t1n", "3-Plane Loc", kind="localizer", rows=128, columns=128, pixel_spacing=(2.0, 2.0),
               slice_thickness=8.0),
    SeriesSpec("t2w", "Ax DWI", kind="dwi", rows=96, columns=96, slices=24, pixel_spacing=(2.4, 2.4),
               slice_thickness=5.0),
)


def run_demo(settings: Settings, seed: int) -> dict[str, Any]:
    """Write the demo study into ``settings.input``, segment it, and compare volumes with the truth."""
    head = random_template_head(seed, CaseConfig(tumour_probability=1.0, lesion_radius_mm=(18.0, 26.0)))
    if settings.input.exists():
        shutil.rmtree(settings.input)
    study = write_study(settings.input, head, list(DEMO_PROTOCOL), seed=seed, shuffle_files=True)
    log.info("wrote synthetic study %s to %s", study.study_instance_uid, settings.input)

    files, times = run_batch(settings)
    report = json.loads(files.report.read_text())
    reference = study.by_description(DEMO_PROTOCOL[1].description)
    truth = truth_labels(head, reference)
    voxel_ml = voxel_volume_ml(reference.affine)
    comparison = {
        name: {"segmented_ml": round(report["regions"][name]["volume_ml"], 1),
               "true_ml": round(float(np.isin(truth, labels).sum()) * voxel_ml, 1)}
        for name, labels in REGIONS.items() if name in report["regions"]
    }
    return {
        "study": study.study_instance_uid,
        "model": report["model"],
        "segmentation": str(files.segmentation),
        "report": str(files.report),
        "preview": str(files.preview),
        "volumes": comparison,
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }
