"""Encode a synthetic phantom as a DICOM MR study (one file per slice, MR Image Storage).

One study (shared patient, study and frame-of-reference UIDs) gets one series per `SeriesSpec`:
a 2D/3D acquisition of one contrast in any orientation, resolution and field of view, plus the
distractors real studies carry (a 3-plane localizer, a DWI series with two b-values).
Everything (UIDs, noise, file names, write order) is deterministic from the seed.

A spec can also carry what real scanners and archives write: the vendor (Manufacturer, model,
software, the vendor's ImageType values), ProtocolName/SequenceName, DERIVED ImageTypes (reformats,
lossy copies with LossyImageCompression 01), contrast-bolus attributes (or none), ImagesInAcquisition,
acquisition times and numbers (repeats), Type 2 attributes left out, values that break their VR, and
membership of another study or patient (a prior, or a foreign series). Non-ASCII patient names are
written in the study's SpecificCharacterSet.

Geometry follows the project convention: a series grid is (shape, affine) with shape =
(Columns, Rows, slices), indexed [i, j, k], and affine mapping (i, j, k, 1) to patient LPS mm.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.spatial.transform import Rotation

from segmamba.synthetic import Phantom
from segmamba.synthetic.phantom import grid_points

SeriesKind = Literal["image", "localizer", "dwi"]
OtherStudy = Literal["", "prior", "patient"]


@dataclass(frozen=True)
class Vendor:
    """Equipment attributes of one scanner make, and the ImageType it writes on original images."""

    manufacturer: str
    model: str
    software: str
    image_type: tuple[str, ...]
    station: str = "MR01"


SIEMENS = Vendor("SIEMENS", "Prisma_fit", "syngo MR XA30", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), "MRC40123")
GE = Vendor("GE MEDICAL SYSTEMS", "SIGNA Premier", "30\\LX\\MR Software release:RX30.1_R02",
            ("ORIGINAL", "PRIMARY", "OTHER"), "GEMR3T")
PHILIPS = Vendor("Philips Medical Systems", "Ingenia Elition X", "5.7.1\\5.7.1.2",
                 ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"), "PHMR1")
VENDORS: dict[str, Vendor] = {"siemens": SIEMENS, "ge": GE, "philips": PHILIPS}

# Base frames: columns are the row direction, the column direction and the slice normal (LPS).
_BASE_FRAMES: dict[str, np.ndarray] = {
    "axial": np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T,
    "sagittal": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]).T,
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T,
}

_SIGNAL_SCALE = 1000.0
_MAX_STORED = 4095  # 12 bits stored


@dataclass(frozen=True)
class _Acquisition:
    scanning_sequence: str
    sequence_variant: str
    scan_options: str
    acquisition_type: str
    repetition_time: float
    echo_time: float
    flip_angle: float
    echo_train_length: int
    inversion_time: float | None = None
    sequence_name: str = ""


_ACQUISITIONS: dict[str, _Acquisition] = {
    "t1n": _Acquisition("GR\\IR", "SK\\SP\\MP", "IR", "3D", 2300.0, 2.98, 9.0, 1, 900.0, "*tfl3d1_16ns"),
    "t1c": _Acquisition("SE", "SK\\SP", "", "2D", 500.0, 10.0, 90.0, 3, None, "*se2d1"),
    "t2w": _Acquisition("SE", "SK\\SP", "FC", "2D", 4000.0, 100.0, 90.0, 16, None, "*tse2d1_16"),
    "t2f": _Acquisition("SE\\IR", "SK\\SP\\MP", "IR", "2D", 9000.0, 120.0, 150.0, 20, 2500.0, "*tir2d1_20"),
    "dwi": _Acquisition("EP", "SK\\SP", "FS", "2D", 5200.0, 89.0, 90.0, 1, None, "*ep_b1000t"),
    # alternatives a spec can name with `acquisition`
    "t1_3d": _Acquisition("GR\\IR", "SK\\SP\\MP", "IR", "3D", 2300.0, 2.98, 9.0, 1, 900.0, "*tfl3d1_16ns"),
    "t1_2d": _Acquisition("SE", "SK\\SP", "", "2D", 500.0, 10.0, 90.0, 3, None, "*se2d1"),
    "t2_3d": _Acquisition("SE", "SK\\SP\\OSP", "", "3D", 3200.0, 409.0, 120.0, 258, None, "*spc_314ns"),
    "flair_3d": _Acquisition("SE\\IR", "SK\\SP\\MP\\OSP", "IR", "3D", 5000.0, 387.0, 120.0, 251, 1800.0,
                             "*spcir_278ns"),
}
_BOLUS_DEFAULT = "auto"


@dataclass(frozen=True)
class SeriesSpec:
    """One series to write. pixel_spacing is DICOM order (between rows, between columns), mm.

    orientation names a base frame; tilt_deg rotates it about the LPS x, y, z axes (oblique).
    center is the field-of-view centre (LPS mm), the phantom's head centre by default.
    kind "localizer" writes one slice in each base plane; "dwi" writes each slice per b-value.

    Scanner realism (defaults keep the plain synthetic header): vendor sets the equipment and the
    ImageType of originals; image_type overrides ImageType; lossy marks a decompressed lossy copy
    (DERIVED\\PRIMARY, LossyImageCompression 01); acquisition names another entry of the
    acquisition table (e.g. "t1_3d" for a 3D post-contrast MPRAGE); contrast_agent "auto" gives
    t1c series Gadobutrol, None writes no bolus attributes, another string that agent (with
    contrast_ingredient and contrast_start_time when given); acquisition_time (HHMMSS) and
    acquisition_number tell repeats apart; drop_attributes removes attributes from every
    instance; set_attributes writes (keyword, value) pairs as they are, even if they break the VR;
    other_study "prior" puts the series in another study of the same patient, "patient" in a
    study of another patient. motion (tx, ty, tz mm, rx, ry, rz degrees, `rigid_motion`) is how the
    patient moved before this series: the head it shows is the phantom moved rigidly about its centre.
    """

    contrast: str
    description: str
    orientation: Literal["axial", "sagittal", "coronal"] = "axial"
    tilt_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rows: int = 128
    columns: int = 128
    slices: int = 48
    pixel_spacing: tuple[float, float] = (1.8, 1.8)
    slice_thickness: float = 3.0
    slice_spacing: float | None = None
    center: tuple[float, float, float] | None = None
    kind: SeriesKind = "image"
    b_values: tuple[float, ...] = (0.0, 1000.0)
    vendor: Vendor | None = None
    image_type: tuple[str, ...] | None = None
    lossy: bool = False
    protocol_name: str | None = None
    sequence_name: str | None = None
    acquisition: str | None = None
    contrast_agent: str | None = _BOLUS_DEFAULT
    contrast_ingredient: str | None = None
    contrast_start_time: str | None = None
    images_in_acquisition: bool = False
    acquisition_time: str | None = None
    acquisition_number: int = 1
    drop_attributes: tuple[str, ...] = ()
    set_attributes: tuple[tuple[str, Any], ...] = ()
    other_study: OtherStudy = ""
    motion: tuple[float, ...] = ()

    @property
    def spacing_between_slices(self) -> float:
        """Distance between slice centres (mm): slice_spacing, else the thickness."""
        return self.slice_thickness if self.slice_spacing is None else self.slice_spacing


@dataclass(frozen=True)
class SeriesInfo:
    """A written series: its UIDs, files and (for single-volume series) its voxel grid."""

    spec: SeriesSpec
    series_instance_uid: str
    series_number: int
    files: tuple[Path, ...]
    shape: tuple[int, int, int] | None
    affine: np.ndarray | None = field(repr=False)
    study_instance_uid: str = ""
    patient_id: str = ""


@dataclass(frozen=True)
class StudyInfo:
    """A written study: shared identifiers and its series, in spec order."""

    study_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str
    accession_number: str
    series: tuple[SeriesInfo, ...]

    def by_description(self, description: str) -> SeriesInfo:
        """The series with this SeriesDescription."""
        for info in self.series:
            if info.spec.description == description:
                return info
        raise KeyError(description)


def rigid_motion(motion: tuple[float, ...], centre: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """4x4 (LPS mm) of a motion (tx, ty, tz, rx, ry, rz): rotation (Euler xyz, degrees) about
    ``centre``, then translation; maps a point of the head before the motion to where it is after."""
    values = np.asarray(motion, dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"motion must be (tx, ty, tz, rx, ry, rz), got {motion!r}")
    rotation = Rotation.from_euler("xyz", values[3:], degrees=True).as_matrix()
    centre = np.asarray(centre, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + values[:3] - rotation @ centre
    return matrix


def random_motion(rng: np.random.Generator, max_mm: float, max_deg: float) -> tuple[float, ...]:
    """A rigid motion in a uniformly random direction and axis, up to ``max_mm`` and ``max_deg`` in all."""
    direction, axis = rng.normal(size=3), rng.normal(size=3)
    translation = direction / np.linalg.norm(direction) * rng.uniform(0.0, max_mm)
    rotvec = axis / np.linalg.norm(axis) * np.radians(rng.uniform(0.0, max_deg))
    euler = Rotation.from_rotvec(rotvec).as_euler("xyz", degrees=True)
    return tuple(round(float(v), 4) for v in (*translation, *euler))


@dataclass(frozen=True)
class MovedHead:
    """A synthetic head (Phantom or TemplateHead) moved rigidly: ``matrix`` maps a point of ``base``
    to where it lies now (LPS mm). Head pose in the scanner, or a patient's motion between series."""

    base: Any
    matrix: np.ndarray = field(repr=False)

    @property
    def center(self) -> tuple[float, float, float]:
        moved = self.matrix @ np.append(np.asarray(self.base.center, dtype=np.float64), 1.0)
        return (float(moved[0]), float(moved[1]), float(moved[2]))

    @property
    def lesion(self) -> Any:
        return getattr(self.base, "lesion", None)

    def _before(self, points_lps: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.matrix)
        return np.asarray(points_lps, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]

    def sample(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        return self.base.sample(self._before(points_lps))

    def fields(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        """The base's fields (TemplateHead: intracranial and head fractions) at the moved points."""
        return self.base.fields(self._before(points_lps))

    def render(self, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
        return self.sample(grid_points(shape, affine))

    def bounds(self) -> np.ndarray:
        """(2, 3) LPS box holding the moved head (the base's box corners moved)."""
        box = self.base.bounds()
        corners = np.array([[x, y, z, 1.0] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
        moved = corners @ self.matrix[:3].T
        return np.array([moved.min(axis=0), moved.max(axis=0)])


def orientation_frame(spec: SeriesSpec) -> np.ndarray:
    """3x3 matrix whose columns are the row, column and slice-normal directions (LPS)."""
    rotation = Rotation.from_euler("xyz", spec.tilt_deg, degrees=True).as_matrix()
    return rotation @ _BASE_FRAMES[spec.orientation]


def series_grid(spec: SeriesSpec, phantom: Phantom) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of a series: shape (columns, rows, slices), centred on the FOV centre."""
    frame = orientation_frame(spec)
    row_spacing, column_spacing = spec.pixel_spacing
    shape = (spec.columns, spec.rows, spec.slices)
    affine = np.eye(4)
    affine[:3, :3] = frame * np.array([column_spacing, row_spacing, spec.spacing_between_slices])
    center = np.asarray(phantom.center if spec.center is None else spec.center, dtype=np.float64)
    affine[:3, 3] = center - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine


def truth_labels(phantom: Phantom, series: SeriesInfo) -> np.ndarray:
    """The phantom's true BraTS label map on a written series' grid ([i, j, k], uint8)."""
    if series.shape is None or series.affine is None:
        raise ValueError(f"series {series.spec.description!r} has no single voxel grid")
    return phantom.render(series.shape, series.affine)["label"]


def write_study(
    out_dir: Path,
    phantom: Phantom,
    series_specs: list[SeriesSpec],
    seed: int = 0,
    *,
    patient_id: str = "SYN0001",
    patient_name: str = "Synthetic^Phantom",
    noise: float = 0.01,
    shuffle_files: bool = False,
    opaque_names: bool = False,
    character_set: str = "ISO_IR 100",
    name_prefix: str = "",
) -> StudyInfo:
    """Write one MR study of `phantom` into out_dir (flat) and describe what was written.

    noise is the Rician noise sigma relative to full signal. shuffle_files writes the files in a
    random order; opaque_names names them with random hex instead of series_instance numbers.
    character_set is the SpecificCharacterSet the patient name is encoded in (e.g. "ISO_IR 192"
    for UTF-8); name_prefix starts every file name (two studies in one folder).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study = _study_header(seed, patient_id, patient_name, character_set)
    others = {
        "": study,
        "prior": _study_header(seed, patient_id, patient_name, character_set, variant="prior"),
        "patient": _study_header(seed, f"{patient_id}X", "Other^Patient", character_set, variant="patient"),
    }
    pending: list[tuple[pydicom.Dataset, str]] = []
    infos = []
    for number, spec in enumerate(series_specs, start=1):
        header = others[spec.other_study]
        series_uid = generate_uid(entropy_srcs=[str(seed), header.StudyInstanceUID, "series", str(number)])
        datasets = _series_datasets(spec, phantom, header, series_uid, number, rng, noise)
        names = [
            name_prefix + (rng.bytes(8).hex() if opaque_names else f"{number:03d}_{ds.InstanceNumber:04d}.dcm")
            for ds in datasets
        ]
        pending.extend(zip(datasets, names, strict=True))
        shape, affine = series_grid(spec, phantom) if spec.kind == "image" else (None, None)
        files = tuple(out_dir / name for name in names)
        infos.append(SeriesInfo(spec, series_uid, number, files, shape, affine, header.StudyInstanceUID,
                                str(header.PatientID)))
    order = rng.permutation(len(pending)) if shuffle_files else np.arange(len(pending))
    with warnings.catch_warnings():  # values that break their VR on purpose (set_attributes)
        warnings.simplefilter("ignore", UserWarning)
        for index in order:
            dataset, name = pending[index]
            dataset.save_as(out_dir / name, enforce_file_format=True)
    return StudyInfo(
        study_instance_uid=study.StudyInstanceUID,
        frame_of_reference_uid=study.FrameOfReferenceUID,
        patient_id=patient_id,
        accession_number=study.AccessionNumber,
        series=tuple(infos),
    )


def _study_header(
    seed: int, patient_id: str, patient_name: str, character_set: str = "ISO_IR 100", variant: str = ""
) -> pydicom.Dataset:
    """Patient, study, frame-of-reference and equipment attributes shared by every instance.

    variant names another study (a prior, another patient's) made from the same seed.
    """
    extra = [variant] if variant else []
    day = datetime.date(2024, 1, 1) + datetime.timedelta(days=seed % 365 - (200 if variant else 0))
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = character_set
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), patient_id, "study", *extra])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(seed), patient_id, "frame", *extra])
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = day.strftime("%Y%m%d")
    ds.StudyTime = "081500"
    ds.StudyID = f"{seed % 10000:04d}"
    ds.AccessionNumber = f"ACC{seed:08d}" + ("P" if variant else "")
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI BRAIN WITH AND WITHOUT CONTRAST"
    ds.Manufacturer = "SegMamba Synthetic"
    ds.ManufacturerModelName = "Phantom MR"
    ds.InstitutionName = "Synthetic Hospital"
    ds.StationName = "SYNMR01"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1.0"
    ds.MagneticFieldStrength = 3.0
    ds.ImagingFrequency = 123.2
    ds.ImagedNucleus = "1H"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEAD"
    return ds


def _series_datasets(
    spec: SeriesSpec,
    phantom: Phantom,
    study: pydicom.Dataset,
    series_uid: str,
    number: int,
    rng: np.random.Generator,
    noise: float,
) -> list[pydicom.Dataset]:
    """All instances of one series, InstanceNumber ascending."""
    planes = _planes(spec, phantom)
    if spec.motion:
        phantom = MovedHead(phantom, rigid_motion(spec.motion, phantom.center))  # type: ignore[assignment]
    acquisition = _ACQUISITIONS[spec.acquisition or ("dwi" if spec.kind == "dwi" else spec.contrast)]
    sigma = noise * _SIGNAL_SCALE
    images = []
    for frame, origin, b_value in planes:
        index = np.stack(np.meshgrid(np.arange(spec.columns), np.arange(spec.rows), indexing="ij"), axis=-1)
        points = origin + index @ (frame[:, :2] * np.array(spec.pixel_spacing[::-1])).T
        signal = phantom.sample(points)[spec.contrast] * _SIGNAL_SCALE * np.exp(-b_value * 0.0008)
        noisy = np.hypot(signal + rng.normal(0.0, sigma, signal.shape), rng.normal(0.0, sigma, signal.shape))
        images.append(noisy.T)
    slope = float(f"{max(max(float(image.max()) for image in images), 1.0) / _MAX_STORED:.4g}")
    datasets = []
    for instance, ((frame, origin, b_value), image) in enumerate(zip(planes, images, strict=True), start=1):
        ds = _instance(spec, study, series_uid, number, instance, acquisition)
        _set_plane(ds, spec, frame, origin)
        _set_pixels(ds, image, slope)
        if spec.kind == "dwi":
            ds.DiffusionBValue = b_value
        if spec.images_in_acquisition:
            ds.ImagesInAcquisition = len(planes)
        _override(ds, spec)
        datasets.append(ds)
    return datasets


def _planes(spec: SeriesSpec, phantom: Phantom) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(orientation frame, top-left voxel centre, b-value) for each instance in order."""
    if spec.kind == "localizer":
        planes = []
        for name in ("sagittal", "coronal", "axial"):
            one = dataclasses.replace(spec, orientation=name, tilt_deg=(0.0, 0.0, 0.0), slices=1, kind="image")
            _, affine = series_grid(one, phantom)
            planes.append((orientation_frame(one), affine[:3, 3], 0.0))
        return planes
    _, affine = series_grid(spec, phantom)
    frame = orientation_frame(spec)
    b_values = spec.b_values if spec.kind == "dwi" else (0.0,)
    return [
        (frame, affine[:3, 3] + k * affine[:3, 2], b_value)
        for k in range(spec.slices)
        for b_value in b_values
    ]


def _instance(
    spec: SeriesSpec,
    study: pydicom.Dataset,
    series_uid: str,
    number: int,
    instance: int,
    acquisition: _Acquisition,
) -> pydicom.Dataset:
    """Header of one instance: study attributes, series identity and the MR acquisition."""
    ds = pydicom.Dataset()
    ds.update(copy.deepcopy(study))  # own elements: vendor and per-spec values must not leak into others
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(instance)])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = _image_type(spec)
    if spec.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = 12.5
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = spec.description
    ds.ProtocolName = spec.description if spec.protocol_name is None else spec.protocol_name
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.StudyDate
    time = spec.acquisition_time or f"{8 + number // 6:02d}{(number * 7) % 60:02d}00"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AcquisitionNumber = spec.acquisition_number
    ds.InstanceNumber = instance
    ds.ScanningSequence = acquisition.scanning_sequence
    ds.SequenceVariant = acquisition.sequence_variant
    ds.ScanOptions = acquisition.scan_options
    ds.MRAcquisitionType = acquisition.acquisition_type
    ds.SequenceName = acquisition.sequence_name if spec.sequence_name is None else spec.sequence_name
    ds.RepetitionTime = acquisition.repetition_time
    ds.EchoTime = acquisition.echo_time
    if acquisition.inversion_time is not None:
        ds.InversionTime = acquisition.inversion_time
    ds.EchoTrainLength = acquisition.echo_train_length
    ds.FlipAngle = acquisition.flip_angle
    ds.NumberOfAverages = 1
    ds.EchoNumbers = 1
    ds.PixelBandwidth = 200
    ds.AngioFlag = "N"
    ds.InPlanePhaseEncodingDirection = "ROW"
    agent = spec.contrast_agent
    if agent == _BOLUS_DEFAULT:
        agent = "Gadobutrol" if spec.kind == "image" and spec.contrast == "t1c" else None
    if agent is not None:
        ds.ContrastBolusAgent = agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = 7.5
        if spec.contrast_ingredient is not None:
            ds.ContrastBolusIngredient = spec.contrast_ingredient
        if spec.contrast_start_time is not None:
            ds.ContrastBolusStartTime = spec.contrast_start_time
    if spec.vendor is not None:
        ds.Manufacturer = spec.vendor.manufacturer
        ds.ManufacturerModelName = spec.vendor.model
        ds.SoftwareVersions = spec.vendor.software
        ds.StationName = spec.vendor.station
    return ds


def _image_type(spec: SeriesSpec) -> list[str]:
    """ImageType: explicit, else the vendor's for originals (DERIVED\\PRIMARY when lossy), else plain."""
    if spec.image_type is not None:
        return list(spec.image_type)
    if spec.kind != "image":
        return {"localizer": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "dwi": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]}[
            spec.kind
        ]
    values = list(spec.vendor.image_type) if spec.vendor is not None else ["ORIGINAL", "PRIMARY", "OTHER"]
    if spec.lossy:
        values[0] = "DERIVED"
    return values


def _override(ds: pydicom.Dataset, spec: SeriesSpec) -> None:
    """Leave out spec.drop_attributes; write spec.set_attributes as given (VR not checked)."""
    for keyword in spec.drop_attributes:
        if keyword in ds:
            delattr(ds, keyword)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in spec.set_attributes:
            setattr(ds, keyword, value)


def _set_plane(ds: pydicom.Dataset, spec: SeriesSpec, frame: np.ndarray, origin: np.ndarray) -> None:
    """Image Plane module: position, orientation, spacing, thickness."""
    ds.ImagePositionPatient = [_ds(v) for v in origin]
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([frame[:, 0], frame[:, 1]])]
    ds.PixelSpacing = [_ds(v) for v in spec.pixel_spacing]
    ds.SliceThickness = _ds(spec.slice_thickness)
    ds.SpacingBetweenSlices = _ds(spec.spacing_between_slices)
    ds.SliceLocation = _ds(float(origin @ frame[:, 2]))


def _set_pixels(ds: pydicom.Dataset, values: np.ndarray, slope: float) -> None:
    """Image Pixel module: 12-bit unsigned pixels, values ([row, column]) = stored * slope."""
    stored = np.clip(np.rint(values / slope), 0, _MAX_STORED).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = _ds(slope)
    ds.WindowCenter = _ds(float(values.mean()))
    ds.WindowWidth = _ds(max(float(values.max() - values.min()), 1.0))
    ds.PixelData = stored.tobytes()


def _ds(value: float) -> str:
    """A float as a DICOM DS string (at most 16 characters)."""
    return pydicom.valuerep.format_number_as_ds(float(round(float(value), 6)))
