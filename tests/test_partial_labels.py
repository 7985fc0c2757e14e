"""Partial labels and merged datasets (issue 22, one model for liver, vessels and tumours):
the label space, its scoring, the losses, ``--merge``, and a merged dataset trained end to end."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoseg.cli import main
from autoseg.datasets import load_dataset
from autoseg.errors import DatasetError
from autoseg.io import read_label
from autoseg.merge import class_key, merge_datasets, plan_merge
from autoseg.metrics import dice_per_class
from autoseg.partial_labels import LabelSpace, PartialLabel
from autoseg.phantom import write_task
from autoseg.training.losses import DiceCE, DiceWeightedCE, PartialTargets, WeightedDiceFocal, soft_dice_per_class
from tests.workspaces import SMALL_SPACINGS, autoseg_env

#: The space a Task03 + Task08 merge makes: 1 liver, 2 vessel, 3 tumour; 4 Task03's background
#: (background or vessel), 5 Task03's liver (liver or vessel), 6 Task08's background (background or liver).
MERGED = LabelSpace(4, [PartialLabel(4, (0, 2), 0), PartialLabel(5, (1, 2), 1), PartialLabel(6, (0, 1), 0)])


def test_space_says_which_classes_a_case_annotates() -> None:
    assert MERGED.num_values == 7
    assert MERGED.foreground_values() == [1, 2, 3, 5]
    assert MERGED.unannotated([4, 5, 3]) == {2}  # a Task03 case says nothing about vessels
    assert MERGED.unannotated([6, 2, 3]) == {1}  # a Task08 case nothing about the liver
    assert MERGED.unannotated([0, 1, 2, 3]) == set()


def test_a_task03_case_is_scored_as_task03_labels_it() -> None:
    ref = np.array([4, 4, 5, 5, 5, 3, 3, 4], np.uint8)  # background, liver (with its vessels), tumour
    pred = np.array([0, 2, 1, 2, 1, 3, 1, 1], np.uint8)
    # liver: the liver or a vessel inside Task03's liver is a hit (3 of 3); a liver predicted on the
    # tumour and on the background is false; a vessel on the background is no error (Task03 cannot say)
    assert MERGED.confusion(pred, ref, [1, 2, 3]) == {1: (3, 2, 0), 2: None, 3: (1, 0, 1)}
    scores = dice_per_class(pred, ref, [1, 2, 3], MERGED)
    assert scores[1] == pytest.approx(6 / 8) and math.isnan(scores[2]) and scores[3] == pytest.approx(2 / 3)


def test_a_task08_case_leaves_the_liver_out_and_scores_vessels_plainly() -> None:
    ref = np.array([6, 6, 2, 2, 3], np.uint8)
    pred = np.array([1, 2, 2, 1, 3], np.uint8)  # liver on the background is no error there
    assert MERGED.confusion(pred, ref, [1, 2, 3]) == {1: None, 2: (1, 1, 1), 3: (1, 0, 0)}


def test_plain_labels_score_as_before() -> None:
    rng = np.random.default_rng(0)
    pred, ref = rng.integers(0, 3, (6, 7, 8)).astype(np.uint8), rng.integers(0, 3, (6, 7, 8)).astype(np.uint8)
    assert dice_per_class(pred, ref, [1, 2], LabelSpace(3)) == dice_per_class(pred, ref, [1, 2])
    masks = LabelSpace(3).masks(pred, ref, 1, [0, 1, 2])
    assert masks is not None and np.array_equal(masks[0], pred == 1) and np.array_equal(masks[1], ref == 1)


def test_losses_without_partial_values_are_the_plain_ones() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6, 7), torch.randint(0, 4, (2, 5, 6, 7))
    plain = PartialTargets(LabelSpace(4))
    dice, _ = plain.soft_dice(logits, target)
    assert torch.allclose(dice, soft_dice_per_class(logits, target), atol=1e-6)
    assert torch.allclose(plain.cross_entropy(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    weights = torch.tensor([1.0, 2.0, 5.0, 3.0])
    assert torch.allclose(plain.cross_entropy(logits, target, weights),
                          F.cross_entropy(logits, target, weight=weights), atol=1e-6)
    assert DiceCE(space=LabelSpace(4)).partial is None  # a space without partial values changes nothing


def _logits_for(classes: torch.Tensor, num_classes: int = 4, strength: float = 12.0) -> torch.Tensor:
    return (F.one_hot(classes, num_classes).movedim(-1, 1).float() * 2 - 1) * strength


def test_partial_losses_accept_every_allowed_class_and_punish_the_rest() -> None:
    target = torch.tensor([[4, 4, 5, 5, 5, 3, 6, 6, 2, 3]]).reshape(1, 1, 1, 10)  # Task03 then Task08 voxels
    allowed = torch.tensor([[2, 0, 2, 1, 2, 3, 1, 0, 2, 3]]).reshape(1, 1, 1, 10)  # each allowed by its value
    wrong = torch.tensor([[1, 1, 3, 0, 3, 2, 2, 2, 1, 1]]).reshape(1, 1, 1, 10)  # none allowed
    for loss in (DiceCE(space=MERGED), DiceWeightedCE(anneal=True, space=MERGED), WeightedDiceFocal(space=MERGED)):
        good, bad = float(loss(_logits_for(allowed), target)), float(loss(_logits_for(wrong), target))
        assert good < 0.05 < 1.0 < bad, (type(loss).__name__, good, bad)
    # Task03's liver region reads liver-or-vessel as one (a plain vessel voxel lies inside it too):
    # Dice 1 whichever of the two is predicted there
    dice, counts = PartialTargets(MERGED).soft_dice(_logits_for(allowed), target)
    assert counts.tolist() == [0, 1, 2, 4] and float(dice[-1]) == pytest.approx(1.0, abs=1e-4)


def test_classes_are_matched_by_name() -> None:
    assert [class_key(n) for n in ("Cancer", "Tumor", "liver", "Hepatic Vessels", "Vessel")] == \
        ["tumour", "tumour", "liver", "vessel", "vessel"]


def _sources(root: Path) -> tuple[Path, Path]:
    write_task(root / "raw", task="Task03", num_training=2, num_test=0, seed=5, spacing_range=SMALL_SPACINGS)
    write_task(root / "raw", task="Task08", num_training=3, num_test=0, seed=6, spacing_range=SMALL_SPACINGS)
    return next((root / "raw").glob("Task03_*")), next((root / "raw").glob("Task08_*"))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_merge_links_images_maps_labels_and_leaves_the_sources_alone(tmp_path: Path) -> None:
    t03, t08 = _sources(tmp_path)
    before = _digest(t03), _digest(t08)
    plan = plan_merge([load_dataset(t03), load_dataset(t08)])
    assert plan.classes == {0: "background", 1: "liver", 2: "vessel", 3: "tumour"}
    assert plan.value_maps == ({0: 4, 1: 5, 2: 3}, {0: 6, 1: 2, 2: 3})
    out = merge_datasets(["Task03", "Task08"], "LiverVesselTumour", tmp_path / "raw")
    assert out.name == "Dataset900_LiverVesselTumour"
    merged = load_dataset(out)
    assert merged.labels == plan.classes and merged.partial == plan.partial and len(merged.cases) == 5
    for case in merged.cases:
        assert case.images[0].is_symlink() and case.images[0].resolve().parent.parent in (t03, t08)
        source = case.images[0].resolve().parent.parent
        original, _ = read_label(source / "labelsTr" / case.label.name)
        mapped, _ = read_label(case.label)
        lut = plan.value_maps[0 if source == t03 else 1]
        assert np.array_equal(mapped, np.vectorize(lut.get)(original))
    assert (_digest(t03), _digest(t08)) == before
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "labelsTr").iterdir()}
    assert merge_datasets(["Task03", "Task08"], "LiverVesselTumour", tmp_path / "raw") == out  # up to date
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labelsTr").iterdir()} == stamp
    with pytest.raises(DatasetError, match="merged from"):
        merge_datasets(["Task08", "Task03"], "LiverVesselTumour", tmp_path / "raw")
    with pytest.raises(DatasetError, match="at least two"):
        merge_datasets(["Task03"], "Other", tmp_path / "raw")


def test_a_bad_partial_label_table_names_the_field(tmp_path: Path) -> None:
    t03, t08 = _sources(tmp_path)
    out = merge_datasets(["Task03", "Task08"], "LiverVesselTumour", tmp_path / "raw")
    meta = json.loads((out / "dataset.json").read_text())
    meta["partial_labels"]["5"]["classes"] = [1, 9]
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"partial label 5: classes \[9\] are not labels"):
        load_dataset(out)


def test_merged_dataset_plans_trains_and_scores_only_what_each_case_annotates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _sources(tmp_path)
    for k, v in autoseg_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    assert main(["plan_and_preprocess", "-d", "Task03", "-d", "Task08", "--merge", "LiverVesselTumour"]) == 0
    plans = json.loads(next((tmp_path / "pre").glob("*_LiverVesselTumour")).joinpath("plans.json").read_text())
    assert plans["labels"] == {"0": "background", "1": "liver", "2": "vessel", "3": "tumour"}
    assert [p["value"] for p in plans["partial_labels"]] == [4, 5, 6]
    pre = next((tmp_path / "pre").glob("*_LiverVesselTumour"))
    fingerprint = json.loads((pre / "fingerprint.json").read_text())
    assert fingerprint["class_fractions"]["1"]["voxels"] > 0  # Task03's liver-or-vessel counts as liver
    assert fingerprint["label_nesting"] == {"3": 1}  # tumours in the liver, from the Task03 cases that label both
    assert main(["train", "-d", "LiverVesselTumour", "-f", "0", "--steps", "2", "--threads", "1"]) == 0
    summary = json.loads(next((tmp_path / "res").rglob("fold_0/validation/summary.json")).read_text())
    for case, scores in summary["cases"].items():
        # a Task03 phantom (liver_*) never scores vessels, a Task08 one (hepaticvessel_*) never the liver
        assert scores["vessel" if case.startswith("liver") else "liver"] is None, (case, scores)
    assert main(["plan_and_preprocess", "-d", "Task03", "-d", "Task08"]) == 2
    assert "without --merge" in capsys.readouterr().err


def test_evaluate_reads_the_partial_labels_beside_merged_references(tmp_path: Path) -> None:
    from autoseg.evaluation import evaluate_folders, metadata_labels
    from autoseg.io import write_image

    _sources(tmp_path)
    out = merge_datasets(["Task03", "Task08"], "LiverVesselTumour", tmp_path / "raw")
    found = metadata_labels(out / "labelsTr")
    assert found is not None and found[2].partial == MERGED.partial
    certain = np.array([0, 1, 2, 3, 0, 1, 0], np.uint8)  # each stored value's plainest reading
    for ref_file in (out / "labelsTr").iterdir():
        ref, geometry = read_label(ref_file)
        write_image(tmp_path / "pred" / ref_file.name, certain[ref], geometry)
    result = evaluate_folders(tmp_path / "pred", out / "labelsTr", [1, 2, 3], found[0], space=found[2])
    for case, scores in result.scores.items():
        for label in ((1, 3) if case.startswith("liver") else (2, 3)):
            assert scores[label]["dice"] == 1.0 or scores[label]["volume_ref_ml"] == 0, (case, label)
        unannotated = 2 if case.startswith("liver") else 1
        assert scores[unannotated]["volume_ref_ml"] == 0 and math.isnan(scores[unannotated]["dice"])


def test_nesting_reads_partial_values_as_what_their_source_annotates() -> None:
    """A tumour's shell: Task03's "liver or vessel" annotates liver; Task08's "background or liver"
    says nothing about the liver and is left out of its share; a certain vessel is not liver."""
    from autoseg.regions import nesting_from_shells

    assert nesting_from_shells({3: {5: 30, 6: 500, 2: 10}}, MERGED) == {3: 1}  # 30 of 40 known voxels
    assert nesting_from_shells({3: {5: 30, 6: 500, 2: 40}}, MERGED) == {}  # 30 of 70
    assert nesting_from_shells({3: {5: 30, 4: 40}}, MERGED) == {}  # Task03's background is known not liver
    assert nesting_from_shells({2: {6: 500, 3: 20}}, MERGED) == {}  # a Task08 vessel: no class around it
    assert nesting_from_shells({3: {5: 30, 6: 500, 2: 10}}) == {3: 6}  # read as plain values: the wrong parent


def test_rarity_weights_count_a_partial_value_as_its_class() -> None:
    from autoseg.training.losses import rarity_weights, weights_from_counts

    partial = PartialTargets(MERGED)
    task08 = torch.full((1, 12, 12, 12), 6)  # background or liver, with vessels and a tumour
    task08[0, :2, :2, :6], task08[0, 5:8, 5:8, 5:8] = 2, 3
    task03 = torch.full((1, 12, 12, 12), 4)  # background or vessel, liver or vessel, a tumour
    task03[0, :6], task03[0, 5:8, 5:8, 5:8] = 5, 3
    for target, plain in ((task08, {6: 0}), (task03, {4: 0, 5: 1})):
        as_plain = target.clone()
        for value, cls in plain.items():
            as_plain[target == value] = cls
        assert torch.equal(weights_from_counts(partial.class_counts(target)), rarity_weights(as_plain, 4))


def test_calibration_scores_a_partial_label_by_its_allowed_classes() -> None:
    from autoseg.inference.uncertainty import expected_calibration_error, nll

    probs = np.array([[0.1, 0.7], [0.2, 0.1], [0.6, 0.1], [0.1, 0.1]])  # two voxels, four classes
    labels = np.array([5, 4])  # liver or vessel (0.2 + 0.6), background or vessel (0.7 + 0.1)
    assert nll(probs, labels, allowed=MERGED.allowed) == pytest.approx(-(math.log(0.8) + math.log(0.8)) / 2)
    assert expected_calibration_error(probs, labels, bins=1, allowed=MERGED.allowed) == pytest.approx(
        abs(1.0 - (0.6 + 0.7) / 2))


def _tiny_dataset(root: Path, name: str, ids: list[str], names: dict[int, str], fmt: str = "msd") -> Path:
    from tests.synthetic import tiny_ct, write_case

    folder = root / name
    for i, ident in enumerate(ids):
        image, labels = tiny_ct(i)
        image_name = f"{ident}.nii.gz" if fmt == "msd" else f"{ident}_0000.nii.gz"
        write_case(folder / "imagesTr", image_name, image)
        write_case(folder / "labelsTr", f"{ident}.nii.gz", labels)
    if fmt == "msd":
        meta = {"modality": {"0": "CT"}, "labels": {"0": "background", **{str(k): v for k, v in names.items()}}}
    else:
        meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{v: k for k, v in names.items()}},
                "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_merge_keeps_ids_that_look_like_channels_and_mixes_formats(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tiny_dataset(raw, "Task01_Amos", ["amos_0001", "amos_0002"], {1: "liver", 2: "cancer"})
    _tiny_dataset(raw, "Dataset002_Vessels", ["hv_0001"], {1: "hepatic vessel", 2: "tumor"}, fmt="nnunet")
    out = merge_datasets(["Task01_Amos", "Dataset002_Vessels"], "Mixed", raw)
    merged = load_dataset(out)
    assert merged.format == "nnunet" and sorted(c.identifier for c in merged.cases) == ["amos_0001", "amos_0002",
                                                                                          "hv_0001"]
    assert merged.labels == {0: "background", 1: "liver", 2: "vessel", 3: "tumour"}
    assert not Path(next((out / "imagesTr").iterdir()).readlink()).is_absolute()  # relative links
    assert len(load_dataset(merge_datasets(["Task01_Amos", "Dataset002_Vessels"], "Mixed", raw)).cases) == 3


def test_a_failed_merge_can_be_run_again_and_a_new_mapping_rewrites_every_label(tmp_path: Path) -> None:
    from autoseg.io import write_image

    raw = tmp_path / "raw"
    a = _tiny_dataset(raw, "Task01_Liver", ["l_1", "l_2"], {1: "liver", 2: "tumour"})
    _tiny_dataset(raw, "Task02_Vessel", ["v_1"], {1: "vessel", 2: "tumour"})
    label, geometry = read_label(a / "labelsTr" / "l_2.nii.gz")
    write_image(a / "labelsTr" / "l_2.nii.gz", np.where(label == 2, 7, label).astype(np.uint8), geometry)
    with pytest.raises(DatasetError, match=r"value\(s\) \[7\]"):
        merge_datasets(["Task01_Liver", "Task02_Vessel"], "LVT", raw)
    write_image(a / "labelsTr" / "l_2.nii.gz", label, geometry)
    out = merge_datasets(["Task01_Liver", "Task02_Vessel"], "LVT", raw)  # the same folder, now complete
    assert len(load_dataset(out).cases) == 3
    meta = json.loads((a / "dataset.json").read_text())
    meta["labels"]["2"] = "lesion and more"  # no longer the tumour: a new class, a new mapping
    (a / "dataset.json").write_text(json.dumps(meta))
    out = merge_datasets(["Task01_Liver", "Task02_Vessel"], "LVT", raw)
    merged = load_dataset(out)
    assert len(merged.labels) == 5
    stored, _ = read_label(out / "labelsTr" / "l_1.nii.gz")
    original, _ = read_label(a / "labelsTr" / "l_1.nii.gz")
    expected = plan_merge([load_dataset(a), load_dataset(raw / "Task02_Vessel")]).value_maps[0]
    assert np.array_equal(stored, np.vectorize(expected.get)(original))


def test_the_merged_benchmark_scores_task03_liver_as_liver_or_vessel() -> None:
    from tests.benchmark_modules import load_benchmark

    bench = load_benchmark("merged_model")
    merged = {"background": 0, "liver": 1, "vessel": 2, "tumour": 3}
    assert bench.merged_values("liver", merged) == [1, 2] and bench.merged_values("tumour", merged) == [3]
    ref = np.array([0, 1, 1, 1, 2])  # Task03: liver (its vessels inside), tumour
    pred = np.array([0, 1, 2, 0, 3])  # the merged model: liver, a vessel in the liver, a miss, the tumour
    assert bench.score(pred, ref, 1, [1, 2]) == pytest.approx(2 * 2 / (2 + 3))
    assert bench.score(pred, ref, 2, [3]) == 1.0


def test_the_false_tumour_benchmark_counts_healthy_livers_and_lesions_from_half_a_millilitre() -> None:
    from tests.benchmark_modules import load_benchmark

    bench = load_benchmark("false_tumours")
    lesion = {"ref_lesions": 2, "fp_lesions": 1, "fp_ml": 0.2, "pred_ml": 3.0,
              "size_bins": {"<0.5 mL": [0, 1], "0.5-3 mL": [1, 1], ">3 mL": [0, 0]}}
    healthy = {"ref_lesions": 0, "fp_lesions": 2, "fp_ml": 0.7, "pred_ml": 0.7,
               "size_bins": {"<0.5 mL": [0, 0], "0.5-3 mL": [0, 0], ">3 mL": [0, 0]}}
    summary = bench.summarise({"a": {"dice": {"vessel": 0.5, "tumour": 0.6}, "tumour": lesion},
                               "b": {"dice": {"vessel": 0.7, "tumour": 0.0}, "tumour": healthy}})
    assert summary["tumour_dice_tumour_bearing"] == 0.6 and summary["vessel_dice"] == pytest.approx(0.6)
    assert summary["false_tumour_ml_per_free_case"] == [0.7] and summary["free_cases_over_0_5_ml"] == 1
    assert summary["recall_from_0_5_ml"] == 1.0 and summary["fp_lesions_per_case"] == 1.5
