"""Training on tiny synthetic cases: the loss falls, checkpoints resume, the export loads in the app."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from segmamba.synthetic import CaseConfig, write_brats_dataset
from tests.support.paths import REPO

TINY = CaseConfig(head_scale=(0.3, 0.34), lesion_radius_mm=(6.0, 9.0), tumour_probability=1.0, margin_mm=3.0)
ARGS = ["--patch", "32", "--feat-size", "8", "16", "32", "64", "--hidden-size", "64", "--batch-size", "2",
        "--iters-per-epoch", "5", "--val-overlap", "0.25", "--freeze-encoder", "--seed", "3", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, two OpenMP threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("brats")
    write_brats_dataset(out, 4, seed=100, config=TINY)
    return out


@pytest.fixture(scope="module")
def run_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segmamba.train import main

    out = tmp_path_factory.mktemp("run")
    main(["--data", str(tiny_data), "--out", str(out), "--epochs", "2", *ARGS])
    return out


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_training_reduces_the_loss_and_writes_its_outputs(run_dir: Path) -> None:
    history = _history(run_dir)
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert float(history[1]["train_loss"]) < 0.8 * float(history[0]["train_loss"])
    for name in ("last.pt", "best.pt", "split.json", "curves.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    split = json.loads((run_dir / "split.json").read_text())
    groups = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, groups)) == 4 and len(set.union(*groups)) == 4 and split["val"]
    assert 0.0 <= float(history[-1]["Dice_WT"]) <= 1.0


def test_frozen_encoder_is_untouched(run_dir: Path) -> None:
    from segmamba import SegMamba

    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    torch.manual_seed(3)  # the seed the run built its model under
    fresh = SegMamba(**state["network_args"]).state_dict()
    vit = [k for k in fresh if k.startswith("vit.")]
    head = [k for k in fresh if k.startswith("out.") and fresh[k].is_floating_point()]
    assert all(torch.equal(fresh[k], state["model"][k]) for k in vit)
    assert not all(torch.equal(fresh[k], state["model"][k]) for k in head)


def test_resume_continues_the_same_run(run_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    from segmamba.train import main

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    before = _history(resumed)
    main(["--data", str(tiny_data), "--out", str(resumed), "--epochs", "3", "--resume", *ARGS])
    after = _history(resumed)
    assert [int(h["epoch"]) for h in after] == [1, 2, 3]
    assert after[:2] == before
    state = torch.load(resumed / "last.pt", map_location="cpu", weights_only=False)
    assert state["iteration"] == 15 and state["epoch"] == 2


def test_init_from_fine_tunes_the_given_weights(run_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    """--init-from starts from an earlier model's float16 weights: the frozen encoder keeps exactly them."""
    from segmamba.export import export_model
    from segmamba.train import main

    folder = export_model(run_dir / "best.pt", tmp_path / "model", name="tiny", version="0.0.1",
                          description="test", intended_use="test")
    init = {k: v.float() for k, v in torch.load(folder / "model.pt", map_location="cpu").items()}
    tuned = tmp_path / "tuned"
    main(["--data", str(tiny_data), "--out", str(tuned), "--epochs", "1", "--init-from", str(folder / "model.pt"),
          *ARGS, "--seed", "4"])
    state = torch.load(tuned / "last.pt", map_location="cpu", weights_only=False)
    vit = [k for k in init if k.startswith("vit.") and init[k].is_floating_point()]
    assert vit and all(torch.equal(state["model"][k], init[k]) for k in vit)
    assert state["config"]["init_from"] == str(folder / "model.pt")
    assert "fine-tuned from" in state["data_description"]


def test_brats_input_convention_in_the_card(run_dir: Path, tmp_path: Path) -> None:
    """--input-convention brats declares the reference convention with the demo's normalisation and TTA."""
    from segmamba.export import REFERENCE_CONVENTION, export_model

    folder = export_model(run_dir / "best.pt", tmp_path / "model", name="tiny", version="0.0.1",
                          description="test", intended_use="test", input_convention="brats")
    block = json.loads((folder / "metadata.json").read_text())["input_convention"]
    assert set(block) == set(REFERENCE_CONVENTION)
    assert block["orientation"] == ["S", "P", "L"] and block["spacing_mm"] == 1.0 and block["reference_role"] == "t1c"
    assert block["normalize"] == "zscore_nonzero" and block["mirror_axes"] == []
    for key in ("registration", "brain_extraction", "atlas"):
        assert block[key] == REFERENCE_CONVENTION[key], key
    assert block["registration"]["on_failure"] == "refuse" and block["brain_extraction"]["contrast"] == "t1n"
    with_tta = export_model(run_dir / "best.pt", tmp_path / "tta", name="tiny", version="0.0.1", description="test",
                            intended_use="test", mirror_tta=True, input_convention="brats")
    assert json.loads((with_tta / "metadata.json").read_text())["input_convention"]["mirror_axes"] == [0, 1, 2]
    # A run trained in its files' voxel order (before --orientation existed) cannot claim the convention.
    old = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    old["config"] = {k: v for k, v in old["config"].items() if k != "orientation"}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="voxel order"):
        export_model(tmp_path / "old.pt", tmp_path / "refused", name="tiny", version="0.0.1", description="test",
                     intended_use="test", input_convention="brats")


def test_exported_folder_loads_in_the_application(run_dir: Path, tmp_path: Path) -> None:
    from operators.model_card import load_model_card
    from operators.segmenters import build_segmenter
    from segmamba import SegMamba, load_checkpoint
    from segmamba.export import DEMO_INTENDED_USE, export_model

    dicom_summary = {"cases": 20, "metrics": {"Dice_WT": {"mean": 0.9}}, "table": "printed only"}
    folder = export_model(run_dir / "best.pt", tmp_path / "model", name="tiny", version="0.0.1",
                          description="test", intended_use=DEMO_INTENDED_USE, min_tumour_ml=0.5,
                          dicom_metrics=dicom_summary)
    recorded = json.loads((folder / "metadata.json").read_text())["validation"]["held_out_dicom_path"]
    assert recorded == {"cases": 20, "metrics": {"Dice_WT": {"mean": 0.9}}}
    weights = torch.load(folder / "model.pt", map_location="cpu")
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    card = load_model_card(folder)
    assert card.inference.roi_size == (32, 32, 32) and card.intended_use == DEMO_INTENDED_USE
    assert card.channel_order == ("t2w", "t2f", "t1n", "t1c")
    assert card.regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert card.postprocessing.min_tumour_ml == 0.5
    # float16 weights load strictly into the float32 network, equal to the checkpoint up to rounding.
    model = SegMamba(**card.network["args"])
    load_checkpoint(model, folder / "model.pt")
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)["model"]
    key = "out.conv.conv.weight"
    assert model.state_dict()[key].dtype == torch.float32
    assert torch.allclose(model.state_dict()[key], best[key], atol=1e-3)
    segmenter = build_segmenter(card, device="cpu", progress=False)
    image = np.random.default_rng(0).normal(size=(4, 40, 36, 44)).astype(np.float32)
    labels = segmenter(image)
    assert labels.shape == (40, 36, 44) and labels.dtype == np.uint8 and labels.max() <= 3


def test_evaluate_runs_a_model_folder(run_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    from segmamba.evaluate import evaluate_model
    from segmamba.export import export_model

    folder = export_model(run_dir / "best.pt", tmp_path / "model", name="tiny", version="0.0.1",
                          description="test", intended_use="test", overlap=0.25)
    split = json.loads((run_dir / "split.json").read_text())
    rows = evaluate_model(folder, tiny_data, split["val"], save_dir=tmp_path / "pred", progress=False)
    assert [r["case"] for r in rows] == split["val"]
    assert all(0.0 <= r["Dice_WT"] <= 1.0 for r in rows)
    assert (tmp_path / "pred" / f"{split['val'][0]}.nii.gz").is_file()
    # A card with the BraTS convention is evaluated in its orientation: predictions are on the S,P,L grid.
    import nibabel as nib

    brats = export_model(run_dir / "best.pt", tmp_path / "brats", name="tiny", version="0.0.1", description="test",
                         intended_use="test", overlap=0.25, input_convention="brats")
    evaluate_model(brats, tiny_data, split["val"][:1], save_dir=tmp_path / "pred-brats", progress=False)
    saved = nib.load(tmp_path / "pred-brats" / f"{split['val'][0]}.nii.gz")
    truth = nib.load(tiny_data / split["val"][0] / f"{split['val'][0]}-seg.nii.gz")
    assert nib.aff2axcodes(saved.affine) == ("S", "P", "L") != nib.aff2axcodes(truth.affine)
    assert saved.shape == tuple(reversed(truth.shape))  # the files are L,P,S: a transpose
    swept = evaluate_model(folder, tiny_data, split["val"], progress=False, sweep_min_tumour_ml=[0.0, 1e9])
    assert [(r["case"], r["min_tumour_ml"]) for r in swept] == [(c, t) for c in split["val"] for t in (0.0, 1e9)]
    # A threshold above any tumour empties every prediction: Dice is 1 on empty truths and 0 elsewhere.
    assert all(r["Dice_WT"] in (0.0, 1.0) for r in swept if r["min_tumour_ml"] == 1e9)


def test_shipped_demo_model_segments_a_synthetic_lesion(tmp_path: Path) -> None:
    """The demo model in models/ finds a held-out synthetic tumour in the convention its card declares
    (a skull-stripped BraTS-layout case read in the card's orientation; on a 96^3 crop, for speed)."""
    from operators.model_card import load_model_card
    from operators.segmenters import build_segmenter
    from segmamba.data import find_cases, load_case, preprocess
    from segmamba.evaluate import region_metrics
    from segmamba.export import DEMO_INTENDED_USE
    from segmamba.synthetic import generate_case, write_brats_case

    card = load_model_card(REPO / "models" / "segmamba-demo")
    assert card.intended_use == DEMO_INTENDED_USE
    assert sum(p.stat().st_size for p in card.folder.iterdir()) <= 20 * 1024 * 1024
    convention = json.loads((card.folder / "metadata.json").read_text())["input_convention"]
    assert convention["orientation"] == ["S", "P", "L"] and convention["brain_extraction"]["enabled"]
    case = generate_case(90001, CaseConfig(tumour_probability=1.0, lesion_radius_mm=(22.0, 26.0),
                                           skull_strip_probability=1.0))
    write_brats_case(case, tmp_path)
    raw = load_case(find_cases(tmp_path)[0], card.channel_order, convention["orientation"])
    image, label = preprocess(raw["image"], raw["label"])
    assert label is not None
    centre = np.argwhere(label[0] > 0).mean(axis=0).astype(int)
    box = tuple(slice(max(0, c - 48), max(0, c - 48) + 96) for c in centre)
    segmenter = build_segmenter(card, device="cpu", progress=False)
    pred = segmenter(image[(slice(None), *box)])
    metrics = region_metrics(pred, label[0][box])
    assert metrics["Dice_WT"] > 0.8 and metrics["Dice_TC"] > 0.6 and metrics["Dice_ET"] > 0.5, metrics
