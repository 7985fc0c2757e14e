"""False tumours in healthy livers and missed lesions, before and after the post-processing that
cross-validation chooses (issue 22, item 2).

Per phantom family (1: the project's, 2: the second family, with tumour-free livers) this writes a
Task08 task (vessel, tumour), plans it, and per seed trains fold 0 for ``--steps`` steps, lets
``autoseg find_best`` decide the post-processing from fold 0's held-out cases (the volume,
largest-component and confidence rules, docs/inference.md), and predicts the test phantoms twice:
with that post-processing and with ``--no-postprocessing``. It reports, per family, arm and seed:
tumour Dice on the tumour-bearing test cases, the tumour volume predicted in each tumour-free liver
(the issue's target: under 0.5 mL per case), lesion recall for reference lesions of 0.5 mL and more
(target: at least 0.8), false-positive lesions per case, vessel Dice, and the rules chosen. Lesions
are scored as in the race (``benchmarks/race_task.py``).

``--merged`` adds the one-model arms (``--merged-only``: those alone): a Task03 task (liver, tumour) of the same family and sizes but
other patients is merged with the Task08 task (``plan_and_preprocess -d Task03 -d Task08 --merge``),
the merged model trains fold 0 for twice the steps (the pair's total), find_best decides its
post-processing from its own held-out cases of both tasks (it knows the liver, so "keep the largest
foreground component" can drop a "tumour" found in the spleen), and it predicts the same Task08
test phantoms, scored on vessel and tumour as the Task08 model is (its liver counted as background).
Where find_best chose the "tumour inside its liver" rule, the same decision without it is scored as a
third arm (``postprocessed_without_inside_parent``), so the rule's own effect is paired. Not run by CI::

    .venv/bin/python benchmarks/false_tumours.py --families 1 2 --steps 1200 --seeds 0
    .venv/bin/python benchmarks/false_tumours.py --families 2 --steps 1200 --seeds 0 1 --merged
    .venv/bin/python benchmarks/false_tumours.py --families 2 --train-args "--sampler components" \
        --work benchmarks/work/false_tumours_components
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model, run_autoseg as autoseg  # noqa: E402
from bench_preprocess import commit_label  # noqa: E402
from error_tissues import tissue_maps, tissue_names  # noqa: E402
from race_task import SIZE_BINS, case_lesions, decision_rules  # noqa: E402

from autoseg.io import read_label  # noqa: E402
from autoseg.metrics import dice_per_class, mean_present  # noqa: E402
from autoseg.phantom import write_task  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "false_tumours.json"
DATA_SEED = {1: 7100, 2: 7200}  # neither the tests', the race's nor the other benchmarks' phantoms
LIVER_SEED = {1: 7101, 2: 7201}  # the merged arm's Task03 patients
CLASSES = {1: "vessel", 2: "tumour"}
MERGED = "LiverVesselTumour"


def score_arm(refs: Path, preds: Path, to_task08: dict[int, int] | None = None) -> dict[str, Any]:
    """Per test case: Dice of each class and the tumour's lesion figures; and the arm's summary.
    ``to_task08``: a merged model's label values -> Task08's (its liver -> background)."""
    cases: dict[str, Any] = {}
    lookup = None
    if to_task08 is not None:
        lookup = np.zeros(256, dtype=np.uint8)
        for merged, value in to_task08.items():
            lookup[merged] = value
    for ref_file in sorted(refs.glob("*.nii.gz")):
        ref, geometry = read_label(ref_file)
        pred, _ = read_label(preds / ref_file.name)
        if lookup is not None:
            pred = lookup[pred]
        dice = dice_per_class(pred, ref, sorted(CLASSES))
        lesions = case_lesions(pred, ref, geometry.spacing_zyx, {2: "tumour"})["tumour"]
        cases[ref_file.name] = {"dice": {CLASSES[k]: (None if v != v else v) for k, v in dice.items()},
                                "tumour": lesions}
        if lesions["ref_lesions"] == 0:  # a tumour-free liver: which tissue the phantom painted under its "tumour"
            cases[ref_file.name]["false_tumour_tissues"] = false_tumour_tissues(refs.parent, ref_file.name, pred,
                                                                                geometry.spacing_zyx)
    return {"cases": cases, "summary": summarise(cases)}


_TISSUES: dict[tuple[str, str], np.ndarray] = {}


def false_tumour_tissues(task: Path, case: str, pred: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """mL of predicted tumour by the tissue under it (the phantom's tissue map drawn again, kept for
    the run): a "tumour in a healthy liver" may lie in the spleen or the bowel, outside the liver."""
    key = (str(task), case)
    if key not in _TISSUES:
        _TISSUES[key] = tissue_maps(task, only={case})[case]
    tissues, names = _TISSUES[key], tissue_names(task)
    if tissues.shape != pred.shape:
        raise SystemExit(f"{task}: the phantom's tissue map of {case} has shape {tissues.shape}, the prediction "
                         f"{pred.shape}: the task folder no longer matches its phantom.json")
    values, counts = np.unique(tissues[pred == 2], return_counts=True)
    ml = float(np.prod(spacing)) / 1000.0
    return {names.get(int(v), str(int(v))): round(float(n) * ml, 3) for v, n in zip(values, counts)}


def summarise(cases: dict[str, Any]) -> dict[str, Any]:
    free = [c for c in cases.values() if c["tumour"]["ref_lesions"] == 0]
    sick = [c for c in cases.values() if c["tumour"]["ref_lesions"] > 0]
    large = [sum(c["tumour"]["size_bins"][b][i] for c in cases.values() for b in SIZE_BINS[1:]) for i in (0, 1)]
    return {
        "tumour_dice_tumour_bearing": mean_present([c["dice"]["tumour"] for c in sick]),
        "vessel_dice": mean_present([c["dice"]["vessel"] for c in cases.values()]),
        "tumour_free_cases": len(free),
        "false_tumour_ml_per_free_case": [c["tumour"]["pred_ml"] for c in free],
        "free_cases_over_0_5_ml": sum(c["tumour"]["pred_ml"] >= 0.5 for c in free),
        "recall_from_0_5_ml": large[0] / large[1] if large[1] else None, "lesions_from_0_5_ml": large,
        "recall_by_size": {b: [sum(c["tumour"]["size_bins"][b][i] for c in cases.values()) for i in (0, 1)]
                           for b in SIZE_BINS},
        "fp_lesions_per_case": sum(c["tumour"]["fp_lesions"] for c in cases.values()) / max(1, len(cases)),
        "fp_ml_per_case": sum(c["tumour"]["fp_ml"] for c in cases.values()) / max(1, len(cases)),
        "false_tumour_ml_by_tissue": _pooled([c.get("false_tumour_tissues", {}) for c in free]),
    }


def _pooled(parts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = round(out.get(k, 0.0) + v, 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_family(family: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve() / f"family{family}"
    raw = work / "raw"
    task = write_task(raw, "Task08", num_training=args.cases, num_test=args.test, seed=DATA_SEED[family],
                      family=family, tumour_free_share=args.tumour_free_share)
    env = dict(os.environ, AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(work / "preprocessed"))
    plan_args = shlex.split(args.plan_args)
    autoseg(["plan_and_preprocess", "-d", "Task08", *plan_args], env, work / "plan.log")
    if args.merged:  # the merged dataset, once for every seed
        write_task(raw, "Task03", num_training=args.cases, num_test=0, seed=LIVER_SEED[family], family=family,
                   tumour_free_share=args.tumour_free_share)
        autoseg(["plan_and_preprocess", "-d", "Task03", *plan_args], env, work / "plan.log")
        autoseg(["plan_and_preprocess", "-d", "Task03", "-d", "Task08", "--merge", MERGED, *plan_args], env,
                work / "plan.log")
    out: dict[str, Any] = {}
    for seed in args.seeds:
        if args.merged_only:
            out[str(seed)] = {"rules": {}, "arms": {}, "merged": run_merged(family, seed, args, work, env, task)}
            continue
        run_env = dict(env, AUTOSEG_RESULTS=str(work / f"results_seed{seed}"))
        log = work / f"seed{seed}.log"
        fold = next(iter((work / f"results_seed{seed}").glob("*/*/fold_0/validation/summary.json")), None)
        seconds = float("nan") if fold is not None else autoseg(
            ["train", "-d", "Task08", "-f", "0", "--steps", str(args.steps), "--threads", str(args.threads),
             "--seed", str(seed), *shlex.split(args.train_args)], run_env, log)
        autoseg(["find_best", "-d", "Task08"], run_env, log)
        rules = decision_rules(next((work / f"results_seed{seed}").glob("*/*/postprocessing.json")))
        arms = {}
        for arm, extra in (("postprocessed", []), ("raw", ["--no-postprocessing"])):
            preds = work / f"pred_seed{seed}" / arm
            autoseg(["predict", "-i", str(task / "imagesTs"), "-o", str(preds), "-d", "Task08", "-f", "0",
                     "--threads", str(args.threads), "--overwrite", *extra], run_env, log)
            arms[arm] = score_arm(task / "labelsTs", preds)
        plans = json.loads(next((work / f"results_seed{seed}").glob("*/*/plans.json")).read_text())
        out[str(seed)] = {"train_seconds": seconds, "rules": rules, "arms": arms,
                          "augmentation": plans.get("augmentation")}
        if args.merged:
            out[str(seed)]["merged"] = run_merged(family, seed, args, work, env, task)
    return out


def run_merged(family: int, seed: int, args: argparse.Namespace, work: Path, env: dict[str, str],
               task: Path) -> dict[str, Any]:
    """The merged model's arms for one seed (module docstring)."""
    raw = work / "raw"
    labels = json.loads(next(raw.glob(f"*_{MERGED}")).joinpath("dataset.json").read_text())["labels"]
    to_task08 = {int(k): {"vessel": 1, "tumour": 2}.get(v, 0) for k, v in labels.items()}
    results = work / f"results_merged_seed{seed}"
    run_env = dict(env, AUTOSEG_RESULTS=str(results))
    log = work / f"merged_seed{seed}.log"
    fold = next(iter(results.glob("*/*/fold_0/validation/summary.json")), None)
    seconds = float("nan") if fold is not None else autoseg(
        ["train", "-d", MERGED, "-f", "0", "--steps", str(2 * args.steps), "--threads", str(args.threads),
         "--seed", str(seed)], run_env, log)
    autoseg(["find_best", "-d", MERGED], run_env, log)
    rules = decision_rules(next(results.glob("*/*/postprocessing.json")))
    arms = {}
    for arm, extra in (("postprocessed", []), ("raw", ["--no-postprocessing"])):
        preds = work / f"pred_merged_seed{seed}" / arm
        autoseg(["predict", "-i", str(task / "imagesTs"), "-o", str(preds), "-d", MERGED, "-f", "0",
                 "--threads", str(args.threads), "--overwrite", *extra], run_env, log)
        arms[arm] = score_arm(task / "labelsTs", preds, to_task08)
    if rules["inside_parent"]:  # the same decision without that rule: what it alone buys, paired
        model = without_inside_parent(next(results.glob("*/*/postprocessing.json")).parent,
                                      work / f"model_merged_seed{seed}_without_inside_parent")
        preds = work / f"pred_merged_seed{seed}" / "postprocessed_without_inside_parent"
        autoseg(["predict", "-i", str(task / "imagesTs"), "-o", str(preds), "-m", str(model), "-f", "0",
                 "--threads", str(args.threads), "--overwrite"], run_env, log)
        arms["postprocessed_without_inside_parent"] = score_arm(task / "labelsTs", preds, to_task08)
    return {"train_seconds": seconds, "steps": 2 * args.steps, "rules": rules,
            "arms": arms}


def without_inside_parent(model: Path, out: Path) -> Path:
    """A copy of the trained ``model`` folder's plans, fold 0 and post-processing decision, the
    decision without its inside-its-parent rule."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model / "plans.json", out / "plans.json")
    (out / "fold_0").mkdir(exist_ok=True)
    shutil.copy2(model / "fold_0" / "checkpoint_final.pt", out / "fold_0" / "checkpoint_final.pt")
    decision = json.loads((model / "postprocessing.json").read_text())
    (out / "postprocessing.json").write_text(json.dumps(dict(decision, inside_parent={}), indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", type=int, nargs="+", choices=(1, 2), default=[1, 2])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", type=int, default=20, help="training phantoms (fold 0 holds out a fifth)")
    p.add_argument("--test", type=int, default=10)
    p.add_argument("--tumour-free-share", type=float, default=0.3, help="share of tumour-free livers in either family (family 1 had none before 2026-12-06)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=BENCH / "work" / "false_tumours")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="more `autoseg train` flags for the Task08 model, e.g. '--sampler components' (give "
                        "another --work: each work folder holds one recipe's models)")
    p.add_argument("--plan-args", default="", metavar="FLAGS",
                   help="more `autoseg plan_and_preprocess` flags, e.g. '--mirror all' (give another --work)")
    p.add_argument("--merged", action="store_true",
                   help="also train the one liver + vessel + tumour model (module docstring) and score it")
    p.add_argument("--merged-only", action="store_true",
                   help="train and score the merged model only (implies --merged; no Task08 model)")
    args = p.parse_args(argv)
    commit = commit_label()  # the code that runs, read before the long run (the checkout may move)
    args.merged = args.merged or args.merged_only
    families = {str(f): run_family(f, args) for f in args.families}
    short = {f: {s: {"rules": r["rules"], **{a: v["summary"] for a, v in r["arms"].items()},
                     **({"merged_rules": r["merged"]["rules"],
                         **{f"merged_{a}": v["summary"] for a, v in r["merged"]["arms"].items()}}
                        if "merged" in r else {})}
                 for s, r in runs.items()}
             for f, runs in families.items()}
    print(json.dumps(short, indent=1))
    append_result(args.out, {
        "benchmark": "false_tumours", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "benchmarks/false_tumours.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
        "commit": commit, "cpu_count": os.cpu_count(), "steps": args.steps, "seeds": args.seeds, "cases": args.cases,
        "merged": args.merged, "train_args": args.train_args, "plan_args": args.plan_args,
        "test": args.test, "tumour_free_share": args.tumour_free_share, "families": families})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
