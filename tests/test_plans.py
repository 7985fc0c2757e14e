"""The plans contract: JSON round trip, validation of hand edits, version check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.errors import PlansError
from autoseg.plans import Estimates, NetworkPlan, Normalisation, Plans


def make_plans(**changes) -> Plans:
    base = dict(
        dataset_name="Task08_HepaticVessel", channel_names=("CT",),
        labels={0: "background", 1: "vessel", 2: "tumour"}, is_ct=True,
        target_spacing=(2.5, 0.8, 0.8), median_shape=(60, 300, 300), patch_size=(32, 96, 96),
        batch_size=2, normalisation=(Normalisation("ct", (-160.0, 240.0), 90.0, 40.0),),
        network=NetworkPlan("arunet", {"n_stages": 5, "strides": [[1, 1, 1], [1, 2, 2]]}),
        estimates=Estimates("cpu", 10**10, 10**8, 10**9, 1.5, 1.2, 1.3, ("why",)))
    base.update(changes)
    return Plans(**base)


def test_round_trip(tmp_path: Path) -> None:
    plans = make_plans()
    plans.save(tmp_path / "plans.json")
    loaded = Plans.load(tmp_path / "plans.json")
    assert loaded == plans
    assert isinstance(loaded.patch_size, tuple) and loaded.labels[1] == "vessel"
    assert loaded.num_classes == 3 and loaded.num_channels == 1


def test_hand_edit_is_honoured(tmp_path: Path) -> None:
    make_plans().save(tmp_path / "plans.json")
    data = json.loads((tmp_path / "plans.json").read_text())
    data["batch_size"] = 4
    data["patch_size"] = [16, 64, 64]
    (tmp_path / "plans.json").write_text(json.dumps(data))
    loaded = Plans.load(tmp_path / "plans.json")
    assert loaded.batch_size == 4 and loaded.patch_size == (16, 64, 64)


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", "two", "'batch_size' must be a number"),
    ("patch_size", [16, 64], "patch_size"),
    ("target_spacing", [2.5, -1, 0.8], "target_spacing"),
    ("plans_version", 99, "plans_version is 99"),
    ("is_ct", "yes", "'is_ct' must be true or false"),
    ("typo_field", 1, "unknown field"),
])
def test_bad_hand_edit_names_the_field(tmp_path: Path, field: str, value, message: str) -> None:
    make_plans().save(tmp_path / "plans.json")
    data = json.loads((tmp_path / "plans.json").read_text())
    data[field] = value
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(PlansError, match=message) as err:
        Plans.load(tmp_path / "plans.json")
    assert "plans.json" in str(err.value)


def test_missing_plans_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PlansError, match="plan_and_preprocess"):
        Plans.load(tmp_path / "plans.json")


def test_unknown_label_volume_mode_fails_loudly(tmp_path: Path) -> None:
    make_plans().save(tmp_path / "plans.json")
    data = json.loads((tmp_path / "plans.json").read_text())
    assert data["resampling"]["label_volume"] == "keep"  # the default
    data["resampling"]["label_volume"] = "nearest"
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(PlansError, match="resampling.label_volume 'nearest' is not one of keep, argmax"):
        Plans.load(tmp_path / "plans.json")
    del data["resampling"]["label_volume"]  # plans written before the field: the default
    (tmp_path / "plans.json").write_text(json.dumps(data))
    assert Plans.load(tmp_path / "plans.json").resampling.label_volume == "keep"


def test_unknown_normalisation_scheme_fails_loudly() -> None:
    with pytest.raises(PlansError, match=r"normalisation\[0\]\.scheme 'minmax' is not one of ct, zscore"):
        make_plans(normalisation=(Normalisation("minmax"),))


def test_a_calibrated_estimate_is_not_written_so_older_plans_keep_their_hash() -> None:
    """``step_time_calibrated`` is written only when False (a plan pinned with --cpu-gflops): the
    plans of every model made before the field hash as they did (localisers are matched to their
    model by that hash, and case reports record it)."""
    import dataclasses

    plans = make_plans()
    assert "step_time_calibrated" not in plans.to_dict()["estimates"] and plans.estimates.calibrated
    pinned = plans.replace(estimates=dataclasses.replace(plans.estimates, step_time_calibrated=False))
    assert pinned.to_dict()["estimates"]["step_time_calibrated"] is False and not pinned.estimates.calibrated
    assert Plans.from_dict(pinned.to_dict()) == pinned
