"""Arrange a written study as patient CDs and exports lay it out.

``dicomdir_cd`` writes a DICOMDIR media layout with pydicom's FileSet (nested folders, files without
extension); ``nested_same_names`` puts each series in its own folder with the same file names in
every folder; ``add_cd_extras`` adds what CDs carry beside the images (README, AUTORUN.INF, a viewer
program, a JPEG key image, a PDF report). Every function returns the paths (relative to the study
folder) of the non-DICOM files it added, for the report to list.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.fileset import FileSet


def dicomdir_cd(folder: Path) -> None:
    """Rewrite a flat study folder as a CD: DICOMDIR + PT000000/ST000000/SE00000n/IM00000n files."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    staging = folder.with_name(folder.name + ".cd")
    fileset = FileSet()
    fileset.ID = "PATIENT_CD"
    for path in files:
        fileset.add(pydicom.dcmread(path))
    fileset.write(staging)
    shutil.rmtree(folder)
    staging.rename(folder)


def nested_same_names(folder: Path, root: str = "EXPORT") -> None:
    """Each series in EXPORT/<patient>/<study>/SERIES_n/, files named IM0001, IM0002, ... in every folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    series: dict[str, list[tuple[int, Path]]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series.setdefault(str(ds.SeriesInstanceUID), []).append((int(ds.InstanceNumber), path))
    for number, (_uid, members) in enumerate(sorted(series.items()), start=1):
        target = folder / root / "PATIENT" / "STUDY" / f"SERIES_{number}"
        target.mkdir(parents=True)
        for index, (_instance, path) in enumerate(sorted(members), start=1):
            path.rename(target / f"IM{index:04d}")


def add_cd_extras(folder: Path) -> list[str]:
    """README.TXT, AUTORUN.INF, VIEWER/viewer.exe, KEYIMAGES/key.jpg and REPORT/report.pdf; returns their paths."""
    extras = {
        "README.TXT": b"This CD contains DICOM images. Start VIEWER\\viewer.exe to view them.\r\n",
        "AUTORUN.INF": b"[autorun]\r\nopen=VIEWER\\viewer.exe\r\nicon=VIEWER\\viewer.exe,0\r\n",
        "VIEWER/viewer.exe": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(200),
        "KEYIMAGES/key.jpg": _jpeg_bytes(),
        "REPORT/report.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    }
    for relative, data in extras.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(extras)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), color=128).save(buffer, format="JPEG")
    return buffer.getvalue()


def relative_files(folder: Path) -> list[str]:
    """Every file under folder, as POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
