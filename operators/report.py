"""Segmentation outputs besides the DICOM-SEG: a JSON report of volumes and a PNG preview.

`build_report` counts voxels per label and per region (BraTS: WT = 1|2|3, TC = 1|3, ET = 3) and
converts them to millilitres; `write_report` writes it atomically. `write_preview` renders a few
axial slices through the lesion as greyscale with a semi-transparent coloured overlay and a legend.

Preview orientation: arrays are indexed [i, j, k] along the reference volume's own axes and the
4x4 `affine` maps (i, j, k, 1) to patient LPS mm. The slicing axis is the array axis whose
direction is closest to patient superior-inferior, so the panels are (near-)axial whatever the
acquisition plane. Within a panel, the in-plane axis closest to patient left-right runs along the
columns and the other along the rows, flipped as needed for the radiological convention: patient
right on the viewer's left ("R" marker), anterior at the top. Pixels keep their physical aspect
ratio. Panels run inferior to superior, left to right. Rendering uses Pillow only.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from operators.atomic_files import RESULT_MODE, write_atomically

REPORT_SCHEMA = "segmamba-node/segmentation-report"
REPORT_SCHEMA_VERSION = 1

_LEGEND_ROW_PX = 24
_BACKGROUND = (0, 0, 0)
_LEGEND_BACKGROUND = (32, 32, 32)
_TEXT = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# Report


def build_report(
    labels: np.ndarray,
    voxel_volume_ml: float,
    label_names: Mapping[int, str],
    regions: Mapping[str, Sequence[int]],
    model: Mapping[str, Any],
    input_series: Mapping[str, Any],
    study_uid: str,
    timings: Mapping[str, float],
    *,
    created: datetime | None = None,
    selection: Any | None = None,
    coverage: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    inference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report: per-label and per-region voxel counts and volumes (mL).

    `labels` is the label map (0 = background; every other value must be in `label_names`),
    `voxel_volume_ml` the volume of one of its voxels, `regions` name -> label values (e.g.
    {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}), `model` at least name and version,
    `input_series` role -> description/UID (strings or JSON-able mappings), `timings` step ->
    seconds. `created` defaults to now (UTC). `selection` (a SeriesSelection) adds the
    "series_selection" section (see `series_section`). `coverage` (operators.model_input.Coverage.to_dict():
    the part of the head every series covers, the card's minimum, a warning when below it) becomes
    the report's "coverage" entry, and its warning one of the report's "warnings". `preprocessing`
    (operators.input_steps.PreprocessingLog.to_dict(): the input convention used, model grid and its
    orientation, registration per series, brain mask volume and the fraction of the predicted tumour
    inside it, seconds per step) becomes the "preprocessing" entry. `inference`
    (Segmenter.describe: device, precision, window count and overlap) becomes the "inference" section.
    """
    if not (isinstance(voxel_volume_ml, numbers.Real) and math.isfinite(voxel_volume_ml) and voxel_volume_ml > 0):
        raise ValueError(f"voxel_volume_ml must be a positive finite number, not {voxel_volume_ml!r}")
    counts = _label_counts(labels)
    names = {int(k): str(v) for k, v in label_names.items()}
    if 0 in names:
        names.pop(0)
    if len(set(names.values())) != len(names):
        raise ValueError(f"label names must be unique: {names}")
    unknown = sorted(set(counts) - set(names) - {0})
    if unknown:
        raise ValueError(f"label map holds values {unknown} that label_names does not name")
    for key in ("name", "version"):
        if not model.get(key):
            raise ValueError(f"model needs a {key!r}")

    def volume(voxels: int) -> float:
        return round(voxels * float(voxel_volume_ml), 4)

    label_entries = {
        names[value]: {"label": value, "voxels": counts.get(value, 0), "volume_ml": volume(counts.get(value, 0))}
        for value in sorted(names)
    }
    region_entries = {}
    for region, members in regions.items():
        values = sorted({int(v) for v in members})
        missing = [v for v in values if v not in names]
        if not values or missing:
            raise ValueError(f"region {region!r} needs named labels; unknown: {missing}")
        voxels = sum(counts.get(v, 0) for v in values)
        region_entries[str(region)] = {"labels": values, "voxels": voxels, "volume_ml": volume(voxels)}
    timing_entries = {}
    for step, seconds in timings.items():
        if not math.isfinite(float(seconds)):
            raise ValueError(f"timing {step!r} is not finite")
        timing_entries[str(step)] = round(float(seconds), 3)
    stamp = (created or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    report = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": stamp,
        "study_instance_uid": str(study_uid),
        "model": _jsonable(dict(model)),
        "input_series": _jsonable(dict(input_series)),
        "grid": {"shape": [int(n) for n in labels.shape], "voxel_volume_ml": float(voxel_volume_ml)},
        "labels": label_entries,
        "regions": region_entries,
        "timings_s": timing_entries,
        **_coverage_entries(coverage),
    }
    if preprocessing is not None:
        report["preprocessing"] = _jsonable(dict(preprocessing))
    if inference:
        report["inference"] = _jsonable(dict(inference))
    if selection is not None:
        report["series_selection"] = series_section(selection)
    return report


def series_section(selection: Any) -> dict[str, Any]:
    """Every series of the study and what became of it, for report.json.

    From a SeriesSelection: ``series`` (each series with its status, role or the reason it was
    not used; the selected ones with their runners-up and why each lost; the lossy flag),
    ``foreign_series`` (series of other studies/patients in the same input, why not used),
    ``skipped_files`` and ``unreadable_files`` (the loader's inventory) and ``policy`` (the
    preferences and derived-image policy that were applied).
    """
    choices = dict(selection.choices)
    by_uid = {choice.series_instance_uid: choice for choice in choices.values()}
    entries = []
    for entry in selection.series:
        item = entry.to_dict()
        choice = by_uid.get(entry.series_instance_uid)
        if choice is not None:
            item["runners_up"] = [runner.to_dict() for runner in choice.runners_up]
        entries.append(item)
    inventory = selection.inventory.to_dict() if selection.inventory is not None else {}
    return {
        "policy": _jsonable(dict(selection.policy)),
        "series": _jsonable(entries),
        "foreign_series": _jsonable([f.to_dict() for f in selection.foreign]),
        "skipped_files": _jsonable(inventory.get("skipped_files", [])),
        "unreadable_files": _jsonable(inventory.get("unreadable_files", [])),
    }


def _coverage_entries(coverage: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"coverage": ..., "warnings": [...]} for the report, or nothing when coverage was not measured."""
    if coverage is None:
        return {}
    entries = _jsonable(dict(coverage))
    warning = entries.get("warning")
    return {"coverage": entries, "warnings": [warning] if warning else []}


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as UTF-8 JSON, atomically (temporary file, fsync, rename); returns the path."""
    text = json.dumps(_jsonable(dict(report)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_atomically(Path(path), text.encode("utf-8"), RESULT_MODE)


def _label_counts(labels: np.ndarray) -> dict[int, int]:
    array = np.asarray(labels)
    if array.size == 0:
        return {}
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError("label map must hold integer values")
        array = array.astype(np.int64)
    if array.min() < 0:
        raise ValueError("label map holds negative values")
    counts = np.bincount(array.ravel().astype(np.int64, copy=False))
    return {int(v): int(n) for v, n in enumerate(counts) if n}


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays converted); raises TypeError on anything else."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite number in report")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} into the JSON report")


# --------------------------------------------------------------------------------------------
# Preview


@dataclass(frozen=True)
class PreviewInfo:
    """What `write_preview` drew: the array axis sliced, the slice indices, the PNG size (w, h)."""

    path: Path
    axis: int
    slices: tuple[int, ...]
    size: tuple[int, int]
    lesion: bool


def axial_axis(affine: np.ndarray) -> int:
    """The array axis (0, 1, 2) whose direction is closest to patient superior-inferior."""
    directions = _unit_directions(affine)
    return int(np.argmax(np.abs(directions[2])))


def write_preview(
    image: np.ndarray,
    labels: np.ndarray,
    label_colours: Mapping[int, tuple[int, int, int]],
    path: str | Path,
    *,
    affine: np.ndarray | None = None,
    label_names: Mapping[int, str] | None = None,
    n_slices: int = 3,
    panel_px: int = 256,
    alpha: float = 0.45,
) -> PreviewInfo:
    """Write a PNG of `n_slices` axial panels (width n_slices * panel_px) plus a legend strip.

    Slices are spread over the lesion (weighted by lesion area, so each shows lesion when the
    lesion spans enough slices) or around the centre when there is none. `affine` (4x4, to LPS)
    defaults to the identity. The overlay blends each label's colour with weight `alpha`.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"image and labels must be 3D arrays of one shape, not {image.shape} and {labels.shape}")
    if not 0.0 <= alpha <= 1.0 or n_slices < 1 or panel_px < 16:
        raise ValueError("need 0 <= alpha <= 1, n_slices >= 1, panel_px >= 16")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError("affine must be 4x4")
    colours = {int(k): tuple(int(c) for c in v) for k, v in label_colours.items()}
    counts = _label_counts(labels)
    uncoloured = sorted(set(counts) - set(colours) - {0})
    if uncoloured:
        raise ValueError(f"no colour for labels {uncoloured}")

    axis = axial_axis(affine)
    directions = _unit_directions(affine)
    in_plane = [a for a in range(3) if a != axis]
    col_axis = max(in_plane, key=lambda a: abs(directions[0, a]))
    row_axis = next(a for a in in_plane if a != col_axis)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)

    areas = np.count_nonzero(labels, axis=tuple(in_plane))
    slices = _pick_slices(areas, n_slices)
    if directions[2, axis] < 0:  # panels inferior -> superior
        slices = slices[::-1]

    views = [_view(image, labels, axis, k, row_axis, col_axis, directions) for k in slices]
    low, high = _window(np.concatenate([v[0].ravel() for v in views]))
    shape = views[0][0].shape
    height_mm, width_mm = shape[0] * spacing[row_axis], shape[1] * spacing[col_axis]
    scale = panel_px / max(height_mm, width_mm)
    out_w, out_h = max(1, round(width_mm * scale)), max(1, round(height_mm * scale))

    font = _font(12)
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    legend_items = [(colours[v], names.get(v, f"label {v}")) for v in sorted(colours) if v != 0]
    legend_rows = _legend_layout(legend_items, len(views) * panel_px, font)
    legend_h = _LEGEND_ROW_PX * max(1, len(legend_rows))
    canvas = Image.new("RGB", (len(views) * panel_px, panel_px + legend_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for n, ((grey, lab), k) in enumerate(zip(views, slices, strict=True)):
        panel = _render_panel(grey, lab, low, high, (out_w, out_h), colours, alpha)
        x0, y0 = n * panel_px + (panel_px - out_w) // 2, (panel_px - out_h) // 2
        canvas.paste(panel, (x0, y0))
        draw.text((n * panel_px + 3, panel_px // 2 - 6), "R", fill=_TEXT, font=font)
        draw.text((n * panel_px + 3, panel_px - 16), f"{'ijk'[axis]} {k}", fill=_TEXT, font=font)
    draw.rectangle((0, panel_px, canvas.width, canvas.height), fill=_LEGEND_BACKGROUND)
    for row, items in enumerate(legend_rows):
        y = panel_px + row * _LEGEND_ROW_PX + (_LEGEND_ROW_PX - 14) // 2
        for x, colour, name in items:
            draw.rectangle((x, y, x + 13, y + 13), fill=colour)
            draw.text((x + 19, y), name, fill=_TEXT, font=font)

    buffer = _png_bytes(canvas)
    written = write_atomically(Path(path), buffer, RESULT_MODE)
    return PreviewInfo(written, axis, tuple(int(k) for k in slices), canvas.size, bool(areas.sum()))


def _unit_directions(affine: np.ndarray) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(matrix)):
        raise ValueError("affine has a degenerate axis")
    return matrix / norms


def _pick_slices(areas: np.ndarray, n: int) -> list[int]:
    """n distinct slice indices: lesion-area quantiles if any lesion, else around the centre."""
    size = len(areas)
    n = min(n, size)
    total = float(areas.sum())
    if total > 0:
        cdf = np.cumsum(areas) / total
        picks = {int(np.searchsorted(cdf, (q + 0.5) / n)) for q in range(n)}
    else:
        picks = {round(f * (size - 1)) for f in np.linspace(0.35, 0.65, n)} if n > 1 else {(size - 1) // 2}
    centre = float(np.median(sorted(picks)))
    spare = sorted((k for k in range(size) if k not in picks), key=lambda k: (areas[k] == 0, abs(k - centre)))
    picks.update(spare[: n - len(picks)])
    return sorted(picks)


def _view(
    image: np.ndarray,
    labels: np.ndarray,
    axis: int,
    index: int,
    row_axis: int,
    col_axis: int,
    directions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One slice as [row, col] arrays: rows anterior -> posterior, columns patient right -> left."""
    grey = np.take(image, index, axis=axis).astype(np.float64)
    lab = np.take(labels, index, axis=axis)
    if row_axis > col_axis:  # remaining axes come in increasing order: put the row axis first
        grey, lab = grey.T, lab.T
    if directions[1, row_axis] < 0:  # +y (LPS) is posterior: make it point down
        grey, lab = grey[::-1], lab[::-1]
    if directions[0, col_axis] < 0:  # +x (LPS) is patient left: make it point right
        grey, lab = grey[:, ::-1], lab[:, ::-1]
    return grey, lab


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    sample = positive if positive.size else finite
    if not sample.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)


def _render_panel(
    grey: np.ndarray,
    lab: np.ndarray,
    low: float,
    high: float,
    size: tuple[int, int],
    colours: Mapping[int, tuple[int, ...]],
    alpha: float,
) -> Image.Image:
    scaled = np.nan_to_num((grey - low) / (high - low), nan=0.0)
    grey_px = Image.fromarray(np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    grey_px = np.asarray(grey_px.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    rows = np.minimum((np.arange(size[1]) + 0.5) * lab.shape[0] / size[1], lab.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size[0]) + 0.5) * lab.shape[1] / size[0], lab.shape[1] - 1).astype(int)
    lab_px = lab[np.ix_(rows, cols)]
    rgb = np.repeat(grey_px[..., None], 3, axis=2)
    for value, colour in colours.items():
        mask = lab_px == value
        if value != 0 and mask.any():
            rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float64)
    return Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):
        return ImageFont.load_default()


def _legend_layout(
    items: Sequence[tuple[tuple[int, ...], str]], width: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> list[list[tuple[int, tuple[int, ...], str]]]:
    """Legend entries as rows of (x, colour, name), wrapped to the canvas width."""
    rows: list[list[tuple[int, tuple[int, ...], str]]] = [[]]
    x = 8
    for colour, name in items:
        entry = 19 + math.ceil(font.getlength(name)) + 16
        if rows[-1] and x + entry > width:
            rows.append([])
            x = 8
        rows[-1].append((x, colour, name))
        x += entry
    return rows if rows[0] else []


def _png_bytes(canvas: Image.Image) -> bytes:
    stream = io.BytesIO()
    canvas.save(stream, format="PNG", optimize=True)
    return stream.getvalue()
