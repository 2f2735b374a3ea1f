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
    if "ReferencedSeriesSequence" in legacy:  # would reference the classic files this object replaces
        del legacy.ReferencedSeriesSequence
    if enhanced:
        _make_enhanced(legacy, first)
    for path in files:
        path.unlink()
    legacy.save_as(target, enforce_file_format=True)
    return target


def _item(**values: object) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _make_enhanced(dataset: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Adapt a Legacy Converted Enhanced MR object into an Enhanced MR Image.

    The acquisition attributes move from the legacy "unassigned" groups into the Enhanced MR
    functional-group macros (MR Timing and Related Parameters, MR Echo, MR Averages, ...), as an
    Enhanced MR scanner writes them; no top-level RepetitionTime/EchoTime remains.
    """
    dataset.SOPClassUID = EnhancedMRImageStorage
    dataset.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    image_type = [*list(source.ImageType)[:2], "NONE", "NONE"]
    dataset.ImageType = image_type
    inversion = "InversionTime" in source
    dataset.update(_item(
        ContentQualification="PRODUCT", ResonantNucleus="1H", KSpaceFiltering="NONE", BurnedInAnnotation="NO",
        LossyImageCompression="00", AcquisitionDuration=60.0, AcquisitionContrast="UNKNOWN",
        ComplexImageComponent="MAGNITUDE", MagneticFieldStrength=source.get("MagneticFieldStrength", 3.0),
        ApplicableSafetyStandardAgency="IEC", PulseSequenceName=str(source.get("SequenceName", "")) or "UNKNOWN",
        MRAcquisitionType=source.MRAcquisitionType, EchoPulseSequence="SPIN" if "SE" in source.ScanningSequence
        else "GRADIENT", MultipleSpinEcho="NO", MultiPlanarExcitation="NO", PhaseContrast="NO",
        TimeOfFlightContrast="NO", SteadyStatePulseSequence="NONE", EchoPlanarPulseSequence="NO",
        SaturationRecovery="NO", SpectrallySelectedSuppression="NONE", OversamplingPhase="NONE",
        GeometryOfKSpaceTraversal="RECTILINEAR", SegmentedKSpaceTraversal="SINGLE", NumberOfKSpaceTrajectories=1,
        RectilinearPhaseEncodeReordering="LINEAR",
    ))
    shared = dataset.SharedFunctionalGroupsSequence[0]
    shared.MRImageFrameTypeSequence = [_item(
        FrameType=image_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE", AcquisitionContrast="UNKNOWN")]
    shared.MRTimingAndRelatedParametersSequence = [_item(
        RepetitionTime=source.RepetitionTime, FlipAngle=source.FlipAngle, EchoTrainLength=source.EchoTrainLength,
        RFEchoTrainLength=source.EchoTrainLength, GradientEchoTrainLength=0,
        OperatingModeSequence=[_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")],
        SpecificAbsorptionRateSequence=[_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                              SpecificAbsorptionRateValue=0.5)],
        GradientOutputType="DB_DT", GradientOutput=1.0)]
    shared.MREchoSequence = [_item(EffectiveEchoTime=source.EchoTime)]
    shared.MRAveragesSequence = [_item(NumberOfAverages=source.get("NumberOfAverages", 1))]
    shared.MRModifierSequence = [_item(
        InversionRecovery="YES" if inversion else "NO", FlowCompensation="NONE", Spoiling="NONE",
        T2Preparation="NO", SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
        PartialFourier="NO", ParallelAcquisition="NO", **({"InversionTimes": [source.InversionTime]} if inversion
                                                          else {}))]
    shared.MRImagingModifierSequence = [_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE", TransmitterFrequency=123.2,
        PixelBandwidth=source.get("PixelBandwidth", 200))]
    shared.MRReceiveCoilSequence = [_item(
        ReceiveCoilName="HEAD 32", ReceiveCoilType="MULTICOIL", QuadratureReceiveCoil="NO",
        ReceiveCoilManufacturerName=source.Manufacturer,
        MultiCoilDefinitionSequence=[_item(MultiCoilElementName="H1", MultiCoilElementUsed="YES")])]
    shared.MRTransmitCoilSequence = [_item(TransmitCoilName="BODY", TransmitCoilType="BODY",
                                           TransmitCoilManufacturerName=source.Manufacturer)]
    shared.MRFOVGeometrySequence = [_item(
        InPlanePhaseEncodingDirection=source.get("InPlanePhaseEncodingDirection", "ROW"),
        MRAcquisitionFrequencyEncodingSteps=int(source.Columns),
        MRAcquisitionPhaseEncodingStepsInPlane=int(source.Rows),
        PercentSampling=100.0, PercentPhaseFieldOfView=100.0)]
    if "UnassignedSharedConvertedAttributesSequence" in shared:
        del shared.UnassignedSharedConvertedAttributesSequence
    stamp = f"{source.AcquisitionDate}{source.AcquisitionTime}"
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        for keyword in ("MRImageFrameTypeSequence", "UnassignedPerFrameConvertedAttributesSequence"):
            if keyword in frame:
                delattr(frame, keyword)
        content = frame.FrameContentSequence[0]
        content.FrameAcquisitionDuration = 1000.0
        content.FrameReferenceDateTime = stamp
        content.FrameAcquisitionDateTime = stamp


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
