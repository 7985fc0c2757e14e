"""benchmarks/trunk_version_rule.py: the version-4 adoption rule read from stored benchmark results.

Results files are written here the way the three benchmarks write them, with per-case scores chosen so
that each condition's outcome is known: the rule must pair by case and seed, use each arm's own
development phantoms, take each model's latest run, and call a comparison with one seed incomplete.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmark_modules import load_benchmark

rule = load_benchmark("trunk_version_rule")

CASES = [f"liver_{i:03d}.nii.gz" for i in range(1, 7)]
DEV = [f"fov_{i:03d}" for i in range(10)]


def write_runs(results: Path, model: str, family: tuple[float, float], dev: float, dev_version: int,
               real: float = 0.8, other_version: bool = True) -> None:
    """``model``'s stored runs: liver Dice ``family`` (family 1, family 2) on every family phantom and
    ``dev`` on the ``dev_version`` development phantoms of both ends (a stale run of each first), and
    with ``other_version`` 0.0 on the other version's."""
    def add(name: str, entry: dict) -> None:
        path = results / name
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps([*runs, entry]))

    for value in ((0.0, 0.0), family):  # the latest run counts
        add("synthetic_phantoms.json", {"model": model, "seed": 2512, "spacing": "demo", "predict_args": "",
                                        "cases": [{"family": f, "case": c, "liver": value[f - 1]}
                                                  for f in (1, 2) for c in CASES]})
    for end in ("mid-bladder", "below-bladder"):
        add("fov_ends.json", {"end": end, "trunk_version": dev_version, "cases": DEV, "models": {"m": model},
                              "scores": {"m 0.25": {c: {"liver": dev} for c in DEV},
                                         "m 0.0": {c: {"liver": 0.0} for c in DEV}}})
        if other_version:
            add("fov_ends.json", {"end": end, "trunk_version": 7 - dev_version, "cases": DEV, "models": {"m": model},
                                  "scores": {"m 0.25": {c: {"liver": 0.0} for c in DEV}}})
    add("fov_ends.json", {"end": "liver-free", "trunk_version": dev_version, "cases": DEV, "models": {"m": model},
                          "scores": {"m 0.25": {c: {"liver": None, "false_ml": 2.0 * dev_version} for c in DEV}}})
    add("real_ct.json", {"model": model, "predict_args": "", "cases": [{"case": "ct", "scores": {"dice": real}}]})


def test_the_rule_holds_fails_and_waits_for_both_seeds(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_runs(tmp_path, f"v3s{seed}", (0.80, 0.90), 0.85, 3)
        write_runs(tmp_path, f"v4s{seed}", (0.83, 0.89), 0.845, 4, real=0.9)
    both = {0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}
    result = rule.evaluate(both, tmp_path)
    assert result["complete"] and result["adopt"] and not result["missing"]
    assert abs(result["families_pooled"]["mean"] - 0.01) < 1e-9 and result["families_pooled"]["n"] == 24
    assert abs(result["families"]["family2"]["mean"] + 0.01) < 1e-9
    assert abs(result["development"]["mean"] + 0.005) < 1e-9 and result["development"]["n"] == 40
    assert result["real_ct"]["0"]["ct"] == {"v3": 0.8, "v4": 0.9}
    assert result["liver_free_false_ml"]["1"] == {"v3": 6.0, "v4": 8.0}

    one = rule.evaluate({0: both[0]}, tmp_path)
    assert not one["complete"] and not one["adopt"] and all(one["conditions"].values())

    write_runs(tmp_path, "v4s1", (0.86, 0.86), 0.845, 4)  # family 2: -0.01 and -0.04, mean -0.025
    worse = rule.evaluate(both, tmp_path)
    assert worse["conditions"]["2 neither family loses more than 0.02"] is False and not worse["adopt"]

    write_runs(tmp_path, "v4s1", (0.83, 0.89), 0.82, 4)  # development: -0.005 and -0.03, mean -0.0175
    assert rule.evaluate(both, tmp_path)["conditions"]["3 development phantoms lose at most 0.01"] is False


def test_missing_scores_are_named_not_guessed(tmp_path: Path) -> None:
    write_runs(tmp_path, "v3s0", (0.8, 0.9), 0.85, 3)
    write_runs(tmp_path, "v4s0", (0.8, 0.9), 0.85, 3, other_version=False)  # development drawn by version 3 only
    result = rule.evaluate({0: ("v3s0", "v4s0"), 1: ("v3s1", "v4s1")}, tmp_path)
    assert not result["complete"] and not result["adopt"]
    assert any("version-4 development phantoms of v4s0" in m for m in result["missing"])
    assert any("family phantoms of v3s1" in m for m in result["missing"])
    assert result["conditions"]["3 development phantoms lose at most 0.01"] is None
    assert rule.main(["--pair", "0=v3s0,v4s0", "--results", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())[0]["complete"] is False
