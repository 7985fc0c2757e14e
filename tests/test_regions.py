"""Region outputs (``train --regions``, autoseg.regions): nesting from the fingerprint, the regions,
the sigmoid -> class probability rule, the loss, the plans field, and a tiny Task03 model end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.artefacts import Fingerprint
from autoseg.inference.postprocessing import decide_postprocessing
from autoseg.cli import main
from autoseg.errors import ConfigurationError, PlansError
from autoseg.inference.model import open_model
from autoseg.layout import PreprocessedDataset, ResultsDataset
from autoseg.partial_labels import PartialLabel
from autoseg.phantom import write_task
from autoseg.plans import Plans
from autoseg.planners.fingerprint import label_shells
from autoseg.regions import (Region, class_probabilities, decide, nesting_from_shells, region_problems,
                             region_targets, regions_from_nesting)
from autoseg.training.losses import DeepSupervision, RegionDiceBCE, build_loss
from autoseg.training.run import TrainRequest, apply_overrides

from .workspaces import SMALL_SPACINGS, use_workspace

TASK03 = {0: "background", 1: "liver", 2: "tumour"}
LIVER_TUMOUR = (Region(1, (1, 2)), Region(2, (2,)))


def threshold_labels(sigmoids: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """nnU-Net's decision, the reference the region rule is checked against: the label of the last
    region (in order) whose sigmoid exceeds 0.5, else background. ``sigmoids``: ``(R, *spatial)``."""
    out = np.zeros(sigmoids.shape[1:], dtype=np.uint8)
    for s, r in zip(sigmoids, regions):
        out[s > 0.5] = r.label
    return out


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_shells_find_a_tumour_inside_the_liver_and_vessels_outside_it() -> None:
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[_ball(label.shape, (12, 12, 12), 9)] = 1
    label[_ball(label.shape, (12, 12, 12), 3)] = 2  # inside the liver
    label[1:3, 1:3, 1:20] = 3  # a "vessel" in the background
    shells = label_shells(label, [1, 2, 3])
    assert set(shells[2]) == {1} and shells[2][1] > 0  # the tumour touches only liver
    assert set(shells[1]) == {0, 2}
    assert nesting_from_shells(shells) == {2: 1}


def test_nesting_needs_over_half_the_shell_and_leaves_cycles_out() -> None:
    assert nesting_from_shells({2: {1: 50, 0: 50}}) == {}  # at the liver's edge as much as inside it
    assert nesting_from_shells({2: {1: 51, 0: 49}}) == {2: 1}
    assert nesting_from_shells({1: {2: 9, 0: 1}, 2: {1: 9, 0: 1}}) == {}  # each mostly around the other
    # a hand-edited cycle neither hangs nor nests its classes; a class inside one of them still is
    assert regions_from_nesting({0: "b", 1: "x", 2: "y", 3: "z"}, {1: 2, 2: 1, 3: 1}) == (
        Region(1, (1, 3)), Region(2, (2,)), Region(3, (3,)))


def test_regions_cover_every_nested_class_parents_first() -> None:
    assert regions_from_nesting(TASK03, {2: 1}) == LIVER_TUMOUR
    assert regions_from_nesting({0: "bg", 1: "vessel", 2: "tumour"}, {}) == (Region(1, (1,)), Region(2, (2,)))
    chain = regions_from_nesting({0: "bg", 1: "necrosis", 2: "liver", 3: "tumour"}, {3: 2, 1: 3})
    assert chain == (Region(2, (1, 2, 3)), Region(3, (1, 3)), Region(1, (1,)))
    assert region_problems(chain, {0: "bg", 1: "n", 2: "l", 3: "t"}) == []


def test_region_problems_name_what_is_wrong() -> None:
    assert any("no region" in p for p in region_problems((Region(1, (1, 2)),), TASK03))
    assert any("must include the label" in p for p in region_problems((Region(1, (2,)), Region(2, (2,))), TASK03))
    assert any("twice" in p for p in region_problems(LIVER_TUMOUR + (Region(2, (2,)),), TASK03))
    assert any("not foreground" in p for p in region_problems((Region(1, (1, 5)), Region(2, (2,))), TASK03))
    child_first = (Region(2, (2,)), Region(1, (1, 2)))  # the tumour could never win: refused
    assert any("parents first" in p for p in region_problems(child_first, TASK03))


def test_class_probabilities_sum_to_one_and_are_sure_where_the_regions_are() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 5, 6) * 3
    probs = class_probabilities(logits, LIVER_TUMOUR, 3)
    assert probs.shape == (2, 3, 4, 5, 6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 5, 6), atol=1e-6)
    sure = torch.tensor([8.0, -8.0]).view(1, 2, 1, 1, 1)  # liver on, tumour off
    assert float(class_probabilities(sure, LIVER_TUMOUR, 3)[0, 1]) > 0.999


CHAIN = (Region(1, (1, 2, 3)), Region(2, (2, 3)), Region(3, (3,)))
SIBLINGS = (Region(1, (1,)), Region(2, (2,)))


@pytest.mark.parametrize("regions", [LIVER_TUMOUR, SIBLINGS, CHAIN])
def test_the_decision_is_nnunets_threshold_everywhere(regions: tuple[Region, ...]) -> None:
    """Unsure regions included: sigmoids drawn all over 0..1, and the cases a product rule gets
    wrong (liver 0.8 with tumour 0.45 is liver; a chain at 0.6, 0.4, 0.3 is its outer class)."""
    rng = np.random.default_rng(1)
    sig = rng.uniform(0.01, 0.99, (1, len(regions), 6, 7, 8))
    logits = torch.logit(torch.from_numpy(sig).float())
    num_classes = len(regions) + 1
    expected = threshold_labels(sig[0], regions)
    assert (decide(logits, regions)[0].numpy() == expected).all()
    assert (class_probabilities(logits, regions, num_classes).argmax(1)[0].numpy() == expected).all()
    assert len(np.unique(expected)) == num_classes
    borderline = {LIVER_TUMOUR: ([0.8, 0.45], 1), SIBLINGS: ([0.8, 0.45], 1), CHAIN: ([0.6, 0.4, 0.3], 1)}
    values, label = borderline[regions]
    z = torch.logit(torch.tensor(values)).view(1, -1, 1, 1, 1)
    assert int(decide(z, regions).flatten()[0]) == label


def test_region_targets_put_the_tumour_in_the_liver_region() -> None:
    target = torch.tensor([[0, 1, 2]])
    on = region_targets(target, LIVER_TUMOUR, 3)
    assert on.shape == (1, 2, 3)
    assert on[0, 0].tolist() == [0, 1, 1] and on[0, 1].tolist() == [0, 0, 1]


def test_the_region_loss_is_small_for_the_right_answer_and_its_weights_anneal() -> None:
    target = torch.zeros((2, 8, 8, 8), dtype=torch.long)
    target[:, 2:6, 2:6, 2:6] = 1
    target[:, 3:5, 3:5, 3:5] = 2
    on = region_targets(target, LIVER_TUMOUR, 3)
    loss = RegionDiceBCE(LIVER_TUMOUR)
    assert float(loss((on * 2 - 1) * 20, target)) < 1e-3
    wrong = float(loss((1 - on * 2) * 20, target))
    assert wrong > 10
    logits = torch.zeros((2, 2, 8, 8, 8), requires_grad=True)
    weighted = RegionDiceBCE(LIVER_TUMOUR, weighted=True, anneal=True)
    value = weighted(logits, target)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    weighted.progress = 1.0  # annealed to the plain loss
    assert torch.isclose(weighted(logits, target), loss(logits, target))
    weighted.progress = 0.0  # rare regions weigh more at the start
    assert float(weighted(logits.detach(), target)) > float(loss(logits.detach(), target))


def test_build_loss_takes_the_region_loss_by_the_same_name_and_refuses_one_it_lacks() -> None:
    assert isinstance(build_loss("dice_wce_anneal", None, LIVER_TUMOUR), RegionDiceBCE)
    with pytest.raises(ConfigurationError, match="weighted_dice_focal.*dice_ce"):
        build_loss("weighted_dice_focal", None, LIVER_TUMOUR)


def test_the_region_loss_under_deep_supervision_takes_downsampled_targets_and_the_schedule() -> None:
    target = torch.zeros((2, 8, 16, 16), dtype=torch.long)
    target[:, 2:6, 4:12, 4:12] = 1
    target[:, 3:5, 6:10, 6:10] = 2
    loss = DeepSupervision(build_loss("dice_wce_anneal", None, LIVER_TUMOUR))
    outputs = [torch.zeros((2, 2, 8, 16, 16), requires_grad=True), torch.zeros((2, 2, 4, 8, 8), requires_grad=True),
               torch.zeros((2, 2, 2, 4, 4), requires_grad=True)]
    loss.set_progress(0.25)
    assert loss.loss.progress == 0.25
    value = loss(outputs, target)
    value.backward()
    assert torch.isfinite(value) and all(o.grad is not None for o in outputs)


def _plans(**changes) -> Plans:
    from autoseg.plans import Estimates, NetworkPlan, Normalisation

    base = Plans(dataset_name="Task03_Liver", channel_names=("CT",), labels=dict(TASK03), is_ct=True,
                 target_spacing=(2.5, 1.0, 1.0), median_shape=(40, 100, 100), patch_size=(16, 32, 32),
                 batch_size=2, normalisation=(Normalisation("ct", (-160.0, 240.0), 50.0, 40.0),),
                 network=NetworkPlan("arunet", {}), estimates=Estimates("cpu", 2**30, 2**29))
    return base.replace(**changes)


def test_plans_carry_regions_through_json_and_name_their_model_folder() -> None:
    plans = _plans(regions=LIVER_TUMOUR)
    again = Plans.from_dict(json.loads(json.dumps(plans.to_dict())), "plans.json")
    assert again.regions == LIVER_TUMOUR
    assert (again.num_outputs, again.num_classes, again.configuration) == (2, 3, "arunet_regions")
    plain = _plans()
    assert "regions" not in plain.to_dict()
    assert (plain.num_outputs, plain.configuration) == (3, "arunet")


def test_plans_refuse_incomplete_regions_and_regions_with_partial_labels() -> None:
    with pytest.raises(PlansError, match="no region"):
        _plans(regions=(Region(1, (1, 2)),))
    merged = {0: "background", 1: "liver", 2: "vessel", 3: "tumour"}
    with pytest.raises(PlansError, match="do not combine"):
        _plans(labels=merged, partial_labels=(PartialLabel(4, (0, 2), 0),),
               regions=(Region(1, (1,)), Region(2, (2,)), Region(3, (3,))))


def test_regions_need_a_fingerprint_with_nesting(tmp_path: Path) -> None:
    fingerprint = tmp_path / "fingerprint.json"
    req = TrainRequest(dataset="Task03", regions=True)
    with pytest.raises(ConfigurationError, match="plan_and_preprocess -d Task03_Liver --only fingerprint --force"):
        apply_overrides(_plans(), req, fingerprint)  # no fingerprint at all
    with pytest.raises(ConfigurationError, match="partial labels"):
        apply_overrides(_plans(labels={0: "b", 1: "l", 2: "v"}, partial_labels=(PartialLabel(3, (0, 2), 0),)),
                        req, fingerprint)


@pytest.fixture(scope="module")
def task03_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("regions")
    write_task(root / "raw", task="Task03", num_training=5, num_test=1, seed=5, spacing_range=SMALL_SPACINGS)
    with pytest.MonkeyPatch.context() as mp:
        use_workspace(root, mp)  # type: ignore[arg-type]
        assert main(["plan_and_preprocess", "-d", "3", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]) == 0
    return root


def test_train_regions_beside_the_softmax_model_and_predict_with_either(
        task03_workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = use_workspace(task03_workspace, monkeypatch)
    pre = PreprocessedDataset(next((root / "pre").iterdir()))
    assert Fingerprint.load(pre.fingerprint).label_nesting == {2: 1}  # the phantom's tumours lie in its liver
    older = json.loads(pre.fingerprint.read_text())
    del older["label_nesting"]  # as an autoseg before the field wrote it
    (root / "older_fingerprint.json").write_text(json.dumps(older))
    with pytest.raises(ConfigurationError, match="(?s)has none.*--only fingerprint --force"):
        apply_overrides(Plans.load(pre.plans), TrainRequest(dataset="3", regions=True), root / "older_fingerprint.json")
    tiny = ["-f", "0", "--steps", "4", "-j", "0", "--threads", "1"]
    assert main(["train", "-d", "3", *tiny, "--regions"]) == 0
    images = root / "raw" / "Task03_Liver" / "imagesTs"
    # only the region model is trained: predict -d names it rather than failing on the planned folder
    assert main(["predict", "-i", str(images), "-o", str(root / "unused"), "-d", "3", "-f", "0"]) != 0
    assert "--network arunet_regions" in capsys.readouterr().err
    assert main(["train", "-d", "3", *tiny]) == 0
    results = ResultsDataset(root / "res" / pre.name)
    plans = Plans.load(results.model("arunet_regions").plans)
    assert plans.regions == LIVER_TUMOUR and plans.num_outputs == 2
    assert Plans.load(results.model("arunet").plans).regions is None
    net = open_model(results.model("arunet_regions").root).network(0)
    with torch.no_grad():
        out = net(torch.zeros((1, 1, *plans.patch_size)))
    assert (out[0] if isinstance(out, (list, tuple)) else out).shape[1] == 2  # one channel per region
    for network in ("arunet_regions", "arunet"):
        out = root / f"pred_{network}"
        assert main(["predict", "-i", str(images), "-o", str(out), "-d", "3", "-f", "0",
                     "--network", network, "--save-probabilities"]) == 0
        probs = np.load(next(out.glob("*.probabilities.npz")))
        key = [k for k in probs.files if probs[k].ndim == 4][0]
        assert probs[key].shape[0] == 3  # class probabilities either way
        assert np.allclose(probs[key].astype(np.float32).sum(0), 1.0, atol=0.02)
    # the post-processing decision reads the fingerprint's nesting: tumour tries "inside its liver"
    decision = decide_postprocessing(results.model("arunet").root, root / "pre")
    assert decision is not None and "inside_parent" in decision.evidence["tumour"].candidates
    assert "inside_parent" not in decision.evidence["liver"].candidates  # the liver lies in nothing
