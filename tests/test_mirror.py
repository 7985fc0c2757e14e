"""Mirror augmentation along the axes no class lies on one side of (the planner's ``mirror_axes``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from autoseg import sliding_window
from autoseg.errors import PlansError
from autoseg.orientation import Reorientation
from autoseg.plans import Augmentation, Plans
from autoseg.planners.fingerprint import CaseFingerprint, centre_in_box, class_positions
from autoseg.planners.planner import PlannerOptions, mirror_axes, plan
from autoseg.sliding_window import WindowOptions, slide
from autoseg.training.data import train_transforms
from tests.test_planner import fingerprint
from tests.test_plans import make_plans


def _positions(median_x: float, share_x: float = 1.0, cases: int = 6) -> dict:
    return {"1": {"cases": cases, "median": [0.5, 0.48, median_x], "same_side_share": [0.5, 0.6, share_x]}}


def test_a_class_on_one_side_turns_that_axis_mirroring_off() -> None:
    liver_right = dict(fingerprint(), class_positions=_positions(0.3))
    axes, why = mirror_axes(liver_right)
    assert axes == (0, 1)
    assert "x: vessel at 0.30" in why
    planned = plan(liver_right, PlannerOptions(cpu_gflops=40.0))
    assert planned.augmentation.mirror_axes == (0, 1)
    assert any("mirror augmentation along z, y only" in n for n in planned.estimates.notes)


@pytest.mark.parametrize("positions", [
    _positions(0.5),  # in the middle
    _positions(0.3, share_x=0.6),  # on either side from case to case (a brain's hemispheres)
    _positions(0.3, cases=4),  # too few cases to tell
    None,  # a fingerprint from before the field
    {},  # no labelled class
])
def test_classes_not_on_one_side_keep_every_axis_mirrored(positions: dict | None) -> None:
    data = fingerprint() if positions is None else dict(fingerprint(), class_positions=positions)
    assert mirror_axes(data)[0] == (0, 1, 2)
    assert plan(data, PlannerOptions(cpu_gflops=40.0)).augmentation.mirror_axes is None  # stored as before


def test_the_user_can_ask_for_every_axis_or_none() -> None:
    liver_right = dict(fingerprint(), class_positions=_positions(0.3))
    assert plan(liver_right, PlannerOptions(cpu_gflops=40.0, mirror="all")).augmentation.mirror_axes is None
    assert plan(liver_right, PlannerOptions(cpu_gflops=40.0, mirror="none")).augmentation.mirror_axes == ()
    with pytest.raises(Exception, match="--mirror must be one of auto, all, none"):
        PlannerOptions(mirror="left")


def test_a_class_centre_is_measured_in_the_patients_lps_order() -> None:
    # a file stored RAS-like: its x and y index axes run to the patient's right and anterior
    reo = Reorientation(perm=(0, 1, 2), flips=(False, True, True))
    label = np.zeros((10, 20, 40), np.uint8)
    label[2:8, 4:8, 30:36] = 1  # high file x: the patient's right, anterior
    box = ((0, 10), (0, 20), (0, 40))
    z, y, x = centre_in_box(label == 1, box, reo)
    assert z == pytest.approx(0.5) and y == pytest.approx(1 - 6 / 20) and x == pytest.approx(1 - 33 / 40)
    assert centre_in_box(label == 1, ((0, 10), (0, 20), (20, 40)), Reorientation())[2] \
        == pytest.approx(13 / 20)  # a fraction of the body's box, not of the image


def test_a_class_centre_follows_permuted_file_axes() -> None:
    # sagittal slices first: file axis 0 is the patient's x, file axis 2 the patient's z
    reo = Reorientation(perm=(2, 1, 0), flips=(False, False, False))
    label = np.zeros((40, 20, 10), np.uint8)
    label[4:10, 0:20, 0:10] = 1  # low file axis 0: the patient's right
    z, y, x = centre_in_box(label == 1, ((0, 40), (0, 20), (0, 10)), reo)
    assert x == pytest.approx(7 / 40) and y == pytest.approx(0.5) and z == pytest.approx(0.5)


def _case(name: str, centres: dict) -> CaseFingerprint:
    return CaseFingerprint(identifier=name, spacing=(1.0, 1.0, 1.0), shape=(8, 8, 8), cropped_shape=(8, 8, 8),
                           body_voxels=512, class_voxels={}, samples={}, intensity_min=0.0, intensity_max=1.0,
                           centres=centres)


def test_class_positions_pool_the_cases_that_hold_the_class() -> None:
    cases = [_case("a", {1: (0.6, 0.5, 0.2)}), _case("b", {1: (0.4, 0.5, 0.3), 2: (0.5, 0.5, 0.5)}),
             _case("c", {1: (0.7, 0.5, 0.6)}), _case("d", {})]
    out = class_positions(cases, [1, 2, 3])
    assert set(out) == {"1", "2"}  # class 3 is in no case
    assert out["1"]["cases"] == 3 and out["1"]["median"] == [0.6, 0.5, 0.3]
    assert out["1"]["same_side_share"][0] == pytest.approx(2 / 3, abs=1e-4)  # z: two of three above the middle
    assert out["1"]["same_side_share"][2] == pytest.approx(2 / 3, abs=1e-4)  # x: two of three on the median's side


def test_training_mirrors_only_along_the_planned_axes() -> None:
    def mirrors(axes):
        transforms = train_transforms((8, 16, 16), Augmentation(False, axes)).transforms
        found = [t for t in transforms if isinstance(t, MirrorTransform)]
        return found[0].axes if found else None

    assert mirrors(None) == (0, 1, 2)  # plans before the field
    assert mirrors((0, 1)) == (0, 1)
    assert mirrors(()) is None
    assert Augmentation(False, (0, 1)).patch_mirror_axes(3) == (0, 1)
    assert Augmentation(False, (0, 1)).patch_mirror_axes(2) == (0,)  # a 2D patch is (y, x)
    assert Augmentation(False).patch_mirror_axes(2) == (0, 1)


@pytest.mark.parametrize("axes", [(), (1,), (0, 2)])
def test_mirror_axes_survive_the_plans_file(tmp_path: Path, axes: tuple) -> None:
    plans = make_plans(augmentation=Augmentation(False, axes))
    plans.save(tmp_path / "plans.json")
    assert json.loads((tmp_path / "plans.json").read_text())["augmentation"]["mirror_axes"] == list(axes)
    assert Plans.load(tmp_path / "plans.json").augmentation.mirror_axes == axes


def test_impossible_mirror_axes_are_refused() -> None:
    with pytest.raises(PlansError, match="mirror_axes"):
        make_plans(augmentation=Augmentation(False, (0, 3)))
    with pytest.raises(PlansError, match="mirror_axes"):
        make_plans(augmentation=Augmentation(False, (1, 1)))


def test_test_time_mirroring_flips_along_the_trained_axes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def capture(network, data, tile, num_classes, overlap, batch, mirror, *args, **kwargs):
        seen.append(mirror)
        return np.zeros((num_classes, *data.shape[1:]), np.float32)

    monkeypatch.setattr(sliding_window, "predict_sliding_window", capture)
    data = np.zeros((1, 32, 96, 96), np.float32)
    for augmentation, expected in ((Augmentation(False, (1,)), (1,)), (Augmentation(False), (0, 1, 2))):
        plans = make_plans(augmentation=augmentation)
        slide(object(), data, plans, WindowOptions(mirror=True, channels_last=False))  # type: ignore[arg-type]
        assert seen[-1] == expected
    slide(object(), data, plans, WindowOptions(mirror=False, channels_last=False))  # type: ignore[arg-type]
    assert seen[-1] == ()


def test_the_phantoms_liver_is_planned_without_left_right_mirroring(tmp_path: Path) -> None:
    """End to end on five phantoms: the fingerprint places the liver on the patient's right, the
    planner then keeps left-right mirroring off (whatever it decides along z and y)."""
    from autoseg.datasets import load_dataset
    from autoseg.phantom import write_task
    from autoseg.planners.fingerprint import fingerprint_dataset

    task = write_task(tmp_path, task="Task03", num_training=5, num_test=0, seed=11,
                      spacing_range=((4.0, 3.5, 3.5), (5.0, 4.0, 4.0)))
    found = fingerprint_dataset(load_dataset(task), num_workers=1)
    assert found.class_positions is not None
    liver = found.class_positions[1]
    assert liver.cases == 5 and liver.median[2] < 0.45 and liver.same_side_share[2] == 1.0
    planned = plan(found, PlannerOptions(cpu_gflops=40.0))
    assert planned.augmentation.mirror_axes is not None and 2 not in planned.augmentation.mirror_axes
