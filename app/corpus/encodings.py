"""Re-encode written series as archives send them, and damage them as transfers do.

Transfer syntaxes come from the real tools: dcmtk (``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle``,
``dcmconv``) and pydicom's encoders (JPEG 2000 via pylibjpeg-openjpeg). Multi-frame objects come from
highdicom's Legacy Converted Enhanced MR converter; a true Enhanced MR Image is derived from it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    JPEG2000,
    EnhancedMRImageStorage,
    JPEG2000Lossless,
    generate_uid,
)

# name -> (tool and its options, or "pydicom:<uid>" for pydicom's encoders)
SYNTAXES: dict[str, tuple[str, ...]] = {
    "jpeg-lossless-sv1": ("dcmcjpeg", "+e1"),
    "jpeg-lossless-sv6": ("dcmcjpeg", "+el", "+sv", "6"),
    "jpeg-baseline": ("dcmcjpeg", "+eb", "+q", "95", "+rm"),
    "jpeg-extended-12bit": ("dcmcjpeg", "+ee", "+q", "95", "+rm"),
    "jpeg-ls-lossless": ("dcmcjpls", "+el"),
    "jpeg-ls-near-lossless": ("dcmcjpls", "+en", "+md", "2"),
    "rle": ("dcmcrle",),
    "deflated": ("dcmconv", "+td"),
    "big-endian": ("dcmconv", "+tb"),
    "implicit-vr": ("dcmconv", "+ti"),
    "jpeg2000-lossless": ("pydicom", JPEG2000Lossless),
    "jpeg2000-lossy": ("pydicom", JPEG2000),
}


def transcode(files: Sequence[Path], syntax: str) -> None:
    """Re-encode each file in place in the named transfer syntax (see SYNTAXES).

    Lossy JPEG keeps the modality scaling in RescaleSlope (dcmcjpeg +rm), so an 8-bit baseline
    copy of 12-bit data still means the same intensities.
    """
    tool, *options = SYNTAXES[syntax]
    for path in files:
        if tool == "pydicom":
            _pydicom_compress(path, options[0])
            continue
        temporary = path.with_name(path.name + ".tmp")
        result = subprocess.run([tool, *options, str(path), str(temporary)], capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(options)} {path.name}: {result.stderr.strip() or result.stdout}")
        temporary.replace(path)


def _pydicom_compress(path: Path, uid: str) -> None:
    dataset = pydicom.dcmread(path)
    if uid == JPEG2000:
        dataset.compress(uid, j2k_cr=[15])
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = "ISO_15444_1"
        dataset.ImageType = ["DERIVED", *list(dataset.ImageType)[1:]]
    else:
        dataset.compress(uid)
    dataset.save_as(path, enforce_file_format=True)


def to_multiframe(files: Sequence[Path], target: Path, *, enhanced: bool = False) -> Path:
    """Replace a classic single-frame MR series by one multi-frame file at ``target``.

    Legacy Converted Enhanced MR Image Storage from highdicom; with ``enhanced`` the object is
    turned into an Enhanced MR Image (SOP class, four-valued ImageType, MR Image Frame Type per
    frame), keeping the geometry and acquisition attributes in the functional groups.
    """
    datasets = sorted((pydicom.dcmread(p) for p in files), key=lambda ds: int(ds.InstanceNumber))
    first = datasets[0]
    legacy = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(entropy_srcs=[first.SeriesInstanceUID, "multiframe"]),
        series_number=int(first.SeriesNumber),
        sop_instance_uid=generate_uid(entropy_srcs=[first.SeriesInstanceUID, "multiframe", "sop"]),
        instance_number=1,
    )
    legacy.SeriesInstanceUID = first.SeriesInstanceUID  # the same series, now as one object
    if enhanced:
        _make_enhanced(legacy, first)
    for path in files:
        path.unlink()
    legacy.save_as(target, enforce_file_format=True)
    return target


def _make_enhanced(dataset: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Adapt a Legacy Converted Enhanced MR object into an Enhanced MR Image's shape."""
    dataset.SOPClassUID = EnhancedMRImageStorage
    dataset.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    image_type = [*list(source.ImageType)[:2], "NONE", "NONE"]
    dataset.ImageType = image_type
    dataset.ContentQualification = "PRODUCT"
    dataset.ResonantNucleus = "1H"
    dataset.KSpaceFiltering = "NONE"
    dataset.MagneticFieldStrength = source.get("MagneticFieldStrength", 3.0)
    dataset.ApplicableSafetyStandardAgency = "IEC"
    dataset.ImageComments = "Enhanced MR (synthetic)"
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        item = pydicom.Dataset()
        item.FrameType = image_type
        item.PixelPresentation = "MONOCHROME"
        item.VolumetricProperties = "VOLUME"
        item.VolumeBasedCalculationTechnique = "NONE"
        item.ComplexImageComponent = "MAGNITUDE"
        item.AcquisitionContrast = "UNKNOWN"
        frame.MRImageFrameTypeSequence = [item]


# --- damage -------------------------------------------------------------------------------------


def truncate_frame(path: Path, keep: float = 0.6) -> None:
    """Cut the compressed frame of an encapsulated single-frame file short (the file stays parseable)."""
    dataset = pydicom.dcmread(path)
    fragment = b"".join(generate_fragments(dataset.PixelData))
    cut = fragment[: int(len(fragment) * keep)]
    dataset.PixelData = encapsulate([cut + b"\x00" * (len(cut) % 2)])
    dataset.save_as(path)


def flip_bits(path: Path) -> None:
    """Flip bits in a compressed frame: the frame height in its JPEG SOF header and entropy-coded bytes."""
    dataset = pydicom.dcmread(path)
    frame = bytearray(b"".join(generate_fragments(dataset.PixelData)))
    for marker in (b"\xff\xc3", b"\xff\xc1", b"\xff\xc0", b"\xff\xf7"):  # lossless, extended, baseline, JPEG-LS
        at = frame.find(marker)
        if at >= 0:
            frame[at + 5] ^= 0x01  # high byte of the number of lines: the frame decodes to the wrong size
            break
    rng = np.random.default_rng(len(frame))
    for index in rng.integers(len(frame) // 2, len(frame) - 4, size=8):
        frame[int(index)] ^= 0x10
    dataset.PixelData = encapsulate([bytes(frame)])
    dataset.save_as(path)


def short_native_pixels(path: Path, missing_bytes: int = 96) -> None:
    """Native pixel data of the wrong length: a valid file whose PixelData lacks some bytes."""
    dataset = pydicom.dcmread(path)
    dataset.PixelData = dataset.PixelData[:-missing_bytes]
    dataset.save_as(path)


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """An interrupted copy: the file itself cut short."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_tree(source: Path, target: Path) -> None:
    """Copy a written study folder."""
    shutil.copytree(source, target)
