"""Typed, versioned artefacts (autoseg.schema, autoseg.artefacts): every JSON file a stage hands on
loads back identical, loads without a version key when autoseg wrote it before artefacts carried one,
and refuses a hand-edited bad value with an error naming the file, the dotted field and the fix."""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from autoseg.artefacts import (BestChoice, Candidate, CaseProperties, ClassEvidence, CvSummary, Fingerprint,
                               FoldSummary, NetworkResult, PostprocessingDecision, RoiReport)
from autoseg.datasets import Dataset
from autoseg.errors import AutosegError, EvaluationError, PlansError
from autoseg.io import Geometry
from autoseg.layout import ModelFolder, ResultsDataset
from autoseg.plans import Augmentation, Normalisation, Plans, Precision, Recipe
from autoseg.precision import PRECISIONS
from autoseg.schema import Artefact
from tests.test_plans import make_plans


# --- sample artefacts, made by the code that makes them ------------------------------------------------

def make_fingerprint() -> Fingerprint:
    from autoseg.planners.fingerprint import CaseFingerprint, aggregate

    labels = {0: "background", 1: "vessel", 2: "tumour"}
    dataset = Dataset("Task08_HepaticVessel", Path("raw"), "msd", ("CT",), labels, ())
    rng = np.random.default_rng(0)
    cases = [CaseFingerprint(f"hv_{i}", (2.5, 0.8, 0.8), (40 + i, 64, 64), (30, 50, 50), 30 * 50 * 50,
                             {1: 100 + i, 2: 20}, {k: rng.normal(100, 30, (1, 50)) for k in (0, 1, 2)}, -1000.0, 400.0)
             for i in range(3)]
    return Fingerprint.from_dict({**aggregate(dataset, cases, None), "inputs_key": "abc"})


def make_properties(case_id: str = "case_0", shape: tuple[int, int, int] = (6, 8, 10),
                    class_locations: dict[int, Any] | None = None, **changes: Any) -> CaseProperties:
    """Complete properties of a preprocessed case of ``shape`` (uncropped, unresampled, 1 mm)."""
    locations = {int(k): tuple(tuple(int(c) for c in p) for p in v) for k, v in (class_locations or {}).items()}
    base = dict(case_id=case_id, image_files=(f"{case_id}_0000.nii.gz",), label_file=f"{case_id}.nii.gz",
                original_geometry=Geometry(shape[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                original_shape=shape, original_spacing=(1.0, 1.0, 1.0), crop_bbox=tuple((0, n) for n in shape),
                shape_after_crop=shape, intensity_min=(-1000.0,), intensity_max=(300.0,), shape_after_resampling=shape,
                target_spacing=(1.0, 1.0, 1.0), num_channels=1, has_label=True,
                class_voxels={k: len(v) for k, v in locations.items()}, class_locations=locations, plans_key="k")
    base.update(changes)
    return CaseProperties(**base)  # type: ignore[arg-type]


def make_fold_summary() -> FoldSummary:
    per_case = {"hv_0": {"vessel": 0.5, "tumour": None, "mean_foreground": 0.5},
                "hv_1": {"vessel": 0.7, "tumour": 0.6, "mean_foreground": 0.65}}
    return FoldSummary.from_cases(per_case, {1: "vessel", 2: "tumour"}, seconds=1.5)


def make_cv_summary() -> CvSummary:
    result = NetworkResult("adam_poly", (0, 1), 4, {"vessel": 0.6, "tumour": None}, 0.6, {0: 0.5, 1: None})
    return CvSummary("Task08_HepaticVessel", 5, {"arunet": result})


def make_best() -> BestChoice:
    return BestChoice("arunet", 0.6, (0, 1), "adam_poly", False,
                      {"arunet": Candidate(0.6, (0, 1), "adam_poly", True),
                       "plain_unet": Candidate(None, (0,), None, False)})


def make_decision() -> PostprocessingDecision:
    evidence = {"liver": ClassEvidence(1, 0.8, {"keep_largest_component": 0.9, "min_component_ml=0.01": 0.85},
                                       "keep_largest_component", 0.9, True),
                "tumour": ClassEvidence(2, 0.5, {"keep_largest_component": 0.3, "min_component_ml=0.1": 0.6},
                                        "min_component_ml=0.1", 0.6, True)}
    return PostprocessingDecision((1,), {2: 0.1}, evidence, 4, (2.5, 0.8, 0.8), "per class, ...")


def make_report() -> Any:
    from autoseg.inference.report import measure_case

    labels = np.zeros((6, 8, 10), np.uint8)
    labels[1:3, 1:3, 1:3], labels[4:6, 5:8, 5:9] = 2, 1
    report = measure_case(labels, Geometry((10, 8, 6), (0.8, 0.8, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                          {1: "vessel", 2: "tumour"}, 1.234, [0, 1])
    roi = RoiReport("/models/liver", 10.0, 1.5, 0.0, ((0, 6), (0, 8), (0, 10)), 0.4)
    return dataclasses.replace(report, input="ct.nii.gz", precision="bf16", stage_seconds={"preprocess": 0.1},
                               region_shape=(6, 8, 10), postprocessing=make_decision().rules, roi=roi,
                               overlays=("ct_z001.png",))


SAMPLES: dict[str, Callable[[], Artefact]] = {
    "fingerprint": make_fingerprint, "properties": lambda: make_properties(class_locations={1: [[1, 2, 3]]}),
    "fold_summary": make_fold_summary, "cv_summary": make_cv_summary, "best": make_best,
    "postprocessing": make_decision, "report": make_report, "plans": make_plans,
}

# (artefact, dotted path to edit, new value or DELETE, what the message must say)
DELETE = object()
BAD_EDITS = [
    ("fingerprint", "cases.0.spacing.0", "thick", "'cases[0].spacing[0]' must be a number, got 'thick'"),
    ("fingerprint", "format", "dicom", "format 'dicom' is not one of msd, nnunet"),
    ("fingerprint", "intensity.0.foreground.quantiles", 5, "'intensity.0.foreground.quantiles' must be a list"),
    ("fingerprint", "slices", DELETE, "missing field 'slices'"),
    ("fingerprint", "fingerprint_version", 2, "fingerprint_version is 2 (written by a newer autoseg)"),
    ("fingerprint", "fingerprint_version", 0, "fingerprint_version is 0; this autoseg reads version 1"),
    ("fingerprint", "fingerprint_version", DELETE, "fingerprint_version is missing"),
    ("properties", "crop_bbox.1", [0, 2, 4], "'crop_bbox[1]' must have 2 entries, got 3"),
    ("properties", "has_label", "yes", "'has_label' must be true or false"),
    ("properties", "class_locations.1.0.2", 2.5, "'class_locations.1[0][2]' must be a whole number"),
    ("properties", "original_geometry", DELETE, "missing field 'original_geometry'"),
    ("properties", "properties_version", 3, "properties_version is 3 (written by a newer autoseg)"),
    ("fold_summary", "checkpoint", "middle", "checkpoint 'middle' is not one of final, latest, best"),
    ("fold_summary", "cases.hv_0.vessel", "high", "'cases.hv_0.vessel' must be a number"),
    ("fold_summary", "mean_dice", DELETE, "missing field 'mean_dice'"),
    ("fold_summary", "summary_version", "1", "summary_version is '1'"),
    ("cv_summary", "networks.arunet.folds.1", "one", "'networks.arunet.folds[1]' must be a number"),
    ("cv_summary", "networks.arunet.num_cases", DELETE, "missing field 'networks.arunet.num_cases'"),
    ("cv_summary", "cv_summary_version", 2, "cv_summary_version is 2 (written by a newer autoseg)"),
    ("best", "candidates.arunet.eligible", "yes", "'candidates.arunet.eligible' must be true or false"),
    ("best", "network", DELETE, "missing field 'network'"),
    ("best", "best_version", 7, "best_version is 7"),
    ("postprocessing", "min_component_ml.2", "big", "'min_component_ml.2' must be a number"),
    ("postprocessing", "evidence.liver.enabled", "no", "'evidence.liver.enabled' must be true or false"),
    ("postprocessing", "cases", DELETE, "missing field 'cases'"),
    ("postprocessing", "postprocessing_version", 2, "postprocessing_version is 2 (written by a newer autoseg)"),
    ("report", "precision", "fp64", "precision 'fp64' is not one of fp32, bf16, fp16"),
    ("report", "roi.bbox.0", [0], "'roi.bbox[0]' must have 2 entries, got 1"),
    ("report", "tumours.lesions.0.voxels", -1.5, "'tumours.lesions[0].voxels' must be a whole number"),
    ("report", "volumes_ml", DELETE, "missing field 'volumes_ml'"),
    ("report", "report_version", 2, "report_version is 2 (written by a newer autoseg)"),
    ("plans", "recipe.schedule", "cosine", "recipe.schedule 'cosine' is not one of poly, plateau"),
    ("plans", "recipe.optimizer", "rmsprop", "recipe.optimizer 'rmsprop' is not one of sgd, adam"),
    ("plans", "recipe.precision", "fp64", "recipe.precision 'fp64' is not one of auto, fp32, bf16, fp16"),
    ("plans", "normalisation.0.scheme", "minmax", "normalisation[0].scheme 'minmax' is not one of ct, zscore"),
    ("plans", "resampling.label_volume", "nearest", "resampling.label_volume 'nearest' is not one of keep, argmax"),
    ("plans", "augmentation.in_plane_only", "yes", "'augmentation.in_plane_only' must be true or false"),
]


def _edit(data: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if isinstance(data, list):
        data[int(last)] = value
    elif value is DELETE:
        del data[last]
    else:
        data[last] = value


@pytest.mark.parametrize("kind", SAMPLES)
def test_save_then_load_is_identical(tmp_path: Path, kind: str) -> None:
    artefact = SAMPLES[kind]()
    path = tmp_path / f"{kind}.json"
    artefact.save(path)
    loaded = type(artefact).load(path)
    assert loaded == artefact and loaded.to_dict() == artefact.to_dict() == json.loads(path.read_text())
    assert json.loads(path.read_text())[artefact.VERSION_KEY] == artefact.VERSION


@pytest.mark.parametrize("kind,dotted,value,message", BAD_EDITS, ids=[f"{k}:{d}" for k, d, _, _ in BAD_EDITS])
def test_hand_edited_bad_value_names_the_file_and_the_field(tmp_path: Path, kind: str, dotted: str, value: Any,
                                                            message: str) -> None:
    artefact = SAMPLES[kind]()
    path = tmp_path / f"{kind}.json"
    data = artefact.to_dict()
    _edit(data, dotted, value)
    path.write_text(json.dumps(data))
    with pytest.raises(AutosegError) as err:
        type(artefact).load(path)
    text = str(err.value)
    assert isinstance(err.value, artefact.ERROR) and err.value.path == path
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\nFix: " in text and artefact.FIX in text


@pytest.mark.parametrize("kind", [k for k in SAMPLES if k not in ("fingerprint", "plans")])
def test_file_written_before_versions_loads_as_version_1(tmp_path: Path, kind: str) -> None:
    artefact = SAMPLES[kind]()
    data = artefact.to_dict()
    del data[artefact.VERSION_KEY]
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(data))
    assert type(artefact).load(path) == artefact


def test_fingerprint_version_error_says_to_fingerprint_again(tmp_path: Path) -> None:
    from autoseg.planners.fingerprint import load_fingerprint, save_fingerprint

    fingerprint = make_fingerprint()
    path = save_fingerprint(fingerprint, tmp_path)
    assert load_fingerprint(path) == fingerprint and (tmp_path / "slices.png").is_file()
    data = json.loads(path.read_text())
    data["fingerprint_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(PlansError, match=r"(?s)fingerprint_version is 2.*plan_and_preprocess .*--force"):
        load_fingerprint(path)


def test_missing_and_broken_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="best-model choice file not found"):
        BestChoice.load(tmp_path / "best.json")
    (tmp_path / "best.json").write_text("{ not json")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        BestChoice.load(tmp_path / "best.json")
    (tmp_path / "best.json").write_text("[1, 2]")
    with pytest.raises(EvaluationError, match="must hold a JSON object, not list"):
        BestChoice.load(tmp_path / "best.json")


def test_json_view_reads_like_the_file() -> None:
    props = make_properties(class_locations={2: [[1, 2, 3]]})
    assert props["class_locations"] == {"2": [[1, 2, 3]]} and props["original_shape"] == [6, 8, 10]
    assert props.class_locations == {2: ((1, 2, 3),)} and props.get("absent", 4) == 4
    assert make_report().to_dict()["postprocessing"] == {"keep_largest_component": [1], "min_component_ml": {"2": 0.1},
                                                         "keep_largest_foreground": False,
                                                         "min_component_confidence": {}, "inside_parent": {}}
    minimal = make_report().to_dict()
    assert "input" in minimal and "roi" in minimal  # optional fields are written when set, absent otherwise
    from autoseg.inference.report import measure_case

    grid = Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    bare = measure_case(np.zeros((2, 2, 2), np.uint8), grid, {1: "liver"}, 0.5, [0]).to_dict()
    assert set(bare) == {"report_version", "volumes_ml", "voxel_volume_ml", "shape_zyx", "spacing_zyx", "folds",
                         "seconds"}


# --- the plans' closed sets and the augmentation decision ----------------------------------------------

def test_precision_literal_matches_the_precisions_autoseg_knows() -> None:
    assert typing.get_args(Precision) == PRECISIONS


def test_a_name_outside_a_closed_set_is_refused_when_built_in_code_too() -> None:
    with pytest.raises(PlansError, match="recipe.schedule 'cosine' is not one of poly, plateau"):
        make_plans(recipe=Recipe(schedule="cosine"))  # type: ignore[arg-type]
    with pytest.raises(PlansError, match=r"normalisation\[0\]\.scheme 'minmax'"):
        make_plans(normalisation=(Normalisation("minmax"),))  # type: ignore[arg-type]


@pytest.mark.parametrize("spacing,in_plane", [((2.5, 0.8, 0.8), True), ((2.0, 0.8, 0.8), False),
                                              ((1.0, 1.0, 1.0), False), ((5.0, 0.7, 0.9), True)])
def test_old_plans_get_the_augmentation_decision_training_made(tmp_path: Path, spacing: tuple, in_plane: bool) -> None:
    """The rule training applied before the plans carried it: z spacing over 2.5x the finest in-plane."""
    plans = make_plans(target_spacing=spacing)
    data = plans.to_dict()
    assert data["augmentation"] == {"in_plane_only": in_plane}
    del data["augmentation"]  # a plans.json written before the field
    (tmp_path / "plans.json").write_text(json.dumps(data))
    assert Plans.load(tmp_path / "plans.json").augmentation == Augmentation(in_plane)
    data["augmentation"] = {"in_plane_only": not in_plane}  # a hand edit is honoured
    (tmp_path / "plans.json").write_text(json.dumps(data))
    assert Plans.load(tmp_path / "plans.json").augmentation == Augmentation(not in_plane)


def test_planner_stores_the_augmentation_decision() -> None:
    from autoseg.planners.planner import PlannerOptions, plan
    from tests.test_planner import fingerprint

    thick = plan(fingerprint(spacing=(5.0, 0.8, 0.8)), PlannerOptions(cpu_gflops=40.0))
    assert thick.augmentation == Augmentation(in_plane_only=True)
    thin = plan(fingerprint(spacing=(1.0, 0.8, 0.8)), PlannerOptions(cpu_gflops=40.0))
    assert thin.augmentation == Augmentation(False)
    typed = plan(make_fingerprint(), PlannerOptions(cpu_gflops=40.0))  # the typed fingerprint plans as its JSON
    assert typed == plan(make_fingerprint().to_dict(), PlannerOptions(cpu_gflops=40.0))


# --- the owners read through the schema ----------------------------------------------------------------

def test_owners_refuse_hand_broken_artefacts(tmp_path: Path) -> None:
    from autoseg.inference.crossval import best_network, summarize
    from autoseg.inference.postprocessing import load_postprocessing
    from autoseg.preprocessing.storage import is_up_to_date, load_case, write_case

    results = ResultsDataset(tmp_path / "res" / "Task08_HepaticVessel")
    fold = results.model("arunet").fold(0)
    fold.validation.root.mkdir(parents=True)
    bad = make_fold_summary().to_dict()
    bad["mean_dice"]["vessel"] = "good"
    fold.validation.summary.write_text(json.dumps(bad))
    with pytest.raises(EvaluationError, match=r"'mean_dice.vessel' must be a number") as err:
        summarize(results.root)
    assert err.value.path == fold.validation.summary and "retrain the fold" in str(err.value)

    results.best.write_text(json.dumps({"network": "resenc_unet"}))  # a hand-written choice is honoured
    assert best_network(results.root) == "resenc_unet"
    results.best.write_text(json.dumps({"network": 3}))
    with pytest.raises(EvaluationError, match="'network' must be a string"):
        best_network(results.root)

    model = results.model("arunet")
    make_decision().save(model.postprocessing)
    assert load_postprocessing(type("M", (), {"folder": model.root})()) == make_decision()
    broken = make_decision().to_dict()
    broken["keep_largest_component"] = "liver"
    model.postprocessing.write_text(json.dumps(broken))
    with pytest.raises(AutosegError, match="'keep_largest_component' must be a list"):
        load_postprocessing(type("M", (), {"folder": model.root})())

    pre = tmp_path / "pre"
    write_case(pre, "case_0", np.zeros((1, 6, 8, 10), np.float32), np.zeros((6, 8, 10), np.uint8), make_properties())
    assert is_up_to_date(pre, "case_0", "k") and load_case(pre, "case_0")[2] == make_properties()
    newer = {**make_properties().to_dict(), "properties_version": 2}
    (pre / "data" / "case_0.json").write_text(json.dumps(newer))
    assert not is_up_to_date(pre, "case_0", "k")  # redone by the next plan_and_preprocess
    with pytest.raises(AutosegError, match="properties_version is 2"):
        load_case(pre, "case_0")


def test_model_folder_and_results_names_come_from_layout(tmp_path: Path) -> None:
    """The owners write where autoseg.layout says (the names the previous autoseg used)."""
    from autoseg.inference.crossval import write_best, write_cv_summary
    from autoseg.training.fold_validation import write_summary

    results = ResultsDataset(tmp_path)
    assert write_cv_summary(tmp_path, make_cv_summary()) == tmp_path / "cv_summary.json" == results.cv_summary
    assert write_best(tmp_path, make_best()) == tmp_path / "best.json" == results.best
    folder = ModelFolder(tmp_path / "arunet").fold(0).validation
    summary = write_summary(folder.root, {"a": {"vessel": 0.5}}, {1: "vessel"}, ensemble=["x", "y"])
    assert FoldSummary.load(tmp_path / "arunet" / "fold_0" / "validation" / "summary.json") == summary
    assert summary.ensemble == ("x", "y") and summary["ensemble"] == ["x", "y"]


def test_fold_record_and_ensemble_manifest_name_a_bad_field(tmp_path: Path) -> None:
    """fold.json (what `train --continue` resumes with) and ensemble.json load through the schema too:
    an old file without a version loads, a hand-edited bad value names its field."""
    from autoseg.artefacts import EnsembleManifest, FoldRecord

    record = tmp_path / "fold.json"
    old = {"fold": 1, "seed": 7, "schedule": {"epochs": 3, "iterations_per_epoch": 50, "time_budget_s": None,
                                             "steps": None},
           "step_time_estimate_s": 0.4, "threads_at_start": 2, "started": "2026-12-04 10:00:00"}
    record.write_text(json.dumps(old))
    loaded = FoldRecord.load(record)
    assert loaded.seed == 7 and loaded.schedule.epochs == 3
    loaded.save(record)
    assert FoldRecord.load(record) == loaded and json.loads(record.read_text())["record_version"] == 1
    record.write_text(json.dumps({**old, "schedule": {**old["schedule"], "epochs": "three"}}))
    with pytest.raises(AutosegError, match="schedule.epochs") as err:
        FoldRecord.load(record)
    assert err.value.path == record
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": ["arunet"], "rule": "mean"}))
    with pytest.raises(AutosegError, match="members") as err:
        EnsembleManifest.load(manifest)
    assert err.value.path == manifest
