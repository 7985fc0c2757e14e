"""The dataset's localiser: planned at twice the spacing, preprocessed and trained beside the model,
never a candidate of find_best, and the first look of ``predict --localise`` when trained."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError, ConfigurationError, PlansError
from autoseg.inference.localise import find_localiser, localiser_scout, open_localiser
from autoseg.inference.predictor import PredictOptions, predict_case
from autoseg.io import Geometry, write_image
from autoseg.layout import LOCALISER_FOLDER, PreprocessedDataset, ResultsDataset
from autoseg.phantom import write_task
from autoseg.planners.planner import localiser_plans
from autoseg.plans import LOCALISER_SPACING_FACTOR, Plans
from autoseg.preprocessing import preprocess_case
from autoseg.regions import Region
from autoseg.sliding_window import WindowOptions
from autoseg.training.run import TrainRequest, localiser_dataset
from tests.test_localise import PATCH, Folds
from tests.test_plans import make_plans

from .workspaces import SMALL_SPACINGS, use_workspace


def test_localiser_plans_are_the_models_at_twice_the_spacing(tmp_path: Path) -> None:
    plans = make_plans(target_spacing=(2.5, 0.8, 0.8), median_shape=(80, 300, 400))
    loc = localiser_plans(plans)
    assert LOCALISER_SPACING_FACTOR == 2
    assert loc.target_spacing == (5.0, 1.6, 1.6) and loc.median_shape == (40, 150, 200)
    for same in ("patch_size", "batch_size", "network", "labels", "normalisation", "crop_to_body", "orientation",
                 "recipe", "augmentation", "resampling"):
        assert getattr(loc, same) == getattr(plans, same), same
    assert loc.localiser == plans.sha256() and len(loc.localiser) == 64  # derived from these very plans
    assert loc.configuration == LOCALISER_FOLDER and plans.configuration == "arunet"
    loc.save(tmp_path / "loc.json")
    plans.save(tmp_path / "model.json")
    assert Plans.load(tmp_path / "loc.json") == loc
    assert "localiser" not in json.loads((tmp_path / "model.json").read_text())  # a model's file is unchanged
    with pytest.raises(Exception, match="regions do not apply"):
        loc.replace(regions=(Region(1, (1,)),))


def _ct(path: Path, hu: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> Path:
    write_image(path, hu, Geometry(hu.shape[::-1], spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    return path


def _bright_case(tmp_path: Path) -> tuple[Path, np.ndarray]:
    hu = np.full((20, 48, 56), -100, np.int16)
    hu[8:12, 18:26, 30:36] = 200
    return _ct(tmp_path / "ct.nii.gz", hu), hu


def test_predict_localises_with_the_localiser_for_an_eighth_of_the_scouts_work(tmp_path: Path) -> None:
    image, hu = _bright_case(tmp_path)
    labels = {0: "background", 1: "bright", 2: "never"}
    plans = make_plans(patch_size=PATCH, batch_size=32, target_spacing=(2.5, 0.8, 0.8), crop_to_body=False,
                       labels=labels)
    by_scout, by_localiser = Folds(plans), Folds(plans)
    localiser = Folds(localiser_plans(plans), n=3, folder=tmp_path / "localiser")  # its first fold looks
    scouted = predict_case(by_scout, "ct", image, PredictOptions(precision="fp32", localise=True))
    found = predict_case(by_localiser, "ct", image, PredictOptions(precision="fp32", localise=True,
                                                                    localiser=localiser))
    assert scouted.report.localised_by == "scout" and found.report.localised_by == str(tmp_path / "localiser")
    assert np.array_equal(found.labels == 1, hu > 100) and np.array_equal(scouted.labels, found.labels)
    kept, total = found.report.localised_tiles
    assert 0 < kept < total
    # the localiser's pass costs about an eighth of the scout's (at least a patch, padded)
    scout_pass = by_scout.net.voxels - by_localiser.net.voxels
    assert 0 < localiser.net.voxels < scout_pass / 2


def test_the_localisers_probabilities_land_on_the_models_grid(tmp_path: Path) -> None:
    image, hu = _bright_case(tmp_path)
    plans = make_plans(patch_size=PATCH, batch_size=32, target_spacing=(2.5, 0.8, 0.8),
                       labels={0: "background", 1: "bright", 2: "never"})
    pre = preprocess_case([image], None, plans, case_id="ct")
    localiser = Folds(localiser_plans(plans), n=1)
    scout = localiser_scout(localiser, image, "ct", pre, WindowOptions(precision="fp32"))
    assert scout is not None and scout.shape == (3, *pre.data.shape[1:])
    assert np.allclose(scout.sum(0), 1, atol=1e-4)
    found = scout.argmax(0) == 1  # the bright box, found at half the resolution: inside it, about its size
    bright = pre.data[0] > pre.data[0].mean() + 2 * pre.data[0].std()
    assert found.any() and (found & bright).sum() >= 0.7 * bright.sum() and found.sum() <= 2.5 * bright.sum()


def test_a_localiser_cropping_otherwise_leaves_the_look_to_the_scout(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    hu = np.full((20, 48, 56), -1000, np.int16)  # air around a body: cropping to the body crops
    hu[:, 6:42, 8:50] = 40
    image = _ct(tmp_path / "ct.nii.gz", hu)
    plans = make_plans(patch_size=PATCH, batch_size=32, target_spacing=(2.5, 0.8, 0.8), crop_to_body=True,
                       labels={0: "background", 1: "bright", 2: "never"})
    pre = preprocess_case([image], None, plans.replace(crop_to_body=False), case_id="ct")
    with caplog.at_level(logging.WARNING):
        assert localiser_scout(Folds(localiser_plans(plans), n=1), image, "ct", pre, WindowOptions()) is None
    assert "localising with the scout" in caplog.text


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("localiser")
    write_task(root / "raw", task="Task08", num_training=5, num_test=1, seed=3, spacing_range=SMALL_SPACINGS)
    return root


def test_plan_train_and_predict_with_the_localiser(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = use_workspace(workspace, monkeypatch)
    plan = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]
    tiny = ["-f", "0", "--steps", "3", "-j", "0", "--threads", "1"]
    assert main(plan) == 0
    pre = PreprocessedDataset(next((root / "pre").iterdir()))
    with pytest.raises(AutosegError, match="plan_and_preprocess -d 8 --localiser"):
        localiser_dataset(TrainRequest(dataset="8", localiser=True), pre)
    assert main([*plan, "--localiser"]) == 0
    model_plans, loc_plans = Plans.load(pre.plans), Plans.load(pre.localiser.plans)
    assert loc_plans == localiser_plans(model_plans)
    assert pre.localiser.case_ids() == pre.case_ids()
    case = pre.case_ids()[0]
    model_case = json.loads(pre.case(case).properties.read_text())
    loc_case = json.loads(pre.localiser.case(case).properties.read_text())
    assert loc_case["crop_bbox"] == model_case["crop_bbox"]  # the same box of the input, at half the resolution
    assert all(abs(a / 2 - b) <= 1 for a, b in zip(model_case["shape_after_resampling"],
                                                   loc_case["shape_after_resampling"]))
    with pytest.raises(ConfigurationError, match="--regions and --network do not apply"):
        localiser_dataset(TrainRequest(dataset="8", localiser=True, regions=True), pre)

    # the dataset's plans edited by hand: the localiser planned from the old ones is stale
    edited = model_plans.replace(batch_size=model_plans.batch_size + 1)
    edited.save(pre.plans)
    with pytest.raises(PlansError, match="plan_and_preprocess -d 8 --localiser"):
        localiser_dataset(TrainRequest(dataset="8", localiser=True), pre)
    with caplog.at_level(logging.WARNING):
        assert main([*plan, "--only", "plan"]) == 0  # the dataset's plans are kept; the stale localiser is named
    assert "planned from other plans" in caplog.text and Plans.load(pre.plans) == edited
    assert main([*plan, "--only", "plan", "--only", "preprocess", "--localiser"]) == 0
    assert Plans.load(pre.localiser.plans) == localiser_plans(edited)
    model_plans.save(pre.plans)
    assert main([*plan, "--only", "plan", "--localiser"]) == 0
    assert Plans.load(pre.localiser.plans) == loc_plans

    assert main(["train", "-d", "8", "--localiser", *tiny]) == 0
    assert main(["train", "-d", "8", *tiny]) == 0
    results = ResultsDataset(root / "res" / pre.name)
    assert results.localiser.fold(0).final.is_file() and Plans.load(results.localiser.plans).localiser
    assert main(["find_best", "-d", "8"]) == 0
    summary = json.loads(results.cv_summary.read_text())
    assert LOCALISER_FOLDER not in summary["networks"] and "arunet" in summary["networks"]

    images = root / "raw" / "Task08_HepaticVessel" / "imagesTs"
    out = root / "pred"
    assert main(["predict", "-i", str(images), "-o", str(out), "-d", "8", "-f", "0", "--localise"]) == 0
    report = json.loads(next(out.glob("*.report.json")).read_text())
    assert report["localised_by"] == str(results.localiser.root)
    capsys.readouterr()
    assert main(["predict", "-i", str(images), "-o", str(root / "p2"), "-d", "8", "--localiser",
                 str(results.localiser.root)]) == 2
    assert "add --localise" in capsys.readouterr().err and not (root / "p2").exists()
    assert main(["predict", "-i", str(images), "-o", str(root / "p3"), "-d", "8", "--localise", "--localiser",
                 str(results.model("arunet").root)]) == 2
    assert "not a localiser" in capsys.readouterr().err
    assert main(["predict", "-i", str(images), "-o", str(root / "p4"), "-m", str(results.model("arunet").root),
                 "-f", "0", "--localise", "--localiser", str(results.localiser.root)]) == 0
    report = json.loads(next((root / "p4").glob("*.report.json")).read_text())
    assert report["localised_by"] == str(results.localiser.root) and "localiser" in report["stage_seconds"]
    # an ensemble's folder finds the localiser beside it too
    ensemble = Folds(Plans.load(results.model("arunet").plans), folder=results.ensemble(["arunet", "x"]).root)
    ensemble.folder.mkdir()
    assert find_localiser(ensemble).folder == results.localiser.root


@pytest.mark.parametrize("field, other", [("labels", {0: "background", 1: "liver"}), ("orientation", None),
                                          ("channel_names", ("MR",)), ("crop_to_body", False)])
def test_a_localiser_that_does_not_fit_the_model_is_refused(tmp_path: Path, field: str, other: object,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    results = ResultsDataset(tmp_path / "Task08_HepaticVessel")
    plans = make_plans(orientation="LPS")
    localiser_plans(plans.replace(**{field: other})).save(results.localiser.plans)
    results.localiser.fold(0).root.mkdir()
    results.localiser.fold(0).final.write_bytes(b"")  # never opened: refused before
    model = Folds(plans, folder=results.model("arunet").root)
    with pytest.raises(ConfigurationError, match=f"localiser's {field}"):
        open_localiser(results.localiser.root, model)  # type: ignore[arg-type]
    model.folder.mkdir()
    with caplog.at_level(logging.WARNING):  # found beside the model: the scout looks instead
        assert find_localiser(model) is None  # type: ignore[arg-type]
    assert "does not fit the model" in caplog.text
