"""Load a folder of DICOM files into the SDK's DICOMStudy objects, strictly.

The SDK's DICOMDataLoaderOperator skips unreadable files with a warning, swallows parse errors
and keeps only one instance per ImagePositionPatient. For a clinical job those are silent
losses (a truncated transfer, a 4D series collapsed to 3D), so this loader reuses the SDK's
study/series model and attribute population but refuses what it cannot read: any file that
is not DICOM, or DICOM without the study/series/instance UIDs, fails the job with the file
named. DICOMDIR files are skipped. Every instance is kept; duplicates are judged later by the
volume builder and the series selector, which know the context.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from pydicom.errors import InvalidDicomError

from operators.errors import StudyError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
log = logging.getLogger(__name__)


def list_files(folder: Path) -> list[Path]:
    """All regular files below ``folder`` (recursively, hidden files excluded), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files) if not name.startswith("."))
    return found


def incompleteness(dataset: pydicom.Dataset) -> str | None:
    """Why a parsed file is not a usable instance (missing UIDs, short pixel data), or None."""
    missing = [keyword for keyword in REQUIRED_UIDS if not dataset.get(keyword)]
    if missing:
        return f"lacks {', '.join(missing)}"
    if "Rows" in dataset and "PixelData" not in dataset:
        return "lacks PixelData"
    if "PixelData" in dataset and not dataset.file_meta.TransferSyntaxUID.is_compressed:
        frames = int(dataset.get("NumberOfFrames") or 1)
        expected = dataset.Rows * dataset.Columns * frames * int(dataset.get("SamplesPerPixel") or 1)
        expected = expected * dataset.BitsAllocated // 8
        if len(dataset.PixelData) < expected:
            return f"PixelData holds {len(dataset.PixelData)} of {expected} bytes"
    return None


def read_instances(folder: Path) -> list[pydicom.Dataset]:
    """Read every DICOM instance below ``folder``; a file that is not valid DICOM is an error."""
    if not folder.is_dir():
        raise StudyError(str(folder), "input folder does not exist")
    files = list_files(folder)
    if not files:
        raise StudyError(str(folder), "input folder holds no files")
    instances = []
    for path in files:
        try:
            dataset = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError) as error:
            raise StudyError(str(folder), f"{path.name} is not a readable DICOM file ({error})") from error
        if dataset.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in dataset:
            continue
        problem = incompleteness(dataset)
        if problem:
            study = str(dataset.get("StudyInstanceUID") or folder)
            raise StudyError(study, f"{path.name} is not a complete DICOM instance ({problem}; truncated?)")
        dataset.filename = str(path)
        instances.append(dataset)
    if not instances:
        raise StudyError(str(folder), "no DICOM instances in the input folder")
    return instances


def group_studies(instances: Iterable[pydicom.Dataset], loader: Any) -> list[DICOMStudy]:
    """Group instances into SDK DICOMStudy/DICOMSeries objects (all instances kept).

    ``loader`` supplies the SDK's ``populate_study_attributes``/``populate_series_attributes``.
    """
    studies: dict[str, DICOMStudy] = {}
    series_by_uid: dict[str, DICOMSeries] = {}
    seen: set[str] = set()
    for dataset in instances:
        sop_uid = str(dataset.SOPInstanceUID)
        if sop_uid in seen:
            log.info("duplicate SOP Instance UID %s ignored (same instance received twice)", sop_uid)
            continue
        seen.add(sop_uid)
        study_uid, series_uid = str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)
        if study_uid not in studies:
            studies[study_uid] = DICOMStudy(study_uid)
            loader.populate_study_attributes(studies[study_uid], dataset)
        if series_uid not in series_by_uid:
            series_by_uid[series_uid] = DICOMSeries(series_uid)
            loader.populate_series_attributes(series_by_uid[series_uid], dataset)
            studies[study_uid].add_series(series_by_uid[series_uid])
        series_by_uid[series_uid].add_sop_instance(dataset)
    return list(studies.values())


class StrictDicomLoader(DICOMDataLoaderOperator):
    """DICOMDataLoaderOperator that fails on unreadable files and keeps every instance.

    Output ``dicom_study_list``: List[DICOMStudy], as the SDK operator.
    """

    def load_data_to_studies(self, input_path: Path) -> list[DICOMStudy]:
        studies = group_studies(read_instances(Path(input_path)), self)
        for study in studies:
            series = study.get_all_series()
            count = sum(len(s.get_sop_instances()) for s in series)
            log.info("study %s: %d series, %d instances", study.StudyInstanceUID, len(series), count)
        return studies
