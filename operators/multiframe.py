"""Enhanced MR and Legacy Converted Enhanced MR: one multi-frame file -> per-frame classic datasets.

A multi-frame MR instance keeps geometry and acquisition attributes in the Shared and Per-Frame
Functional Groups. The series selector and the volume builder read classic single-frame
attributes, so the loader splits such a file into one dataset per frame that carries them:
ImagePositionPatient/ImageOrientationPatient/PixelSpacing/SliceThickness/SpacingBetweenSlices,
Rescale*, Window*, ImageType (from FrameType), EchoTime (EffectiveEchoTime), RepetitionTime,
FlipAngle, EchoTrainLength, InversionTime, ScanningSequence (from EchoPulseSequence and
InversionRecovery), SequenceName (from PulseSequenceName), ContrastBolusAgent (also from its
code sequences, when the frame says it was administered), TemporalPositionIdentifier
(TemporalPositionIndex), AcquisitionDateTime, and the Legacy Converted "unassigned" attributes.
InstanceNumber is the frame number and every frame gets its own SOPInstanceUID, derived from the
original's, so nothing that keys on it collapses frames.

Pixels stay in the original dataset and are decoded per frame when the volume is built
(`frame_source` tells the original and the frame number); the SEG writer uses
`seg_source_images` to reference the original multi-frame instance and its frames.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from operators.pixel_decoding import decode_frame

ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
MULTIFRAME_MR_CLASSES = frozenset({ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE})
SOURCE_ATTRIBUTE = "multiframe_source"  # frame dataset -> (original dataset, 1-based frame number)

# Top-level elements that describe all frames together and are not copied into a frame dataset.
_NOT_COPIED = frozenset({
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "NumberOfFrames", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence", "DimensionOrganizationSequence",
    "DimensionOrganizationType", "FrameIncrementPointer", "SOPInstanceUID", "InstanceNumber",
})
# (functional group sequence, attribute in its item, classic keyword it becomes)
_MACRO_ATTRIBUTES = (
    ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
    ("PixelMeasuresSequence", "SpacingBetweenSlices", "SpacingBetweenSlices"),
    ("PixelValueTransformationSequence", "RescaleIntercept", "RescaleIntercept"),
    ("PixelValueTransformationSequence", "RescaleSlope", "RescaleSlope"),
    ("PixelValueTransformationSequence", "RescaleType", "RescaleType"),
    ("FrameVOILUTSequence", "WindowCenter", "WindowCenter"),
    ("FrameVOILUTSequence", "WindowWidth", "WindowWidth"),
    ("MRImageFrameTypeSequence", "FrameType", "ImageType"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
    ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "RepetitionTime"),
    ("MRTimingAndRelatedParametersSequence", "FlipAngle", "FlipAngle"),
    ("MRTimingAndRelatedParametersSequence", "EchoTrainLength", "EchoTrainLength"),
    ("MRModifierSequence", "InversionTimes", "InversionTime"),
    ("FrameContentSequence", "TemporalPositionIndex", "TemporalPositionIdentifier"),
    ("FrameContentSequence", "FrameAcquisitionDateTime", "AcquisitionDateTime"),
    ("FrameContentSequence", "StackID", "StackID"),
    ("FrameContentSequence", "InStackPositionNumber", "InStackPositionNumber"),
)
_UNASSIGNED = ("UnassignedSharedConvertedAttributesSequence", "UnassignedPerFrameConvertedAttributesSequence")
_ECHO_PULSE_SEQUENCE = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}


class MultiframeError(ValueError):
    """A multi-frame MR instance whose functional groups do not describe every frame."""


def is_multiframe_mr(dataset: Dataset) -> bool:
    """Whether the loader splits this instance into frames (Enhanced / Legacy Converted Enhanced MR)."""
    return str(dataset.get("SOPClassUID", "")) in MULTIFRAME_MR_CLASSES


def frame_source(dataset: Dataset) -> tuple[Dataset, int] | None:
    """The original multi-frame dataset and the 1-based frame number of a frame dataset, else None."""
    return getattr(dataset, SOURCE_ATTRIBUTE, None)


def split_frames(dataset: Dataset) -> list[Dataset]:
    """One classic dataset per frame of an Enhanced / Legacy Converted Enhanced MR instance.

    Raises MultiframeError when NumberOfFrames and the per-frame functional groups disagree.
    """
    frames = int(dataset.get("NumberOfFrames") or 1)
    shared = _first_item(dataset, "SharedFunctionalGroupsSequence") or Dataset()
    per_frame = list(dataset.get("PerFrameFunctionalGroupsSequence") or [])
    if len(per_frame) != frames:
        raise MultiframeError(
            f"NumberOfFrames is {frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} items"
        )
    common = Dataset()
    for element in dataset:
        if element.keyword not in _NOT_COPIED and element.tag.group != 0x7FE0:
            common.add(element)
    return [_frame_dataset(dataset, common, shared, item, number) for number, item in enumerate(per_frame, 1)]


def decode_instance(dataset: Dataset) -> np.ndarray:
    """Stored values ([row, column]) of a single-frame instance or of one frame dataset, checked strictly."""
    source = frame_source(dataset)
    if source is None:
        return decode_frame(dataset, 0)
    original, number = source
    return decode_frame(original, number - 1)


def seg_source_images(
    ordered: Sequence[Dataset], frames: np.ndarray
) -> tuple[list[Dataset], np.ndarray]:
    """Source images for highdicom's Segmentation and the SEG frames in their order.

    ``ordered`` are the reference series' datasets in slice order and ``frames`` the SEG pixel
    array in the same order. For classic instances both come back unchanged. For frames split
    from one multi-frame instance the source is that original instance, and the frames are put
    in its frame order (highdicom then references the instance and each frame number).
    """
    sources = [frame_source(ds) for ds in ordered]
    if not any(sources):
        return list(ordered), frames
    originals = {id(source[0]): source[0] for source in sources if source is not None}
    if None in sources or len(originals) != 1:
        raise ValueError("the reference series mixes multi-frame frames with other instances")
    original = next(iter(originals.values()))
    numbers = [source[1] for source in sources if source is not None]
    if sorted(numbers) != list(range(1, int(original.NumberOfFrames) + 1)):
        raise ValueError("the reference series holds only some frames of its multi-frame instance")
    order = np.argsort(numbers)
    return [original], np.ascontiguousarray(frames[order])


def _frame_dataset(original: Dataset, common: Dataset, shared: Dataset, item: Dataset, number: int) -> Dataset:
    frame = Dataset()
    for sequence in _UNASSIGNED:  # Legacy Converted: classic attributes not mapped to a macro
        for source in (_first_item(shared, sequence), _first_item(item, sequence)):
            for element in source or ():
                frame[element.tag] = copy.copy(element)
    for element in common:
        frame[element.tag] = copy.copy(element)
    for macro, attribute, keyword in _MACRO_ATTRIBUTES:
        value = _macro_value(item, shared, macro, attribute)
        if value is not None:
            setattr(frame, keyword, value)
    _scanning_sequence(frame, item, shared)
    if not frame.get("SequenceName") and frame.get("PulseSequenceName"):
        frame.SequenceName = str(frame.PulseSequenceName)[:16]
    _contrast(frame, original, item, shared)
    frame.InstanceNumber = number
    frame.SOPInstanceUID = generate_uid(entropy_srcs=[str(original.SOPInstanceUID), "frame", str(number)])
    frame.file_meta = FileMetaDataset(original.file_meta) if hasattr(original, "file_meta") else FileMetaDataset()
    frame.file_meta.MediaStorageSOPInstanceUID = frame.SOPInstanceUID
    frame.filename = getattr(original, "filename", None)
    object.__setattr__(frame, SOURCE_ATTRIBUTE, (original, number))
    return frame


def _first_item(dataset: Dataset, keyword: str) -> Dataset | None:
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _macro_value(item: Dataset, shared: Dataset, macro: str, attribute: str) -> object | None:
    """A functional-group attribute: the per-frame group wins over the shared one."""
    for group in (item, shared):
        entry = _first_item(group, macro)
        if entry is not None and entry.get(attribute) not in (None, ""):
            return entry.get(attribute)
    return None


def _scanning_sequence(frame: Dataset, item: Dataset, shared: Dataset) -> None:
    """ScanningSequence from Enhanced MR's EchoPulseSequence and InversionRecovery, if not given."""
    if frame.get("ScanningSequence"):
        return
    pulse = str(frame.get("EchoPulseSequence", "") or "").upper()
    sequence = list(_ECHO_PULSE_SEQUENCE.get(pulse, []))
    if str(_macro_value(item, shared, "MRModifierSequence", "InversionRecovery") or "").upper() == "YES":
        sequence.insert(0, "IR")
    if sequence:
        frame.ScanningSequence = sequence


def _contrast(frame: Dataset, original: Dataset, item: Dataset, shared: Dataset) -> None:
    """ContrastBolusAgent from the Enhanced Contrast/Bolus module when this frame had an agent."""
    agents = {
        int(agent.get("ContrastBolusAgentNumber") or 0): agent
        for agent in original.get("ContrastBolusAgentSequence") or []
    }
    if not agents or frame.get("ContrastBolusAgent"):
        return
    usage = item.get("ContrastBolusUsageSequence")
    if usage is None:
        usage = shared.get("ContrastBolusUsageSequence")
    if usage is None:  # no usage recorded: the module itself says the agents were used
        given = list(agents.values())
    else:
        given = [
            agents[int(entry.get("ContrastBolusAgentNumber") or 0)]
            for entry in usage
            if str(entry.get("ContrastBolusAgentAdministered", "")).upper() == "YES"
            and int(entry.get("ContrastBolusAgentNumber") or 0) in agents
        ]
    names = [str(agent.get("CodeMeaning") or "") for agent in given]
    names += [
        str(code.get("CodeMeaning") or "")
        for agent in given
        for code in agent.get("ContrastBolusIngredientCodeSequence") or []
    ]
    names = [name for name in dict.fromkeys(names) if name]
    if names:
        frame.ContrastBolusAgent = " ".join(names)[:64]
