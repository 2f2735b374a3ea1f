"""Load a folder of DICOM files (a scanner export, a PACS export, a patient CD) into SDK DICOMStudy objects.

The SDK's DICOMDataLoaderOperator skips unreadable files with a warning, swallows parse errors
and keeps only one instance per ImagePositionPatient. For a clinical job those are silent
losses, so this loader reuses the SDK's study/series model and attribute population but keeps
a record of every file it did not load, in a `StudyInventory` attached to each study:

- not DICOM (no DICM preamble and no plausible DICOM data set: README, AUTORUN.INF, viewer
  programs, JPEG/PDF/HTML copies) and DICOMDIR files are *skipped*;
- DICOM that cannot be used (a parse error, missing UIDs, PixelData shorter than a native
  syntax needs, functional groups that do not describe every frame) is *unreadable*, with its
  study/series UIDs when the header still tells them. The loader does not fail on it: the
  series selector fails the study when such a file belongs, or may belong, to a selected series.

Files are found recursively (DICOMDIR trees with DICOM/ subfolders, names without extension, the
same names in several folders); paths are relative to the input folder. Every instance is kept;
duplicates are judged later by the volume builder and the series selector, which know the
context. Enhanced MR and Legacy Converted Enhanced MR files are split into one dataset per
frame (operators.multiframe). The loader fails (StudyError) only when the folder holds no DICOM
instance at all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from operators.errors import StudyError
from operators.instance_check import incompleteness
from operators.multiframe import MultiframeError, is_multiframe_mr, split_frames
from operators.study_inventory import INVENTORY_ATTRIBUTE, SkippedFile, StudyInventory, UnreadableFile
from operators.volume import RELATIVE_PATH_ATTRIBUTE

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_FIRST_GROUPS = (0x0002, 0x0008)  # a data set without preamble starts with file meta or identification
log = logging.getLogger(__name__)


@dataclass
class FolderContents:
    """What one input folder holds: the instances loaded and the files that were not."""

    instances: list[pydicom.Dataset] = field(default_factory=list)
    inventory: StudyInventory = field(default_factory=lambda: StudyInventory(folder=""))


def list_files(folder: Path) -> list[Path]:
    """All regular files below ``folder`` (recursively, hidden files excluded), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files) if not name.startswith("."))
    return found


def read_folder(folder: Path) -> FolderContents:
    """Read every file below ``folder``: instances, and an inventory of the files not loaded.

    Raises StudyError (naming the folder) when it does not exist, holds no files, or holds no
    DICOM instance.
    """
    if not folder.is_dir():
        raise StudyError(str(folder), "input folder does not exist")
    files = list_files(folder)
    if not files:
        raise StudyError(str(folder), "input folder holds no files")
    contents = FolderContents(inventory=StudyInventory(folder=str(folder)))
    for path in files:
        _read_file(path, path.relative_to(folder).as_posix(), contents)
    inventory = contents.inventory
    if not contents.instances:
        raise StudyError(str(folder), f"no DICOM instances in the input folder ({_summary(inventory)})")
    if inventory.skipped:
        log.info("%d file(s) skipped (not DICOM or DICOMDIR), e.g. %s", len(inventory.skipped),
                 ", ".join(f.path for f in inventory.skipped[:5]))
    for unreadable in inventory.unreadable:
        log.warning("unreadable DICOM file %s: %s", unreadable.path, unreadable.reason)
    return contents


def read_instances(folder: Path) -> list[pydicom.Dataset]:
    """The DICOM instances below ``folder`` (see read_folder; files not loaded are dropped)."""
    return read_folder(folder).instances


def _read_file(path: Path, relative: str, contents: FolderContents) -> None:
    """Add the file's instance(s) to ``contents``, or record why it was not loaded."""
    inventory = contents.inventory
    preamble = _has_preamble(path)
    if not preamble and not _looks_like_dataset(path):
        empty = path.stat().st_size == 0
        reason = "not DICOM (empty file)" if empty else "not DICOM (no DICM preamble, no DICOM data set)"
        inventory.skipped.append(SkippedFile(relative, reason))
        return
    try:
        with warnings.catch_warnings():
            if not preamble:  # probing a file that may be anything: its parse warnings mean nothing yet
                warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=not preamble)
            if not preamble and not _plausible(dataset):
                inventory.skipped.append(SkippedFile(relative, "not DICOM (no DICM preamble, no DICOM identifiers)"))
                return
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, ValueError, struct.error, ...
        if not preamble:
            inventory.skipped.append(SkippedFile(relative, f"not DICOM (does not parse: {_reason(error)})"))
            return
        inventory.unreadable.append(_unreadable(path, relative, f"does not parse ({_reason(error)}; truncated?)"))
        return
    if dataset.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in dataset:
        inventory.skipped.append(SkippedFile(relative, "DICOMDIR (media directory; the files are read directly)"))
        return
    if not preamble:
        _set_transfer_syntax(dataset)
    problem = incompleteness(dataset)
    if problem:
        inventory.unreadable.append(_unreadable_dataset(dataset, relative, problem.reason))
        return
    try:
        instances = split_frames(dataset) if is_multiframe_mr(dataset) else [dataset]
    except MultiframeError as error:
        inventory.unreadable.append(_unreadable_dataset(dataset, relative, f"multi-frame MR: {error}"))
        return
    for instance in instances:
        object.__setattr__(instance, RELATIVE_PATH_ATTRIBUTE, relative)
        instance.filename = str(path)
    contents.instances.extend(instances)


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _looks_like_dataset(path: Path) -> bool:
    """Whether a file without preamble starts like a DICOM data set (group 0002 or 0008, either endian)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    if len(head) < 8:
        return False
    return int.from_bytes(head[:2], "little") in _FIRST_GROUPS or int.from_bytes(head[:2], "big") in _FIRST_GROUPS


def _plausible(dataset: pydicom.Dataset) -> bool:
    """A force-parsed file is DICOM only if it names an instance with well-formed UIDs."""
    try:
        uids = [str(dataset.get(keyword) or "") for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")]
    except Exception:  # garbage parsed as elements may not even convert
        return False
    return any(uids) and all(pydicom.uid.UID(uid).is_valid for uid in uids if uid)


def _set_transfer_syntax(dataset: pydicom.Dataset) -> None:
    """A data set without file meta: record the encoding pydicom detected as its transfer syntax."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        dataset.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = dataset.original_encoding
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _unreadable(path: Path, relative: str, reason: str) -> UnreadableFile:
    """An unreadable file, with the study/series UIDs its header still tells (if any)."""
    study = series = ""
    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, force=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
        )
        study, series = str(header.get("StudyInstanceUID") or ""), str(header.get("SeriesInstanceUID") or "")
    except Exception:  # the header is damaged before the UIDs: they stay unknown
        pass
    return UnreadableFile(relative, reason, study, series)


def _unreadable_dataset(dataset: pydicom.Dataset, relative: str, reason: str) -> UnreadableFile:
    return UnreadableFile(
        relative, reason, str(dataset.get("StudyInstanceUID") or ""), str(dataset.get("SeriesInstanceUID") or "")
    )


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _summary(inventory: StudyInventory) -> str:
    parts = [f"{len(inventory.skipped)} file(s) not DICOM or DICOMDIR"]
    if inventory.unreadable:
        first = inventory.unreadable[0]
        parts.append(f"{len(inventory.unreadable)} unreadable DICOM file(s), e.g. {first.path}: {first.reason}")
    return "; ".join(parts)


def inventory_for(inventory: StudyInventory, study_uid: str) -> StudyInventory:
    """The folder's inventory as one study sees it: every skipped file, and the unreadable files
    of this study or of an unknown study."""
    unreadable = [f for f in inventory.unreadable if f.study_instance_uid in ("", study_uid)]
    return dataclasses.replace(inventory, skipped=list(inventory.skipped), unreadable=unreadable)


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
    """DICOMDataLoaderOperator that records the files it cannot load and keeps every instance.

    Output ``dicom_study_list``: List[DICOMStudy], as the SDK operator; each study carries the
    folder's StudyInventory as ``study.inventory`` (operators.study_inventory.INVENTORY_ATTRIBUTE).
    """

    def load_data_to_studies(self, input_path: Path) -> list[DICOMStudy]:
        contents = read_folder(Path(input_path))
        studies = group_studies(contents.instances, self)
        for study in studies:
            setattr(study, INVENTORY_ATTRIBUTE, inventory_for(contents.inventory, study.StudyInstanceUID))
            series = study.get_all_series()
            count = sum(len(s.get_sop_instances()) for s in series)
            log.info("study %s: %d series, %d instances", study.StudyInstanceUID, len(series), count)
        known = {study.StudyInstanceUID for study in studies}
        for unreadable in contents.inventory.unreadable:
            if unreadable.study_instance_uid and unreadable.study_instance_uid not in known:
                log.warning("unreadable file %s belongs to study %s, of which nothing was loaded",
                            unreadable.path, unreadable.study_instance_uid)
        return studies
