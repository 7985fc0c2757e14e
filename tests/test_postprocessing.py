"""Post-processing decided from cross-validation: per class keep the largest component or drop
components under a volume, only where that raises the class's CV Dice. The CV predictions here are
hand-made files in the layout fold validation writes (fold_K/validation/<case>.pred.npz and the
preprocessed data/<case>_seg.b2nd)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.artefacts import PostprocessingDecision
from autoseg.inference.postprocessing import (apply_postprocessing, determine_postprocessing,
                                              drop_outside_parent, keep_largest_component, parent_classes,
                                              remove_small_components)
from autoseg.errors import AutosegError
from autoseg.io import read_json
from autoseg.preprocessing.storage import write_case


def _case(shape=(10, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one organ (label 1) and two lesions (label 2). Prediction: the organ plus a
    stray organ blob, and both lesions."""
    ref = np.zeros(shape, np.uint8)
    ref[2:8, 2:12, 2:12] = 1
    ref[2:4, 15:17, 15:17] = 2
    ref[6:8, 15:17, 2:4] = 2
    pred = ref.copy()
    pred[7:9, 16:19, 16:19] = 1  # a false-positive organ component
    return pred, ref


def _write(root: Path, fold: int, case: str, pred: np.ndarray, ref: np.ndarray,
           probabilities: np.ndarray | None = None) -> None:
    folder = root / "model" / f"fold_{fold}" / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    kept = {} if probabilities is None else {"probabilities": probabilities}
    np.savez_compressed(folder / f"{case}.pred.npz", labels=pred, **kept)
    write_case(root, case, np.zeros((1, *ref.shape), np.float32), ref.astype(np.uint8), {})


def test_keep_largest_component_removes_only_smaller_components_of_that_class() -> None:
    pred, _ = _case()
    out = keep_largest_component(pred, 1)
    assert np.count_nonzero(out == 1) == 6 * 10 * 10
    assert np.array_equal(out == 2, pred == 2)  # other classes untouched
    assert np.array_equal(keep_largest_component(np.zeros((3, 3, 3), np.uint8), 1), np.zeros((3, 3, 3)))


def test_decision_enables_it_only_where_cv_dice_improves(tmp_path: Path) -> None:
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, *_case())
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {0: "bg", 1: "liver", 2: "tumour"},
                                        (1.0, 1.0, 1.0))
    assert decision is not None and decision["cases"] == 2
    assert decision["keep_largest_component"] == [1]  # organ: removes the stray blob
    assert decision["min_component_ml"] == {}
    ev = decision["evidence"]
    assert ev["liver"]["dice_after"] > ev["liver"]["dice_before"]
    assert ev["tumour"]["candidates"]["keep_largest_component"] < ev["tumour"]["dice_before"]  # a true lesion lost
    assert ev["tumour"]["choice"] == "none" and ev["tumour"]["dice_after"] == ev["tumour"]["dice_before"]
    assert read_json(tmp_path / "model" / "postprocessing.json") == decision.to_dict()
    assert PostprocessingDecision.load(tmp_path / "model" / "postprocessing.json") == decision
    pred, ref = _case()
    assert np.array_equal(apply_postprocessing(pred, decision) == 1, ref == 1)
    assert np.array_equal(apply_postprocessing(pred, None), pred)


def test_all_foreground_as_one_removes_what_lies_outside_the_organ(tmp_path: Path) -> None:
    """An organ with a lesion and a vessel inside; the prediction adds a stray blob of organ and lesion
    far away (a muscle called liver, with a "tumour" in it). The per-class largest component would keep
    the stray lesion; all foreground as one removes the blob whole, and CV chooses it."""
    ref = np.zeros((12, 24, 24), np.uint8)
    ref[1:9, 1:13, 1:13] = 1
    ref[3:6, 3:6, 3:6] = 2
    ref[6:8, 8:11, 8:11] = 3
    pred = ref.copy()
    pred[8:11, 16:22, 16:22] = 1
    pred[9:11, 19:21, 19:21] = 2
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data",
                                        {0: "bg", 1: "liver", 2: "tumour", 3: "vessel"}, (1.0, 1.0, 1.0))
    assert decision["keep_largest_foreground"] is True
    ev = decision["evidence"]["all foreground"]
    assert ev["enabled"] and ev["dice_after"] == 1.0 > ev["dice_before"]
    assert np.array_equal(apply_postprocessing(pred, decision), ref)
    assert decision["keep_largest_component"] == [] and decision["min_component_ml"] == {}  # nothing left to do
    # a decision written before the rule existed has no key: it loads, without the rule
    old = decision.to_dict()
    del old["keep_largest_foreground"]
    (tmp_path / "old.json").write_text(__import__("json").dumps(old))
    assert PostprocessingDecision.load(tmp_path / "old.json").rules.keep_largest_foreground is False


def test_all_foreground_as_one_is_refused_when_it_lowers_a_class_even_if_the_mean_rises(tmp_path: Path) -> None:
    """nnU-Net's second condition. Case a: a liver, and a stray blob of false liver far away that the
    rule removes (liver Dice up). Case b: a liver, and a true tumour outside it, which the rule
    removes with the blob's neighbour (tumour Dice down). The mean over the classes rises; the
    tumour falls: no foreground rule, and the evidence says by how much each class moved."""
    ref_a = np.zeros((12, 24, 24), np.uint8)
    ref_a[1:9, 1:13, 1:13] = 1
    ref_a[3:7, 3:7, 3:7] = 2
    pred_a = ref_a.copy()
    pred_a[8:12, 14:24, 14:24] = 1  # a large false liver: removing it raises liver Dice a lot
    ref_b = ref_a.copy()
    ref_b[10:11, 20:22, 20] = 2  # a small true lesion outside the organ: tumour Dice falls a little
    pred_b = ref_b.copy()
    for fold, (case, pred, ref) in enumerate((("a", pred_a, ref_a), ("b", pred_b, ref_b))):
        _write(tmp_path, fold, case, pred, ref)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {0: "bg", 1: "liver", 2: "tumour"},
                                        (1.0, 1.0, 1.0))
    ev = decision["evidence"]["all foreground"]
    assert ev["candidates"]["keep_largest_foreground"] > ev["dice_before"]  # the mean rises ...
    assert ev["class_change"]["liver"] > 0 > ev["class_change"]["tumour"]  # ... the tumour falls
    assert decision["keep_largest_foreground"] is False and ev["choice"] == "none" and not ev["enabled"]


def test_small_specks_are_dropped_at_the_volume_cross_validation_picks(tmp_path: Path) -> None:
    """Two true 2x2x2 lesions (0.064 mL at 2 mm voxels) and single-voxel specks (0.008 mL) of false
    tumour: dropping components under 0.01 mL removes exactly the specks; the largest-component rule
    and thresholds from 0.1 mL would delete true lesions."""
    _, ref = _case()
    pred = ref.copy()
    for z, y, x in ((0, 0, 0), (0, 19, 0), (9, 0, 19), (9, 10, 10)):
        pred[z, y, x] = 2
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "liver", 2: "tumour"},
                                        (2.0, 2.0, 2.0))
    assert decision["min_component_ml"] == {"2": 0.01} and decision["keep_largest_component"] == []
    tried = decision["evidence"]["tumour"]["candidates"]
    assert tried["min_component_ml=0.01"] == tried["min_component_ml=0.03"] == 1.0  # ties: the smallest
    assert tried["min_component_ml=0.1"] < decision["evidence"]["tumour"]["dice_before"]
    assert np.array_equal(apply_postprocessing(pred, decision, (2.0, 2.0, 2.0)), ref)
    # sizes are volumes: at 1 mm voxels the lesions hold 0.008 mL and the specks 0.001 mL
    assert np.array_equal(remove_small_components(pred, 2, 0.005, (1.0, 1.0, 1.0)) == 2, ref == 2)
    assert not (remove_small_components(pred, 2, 0.01, (1.0, 1.0, 1.0)) == 2).any()
    assert not (remove_small_components(pred, 2, 0.1, (2.0, 2.0, 2.0)) == 2).any()


def _probabilities(labels: np.ndarray, sure: float, unsure: dict[int, float] | None = None,
                   region: np.ndarray | None = None) -> np.ndarray:
    """uint8 probabilities (3 classes) whose arg-max is ``labels``: the winner at ``sure``, or at
    ``unsure[label]`` inside ``region``; the runner-up class 1 (the organ) where the winner is 2."""
    probs = np.zeros((3, *labels.shape), np.float32)
    winner = np.full(labels.shape, sure, np.float32)
    if unsure and region is not None:
        for label, p in unsure.items():
            winner[region & (labels == label)] = p
    for k in range(3):
        probs[k][labels == k] = winner[labels == k]
    rest = 1 - winner
    probs[1][labels == 2] += rest[labels == 2]
    probs[0][labels != 2] += rest[labels != 2] * (labels[labels != 2] != 0)
    probs[1][labels == 0] += rest[labels == 0]
    return np.round(probs * 255).astype(np.uint8)


def test_unsure_false_lesions_are_dropped_at_the_confidence_cross_validation_picks(tmp_path: Path) -> None:
    """Two true lesions the network is sure of (0.97) and a large false "tumour" inside the organ it
    half believes (0.75): too big for any volume threshold, gone with a minimum confidence of 0.8 or
    0.9, and the dropped voxels become organ (the next most probable class), as the reference has it."""
    _, ref = _case()
    pred = ref.copy()
    false_lesion = np.zeros(ref.shape, bool)
    false_lesion[3:7, 4:10, 4:10] = True
    pred[false_lesion] = 2
    probs = _probabilities(pred, 0.97, {2: 0.75}, false_lesion)
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref, probs)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "liver", 2: "tumour"},
                                        (2.0, 2.0, 2.0))
    assert decision is not None and decision["min_component_confidence"] == {"2": 0.8}  # ties: the first
    tried = decision["evidence"]["tumour"]["candidates"]
    assert tried["min_component_confidence=0.8"] == 1.0 and tried["min_component_ml=1.0"] < 1.0
    assert tried["min_component_confidence=0.7"] == decision["evidence"]["tumour"]["dice_before"]
    # prediction: the rule acts on the probabilities, so the labels made from them lose the false lesion
    from autoseg.inference.postprocessing import suppress_unsure

    float_probs = probs.astype(np.float32) / 255
    assert np.array_equal(suppress_unsure(float_probs, decision).argmax(0), ref)
    assert suppress_unsure(float_probs, None) is float_probs  # no rule: the same array, untouched
    assert "highest probability is under 0.8" in describe_decision(decision)


def _vessel_over_tumour() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task08-like classes (1 vessel, 2 tumour): a reference with one true vessel and no tumour;
    probabilities that call a second, false vessel at 0.5 whose runner-up there is tumour (0.4).
    Returns the reference, the float probabilities and the false vessel's mask."""
    ref = np.zeros((10, 20, 20), np.uint8)
    ref[2:8, 3:5, 3:5] = 1
    false_vessel = np.zeros(ref.shape, bool)
    false_vessel[2:8, 12:15, 12:15] = True
    probs = np.zeros((3, *ref.shape), np.float32)
    probs[0] = 0.97
    probs[1][ref == 1], probs[0][ref == 1] = 0.97, 0.0
    probs[:, false_vessel] = np.array([0.1, 0.5, 0.4], np.float32)[:, None]
    probs[0][(ref == 0) & ~false_vessel] = 0.97
    return ref, probs, false_vessel


def test_voxels_an_unsure_vessel_gives_to_tumour_are_judged_as_tumour() -> None:
    """A vessel rule drops the false vessel; its voxels' next most probable class is tumour (0.4),
    which its own rule (0.8) does not believe either: they end as background, not as a false tumour
    the tumour rule was never asked about."""
    from autoseg.inference.postprocessing import suppress_unsure

    ref, probs, false_vessel = _vessel_over_tumour()
    rules = {"min_component_confidence": {"1": 0.6, "2": 0.8}}
    labels = suppress_unsure(probs, rules).argmax(0)
    assert np.array_equal(labels, ref)
    vessel_only = suppress_unsure(probs, {"min_component_confidence": {"1": 0.6}}).argmax(0)
    assert (vessel_only[false_vessel] == 2).all()  # without a tumour rule the next class is tumour


def test_voxels_handed_back_and_forth_are_judged_again_until_no_rule_drops_more() -> None:
    """A false tumour the network half believes (0.5) whose runner-up is vessel (0.4): the tumour rule
    drops it after the vessel rule has run, so only a second round lets the vessel rule judge the
    voxels it received (background, not a false vessel)."""
    from autoseg.inference.postprocessing import suppress_unsure

    ref, probs, region = _vessel_over_tumour()
    probs[:, region] = np.array([0.1, 0.4, 0.5], np.float32)[:, None]  # now a false tumour, vessel runner-up
    labels = suppress_unsure(probs, {"min_component_confidence": {"1": 0.6, "2": 0.8}}).argmax(0)
    assert np.array_equal(labels, ref)
    tumour_only = suppress_unsure(probs, {"min_component_confidence": {"2": 0.8}}).argmax(0)
    assert (tumour_only[region] == 1).all()


def test_a_confidence_rule_is_charged_for_the_false_class_its_dropped_voxels_become(tmp_path: Path) -> None:
    """In cross-validation, dropping the false vessel raises vessel Dice but makes a false tumour in
    a case that has a true one: the candidate is scored with the tumour Dice it costs, so the rule
    that looks best for vessels alone is not chosen."""
    ref, probs, false_vessel = _vessel_over_tumour()
    ref[2:4, 16:18, 3:5] = 2  # a true tumour, so that tumour Dice is defined
    probs[:, ref == 2] = np.array([0.0, 0.0, 0.97], np.float32)[:, None]
    pred = probs.argmax(0).astype(np.uint8)
    stored = np.round(probs * 255).astype(np.uint8)
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref, stored)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "vessel", 2: "tumour"},
                                        (2.0, 2.0, 2.0))
    assert decision is not None
    vessel = decision["evidence"]["vessel"]
    alone = 2 * 24 / (24 + 24 + 54)  # vessel Dice with the false vessel: 0.47; without it 1.0
    assert vessel["dice_before"] == pytest.approx(alone, abs=1e-6)
    tumour_after = 2 * 8 / (8 + 8 + 54)  # the false vessel's 54 voxels as tumour
    assert vessel["candidates"]["min_component_confidence=0.6"] == pytest.approx(1.0)  # vessels alone: perfect
    cost = vessel["other_classes_change"]["min_component_confidence=0.6"]
    assert cost == pytest.approx(tumour_after - 1.0, abs=1e-6)  # tumour Dice 1.0 -> 0.23
    assert "1" not in decision["min_component_confidence"]  # 1.0 - 0.77 < 0.47: not worth it


def test_cross_validation_tries_a_class_rule_on_the_cases_the_earlier_rules_leave(tmp_path: Path) -> None:
    """The vessel rule pays (a large true tumour makes its false-tumour side effect small) and is
    chosen; the tumour candidates are then tried on the cases as prediction leaves them, with the
    vessel rule's false tumour in them, and a tumour rule that removes it is chosen too (keeping the
    largest tumour ties with the confidence rule here, and the simpler rule wins ties)."""
    ref, probs, false_vessel = _vessel_over_tumour()
    ref[2:10, 6:11, 8:13] = 2  # a true tumour of 200 voxels, apart from the false vessel
    probs[:, ref == 2] = np.array([0.0, 0.0, 0.97], np.float32)[:, None]
    pred = probs.argmax(0).astype(np.uint8)
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref, np.round(probs * 255).astype(np.uint8))
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "vessel", 2: "tumour"},
                                        (2.0, 2.0, 2.0))
    assert decision is not None and decision["min_component_confidence"] == {"1": 0.6}
    tumour = decision["evidence"]["tumour"]
    assert tumour["candidates"]["min_component_confidence=0.6"] == pytest.approx(1.0)
    assert tumour["choice"] == "keep_largest_component" and decision["keep_largest_component"] == [2]
    handed_over = 2 * 200 / (200 + 200 + 54)  # tumour Dice once the false vessel's voxels are tumour
    assert decision["evidence"]["tumour"]["dice_before"] == pytest.approx(handed_over, abs=1e-6)
    assert decision["evidence"]["tumour"]["dice_after"] == pytest.approx(1.0)


def describe_decision(decision: PostprocessingDecision) -> str:
    from autoseg.inference.postprocessing import describe

    return describe(decision, {1: "liver", 2: "tumour"})


def test_preprocessed_folder_without_label_maps_is_a_clear_error(tmp_path: Path) -> None:
    """Predictions whose preprocessed image is there but whose label map is not (a folder from before
    preprocessing version 3) stop the decision with the fix, rather than deciding from nothing."""
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, *_case())
    (tmp_path / "data" / "b_seg.b2nd").unlink()
    with pytest.raises(AutosegError, match="plan_and_preprocess"):
        determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "liver", 2: "tumour"}, (1.0, 1.0, 1.0))
    assert not (tmp_path / "model" / "postprocessing.json").exists()


def test_no_validation_predictions_no_decision(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    assert determine_postprocessing(tmp_path / "model", tmp_path / "data", {1: "liver"}, (1.0, 1.0, 1.0)) is None
    assert not (tmp_path / "model" / "postprocessing.json").exists()


def test_lesion_table_counts_all_and_lists_the_largest() -> None:
    from autoseg.inference.report import lesion_table

    mask = np.zeros((8, 20, 20), bool)
    mask[1:3, 1:4, 2:5] = True  # 18 voxels, 2x3x3
    mask[5:7, 10:15, 10:12] = True  # 20 voxels
    for i in range(0, 20, 4):  # 5 single-voxel specks, apart from each other and the blobs
        mask[7, 18, i] = True
    count, table = lesion_table(mask, (2.0, 1.0, 0.5), limit=3)
    assert count == 7 and [r.voxels for r in table] == [20, 18, 1]
    assert table[0].extent_mm == (4.0, 5.0, 1.0) and table[1].volume_ml == round(18 * 1e-3, 4)
    assert lesion_table(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0)) == (0, [])


def _liver_with_lesions(shape=(20, 50, 50)) -> np.ndarray:
    """A liver (1) holding a vessel (2) and two small tumours (3), and a vessel apart from it (as a
    cut vena cava: the largest foreground component alone would lose it)."""
    ref = np.zeros(shape, np.uint8)
    ref[2:18, 2:30, 2:30] = 1
    ref[2:18, 14:16, 14:16] = 2
    ref[2:18, 40:44, 4:8] = 2
    ref[5:9, 5:9, 5:9] = 3
    ref[12:16, 20:24, 20:24] = 3
    return ref


def test_components_beside_no_voxel_of_the_parent_are_dropped() -> None:
    labels = _liver_with_lesions()
    labels[4:16, 36:48, 36:48] = 3  # a "tumour" in the spleen: 7 voxels from the liver
    labels[0:2, 30:32, 30:32] = 3  # touches the liver's corner diagonally only (26-neighbours)
    labels[8:10, 30:33, 14:16] = 2  # a vessel stub leaving the liver...
    labels[8:10, 33:35, 14:16] = 3  # ...and a lesion beside it only
    out = drop_outside_parent(labels, 3, (1, 2))
    assert (out[4:16, 36:48, 36:48] == 0).all()
    changed = out != labels
    assert (labels[changed] == 3).all() and (out[changed] == 0).all()
    kept = (out == 3).sum()
    assert kept == (labels == 3).sum() - 12 ** 3  # only the spleen's component goes; the others touch
    assert (drop_outside_parent(labels, 3, (1,))[8:10, 33:35, 14:16] == 0).all()  # the vessel is not liver
    assert np.array_equal(drop_outside_parent(np.zeros((3, 3, 3), np.uint8), 3, (1,)), np.zeros((3, 3, 3)))


def test_the_parent_of_a_nested_class_includes_the_classes_nested_beside_it() -> None:
    nesting = {2: 1, 3: 1}
    assert parent_classes(nesting, 3) == (1, 2) and parent_classes(nesting, 2) == (1, 3)
    assert parent_classes(nesting, 1) == ()
    assert parent_classes({3: 2, 2: 1}, 3) == (2,)
    assert parent_classes({"2": 1}, 2) == (1,)  # keys as JSON writes them
    assert parent_classes({4: 3, 3: 1}, 3) == (1,)  # a core inside the tumour is no part of its liver


def test_tumours_outside_the_liver_are_dropped_when_cross_validation_says_so(tmp_path: Path) -> None:
    """A large false "tumour" outside the liver: no volume or largest-component rule removes it
    without losing the true lesions; the inside-its-parent rule does, and only with the nesting."""
    labels = {0: "bg", 1: "liver", 2: "vessel", 3: "tumour"}
    ref = _liver_with_lesions()
    pred = ref.copy()
    pred[4:16, 36:48, 36:48] = 3  # 1.7 mL at 1 mm: above every volume of the ladder
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref)
    without = determine_postprocessing(tmp_path / "model", tmp_path / "data", labels, (1.0, 1.0, 1.0))
    assert without is not None and without.inside_parent == {} and without.evidence["tumour"].choice == "none"
    assert "inside_parent" not in without.evidence["tumour"].candidates
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", labels, (1.0, 1.0, 1.0),
                                        nesting={2: 1, 3: 1})
    assert decision is not None and decision.inside_parent == {3: (1, 2)}
    assert decision.evidence["tumour"].choice == "inside_parent" and decision.evidence["tumour"].dice_after == 1.0
    assert not decision.keep_largest_foreground  # it would lose the vessel apart from the liver
    stored = PostprocessingDecision.load(tmp_path / "model" / "postprocessing.json")
    assert stored.rules.inside_parent == {3: (1, 2)}
    assert np.array_equal(apply_postprocessing(pred, stored), ref)


def test_the_inside_rule_is_scored_after_the_parents_own_rule_as_predict_applies_it(tmp_path: Path) -> None:
    """A false tumour beside a false liver fragment: prediction first drops the fragment (the liver's
    largest-component rule), then the tumour beside nothing; cross-validation must score it so."""
    labels = {0: "bg", 1: "liver", 2: "vessel", 3: "tumour"}
    ref = _liver_with_lesions()
    pred = ref.copy()
    pred[4:8, 32:36, 16:20] = 1  # a false liver fragment, apart from the liver
    pred[2:14, 36:48, 14:26] = 3  # a false tumour touching only that fragment
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", labels, (1.0, 1.0, 1.0),
                                        nesting={2: 1, 3: 1})
    assert decision is not None and decision.evidence["liver"].choice != "none"
    assert decision.evidence["tumour"].candidates["inside_parent"] == 1.0 and decision.inside_parent == {3: (1, 2)}
    assert np.array_equal(apply_postprocessing(pred, decision), ref)


def test_a_decision_naming_no_parent_is_refused() -> None:
    """An empty parent would make every component "outside" and drop the class."""
    good = {"keep_largest_component": [], "min_component_ml": {}, "evidence": {}, "cases": 1,
            "grid_spacing_zyx": [1, 1, 1], "rule": "", "postprocessing_version": 1}
    assert PostprocessingDecision.from_dict({**good, "inside_parent": {"3": [1]}}).rules.inside_parent == {3: (1,)}
    with pytest.raises(AutosegError, match="names no parent"):
        PostprocessingDecision.from_dict({**good, "inside_parent": {"3": []}})


def test_a_confidence_rule_and_a_component_rule_together_when_each_removes_what_the_other_cannot(
        tmp_path: Path) -> None:
    """Two false tumours: one inside the liver that the network half believes (only the confidence
    rule drops it), one in the "spleen" it is sure of (only the inside-its-liver rule drops it).
    Cross-validation chooses the two together, and prediction applies them so."""
    from autoseg.inference.postprocessing import suppress_unsure

    labels = {0: "bg", 1: "liver", 2: "vessel", 3: "tumour"}
    ref = _liver_with_lesions()
    pred = ref.copy()
    unsure = np.zeros(ref.shape, bool)
    unsure[8:12, 4:10, 16:22] = True  # inside the liver, apart from its vessel and lesions
    pred[unsure] = 3
    pred[4:16, 36:48, 36:48] = 3
    probs = np.zeros((4, *ref.shape), np.float32)
    for k in range(4):
        probs[k][pred == k] = 0.97
    probs[0][pred != 0] += 0.03
    probs[1][pred == 0] = 0.03
    probs[3][unsure], probs[1][unsure], probs[0][unsure] = 0.6, 0.4, 0.0
    stored = np.round(probs * 255).astype(np.uint8)
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref, stored)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", labels, (1.0, 1.0, 1.0),
                                        nesting={2: 1, 3: 1})
    assert decision is not None
    tumour = decision.evidence["tumour"]
    assert tumour.candidates["min_component_confidence=0.7"] < 1.0 and tumour.candidates["inside_parent"] < 1.0
    assert tumour.choice == "min_component_confidence=0.7+inside_parent" and tumour.dice_after == 1.0
    assert decision.min_component_confidence == {3: 0.7} and decision.inside_parent == {3: (1, 2)}
    labels_out = apply_postprocessing(suppress_unsure(stored.astype(np.float32) / 255, decision).argmax(0), decision)
    assert np.array_equal(labels_out, ref)
    stored_decision = PostprocessingDecision.load(tmp_path / "model" / "postprocessing.json")
    assert stored_decision.rules == decision.rules


def _found_lesion_and_false_specks() -> tuple[np.ndarray, np.ndarray]:
    """One class (tumour). Reference: a 1000-voxel lesion and a 125-voxel one (5x5x5). Prediction:
    the large lesion whole, a 25-voxel sliver of the small one (found, under-segmented) and three
    25-voxel false specks apart from both. Dropping every 25-voxel component removes 75 false voxels
    and 25 true ones: the Dice rises, the small lesion is lost."""
    ref = np.zeros((12, 30, 30), np.uint8)
    ref[1:11, 1:11, 1:11] = 1
    ref[1:6, 20:25, 20:25] = 1
    pred = ref.copy()
    pred[2:6, 20:25, 20:25] = 0  # only the slice z=1 of the small lesion is predicted
    pred[10:11, 20:25, 20:25] = 1
    pred[7:8, 14:19, 25:30] = 1
    pred[10:11, 1:6, 20:25] = 1
    return pred, ref


def test_a_rule_that_loses_a_found_lesion_of_10_mm_is_never_chosen_whatever_its_dice(tmp_path: Path) -> None:
    """At 2 mm voxels the small lesion holds 1.0 mL (a sphere of 12 mm) and its found sliver 0.2 mL,
    as large as each false speck. The 0.3 mL minimum, the largest-component rule and all foreground
    as one raise the CV Dice by dropping the sliver with the specks: refused, with the lesions each
    loses in the evidence. The same layout at 1 mm voxels (the lesion 0.125 mL, under the guarded
    0.52 mL) is decided by Dice alone."""
    pred, ref = _found_lesion_and_false_specks()
    for fold, case in ((0, "a"), (1, "b")):
        _write(tmp_path, fold, case, pred, ref)
    decision = determine_postprocessing(tmp_path / "model", tmp_path / "data", {0: "bg", 1: "tumour"},
                                        (2.0, 2.0, 2.0))
    assert decision is not None
    tumour, whole = decision.evidence["tumour"], decision.evidence["all foreground"]
    assert tumour.candidates["min_component_ml=0.3"] > tumour.dice_before  # Dice alone would choose it
    assert whole.candidates["keep_largest_foreground"] > whole.dice_before
    assert tumour.objects_lost == {"keep_largest_component": 2, "min_component_ml=0.3": 2, "min_component_ml=1.0": 2}
    assert whole.objects_lost == {"keep_largest_foreground": 2}
    assert tumour.choice == "none" and not whole.enabled and decision.rules == PostprocessingDecision.load(
        tmp_path / "model" / "postprocessing.json").rules
    assert not decision.keep_largest_foreground and decision.min_component_ml == {}
    assert decision.keep_largest_component == ()

    fine = tmp_path / "fine"
    for fold, case in ((0, "a"), (1, "b")):
        _write(fine, fold, case, pred, ref)
    decision = determine_postprocessing(fine / "model", fine / "data", {0: "bg", 1: "tumour"}, (1.0, 1.0, 1.0))
    assert decision is not None and decision.keep_largest_foreground  # 0.125 mL: not guarded
    assert decision.evidence["tumour"].objects_lost is None
