"""DICOM Structured Report, TID 1500 Measurement Report: the volumes of report.json in the study.

One Volumetric ROI measurement group (TID 1411) per label, referencing its segment of the written
SEG (and, through it, the source series), with the label's volume in mL; one measurement group
(TID 1501) per region (BraTS WT, TC, ET), whose volume is the sum of its labels, with the SEG as
its source. Every group carries the algorithm identification; the observer is the device (this
application). The values are report.json's, unchanged. Comprehensive 3D SR, a new series in the
SEG's study; its evidence is the SEG and the reference series.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from operators.atomic_files import save_atomically
from operators.multiframe import seg_source_images
from operators.results import StagedOutputOperator, StagedResults
from operators.seg_header import clean_source_header

SR_NAME = "measurement-report.dcm"
SERIES_NUMBER = 9001
MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
MR_OF_HEAD = hd.sr.CodedConcept("241601008", "SCT", "MR of head")
NEOPLASM = hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
REGION_NAMES = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
MANUFACTURER = "SegMamba node"


def write_measurement_report(
    seg: pydicom.Dataset, report: Mapping[str, Any], reference_datasets: Sequence[pydicom.Dataset],
    algorithm_name: str, algorithm_version: str, output_path: Path,
) -> pydicom.Dataset:
    """Encode report.json's label and region volumes as a TID 1500 SR referencing ``seg``; write it."""
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    by_number = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    groups: list[Any] = []
    for name, entry in report["labels"].items():
        if name not in numbers:
            raise ValueError(f"the SEG has no segment labelled {name!r}: its segments are {sorted(numbers)}")
        segment = by_number[numbers[name]]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} (label {entry['label']})"),
            referenced_segment=_referenced_segment(seg, numbers[name]),
            finding_type=_coded(segment.SegmentedPropertyTypeCodeSequence[0]),
            finding_category=_coded(segment.SegmentedPropertyCategoryCodeSequence[0]),
            algorithm_id=algorithm,
            measurements=[_volume(entry["volume_ml"], algorithm)],
        ))
    seg_reference = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=seg.SOPClassUID, referenced_sop_instance_uid=seg.SOPInstanceUID)
    for region, entry in report["regions"].items():
        labels = ", ".join(str(v) for v in entry["labels"])
        title = REGION_NAMES.get(region, region)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                         identifier=f"{region} {title} (labels {labels})"),
            finding_type=NEOPLASM,
            algorithm_id=algorithm,
            measurements=[_volume(entry["volume_ml"], algorithm)],
            source_images=[seg_reference],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[MANUFACTURER, algorithm_name, algorithm_version]),
            name=algorithm_name, manufacturer_name=MANUFACTURER, model_name=algorithm_name,
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_OF_HEAD,
        imaging_measurements=groups,
    )
    sources, _ = seg_source_images(list(reference_datasets), np.zeros((len(reference_datasets), 1, 1)))
    now = datetime.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *(clean_source_header(ds) for ds in sources)],
        content=content[0],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"{algorithm_name} tumour volumes",
        series_date=now.date(),
        series_time=now.time(),
    )
    if "SpecificCharacterSet" in seg:
        sr.SpecificCharacterSet = seg.SpecificCharacterSet
    save_atomically(sr, output_path)
    return sr


def _referenced_segment(seg: pydicom.Dataset, number: int) -> hd.sr.ReferencedSegment:
    """The segment of ``seg``, with its source series; an empty segment (no frames) by its source series only."""
    try:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    except (ValueError, AttributeError):
        source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                       segment_number=number, source_series=hd.sr.SourceSeriesForSegmentation(
                                           source_series))


def _volume(millilitres: float, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=codes.SCT.Volume, value=float(millilitres), unit=MILLILITRE, algorithm_id=algorithm)


def _coded(item: pydicom.Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


class MeasurementReportOperator(StagedOutputOperator):
    """Adds the TID 1500 SR of the staged report's volumes (``measurement-report.dcm``)."""

    def add_output(self, staged: StagedResults) -> None:
        seg = pydicom.dcmread(staged.segmentation_path)
        path = staged.staging / SR_NAME
        write_measurement_report(seg, staged.report, staged.reference_datasets, staged.card.name,
                                 staged.card.version, path)
        staged.add("sr", [path])
