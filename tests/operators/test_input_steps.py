"""The model-input operator under a BraTS input convention: reorientation round trip, registration of a
moved series, brain extraction keeping an edge lesion, and what report.json says about each step."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from app.evaluation import motion_residual
from app.synthetic_study import MovedHead, SeriesSpec, rigid_motion, truth_labels, write_study
from operators.errors import StudyError
from operators.inference import Prediction
from operators.input_steps import registration_entry
from operators.model_card import load_model_card
from operators.model_input import build_model_input
from operators.reorientation import axis_codes
from operators.results import labels_on_reference, preprocessing_section
from operators.series_selection import SeriesSelection
from segmamba.synthetic import Lesion, Phantom
from segmamba.synthetic.phantom import grid_points
from tests.support.model_cards import threshold_model_with_convention

PHANTOM = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
LESION = PHANTOM.lesion.center
ORIENTATIONS = {"axial": ("axial", (0.0, 0.0, 0.0)), "sagittal": ("sagittal", (0.0, 0.0, 0.0)),
                "coronal": ("coronal", (0.0, 0.0, 0.0)), "oblique": ("axial", (12.0, -9.0, 6.0))}




def model_input_of(study_dir: Path, specs: list[SeriesSpec], card: Any, anatomy: Any = PHANTOM,
                   **options: Any) -> tuple[Any, Any]:
    info = write_study(study_dir, anatomy, specs)
    by_role: dict[str, list[pydicom.Dataset]] = {}
    for series in info.series:
        by_role[series.spec.contrast] = [pydicom.dcmread(path) for path in series.files]
    selection = SeriesSelection(info.study_instance_uid, info.accession_number, {})
    return build_model_input(by_role, selection, card, **options), info


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_labels_go_back_onto_the_native_t1c_grid_in_every_orientation(tmp_path: Path, orientation: str) -> None:
    plane, tilt = ORIENTATIONS[orientation]
    convention = {"orientation": ["S", "P", "L"], "spacing_mm": 1.0}
    card = load_model_card(threshold_model_with_convention(tmp_path, convention))
    t1c = SeriesSpec("t1c", "T1C", plane, tilt_deg=tilt, rows=60, columns=56, slices=52, pixel_spacing=(1.0, 1.0),
                     slice_thickness=1.0, center=LESION)
    others = [SeriesSpec(role, role.upper(), "axial", rows=24, columns=24, slices=20, pixel_spacing=(4.0, 4.0),
                         slice_thickness=4.0, center=LESION) for role in ("t1n", "t2w", "t2f")]
    model_input, info = model_input_of(tmp_path / "study", [t1c, *others], card)
    assert axis_codes(model_input.grid_affine) == ("S", "P", "L")
    # A perfect network: the phantom's labels at the model grid's voxel centres.
    on_grid = PHANTOM.render(model_input.grid_shape, model_input.grid_affine)["label"]
    back = labels_on_reference(Prediction(labels=on_grid[model_input.crop], model_input=model_input))
    reference = info.by_description("T1C")
    truth = truth_labels(PHANTOM, reference)
    assert back.shape == truth.shape == reference.shape and (truth > 0).sum() > 5000
    if orientation != "oblique":  # a permutation/flip of the native grid: exact
        np.testing.assert_array_equal(back, truth)
    # Oblique: nearest neighbour twice (native -> model grid -> native) moves only boundary voxels.
    for values, minimum in (((1,), 0.9), ((2,), 0.9), ((3,), 0.9), ((1, 2, 3), 0.97)):
        a, b = np.isin(back, values), np.isin(truth, values)
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice >= minimum, (values, dice)
    section = preprocessing_section(Prediction(labels=on_grid[model_input.crop], model_input=model_input))
    assert section["grid"]["orientation"] == ["S", "P", "L"]
    assert section["registration"] is None and section["brain_extraction"] is None


REGISTERED = {"orientation": ["S", "P", "L"], "spacing_mm": 2.5, "normalize": "none",
              "registration": {"enabled": True, "onto": "t1c", "max_translation_mm": 15.0, "max_rotation_deg": 15.0}}
MOTION = (3.0, -2.5, 2.0, 3.0, -2.0, 2.5)  # FLAIR after the patient moved: 4.4 mm, 4.4 degrees


def registration_protocol(motion: tuple[float, ...] = MOTION) -> list[SeriesSpec]:
    coarse = dict(rows=80, columns=80, slices=72, pixel_spacing=(2.5, 2.5), slice_thickness=2.5)
    return [SeriesSpec("t1c", "T1C", "axial", **coarse), SeriesSpec("t1n", "T1", "axial", **coarse),
            SeriesSpec("t2w", "T2", "coronal", **coarse),
            SeriesSpec("t2f", "FLAIR", "sagittal", motion=motion, **coarse)]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    tmp_path = tmp_path_factory.mktemp("registered")
    card = load_model_card(threshold_model_with_convention(tmp_path, REGISTERED))
    return model_input_of(tmp_path / "study", registration_protocol(), card)


def test_registration_recovers_the_patients_motion(registered) -> None:
    model_input, _ = registered
    record = model_input.preprocessing
    assert set(record.registrations) == {"t1n", "t2w", "t2f"}
    centre = np.asarray(PHANTOM.center)
    for role, entry in record.registrations.items():
        applied = rigid_motion(MOTION, centre) if role == "t2f" else np.eye(4)
        mm, deg = motion_residual(np.asarray(entry["matrix"]), applied, centre)
        print(f"\n{role}: residual {mm:.2f} mm, {deg:.2f} degrees; found {entry['translation_mm']} mm, "
              f"{entry['rotation_deg']} deg, MI {entry['mattes_mi_before']} -> {entry['mattes_mi_after']}")
        assert entry["accepted"] and mm <= 1.0 and deg <= 1.0
    assert record.registrations["t2f"]["translation_norm_mm"] > 3.0
    assert record.seconds["registration"] > 0


def test_registered_flair_lands_on_the_t1c_anatomy(registered) -> None:
    model_input, _ = registered
    flair = model_input.image[1]  # channel order t2w, t2f, t1n, t1c
    still = PHANTOM.render(model_input.grid_shape, model_input.grid_affine)["t2f"][model_input.crop] * 1000.0
    moved = MovedHead(PHANTOM, rigid_motion(MOTION, PHANTOM.center))
    unregistered = moved.render(model_input.grid_shape, model_input.grid_affine)["t2f"][model_input.crop] * 1000.0
    inside = model_input.valid & (still > 50)
    assert np.abs(flair - still)[inside].mean() < 0.5 * np.abs(unregistered - still)[inside].mean()


@pytest.mark.parametrize("on_failure", ["refuse", "warn"])
def test_motion_beyond_the_cards_limit_is_refused_or_warned(tmp_path: Path, caplog, on_failure: str) -> None:
    strict = {**REGISTERED, "registration": {**REGISTERED["registration"], "max_translation_mm": 2.0,
                                             "on_failure": on_failure}}
    card = load_model_card(threshold_model_with_convention(tmp_path, strict))
    protocol = [spec for spec in registration_protocol() if spec.contrast != "t2w"]
    protocol.append(SeriesSpec("t2w", "T2", "axial", rows=80, columns=80, slices=72, pixel_spacing=(2.5, 2.5),
                               slice_thickness=2.5))
    protocol[1] = dataclasses.replace(protocol[1], rows=40, columns=40, slices=36, pixel_spacing=(5.0, 5.0),
                                      slice_thickness=5.0)  # T1: coarse, registered first, no motion
    if on_failure == "refuse":
        with pytest.raises(StudyError, match="t2f 'FLAIR'") as error:
            model_input_of(tmp_path / "study", protocol, card)
        assert "limit 2 mm" in str(error.value)
        return
    with caplog.at_level(logging.WARNING, logger="operators.registration"):
        model_input, _ = model_input_of(tmp_path / "study", protocol, card)
    entry = model_input.preprocessing.registrations["t2f"]
    assert not entry["accepted"] and "limit 2 mm" in entry["problems"][0]
    assert any("scanner coordinates" in r.getMessage() and "t2f" in r.getMessage() for r in caplog.records)


def test_registration_entry_is_json_ready(registered) -> None:
    from operators.registration import register_rigid
    from operators.volume import ImageVolume

    volume = ImageVolume(array=np.zeros((4, 4, 4), dtype=np.float32), affine=np.eye(4))
    entry = registration_entry(register_rigid(volume, volume))
    assert not entry["accepted"] and entry["mattes_mi_before"] is None and entry["problems"]
    json.dumps(entry, allow_nan=False)


def test_brain_extraction_keeps_an_edge_lesion_and_masks_every_channel(tmp_path: Path) -> None:
    from tests.operators.test_brain_extraction import edge_lesion_head

    head = edge_lesion_head(11)
    convention = {"orientation": ["S", "P", "L"], "spacing_mm": 1.0, "normalize": "zscore_nonzero",
                  "brain_extraction": {"enabled": True, "contrast": "t1n", "normalize_within_mask": True}}
    card = load_model_card(threshold_model_with_convention(tmp_path, convention))
    box = head.bounds()
    centre = tuple(float(v) for v in box.mean(axis=0))
    columns, rows, slices = (int(n) for n in np.ceil((box[1] - box[0] + 8.0) / 1.1))  # x, y, z: the whole head
    fine = dict(rows=rows, columns=columns, slices=slices, pixel_spacing=(1.1, 1.1), slice_thickness=1.1,
                center=centre)
    coarse = dict(rows=rows // 3, columns=columns // 3, slices=slices // 3, pixel_spacing=(3.3, 3.3),
                  slice_thickness=3.3, center=centre)
    specs = [SeriesSpec("t1n", "T1", "axial", **fine), SeriesSpec("t1c", "T1C", "axial", **coarse),
             SeriesSpec("t2w", "T2", "axial", **coarse), SeriesSpec("t2f", "FLAIR", "axial", **coarse)]
    model_input, _ = model_input_of(tmp_path / "study", specs, card, anatomy=head)
    record = model_input.preprocessing
    mask = record.brain_mask
    assert mask.shape == model_input.image.shape[1:] and mask.any()
    assert not model_input.image[:, ~mask].any()  # every channel zero outside the brain
    for channel in model_input.image:  # normalised over the brain only
        assert abs(float(channel[mask].mean())) < 0.05 and abs(float(channel[mask].std()) - 1.0) < 0.05
    grid = grid_points(model_input.grid_shape, model_input.grid_affine)[model_input.crop]
    fields = head.fields(grid)
    brain, tumour = fields["intracranial"] >= 0.5, fields["label"] > 0
    inside = float((tumour & mask).sum()) / float(tumour.sum())
    dice = 2.0 * float((mask & brain).sum()) / float(mask.sum() + brain.sum())
    print(f"\nbrain extraction in the operator: Dice {dice:.4f}, edge tumour inside the mask {inside:.4f}, "
          f"{record.brain_mask_ml:.0f} mL, {record.seconds['brain_extraction']:.1f} s")
    assert dice >= 0.93 and inside >= 0.99
    section = preprocessing_section(Prediction(labels=tumour.astype(np.uint8), model_input=model_input))
    assert section["brain_extraction"]["tumour_fraction_inside_mask"] >= 0.99
    assert abs(section["brain_extraction"]["mask_volume_ml"] - brain.sum() / 1000.0) < 0.1 * brain.sum() / 1000.0


def test_atlas_places_the_model_grid_on_the_head(tmp_path: Path) -> None:
    from operators.input_steps import atlas_template
    from operators.reorientation import model_grid
    from segmamba.synthetic.template import random_template_head

    # The synthetic head is the MNI152 template moved rigidly (no elastic part, unit scale): the atlas
    # registration must find that motion.
    head = dataclasses.replace(random_template_head(5), elastic_mm=0.0, scale=(1.0, 1.0, 1.0), lesion=None,
                               mass_effect=0.0)
    convention = {"orientation": ["S", "P", "L"], "spacing_mm": 1.0, "normalize": "none", "atlas": {"enabled": True},
                  "brain_extraction": {"contrast": "t1n"}}
    card = load_model_card(threshold_model_with_convention(tmp_path, convention))
    box = head.bounds()
    centre = tuple(float(v) for v in box.mean(axis=0))
    columns, rows, slices = (int(n) for n in np.ceil((box[1] - box[0] + 8.0) / 2.0))
    t1 = dict(rows=rows, columns=columns, slices=slices, pixel_spacing=(2.0, 2.0), slice_thickness=2.0, center=centre)
    coarse = dict(rows=rows // 2, columns=columns // 2, slices=slices // 2, pixel_spacing=(4.0, 4.0),
                  slice_thickness=4.0, center=centre)
    specs = [SeriesSpec("t1n", "T1", "axial", **t1), SeriesSpec("t1c", "T1C", "axial", **coarse),
             SeriesSpec("t2w", "T2", "axial", **coarse), SeriesSpec("t2f", "FLAIR", "axial", **coarse)]
    model_input, _ = model_input_of(tmp_path / "study", specs, card, anatomy=head)
    template = atlas_template()
    shape, template_affine = model_grid(template, ("S", "P", "L"), 1.0)
    assert tuple(model_input.grid_shape) == tuple(shape)
    world_from_template = model_input.grid_affine @ np.linalg.inv(template_affine)
    corners = np.array([[x, y, z] for x in (-60.0, 60.0) for y in (-90.0, 50.0) for z in (-50.0, 70.0)])
    template_points = corners + np.array([0.0, 18.0, 10.0])  # around the brain (template LPS mm)
    found = template_points @ world_from_template[:3, :3].T + world_from_template[:3, 3]
    truth = np.array([head.to_world(point) for point in template_points])
    error = np.linalg.norm(found - truth, axis=1)
    print(f"\natlas placement: {error.mean():.2f} mm mean, {error.max():.2f} mm worst over the brain box corners; "
          f"{model_input.preprocessing.atlas}")
    assert error.max() <= 3.0
    section = model_input.preprocessing.to_dict()
    assert "stand-in" in section["atlas"]["template"] and section["convention"]["atlas"]["enabled"]


@pytest.mark.parametrize("registration", ["card", "off"])
def test_application_applies_the_convention_and_the_ablation_switch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registration: str
) -> None:
    from app.cli import main
    from tests.app.test_batch import REFERENCE_DESCRIPTION, REFERENCE_SPECS, phantom_with_lesion, protocol
    from tests.support.seg_geometry import seg_dice

    phantom = phantom_with_lesion(seed=5)
    study = write_study(tmp_path / "in", phantom, protocol(REFERENCE_SPECS["sagittal"]), seed=3)
    convention = {"orientation": ["S", "P", "L"], "spacing_mm": 2.0, "normalize": "none",
                  "registration": {"enabled": True, "onto": "t1c"}}
    model = threshold_model_with_convention(tmp_path, convention)
    code = main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model), "--no-progress",
                 "--registration", registration])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    section = report["preprocessing"]
    assert section["grid"]["orientation"] == ["S", "P", "L"] and section["grid"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert section["convention"]["registration"]["enabled"] == (registration == "card")
    if registration == "card":
        assert set(section["registration"]) == {"t1n", "t2w", "t2f"}
        assert all(entry["accepted"] and entry["translation_norm_mm"] < 1.0
                   for entry in section["registration"].values())  # the phantom did not move
        assert section["seconds"]["registration"] > 0
    else:
        assert section["registration"] is None and "registration" not in section["seconds"]
    assert section["brain_extraction"] is None
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "out" / "segmentation.dcm")
    reference = study.by_description(REFERENCE_DESCRIPTION)
    truth = truth_labels(phantom, reference)
    assert seg.Rows == reference.shape[1] and seg.Columns == reference.shape[0]  # on the native T1c grid
    assert seg_dice(seg, {1, 2, 3}, phantom, {1, 2, 3}, int((truth > 0).sum())) >= 0.95
