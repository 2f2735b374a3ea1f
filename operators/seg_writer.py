"""Label map -> DICOM Segmentation (highdicom, FRACTIONAL 8-bit with values 0/255) referencing one source series.

The label map lies on the reference series' voxel grid in the convention of operators.volume
([i, j, k], k ascending along the slice normal). Segment number n (1-based) is the n-th
`SegmentSpec`; its label value is mapped to it, so label values need not be 1..n.

Frames: empty frames are omitted. If no voxel carries a label at all, the SEG keeps every frame
(all zero) of every segment: highdicom cannot omit all frames, and a complete empty SEG states
"searched, nothing found" to viewers and downstream systems. Every segment of `segments` is
declared in SegmentSequence even when it has no voxels.

Encoding: FRACTIONAL, OCCUPANCY, 8 bits, MaximumFractionalValue 255, every pixel 0 or 255 (a binary
mask stored one byte per pixel). A BINARY (1-bit) SEG whose frames are not a whole number of bytes
(Rows x Columns not a multiple of 8) never displays in OHIF 3.13 over Orthanc 1.10 DICOMweb: Orthanc
answers 400 for every frame. One byte per pixel is served for any matrix; OHIF reads a FRACTIONAL SEG
holding only 0 and the maximum as binary. The LABELMAP type (Label Map Segmentation Storage) is not
known to the dicom3tools validator. See docs/architecture.md ("SEG encoding").
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from operators.atomic_files import save_atomically
from operators.multiframe import seg_source_images
from operators.seg_header import character_set_for, clean_source_header, header_texts
from operators.volume import sort_slices

ABNORMAL_STRUCTURE = ("SCT", "49755003", "Morphologically abnormal structure")
MAX_FRACTIONAL_VALUE = 255  # a pixel inside a segment; 0 outside
CONTENT_LABEL = "SEGMAMBA"
CONTENT_CREATOR = "SegMamba^Node"


@dataclass(frozen=True)
class SegmentSpec:
    """One label value of the model's output and how it is described in the SEG.

    Codes are (coding scheme designator, code value, code meaning); colour is sRGB 0-255.
    """

    label: int
    name: str
    property_type: tuple[str, str, str]
    color_rgb: tuple[int, int, int]
    property_category: tuple[str, str, str] = ABNORMAL_STRUCTURE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentSpec:
        """From a model-card entry: {"label": 1, "name": "...", "type": {"scheme": "SCT",
        "value": "6574001", "meaning": "Necrosis"}, "color": [r, g, b]} and optionally
        "category" (same form as "type"; default SCT 49755003)."""

        def code(entry: Mapping[str, Any]) -> tuple[str, str, str]:
            return (str(entry["scheme"]), str(entry["value"]), str(entry["meaning"]))

        color = tuple(int(c) for c in data["color"])
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"segment {data.get('name')!r}: color must be three values 0-255")
        return cls(
            label=int(data["label"]),
            name=str(data["name"]),
            property_type=code(data["type"]),
            color_rgb=color,  # type: ignore[arg-type]
            property_category=code(data["category"]) if "category" in data else ABNORMAL_STRUCTURE,
        )


def write_segmentation(
    labels: np.ndarray,
    reference_datasets: Sequence[pydicom.Dataset],
    segments: Sequence[SegmentSpec],
    algorithm_name: str,
    algorithm_version: str,
    output_path: Path,
    *,
    series_description: str = "Tumour segmentation",
    series_number: int = 9000,
    manufacturer: str = "SegMamba node",
    manufacturer_model_name: str = "SegMamba",
    device_serial_number: str = "0",
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Encode `labels` as a SEG (FRACTIONAL 0/255, see the module docstring) of the reference series and write it
    atomically.

    The SEG joins the reference study as a new series; its source images are the reference
    instances, whose headers are inherited through repaired copies (operators.seg_header: missing
    Type 2 attributes empty, values that break their VR cleaned, the character set kept when it
    encodes every text, else UTF-8). SeriesDate/Time and ContentDate/Time are the time of writing;
    ContentLabel, ContentDescription (the series description), ContentCreatorName and BodyPartExamined
    (the reference's, when it has one) are set for PACS worklists.
    Raises ValueError if the label map's shape differs from the reference grid or
    it holds values not described by `segments`.
    """
    ordered = sort_slices(list(reference_datasets))
    expected = (int(ordered[0].Columns), int(ordered[0].Rows), len(ordered))
    if labels.shape != expected:
        raise ValueError(f"label map shape {labels.shape} differs from the reference grid {expected}")
    segment_numbers = _segment_numbers(labels, segments)
    frames = np.ascontiguousarray(segment_numbers.transpose(2, 1, 0))
    source_images, frames = seg_source_images(ordered, frames)  # a multi-frame reference: its original instance
    sources = [clean_source_header(ds) for ds in source_images]  # repaired copies; the callers' stay as they are
    own_texts = [algorithm_name, algorithm_version, series_description, manufacturer, manufacturer_model_name,
                 device_serial_number, *(spec.name for spec in segments)]
    character_set = character_set_for(sources[0].get("SpecificCharacterSet"), [*header_texts(sources[0]), *own_texts])
    now = datetime.datetime.now()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=hd.sr.CodedConcept(*_code(spec.property_category)),
            segmented_property_type=hd.sr.CodedConcept(*_code(spec.property_type)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*spec.color_rgb),
        )
        for number, spec in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=algorithm_version,
        device_serial_number=device_serial_number,
        series_description=series_description,
        content_label=CONTENT_LABEL,
        content_description=series_description,
        content_creator_name=CONTENT_CREATOR,
        omit_empty_frames=bool(frames.any()),
        specific_character_set=None,  # set below: highdicom refuses ISO 2022 lists such as "\\ISO 2022 IR 87"
        series_date=now.date(), series_time=now.time(), content_date=now.date(), content_time=now.time(),
    )
    if character_set is not None:
        seg.SpecificCharacterSet = character_set
    if sources[0].get("BodyPartExamined"):
        seg.BodyPartExamined = sources[0].BodyPartExamined
    return save_atomically(seg, Path(output_path))


def _segment_numbers(labels: np.ndarray, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Map label values to segment numbers 1..n (uint8; 0 stays background)."""
    if not segments:
        raise ValueError("at least one segment must be described")
    values = [spec.label for spec in segments]
    if len(set(values)) != len(values) or 0 in values:
        raise ValueError(f"segment label values must be unique and non-zero: {values}")
    present = set(np.unique(labels).tolist()) - {0}
    unknown = present - set(values)
    if unknown:
        raise ValueError(f"label values {sorted(unknown)} are not described by any segment")
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        lookup[value] = number
    return lookup[labels.astype(np.int64)]


def _code(code: tuple[str, str, str]) -> tuple[str, str, str]:
    """(value, scheme, meaning) in CodedConcept's argument order."""
    scheme, value, meaning = code
    return value, scheme, meaning

