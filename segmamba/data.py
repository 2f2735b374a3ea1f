"""BraTS 2023 layout reader, preprocessing, training transforms and the train/val/test split.

Layout: ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f}.nii.gz`` (+ ``-seg.nii.gz`` with labels 0-3).
Arrays are handed over in one fixed array orientation (axis codes, default ``BRATS_ORIENTATION``
= ``S, P, L``: what the reference recipe's SimpleITK reading of BraTS files gives), reoriented by each
file's NIfTI affine, so a network sees the orientation its model card declares whatever the file's
voxel order. Preprocessing matches the application: channels stacked in the model card's channel
order, cropped to the nonzero region (any channel), z-scored per channel over its nonzero voxels.
Training draws random patches (a fraction centred on tumour voxels: foreground oversampling)
with nnU-Net-style augmentation built from MONAI transforms.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai import transforms as mt
from monai.utils import convert_data_type, convert_to_dst_type
from scipy import ndimage

CHANNEL_ORDER: tuple[str, ...] = ("t2w", "t2f", "t1n", "t1c")
MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
SPLIT_FILE = "split.json"
# Axis codes (nibabel ``aff2axcodes`` convention: the direction each array index increases toward) of
# the training arrays: BraTS 2023 files read by SimpleITK, as the reference recipe (see
# operators/reorientation.py REFERENCE_ORIENTATION and segmamba/export.py REFERENCE_CONVENTION).
BRATS_ORIENTATION: tuple[str, str, str] = ("S", "P", "L")


@dataclass(frozen=True)
class CaseFiles:
    """The NIfTI files of one case (``seg`` is None for unlabelled cases)."""

    name: str
    images: dict[str, Path]
    seg: Path | None


def find_cases(root: Path, require_seg: bool = True) -> list[CaseFiles]:
    """All complete cases under ``root`` (sorted by name)."""
    cases = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        images = {m: folder / f"{folder.name}-{m}.nii.gz" for m in MODALITIES}
        seg = folder / f"{folder.name}-seg.nii.gz"
        if not all(p.is_file() for p in images.values()):
            continue
        if require_seg and not seg.is_file():
            continue
        cases.append(CaseFiles(folder.name, images, seg if seg.is_file() else None))
    if not cases:
        raise FileNotFoundError(f"no BraTS-layout cases (<case>/<case>-t1n.nii.gz ...) under {root}")
    return cases


def reorient(image: Any, orientation: Sequence[str] | None) -> Any:
    """A nibabel image with its voxel axes permuted/flipped to the axis codes (affine updated).

    ``None`` keeps the file's voxel order. Codes name patient directions (``L``/``R``, ``P``/``A``,
    ``S``/``I``), the same in nibabel's RAS world as in the project's LPS frame.
    """
    from nibabel import orientations

    if orientation is None:
        return image
    codes = tuple(str(c).upper() for c in orientation)
    try:
        target = orientations.axcodes2ornt(codes)
    except ValueError as error:
        raise ValueError(f"orientation {list(orientation)}: {error}") from error
    if len(codes) != 3 or np.isnan(target).any() or sorted(target[:, 0]) != [0, 1, 2]:
        raise ValueError(f"orientation must be three axis codes of L/R, P/A, S/I, got {list(orientation)}")
    current = orientations.io_orientation(image.affine)
    if np.array_equal(current, target):
        return image
    return image.as_reoriented(orientations.ornt_transform(current, target))


def load_case(case: CaseFiles, channel_order: Sequence[str] = CHANNEL_ORDER,
              orientation: Sequence[str] | None = BRATS_ORIENTATION) -> dict[str, Any]:
    """Raw arrays in ``orientation`` (`reorient`): ``image`` (C, a0, a1, a2) float32, ``label``
    (1, a0, a1, a2) uint8 or None, the NIfTI ``affine`` of those arrays and the voxel spacing per axis."""
    import nibabel as nib

    first = reorient(nib.load(case.images[channel_order[0]]), orientation)
    arrays = [np.asarray(first.dataobj, dtype=np.float32)]
    for role in channel_order[1:]:
        image = reorient(nib.load(case.images[role]), orientation)
        if image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-3):
            raise ValueError(f"{case.name}: {role} is not on the grid of {channel_order[0]} "
                             f"(shape {image.shape}, expected {first.shape}; sequences must be co-registered)")
        arrays.append(np.asarray(image.dataobj, dtype=np.float32))
    label = None
    if case.seg is not None:
        seg = reorient(nib.load(case.seg), orientation)
        if seg.shape != first.shape:
            raise ValueError(f"{case.name}: seg has shape {seg.shape}, expected {first.shape}")
        label = np.asarray(seg.dataobj).astype(np.uint8)[None]
    spacing = tuple(float(z) for z in np.linalg.norm(first.affine[:3, :3], axis=0))
    return {"name": case.name, "image": np.stack(arrays), "label": label, "affine": first.affine,
            "spacing": spacing}


def preprocess(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop to the nonzero box of any channel, then z-score each channel over its nonzero voxels."""
    nonzero = np.any(image != 0, axis=0)
    if nonzero.any():
        box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(nonzero))
        image = image[(slice(None), *box)]
        label = None if label is None else label[(slice(None), *box)]
    normalize = mt.NormalizeIntensity(nonzero=True, channel_wise=True, dtype=np.float32)
    return np.asarray(normalize(image), dtype=np.float32), label


def load_preprocessed(case: CaseFiles, channel_order: Sequence[str] = CHANNEL_ORDER,
                      orientation: Sequence[str] | None = BRATS_ORIENTATION) -> dict[str, Any]:
    """`load_case` then `preprocess`: what training and validation iterate over."""
    raw = load_case(case, channel_order, orientation)
    image, label = preprocess(raw["image"], raw["label"])
    return {"name": raw["name"], "image": image, "label": label, "spacing": raw["spacing"]}


def make_split(names: Sequence[str], seed: int = 0, fractions: tuple[float, float] = (0.15, 0.15)
               ) -> dict[str, list[str]]:
    """Reproducible split of case names: (val, test) fractions, at least one val case when >= 2 cases."""
    ordered = sorted(names)
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_val = max(1 if n >= 2 else 0, round(n * fractions[0]))
    n_test = round(n * fractions[1]) if n - n_val > 1 else 0
    return {"seed": seed, "val": sorted(ordered[:n_val]), "test": sorted(ordered[n_val:n_val + n_test]),
            "train": sorted(ordered[n_val + n_test:])}  # type: ignore[dict-item]


def write_split(split: dict[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(split, indent=2) + "\n")


def read_split(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _interpolate_along(values: np.ndarray, knots: np.ndarray, targets: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from samples at increasing ``knots`` to ``targets`` (clamped ends)."""
    lower = np.clip(np.searchsorted(knots, targets, side="right") - 1, 0, knots.size - 2)
    shape = [1] * values.ndim
    shape[axis] = -1
    weight = np.clip((targets - knots[lower]) / (knots[lower + 1] - knots[lower]), 0.0, 1.0).reshape(shape)
    return np.take(values, lower, axis=axis) * (1.0 - weight) + np.take(values, lower + 1, axis=axis) * weight


def simulate_thick_slices(channel: np.ndarray, axis: int, thickness: float, spacing: float, phase: float) -> np.ndarray:
    """What resampling a 2D series (slices ``thickness`` thick, ``spacing`` apart along ``axis``) to 1 mm gives.

    Each slice averages ``thickness`` voxels of the 1 mm signal (box profile); the value between slice
    centres is linear in the two nearest slices, constant beyond the first and last (as the application's
    linear resampling does). ``phase`` is the first slice centre (voxels from index 0).
    """
    smoothed = ndimage.uniform_filter1d(channel, size=max(1, round(thickness)), axis=axis, mode="nearest")
    length = channel.shape[axis]
    centres = np.arange(phase, length - 1e-6, spacing)
    if centres.size < 2:
        return smoothed
    positions = np.arange(length, dtype=np.float64)
    slices = _interpolate_along(smoothed, positions, centres, axis)
    return _interpolate_along(slices, centres, positions, axis).astype(channel.dtype, copy=False)


class RandThickSlicesd(mt.RandomizableTransform, mt.MapTransform):
    """Per image channel (with ``channel_prob``): simulate a thick-slice 2D acquisition along a random axis.

    Clinical T2 and FLAIR series are often 3-6 mm slices; the application resamples them to the 1 mm
    model grid. Training on 1 mm volumes only would never show the network that blur.
    """

    def __init__(self, keys: str, prob: float = 0.3, channel_prob: float = 0.5,
                 thickness: tuple[float, float] = (2.5, 6.0), gap: tuple[float, float] = (0.0, 1.0)) -> None:
        mt.RandomizableTransform.__init__(self, prob)
        mt.MapTransform.__init__(self, keys)
        self.channel_prob = channel_prob
        self.thickness = thickness
        self.gap = gap

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = np.array(convert_data_type(d[key], np.ndarray, dtype=np.float32)[0])
            for c in range(image.shape[0]):
                if self.R.random() >= self.channel_prob:
                    continue
                axis = int(self.R.randint(0, 3))
                thickness = float(self.R.uniform(*self.thickness))
                spacing = thickness + float(self.R.uniform(*self.gap))
                image[c] = simulate_thick_slices(image[c], axis, thickness, spacing, float(self.R.uniform(0, spacing)))
            d[key] = convert_to_dst_type(image, d[key])[0]
        return d


def train_transforms(patch_size: Sequence[int], foreground_fraction: float = 1 / 3,
                     thick_slice_prob: float = 0.0) -> mt.Compose:
    """Random patch (foreground oversampling) + nnU-Net-style spatial and intensity augmentation.

    ``thick_slice_prob`` > 0 adds `RandThickSlicesd` (not in the reference recipe; for clinical 2D series).
    """
    keys = ["image", "label"]
    pos = max(foreground_fraction, 1e-6)
    return mt.Compose([
        mt.SpatialPadd(keys, spatial_size=patch_size),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch_size, pos=pos, neg=1.0 - pos,
                                  num_samples=1, allow_smaller=False),
        mt.RandAffined(keys, prob=0.2, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                       mode=("bilinear", "nearest"), padding_mode="zeros", cache_grid=True,
                       spatial_size=patch_size),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandThickSlicesd("image", prob=thick_slice_prob),
        mt.RandGaussianNoised("image", prob=0.1, std=0.1),
        mt.RandGaussianSmoothd("image", prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=0.15),
        mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        mt.EnsureTyped(keys, track_meta=False),
    ])


class PatchDataset:
    """Random training patches from in-memory preprocessed cases (one patch per item)."""

    def __init__(self, cases: Sequence[dict[str, Any]], patch_size: Sequence[int], length: int,
                 foreground_fraction: float = 1 / 3, seed: int = 0, thick_slice_prob: float = 0.0) -> None:
        self.cases = list(cases)
        self.length = length
        self.transform = train_transforms(patch_size, foreground_fraction, thick_slice_prob)
        self.transform.set_random_state(seed=seed)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[int(self.rng.integers(len(self.cases)))]
        sample = self.transform({"image": case["image"], "label": case["label"]})
        sample = sample[0] if isinstance(sample, list) else sample
        return {"image": sample["image"].float(), "label": sample["label"].long()}
