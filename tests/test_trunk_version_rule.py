"""benchmarks/trunk_version_rule.py: the version-4 adoption rule read from stored benchmark results.

Results files are written here the way the three benchmarks write them, with per-case scores chosen so
that each condition's outcome is known: the rule must pair by case and seed, use each arm's own
development phantoms, take each model's latest run, and call a comparison with one seed, a missing
case or two CPU models incomplete.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from tests.benchmark_modules import load_benchmark

rule = load_benchmark("trunk_version_rule")

CASES = [f"liver_{i:03d}.nii.gz" for i in range(1, 7)]
DEV = [f"fov_{i:03d}" for i in range(10)]
DATE = "2026-12-08T00:00:00+00:00"


def add(results: Path, name: str, entry: dict) -> None:
    path = results / name
    runs = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*runs, {"date": DATE, "cpu": "cpu A", **entry}]))


def write_runs(results: Path, model: str, family: tuple[float, float], dev: float, dev_version: int,
               real: float = 0.8, other_version: bool = True, spread: float = 0.01, cpu: str = "cpu A") -> None:
    """``model``'s stored runs: liver Dice ``family`` (family 1, family 2) plus ``spread`` times the case's
    index on each family phantom, ``dev`` plus the same on the ``dev_version`` development phantoms of both
    ends (a stale run of each first), and with ``other_version`` 0.0 on the other version's."""
    for value in ((0.0, 0.0), family):  # the latest run counts
        add(results, "synthetic_phantoms.json", {
            "model": model, "seed": 2512, "spacing": "demo", "predict_args": "", "cpu": cpu,
            "cases": [{"family": f, "case": c, "liver": value[f - 1] + spread * i}
                      for f in (1, 2) for i, c in enumerate(CASES)]})
    for end in ("mid-bladder", "below-bladder"):
        add(results, "fov_ends.json", {"end": end, "trunk_version": dev_version, "cases": DEV, "models": {"m": model},
                                       "scores": {"m 0.25": {c: {"liver": dev + spread * i} for i, c in enumerate(DEV)},
                                                  "m 0.0": {c: {"liver": 0.0} for c in DEV}}})
        if other_version:
            add(results, "fov_ends.json", {"end": end, "trunk_version": 7 - dev_version, "cases": DEV,
                                           "models": {"m": model},
                                           "scores": {"m 0.25": {c: {"liver": 0.0} for c in DEV}}})
    free = {c: {"liver": None, "false_ml": 2.0 * dev_version} for c in DEV}
    add(results, "fov_ends.json", {"end": "liver-free", "trunk_version": dev_version, "cases": DEV,
                                   "models": {"m": model}, "scores": {"m 0.25": free}})
    add(results, "real_ct.json", {"model": model, "predict_args": "",
                                  "cases": [{"case": "ct", "scores": {"dice": real}}]})


def test_the_rule_holds_fails_and_waits_for_both_seeds(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_runs(tmp_path, f"v3s{seed}", (0.80, 0.90), 0.85, 3)
        write_runs(tmp_path, f"v4s{seed}", (0.83, 0.89), 0.845, 4, real=0.9, spread=0.011)
    both = {0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}
    result = rule.evaluate(both, tmp_path)
    assert result["complete"] and result["adopt"] and not result["missing"] and result["cpus"] == ["cpu A"]
    # paired case by case: the i-th phantom's difference carries 0.001 * i
    assert result["differences"]["families"]["1/family1/liver_004.nii.gz"] == pytest.approx(0.03 + 0.003)
    assert result["differences"]["development"]["0/below-bladder/fov_009"] == pytest.approx(-0.005 + 0.009)
    assert result["families_pooled"]["mean"] == pytest.approx(0.01 + 0.0025) and result["families_pooled"]["n"] == 24
    assert result["families"]["family2"]["mean"] == pytest.approx(-0.01 + 0.0025)
    assert result["development"]["mean"] == pytest.approx(-0.005 + 0.0045) and result["development"]["n"] == 40
    assert result["real_ct"]["0"]["ct"] == {"v3": 0.8, "v4": 0.9}
    assert result["liver_free_false_ml"]["1"] == {"v3": 6.0, "v4": 8.0}

    one = rule.evaluate({0: both[0]}, tmp_path)
    assert not one["complete"] and not one["adopt"] and all(one["conditions"].values())

    write_runs(tmp_path, "v4s1", (0.86, 0.86), 0.845, 4, spread=0.011)  # family 2: -0.01 and -0.04 (+0.0025)
    worse = rule.evaluate(both, tmp_path)
    assert worse["conditions"]["2 neither family loses more than 0.02"] is False and not worse["adopt"]

    write_runs(tmp_path, "v4s1", (0.83, 0.89), 0.82, 4, spread=0.011)  # development: -0.005 and -0.03
    assert rule.evaluate(both, tmp_path)["conditions"]["3 development phantoms lose at most 0.01"] is False


def test_the_rule_takes_the_versions_it_compares(tmp_path: Path) -> None:
    """Version 5 against version 3: the new arm's development phantoms are those drawn by version 5;
    read as a version-4 comparison, they are missing."""
    for seed in (0, 1):
        write_runs(tmp_path, f"v3s{seed}", (0.80, 0.90), 0.85, 3)
        write_runs(tmp_path, f"v5s{seed}", (0.83, 0.89), 0.845, 5, real=0.9, spread=0.011)
    both = {0: ("v3s0", "v5s0"), 1: ("v3s1", "v5s1")}
    result = rule.evaluate(both, tmp_path, (3, 5))
    assert result["complete"] and result["adopt"] and result["versions"] == [3, 5]
    assert result["development"]["mean"] == pytest.approx(-0.005 + 0.0045) and result["development"]["n"] == 40
    assert result["liver_free_false_ml"]["1"] == {"v3": 6.0, "v5": 10.0}
    assert result["pairs"]["0"] == {"v3": "v3s0", "v5": "v5s0"}
    as_v4 = rule.evaluate(both, tmp_path)
    assert not as_v4["complete"] and any("version-4 development phantoms of v5s0" in m for m in as_v4["missing"])
    out = tmp_path / "o.json"
    assert rule.main(["--pair", "0=v3s0,v5s0", "--pair", "1=v3s1,v5s1", "--versions", "3", "5",
                      "--results", str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["adopt"] is True
    for bad in (["3", "9"], ["5", "3"]):
        with pytest.raises(SystemExit, match="--versions"):
            rule.main(["--pair", "0=v3s0,v5s0", "--versions", *bad, "--results", str(tmp_path), "--out", str(out)])


def test_a_gain_whose_interval_reaches_below_minus_0_01_is_not_adopted(tmp_path: Path) -> None:
    """A positive mean gain over widely spread differences: condition 1 fails on the interval alone."""
    for seed in (0, 1):
        write_runs(tmp_path, f"v3s{seed}", (0.50, 0.50), 0.85, 3, spread=0.0)
        write_runs(tmp_path, f"v4s{seed}", (0.27, 0.27), 0.85, 4, spread=0.1)  # -0.23 .. +0.27, mean +0.02
    result = rule.evaluate({0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}, tmp_path)
    assert result["families_pooled"]["mean"] == pytest.approx(0.02)
    assert result["conditions"]["2 neither family loses more than 0.02"] is True
    assert result["families_pooled"]["ci95"][0] < -0.01 < result["families_pooled"]["ci95"][1]
    assert result["conditions"]["1 families pooled: interval's lower end above -0.01"] is False
    assert result["complete"] and not result["adopt"]


def test_missing_scores_duplicated_models_and_other_cpus_are_named_not_guessed(tmp_path: Path) -> None:
    write_runs(tmp_path, "v3s0", (0.8, 0.9), 0.85, 3)
    write_runs(tmp_path, "v4s0", (0.8, 0.9), 0.85, 3, other_version=False)  # development drawn by version 3 only
    result = rule.evaluate({0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}, tmp_path)
    assert not result["complete"] and not result["adopt"]
    assert any("version-4 development phantoms of v4s0" in m for m in result["missing"])
    assert any("family phantoms of v3s1" in m for m in result["missing"])
    assert result["conditions"]["3 development phantoms lose at most 0.01"] is None
    with pytest.raises(SystemExit, match="four distinct models"):
        rule.evaluate({0: ("v3s0", "v4s0"), 1: ("v3s0", "v4s0")}, tmp_path)

    write_runs(tmp_path, "v3s1", (0.8, 0.9), 0.85, 3)
    write_runs(tmp_path, "v4s1", (0.8, 0.9), 0.85, 4, cpu="cpu B")
    write_runs(tmp_path, "v4s0", (0.8, 0.9), 0.85, 4)
    two = rule.evaluate({0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}, tmp_path)
    assert not two["complete"] and two["cpus"] == ["cpu A", "cpu B"]
    assert any("2 CPU models" in m for m in two["missing"])

    runs = json.loads((tmp_path / "synthetic_phantoms.json").read_text())
    runs[-1]["cases"] = runs[-1]["cases"][:-1]  # v4s0's latest family run lost a case: not paired
    runs[-1]["cases"].append({"family": 2, "case": "other.nii.gz", "liver": 0.5})
    (tmp_path / "synthetic_phantoms.json").write_text(json.dumps(runs))
    assert any("11 of 12 family phantoms" in m for m in rule.evaluate({0: ("v3s0", "v4s0")}, tmp_path)["missing"])

    assert rule.main(["--pair", "0=v3s0,v4s0", "--results", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())[0]["complete"] is False


def test_runs_older_than_the_models_archive_are_left_out(tmp_path: Path) -> None:
    """A model made again at the same path: the runs of the model before it do not count."""
    archive = tmp_path / "v4.zip"
    archive.write_bytes(b"x")
    made = datetime.fromisoformat(DATE).timestamp() - 1  # written before the runs (never the wall clock)
    os.utime(archive, (made, made))
    write_runs(tmp_path, "v3s0", (0.8, 0.9), 0.85, 3)
    write_runs(tmp_path, str(archive), (0.8, 0.9), 0.85, 4)
    assert rule.Reader(tmp_path).families(str(archive)) is not None
    later = datetime.fromisoformat(DATE).timestamp() + 1  # written again after the runs
    os.utime(archive, (later, later))
    assert rule.Reader(tmp_path).families(str(archive)) is None
    assert any("family phantoms of" in m for m in rule.evaluate({0: ("v3s0", str(archive))}, tmp_path)["missing"])
