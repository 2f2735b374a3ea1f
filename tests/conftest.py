"""Shared fixtures. Project imports stay inside fixtures (but for the label table) so one broken layer
fails only its tests."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from operators.label_codes import coded_label
from segmamba.card import BRATS_LABELS

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/integration/ (the node, the CLI and the viewer with real peers) carry the
    ``integration`` marker: ``pytest -m "not integration"`` runs the unit tests alone."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def root_logging_restored() -> Any:
    """The root logger's handlers and level as they were before the test: a CLI test configures logging
    onto the stderr pytest captured for it, and must not leave later tests writing to that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):  # a copy: removeHandler changes root.handlers
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


# BraTS label meanings with their DICOM codes, as the loaded model card gives them.
BRATS_SEGMENTS = [coded_label(label).to_dict() for label in BRATS_LABELS]

# ---------------------------------------------------------------------------------------------
# Synthetic DICOM study with a known lesion (geometry path: phantom, study, volume, SEG).
# ---------------------------------------------------------------------------------------------

# FLAIR series in each orientation, each with its own resolution and field of view.
FLAIR_BY_ORIENTATION = {
    "axial": "T2W_FLAIR_AX",
    "sagittal": "T2W_FLAIR_SAG",
    "coronal": "T2W_FLAIR_COR",
    "oblique": "T2W_FLAIR",
}
REFERENCE_DESCRIPTION = "AX T1 POST GAD"


@pytest.fixture(scope="session")
def phantom() -> Any:
    """Head off the scanner origin with a lesion in the right-posterior-superior brain."""
    from segmamba.synthetic import Lesion, Phantom

    return Phantom(center=(3.0, -12.0, 18.0), lesion=Lesion(center=(-28.0, 5.0, 40.0), radius=24.0, seed=7))


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory, phantom: Any) -> Any:
    """A written study: T1 sag 3D, T1c ax (anisotropic pixels), T2 cor, FLAIR in four
    orientations, a localizer and DWI; shuffled write order, opaque file names."""
    from app.synthetic_study import SeriesSpec, write_study

    specs = [
        SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", rows=112, columns=120, slices=60,
                   pixel_spacing=(1.9, 1.9), slice_thickness=2.6),
        SeriesSpec("t1c", REFERENCE_DESCRIPTION, "axial", rows=120, columns=104, slices=48,
                   pixel_spacing=(1.8, 1.6), slice_thickness=3.0, center=(3.0, -14.0, 22.0)),
        SeriesSpec("t2w", "Ax T2 FSE", "coronal", rows=96, columns=100, slices=52,
                   pixel_spacing=(2.0, 2.0), slice_thickness=3.5, slice_spacing=4.0),
        SeriesSpec("t2f", FLAIR_BY_ORIENTATION["oblique"], "axial", tilt_deg=(14.0, -6.0, 9.0), rows=112,
                   columns=112, slices=44, pixel_spacing=(1.9, 1.9), slice_thickness=2.8),
        SeriesSpec("t2f", FLAIR_BY_ORIENTATION["axial"], "axial", rows=100, columns=96, slices=40,
                   pixel_spacing=(2.2, 2.1), slice_thickness=3.0, slice_spacing=3.3),
        SeriesSpec("t2f", FLAIR_BY_ORIENTATION["sagittal"], "sagittal", rows=96, columns=104, slices=56,
                   pixel_spacing=(2.0, 2.1), slice_thickness=2.5),
        SeriesSpec("t2f", FLAIR_BY_ORIENTATION["coronal"], "coronal", rows=88, columns=80, slices=64,
                   pixel_spacing=(2.3, 2.2), slice_thickness=2.0, center=(5.0, -10.0, 25.0)),
        SeriesSpec("t1n", "localizer", kind="localizer", rows=64, columns=64, pixel_spacing=(4.0, 4.0),
                   slice_thickness=8.0),
        SeriesSpec("t2w", "ep2d_diff_3scan_trace_p2", kind="dwi", rows=48, columns=48, slices=20,
                   pixel_spacing=(4.5, 4.5), slice_thickness=5.0),
    ]
    out = tmp_path_factory.mktemp("study")
    return write_study(out, phantom, specs, seed=11, shuffle_files=True, opaque_names=True)


@pytest.fixture(scope="session")
def study_series(study: Any) -> dict[str, list[Any]]:
    """The study's instances read back from disk, grouped by SeriesDescription."""
    import pydicom

    groups: dict[str, list[Any]] = {}
    for path in sorted(study.series[0].files[0].parent.iterdir()):
        dataset = pydicom.dcmread(path)
        groups.setdefault(str(dataset.SeriesDescription), []).append(dataset)
    return groups


@pytest.fixture(scope="session")
def brats_segments() -> list[Any]:
    """BraTS 2023 label meanings as a model card would give them."""
    from operators.seg_writer import SegmentSpec

    return [SegmentSpec.from_dict(entry) for entry in BRATS_SEGMENTS]


@pytest.fixture(scope="session")
def dciodvfy_errors() -> Callable[[Path], list[str]]:
    """Run dicom3tools' dciodvfy on a file and return its "Error" lines (fails if not installed)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is not installed; run tools/setup --dev")

    def run(path: Path) -> list[str]:
        result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return run


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small valid four-sequence study (48x48x24 series, flat folder); copy it before changing it."""
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Lesion, Phantom

    small = dict(rows=48, columns=48, slices=24, pixel_spacing=(4.0, 4.0), slice_thickness=6.0)
    specs = [
        SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", **small),
        SeriesSpec("t1c", "AX T1 POST GAD", "axial", **small),
        SeriesSpec("t2w", "Ax T2 FSE", "axial", **small),
        SeriesSpec("t2f", "Ax T2 FLAIR", "axial", **small),
    ]
    phantom = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
    return write_study(tmp_path_factory.mktemp("small-study"), phantom, specs, seed=9)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (TLS tests of the node)."""
    folder = tmp_path_factory.mktemp("tls")
    binary = shutil.which("openssl")
    assert binary, "openssl is not installed"
    subprocess.run([binary, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True, timeout=60)
    return folder / "cert.pem", folder / "key.pem"
