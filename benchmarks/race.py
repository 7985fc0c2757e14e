"""The race: autoseg and nnU-Net v2 on the same task (synthetic, or any MSD task with ``--task``), the
same machine and the same training budget, stage by stage.

Run from the repository root (after ``bash benchmarks/setup_nnunet.sh``)::

    .venv/bin/python benchmarks/race.py --budgets 20m 60m            # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/race.py --budgets 2m --test 2 -n 6   # a quick check of the harness
    .venv/bin/python benchmarks/race.py --report                     # table and docs from race.json
    .venv/bin/python benchmarks/race.py --retime-plans 3             # plan + preprocess only, 3 rounds
    .venv/bin/python benchmarks/race.py --large-test 30              # trained rows on 36 test cases
    .venv/bin/python benchmarks/race.py --budgets 20m --contestants autoseg --variant plain_unet \
        --autoseg-args --network plain_unet                          # an autoseg variant, same task
    .venv/bin/python benchmarks/race.py --budgets 20m --contestants nnunet_small --draw 2
                                                                     # train a plan again: row nnunet_small[draw2]

What runs, in this order, each in a fresh process tree (wall time and the peak of the tree's summed
resident memory, sampled at 10 Hz):

1. A Task08-like phantom task from autoseg's generator (``-n`` training cases and ``--test`` held-out
   cases with their labels), linked into an nnU-Net raw dataset.
2. Plan and preprocess: ``autoseg plan_and_preprocess -d 8`` (its CPU calibration included: a
   first run on the machine) and ``nnUNetv2_plan_and_preprocess -d 8 -c 3d_fullres``, 2 workers each.
3. nnU-Net's hand-shrunk plan, because its default plan barely trains on a CPU: its own planner run
   again with small GPU-memory targets (``-gpu_memory_target`` 0.25 to 4 GB), the one whose patch
   volume is closest to autoseg's planned patch kept, its base features set to autoseg's (8 or 16)
   and batch 2: nnU-Net's topology, network and recipe at autoseg's per-step size. It reads the same
   preprocessed data (same spacing).
4. For every budget, fold 0 of the same split (nnU-Net's ``splits_final.json`` is written from
   autoseg's ``splits.json``) trained by each contestant: autoseg with its planned recipe
   (``autoseg train -f 0 --time-budget B``) and nnU-Net with its default trainer (SGD 1e-2, Nesterov
   0.99, poly decay, Dice + CE, its augmentation), the poly schedule stretched over the budget
   instead of 1000 epochs. The budget counts training steps (data loading included), not start-up or
   per-epoch validation, for both. One augmentation worker each.
5. Each fold-0 model predicts the held-out cases (one fold, no mirroring, for both); per-class Dice
   against the phantom's labels, background never counted.

``--large-test N`` predicts the held-out cases again with the trained models of named rows, on the
race's test cases plus ``N`` more phantoms drawn with the same seed (``work/large``), and reports
the paired per-case Dice difference of each autoseg row to nnU-Net's shrunk plan of the same budget
with a 95 % bootstrap interval: six test cases cannot separate differences of a few hundredths.
Training is seeded with the draw number (``--seed N`` for autoseg; for nnU-Net the trainer seeds its
initialisation and main-process sampling, its augmentation workers stay unseeded, and a wall-clock
budget makes the step count vary, so draws are reproducible only up to the machine's speed; rows
before 2026-12-04 were unseeded); ``--draw N`` trains the current plan of each
named contestant again as row ``name[drawN]``, and where a budget has more than one draw of autoseg
or of nnU-Net's shrunk plan the larger-test table adds the paired difference of their per-case means.

Results accumulate in ``benchmarks/results/race.json`` (one entry per contestant and budget, kept
across runs); ``--report`` prints the table and rewrites the block of ``docs/benchmarks.md`` between
``<!-- race:begin -->`` and ``<!-- race:end -->``.

``--task PATH`` races on any MSD task folder instead of the phantoms: training on its
imagesTr/labelsTr, testing on its held-out imagesTs/labelsTs, its classes named by its dataset.json;
``--seeds S1 S2 ...`` trains one draw per seed and contestant (row ``name`` for seed 1,
``name[drawS]`` for seed S); a budget is a duration (``20m``) or a step count (``500steps``). Results
go to ``benchmarks/results/race_<task>.json`` and a report beside it (``.md``: each draw's Dice and
lesion-wise figures, the spread over draws, paired differences between contestants, every test
case; ``race_task.py``); nnU-Net is set up only when an nnU-Net contestant races::

    .venv/bin/python benchmarks/race.py --task /data/Task03_Liver --budgets 20m --seeds 1 2 3
    .venv/bin/python benchmarks/race.py --task /data/Task03_Liver --contestants autoseg --budgets 500steps \
        --seeds 1 2 --autoseg-plan-args '--step-time 1'   # autoseg only; the task's plan arguments
    .venv/bin/python benchmarks/race.py --task /data/Task03_Liver --report
    .venv/bin/python benchmarks/race.py --task /data/Task03_Liver --retime-plans 3 \
        --contestants autoseg nnunet_small   # plan + preprocess only, 3 rounds, beside the rows
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nnunet_tool as nn  # noqa: E402
import race_task as rt  # noqa: E402
from bench_preprocess import commit_label, machine_info, run_measured, to_nnunet_raw  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results" / "race.json"
DOCS = REPO / "docs" / "benchmarks.md"
MSD_TASK = "Task08_HepaticVessel"
CLASSES = {1: "vessel", 2: "tumour"}
SMALL_PLANS = "nnUNetPlans_cpu"
#: Rows finished before this were timed while the memory sampler read PSS at 10 Hz, which slowed
#: the training steps it watched by up to a third (bench_preprocess._pss), of both tools.
PSS_SAMPLER_FIXED = "2026-12-01 14:20"

#: nnU-Net's default trainer with its poly schedule following a wall-clock budget of training steps,
#: its per-step times logged, its final full validation skipped (the race predicts the test set).
BUDGET_TRAINER = '''"""Written by autoseg's benchmarks/race.py: nnU-Net's default trainer on a wall-clock budget."""
import json, os, time
import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Budget(nnUNetTrainer):
    """The default trainer; RACE_BUDGET_S seconds of training steps (or RACE_BUDGET_STEPS steps), the
    poly learning rate as a function of the budget spent instead of the epoch, RACE_ITERS steps per epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # nnU-Net records these by name
        super().__init__(plans, configuration, fold, dataset_json, device)
        seed = int(os.environ.get("RACE_SEED", "1"))  # initialisation and the main process's sampling
        import random
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.budget_s = float(os.environ.get("RACE_BUDGET_S", "inf"))
        self.budget_steps = int(os.environ.get("RACE_BUDGET_STEPS", "0"))  # 0: the budget is RACE_BUDGET_S
        self.num_iterations_per_epoch = int(os.environ.get("RACE_ITERS", "50"))
        self.num_val_iterations_per_epoch = int(os.environ.get("RACE_VAL_ITERS", "4"))
        self.num_epochs = 100000  # ended by the budget
        self.save_every = 1

    def run_training(self):
        self.on_train_start()
        spent, times, done = 0.0, [], False
        while not done:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                t0 = time.perf_counter()
                progress = len(times) / self.budget_steps if self.budget_steps else spent / self.budget_s
                lr = self.initial_lr * (1 - min(progress, 1.0)) ** 0.9
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                outputs.append(self.train_step(next(self.dataloader_train)))
                times.append(time.perf_counter() - t0)
                spent += times[-1]
                if spent >= self.budget_s or (self.budget_steps and len(times) >= self.budget_steps):
                    done = True
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        self.on_train_end()
        with open(os.path.join(self.output_folder, "race_steps.json"), "w") as f:
            json.dump({"steps": len(times), "train_seconds": spent, "step_times": times,
                       "median_step_s": float(np.median(times))}, f)

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass
'''


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", default=["20m"], type=_budget,
                   help="training budgets per fold: durations (20m 60m) or step counts (500steps)")
    p.add_argument("--task", type=Path, default=None, metavar="PATH",
                   help="race on this MSD task folder (imagesTr/labelsTr to train, imagesTs/labelsTs to test) "
                        "instead of the phantoms; results in benchmarks/results/race_<task>.json and .md")
    p.add_argument("--seeds", nargs="+", type=_positive_int, default=None, metavar="S",
                   help="one training draw per seed and contestant: row NAME for seed 1, NAME[drawS] for seed S")
    p.add_argument("-n", "--num-training", type=int, default=None, help="phantom training cases (default 10)")
    p.add_argument("--test", type=int, default=None, help="held-out phantom test cases (default 6)")
    p.add_argument("--seed", type=int, default=None, help="the phantoms' seed (default 2026)")
    p.add_argument("--contestants", nargs="+", default=["autoseg", "nnunet_default", "nnunet_small"],
                   choices=["autoseg", "nnunet_default", "nnunet_small"])
    p.add_argument("--autoseg-args", nargs=argparse.REMAINDER, default=[],
                   help="extra arguments for autoseg train (last on the line)")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="name autoseg's entry autoseg[NAME], for --autoseg-args / --autoseg-plan-args variants")
    p.add_argument("--draw", type=_positive_int, default=None, metavar="N",
                   help="train the named contestants' current plans again, as rows name[drawN] (N >= 2): "
                        "a further independent draw of the same plan, pooled with the others in the "
                        "larger-test table")
    p.add_argument("--autoseg-plan-args", default="",
                   help="with --variant: plan again with these plan_and_preprocess arguments (e.g. '--step-time 3'); "
                        "with --task: the arguments of the task's plan (a change plans again)")
    p.add_argument("--work", type=Path, default=None,
                   help="working folder (default benchmarks/work/race, with --task benchmarks/work/race_<task>)")
    p.add_argument("--results", type=Path, default=None,
                   help="results file (default benchmarks/results/race.json, with --task race_<task>.json)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--replan-autoseg", action="store_true",
                   help="plan and preprocess autoseg again (after a planner change) before racing")
    p.add_argument("--retime-plans", type=_positive_int, default=None, metavar="N",
                   help="time both tools' plan + preprocess again, N rounds (medians: the table's "
                        "plan row; with --task: the report's plan line, autoseg alone unless --contestants "
                        "names an nnU-Net plan, as its default does), and train nothing")
    p.add_argument("--score-best", action="store_true",
                   help="score the best-validation weights of autoseg rows trained before the race did so")
    p.add_argument("--large-test", type=_positive_int, default=None, metavar="N",
                   help="score trained rows again on the race's test cases plus N more held-out phantoms "
                        "(work/large), with paired bootstrap intervals; trains nothing")
    p.add_argument("--large-test-rows", nargs="+", default=list(LARGE_TEST_ROWS), metavar="ROW",
                   help=f"rows for --large-test (default {' '.join(LARGE_TEST_ROWS)})")
    p.add_argument("--postprocess", action="store_true",
                   help="with --task: for the trained autoseg rows of --budgets and --seeds, decide the "
                        "post-processing from fold 0's held-out cases (autoseg find_best, as a user would) and "
                        "predict the test cases with it, as rows autoseg[pp] (autoseg[pp][drawS]); trains nothing")
    p.add_argument("--report", action="store_true", help="only print the table and update the docs")
    p.add_argument("--also", nargs="+", type=Path, default=[], metavar="FILE",
                   help="with --task --report: add the rows of these results files of the same task (a variant "
                        "planned with other --autoseg-plan-args, raced into its own --results), so that the "
                        "report pairs them with this file's rows")
    args = p.parse_args(argv)
    if args.task is None:
        for name, default in (("num_training", 10), ("test", 6), ("seed", 2026)):
            setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
        args.work = args.work or BENCH / "work" / "race"
        args.results = args.results or RESULTS
    return args


def _budget(text: str) -> str:
    """A training budget: a duration (``20m``, ``1h30m``) or a step count (``500steps``)."""
    from autoseg.cli import parse_duration

    if budget_steps(text) is None:
        try:
            parse_duration(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"'{text}' is neither a duration (90s, 20m, 1h30m) nor a step count "
                                             "(500steps)") from None
    return text.strip()


def budget_steps(budget: str) -> int | None:
    """The step count of a step budget (``500steps`` -> 500); None for a duration."""
    m = re.fullmatch(r"\s*(\d+)\s*steps?\s*", budget)
    if m and int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"'{budget}': a step budget needs at least 1 step")
    return int(m.group(1)) if m else None


def budget_seconds(budget: str) -> float | None:
    """The seconds of a duration budget; None for a step budget."""
    from autoseg.cli import parse_duration

    return None if budget_steps(budget) is not None else parse_duration(budget)


def budget_order(row: dict[str, Any]) -> tuple:
    """Sort key of a results row: duration budgets by seconds, then step budgets by steps."""
    seconds = row.get("budget_s")
    return (0, seconds) if seconds is not None else (1, budget_steps(row["budget"]) or 0)


# --- set-up -----------------------------------------------------------------------------------------

AUTOSEG_PLAN = [sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "-j", "2"]


def autoseg_env(work: Path, results: Path, pre: str = "autoseg_pre") -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "AUTOSEG_"))}
    return {**base, "AUTOSEG_RAW": str(work / "msd"), "AUTOSEG_PREPROCESSED": str(work / pre),
            "AUTOSEG_RESULTS": str(results), "AUTOSEG_CACHE": str(work / pre)}  # calibration beside the plans


def plan_variant(work: Path, name: str, plan_args: str) -> str:
    """A second autoseg preprocessed folder planned with ``plan_args``, sharing the race's split and CPU
    calibration (so only what ``plan_args`` change differs)."""
    import subprocess

    pre = f"autoseg_pre_{name}"
    if not (work / pre / MSD_TASK / "plans.json").is_file():
        calibration = work / "autoseg_pre" / "cpu_calibration.json"  # the race's CPU timing, not a new draw
        if calibration.is_file():
            (work / pre).mkdir(parents=True, exist_ok=True)
            shutil.copy(calibration, work / pre / calibration.name)
        subprocess.run([*AUTOSEG_PLAN, *shlex.split(plan_args)], env=autoseg_env(work, work / "unused", pre),
                       check=True)
        shutil.copy(work / "autoseg_pre" / MSD_TASK / "splits.json", work / pre / MSD_TASK / "splits.json")
    return pre


def make_task(work: Path, n: int, test: int, seed: int) -> Path:
    from autoseg.phantom import write_task

    return write_task(work / "msd", "Task08", num_training=n, num_test=test, seed=seed)


def test_inputs(task: Path, folder: Path) -> Path:
    """The held-out images with nnU-Net's ``_0000`` channel suffix (hard links); autoseg reads them too."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted((task / "imagesTs").glob("*.nii.gz")):
        if image.name.startswith("."):  # macOS's ._ copies
            continue
        dst = folder / image.name.replace(".nii.gz", "_0000.nii.gz")
        if not dst.exists():
            os.link(image, dst)
    return folder


def write_nnunet_splits(work: Path, dataset_name: str = MSD_TASK) -> None:
    """nnU-Net's splits_final.json with autoseg's folds, so both train fold 0 on the same cases."""
    from autoseg.plans import Plans
    from autoseg.training.splits import load_or_create_splits
    from autoseg.preprocessing.storage import case_ids

    pre = work / "autoseg_pre" / dataset_name
    cases = case_ids(pre)
    splits = load_or_create_splits(pre / "splits.json", cases, Plans.load(pre / "plans.json").seed)
    out = work / "nnunet" / "preprocessed" / nn.DATASET / "splits_final.json"
    out.write_text(json.dumps([{"train": list(s["train"]), "val": list(s["val"])} for s in splits], indent=1))


def install_budget_trainer() -> None:
    """Next to nnU-Net's own trainer: its class lookup imports the modules of that folder first and
    only then its subpackages (one of which, primus, needs timm, which this venv leaves out)."""
    code = ("import nnunetv2.training.nnUNetTrainer as m, os; "
            "print(os.path.dirname(m.__file__))")
    import subprocess

    folder = Path(subprocess.run([str(nn.PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    (folder / "nnUNetTrainer_Budget.py").write_text(BUDGET_TRAINER)


def shrink_nnunet_plan(work: Path, targets_gb: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
                       dataset_name: str = MSD_TASK) -> dict:
    """nnU-Net's own planner run with small GPU-memory targets; the one whose patch volume is
    closest to autoseg's planned patch is kept, with autoseg's base features and batch 2 set by
    hand: nnU-Net's topology and recipe at autoseg's per-step size."""
    import subprocess

    root = work / "nnunet"
    ours = json.loads((work / "autoseg_pre" / dataset_name / "plans.json").read_text())
    want, base = math.prod(ours["patch_size"]), ours["network"]["kwargs"]["features_per_stage"][0]
    folder = root / "preprocessed" / nn.DATASET
    default = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"][nn.CONFIG]
    best = None
    for gb in targets_gb:
        subprocess.run([nn.command("nnUNetv2_plan_experiment"), "-d", "8", "-gpu_memory_target", str(gb),
                        "-overwrite_plans_name", SMALL_PLANS], env=nn.env(root), check=True, stdout=subprocess.DEVNULL)
        plans = json.loads((folder / f"{SMALL_PLANS}.json").read_text())
        gap = abs(math.log(math.prod(plans["configurations"][nn.CONFIG]["patch_size"]) / want))
        if best is None or gap < best[0]:
            best = (gap, gb, plans)
    _, gb, plans = best
    cfg = plans["configurations"][nn.CONFIG]
    if cfg["spacing"] != default["spacing"]:
        raise SystemExit("the shrunk nnU-Net plan has another spacing; it would need its own preprocessing")
    cfg["data_identifier"] = default["data_identifier"]  # the same preprocessed data
    kw = cfg["architecture"]["arch_kwargs"]
    kw["features_per_stage"] = [min(base * 2**i, 320) for i in range(kw["n_stages"])]
    cfg["batch_size"] = 2
    (folder / f"{SMALL_PLANS}.json").write_text(json.dumps(plans, indent=1))
    return {**nn.configuration(folder / f"{SMALL_PLANS}.json"), "gpu_memory_target_gb": gb,
            "autoseg_patch": ours["patch_size"]}


# --- stages -----------------------------------------------------------------------------------------

def timed(tool: str, cmd: list[str], env: dict[str, str], log: Path, timeout_s: float = 7200) -> dict[str, Any]:
    """One run of ``cmd`` in a fresh process tree: its wall time and peak memory (fails loudly)."""
    return _row(run_measured(tool, cmd, env, log, {}, timeout_s))


def plan_autoseg(work: Path) -> dict[str, Any]:
    """autoseg's plan + preprocess into ``autoseg_pre``, timed."""
    return timed("autoseg", AUTOSEG_PLAN, autoseg_env(work, work / "unused"), work / "logs" / "autoseg_plan.log")


def replan_autoseg(work: Path) -> dict[str, Any]:
    """autoseg's plan + preprocess again (timed), after a planner change, on the same task, split and
    CPU calibration (nnU-Net's preprocessed data and its results stay valid)."""
    splits = work / "autoseg_pre" / MSD_TASK / "splits.json"
    calibration = work / "autoseg_pre" / "cpu_calibration.json"
    kept = splits.read_bytes()
    kept_calibration = calibration.read_bytes() if calibration.is_file() else None
    shutil.rmtree(work / "autoseg_pre")
    if kept_calibration is not None:  # the race's CPU timing, as for plan variants: only the planner differs
        calibration.parent.mkdir(parents=True)
        calibration.write_bytes(kept_calibration)
    row = plan_autoseg(work)
    splits.write_bytes(kept)  # the split nnU-Net trains on
    return row


def plan_stage(work: Path, task: Path) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "autoseg_pre", ignore_errors=True)
    shutil.rmtree(work / "nnunet", ignore_errors=True)
    to_nnunet_raw(task, work / "nnunet" / "raw")
    return {"autoseg": plan_autoseg(work),
            "nnunet": timed("nnunet", nnunet_plan_command(), nn.env(work / "nnunet"), logs / "nnunet_plan.log")}


def nnunet_plan_command() -> list[str]:
    return [nn.command("nnUNetv2_plan_and_preprocess"), "-d", "8", "-c", nn.CONFIG, "-np", "2", "-npfp", "2"]


def retime_plans(work: Path, repeats: int, autoseg_plan: list[str], task_folder: str,
                 nnunet_raw: Callable[[Path], object] | None) -> dict[str, Any]:
    """Both tools' plan + preprocess of the race's task timed again, ``repeats`` rounds, medians;
    in scratch folders under ``work/retime``, deleted at the end (the race's own folders stay as
    they are). ``autoseg_plan``: autoseg's command, writing ``task_folder`` under its preprocessed
    root; ``nnunet_raw(raw_root)`` writes nnU-Net's raw dataset there (None: autoseg alone).

    Each round: autoseg as a first run on the machine (no CPU calibration cached), autoseg again
    with the calibration cached (its planned data deleted), nnU-Net from scratch (its fingerprint
    and preprocessed data deleted); nnU-Net goes first in every other round, so a drift of the
    machine does not favour one tool."""
    scratch, logs = work / "retime", work / "logs"
    shutil.rmtree(scratch, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = autoseg_env(work, scratch / "unused", "retime/autoseg_pre")
    rows: dict[str, list[dict[str, Any]]] = {"autoseg": [], "autoseg_cached": []}

    def autoseg(i: int) -> None:
        shutil.rmtree(scratch / "autoseg_pre", ignore_errors=True)
        rows["autoseg"].append(timed("autoseg", autoseg_plan, env, logs / f"retime_autoseg_{i}.log"))
        shutil.rmtree(scratch / "autoseg_pre" / task_folder)  # cpu_calibration.json stays
        rows["autoseg_cached"].append(timed("autoseg", autoseg_plan, env, logs / f"retime_autoseg_cached_{i}.log"))

    def nnunet(i: int) -> None:
        shutil.rmtree(scratch / "nnunet" / "preprocessed", ignore_errors=True)
        rows["nnunet"].append(timed("nnunet", nnunet_plan_command(), nn.env(scratch / "nnunet"),
                                    logs / f"retime_nnunet_{i}.log"))

    tools: list[Callable[[int], None]] = [autoseg]
    if nnunet_raw is not None:
        nn.require_venv()
        nnunet_raw(scratch / "nnunet" / "raw")
        rows["nnunet"] = []
        tools.append(nnunet)
    for i in range(repeats):
        for run in (tools if i % 2 == 0 else tools[::-1]):
            run(i)
    shutil.rmtree(scratch)
    out: dict[str, Any] = {name: {"wall_s": statistics.median(r["wall_s"] for r in rs),
                                  "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
                                  "wall_s_all": [r["wall_s"] for r in rs]}
                           for name, rs in rows.items()}
    out.update(repeats=repeats, time=time.strftime("%Y-%m-%d %H:%M"))
    return out


def _row(run) -> dict[str, Any]:
    if run.returncode:
        raise SystemExit(f"{run.tool} failed: see {run.log}")
    return {"wall_s": run.wall_s, "peak_rss_gib": round(run.peak_rss_bytes / 2**30, 2)}


def fold_log(model: Path) -> list[dict[str, Any]]:
    """Fold 0's epoch records (``log.jsonl``) in an autoseg model folder."""
    return [json.loads(line) for line in (model / "fold_0" / "log.jsonl").read_text().splitlines()]


def step_figures(log: list[dict[str, Any]]) -> tuple[int, float]:
    """The training steps of a fold's epoch records and their median step time (s)."""
    return sum(r["steps"] for r in log), statistics.median(r["step_time_s"] for r in log if r["steps"])


def predict_best(tag: str, model: Path, inputs: Path, env: dict[str, str], logs: Path) -> dict[str, Any]:
    """Predict the test set with an autoseg fold's best-validation weights (untimed: same network as
    the final weights); returns the row's fields for it."""
    out_dir = inputs.parent / "predictions" / f"{tag}_best"
    shutil.rmtree(out_dir, ignore_errors=True)
    run = run_measured(tag, [sys.executable, "-m", "autoseg", "predict", "-i", str(inputs), "-o", str(out_dir),
                             "-m", str(model), "-f", "0", "--checkpoint", "best"], env,
                       logs / f"{tag}_predict_best.log", {}, 7200)
    if run.returncode:
        raise SystemExit(f"{run.tool} failed: see {run.log}")
    log = fold_log(model)
    best = max(log, key=lambda r: r["val_mean_dice"])
    return {"predictions_best": str(out_dir), "best_epoch": best["epoch"],
            "best_epoch_progress": round(best["progress"], 3), "epochs": len(log)}


def score_best_checkpoints(results: dict[str, Any], work: Path, task: Path) -> None:
    """Add the best-validation weights' test Dice to every autoseg row whose model is still on disk."""
    inputs = test_inputs(task, work / "test_inputs")
    for key, row in results["runs"].items():
        tag = f"{row['contestant']}_{row['budget']}"
        models = list((work / "autoseg_results" / tag).glob(f"{MSD_TASK}/*/plans.json"))
        if not row["contestant"].startswith("autoseg") or "test_dice_best" in row or not models:
            continue
        pre = f"autoseg_pre_{row['contestant'][8:-1]}" if "[" in row["contestant"] else "autoseg_pre"
        if not (work / pre).is_dir():
            pre = "autoseg_pre"
        env = autoseg_env(work, work / "autoseg_results" / tag, pre)
        row.update(predict_best(tag, models[0].parent, inputs, env, work / "logs"))
        row["test_dice_best"] = score(Path(row["predictions_best"]), task)["test_dice"]
        print(key, row["test_dice"], "best:", row["test_dice_best"], flush=True)


def nnunet_plans_name(contestant: str) -> str:
    return "nnUNetPlans" if draw_of(contestant) == "nnunet_default" else SMALL_PLANS


def seed_of(contestant: str) -> int:
    """The training seed of a row: its draw number (``autoseg[draw2]`` -> 2; a first draw or a
    variant -> 1), so that every draw is reproducible and two draws never share a seed."""
    base, _, rest = contestant.partition("[draw")
    return int(rest[:-1]) if rest[:-1].isdigit() and rest.endswith("]") else 1


def draw_of(contestant: str) -> str:
    """The contestant a ``--draw`` row repeats (``nnunet_small[draw2]`` -> ``nnunet_small``)."""
    base, _, rest = contestant.partition("[draw")
    return base if rest[:-1].isdigit() and rest.endswith("]") else contestant


def autoseg_model(work: Path, tag: str, dataset_name: str = MSD_TASK) -> Path:
    """The model folder an autoseg row (``tag``: ``<contestant>_<budget>``) trained."""
    return next((work / "autoseg_results" / tag).glob(f"{dataset_name}/*/plans.json")).parent


def predict_command(contestant: str, budget: str, work: Path, inputs: Path, out_dir: Path,
                    autoseg_pre: str = "autoseg_pre", dataset_name: str = MSD_TASK) -> tuple[list[str], dict[str, str]]:
    """The command and environment with which a trained contestant predicts ``inputs`` into
    ``out_dir``: fold 0's final weights, no mirroring, for both tools."""
    tag = f"{contestant}_{budget}"
    if contestant.startswith("autoseg"):
        return ([sys.executable, "-m", "autoseg", "predict", "-i", str(inputs), "-o", str(out_dir),
                 "-m", str(autoseg_model(work, tag, dataset_name)), "-f", "0"],
                autoseg_env(work, work / "autoseg_results" / tag, autoseg_pre))
    env = {**nn.env(work / "nnunet"), "nnUNet_results": str(work / "nnunet_results" / tag)}
    return ([nn.command("nnUNetv2_predict"), "-i", str(inputs), "-o", str(out_dir), "-d", "8", "-c", nn.CONFIG,
             "-p", nnunet_plans_name(contestant), "-tr", "nnUNetTrainer_Budget", "-f", "0", "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_tta", "--disable_progress_bar"], env)


def train_and_predict(contestant: str, budget: str, budget_s: float | None, work: Path, inputs: Path,
                      autoseg_args: list[str], autoseg_pre: str = "autoseg_pre", *, dataset: str = "8",
                      dataset_name: str = MSD_TASK, best: bool = True) -> dict[str, Any]:
    """Train fold 0 of ``contestant`` for ``budget`` (``budget_s`` seconds, or None for a step
    budget) and predict ``inputs`` with it; ``best``: also with autoseg's best-validation weights."""
    logs = work / "logs"
    tag = f"{contestant}_{budget}"
    out_dir = work / "predictions" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    steps_budget = budget_steps(budget)
    timeout = 4 * budget_s + 3600 if budget_s is not None else 24 * 3600
    if contestant.startswith("autoseg"):
        results = work / "autoseg_results" / tag
        shutil.rmtree(results, ignore_errors=True)
        env = autoseg_env(work, results, autoseg_pre)
        length = ["--steps", str(steps_budget)] if steps_budget else ["--time-budget", budget]
        train = run_measured(tag, [sys.executable, "-m", "autoseg", "train", "-d", dataset, "-f", "0",
                                   *length, "--seed", str(seed_of(contestant)), *autoseg_args],
                             env, logs / f"{tag}_train.log", {}, timeout)
        if train.returncode:
            raise SystemExit(f"{train.tool} failed: see {train.log}")
        model = autoseg_model(work, tag, dataset_name)
        steps, step_s = step_figures(fold_log(model))
        plans = json.loads((model / "plans.json").read_text())
        plan = {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                "network": plans["network"]["name"], "features_per_stage": plans["network"]["kwargs"]["features_per_stage"],
                "recipe": plans["recipe"]["name"], "loss": plans["recipe"]["loss"],
                "precision": plans["recipe"]["precision"]}
        cmd, env = predict_command(contestant, budget, work, inputs, out_dir, autoseg_pre, dataset_name)
        predict = run_measured(tag, cmd, env, logs / f"{tag}_predict.log", {}, 7200)
        extra = predict_best(tag, model, inputs, env, logs) if best and not predict.returncode else {}
    else:
        extra = {}
        plans_name = nnunet_plans_name(contestant)
        root = work / "nnunet"
        results = work / "nnunet_results" / f"{contestant}_{budget}"
        shutil.rmtree(results, ignore_errors=True)
        budget_env = {"RACE_BUDGET_STEPS": str(steps_budget)} if steps_budget else {"RACE_BUDGET_S": str(budget_s)}
        env = {**nn.env(root), "nnUNet_results": str(results), "nnUNet_n_proc_DA": "1", **budget_env,
               "RACE_ITERS": "50", "RACE_SEED": str(seed_of(contestant))}
        train = run_measured(tag, [nn.command("nnUNetv2_train"), "8", nn.CONFIG, "0", "-tr", "nnUNetTrainer_Budget",
                                   "-p", plans_name, "-device", "cpu"], env, logs / f"{tag}_train.log", {}, timeout)
        if train.returncode:
            raise SystemExit(f"{train.tool} failed: see {train.log}")
        fold = next(results.glob(f"{nn.DATASET}/*/fold_0"))
        steps_log = json.loads((fold / "race_steps.json").read_text())
        steps, step_s = steps_log["steps"], steps_log["median_step_s"]
        plan = nn.configuration(root / "preprocessed" / nn.DATASET / f"{plans_name}.json")
        cmd, env = predict_command(contestant, budget, work, inputs, out_dir)
        predict = run_measured(tag, cmd, env, logs / f"{tag}_predict.log", {}, 7200)
    for run in (train, predict):
        if run.returncode:
            raise SystemExit(f"{run.tool} failed: see {run.log}")
    return {"contestant": contestant, "budget": budget, "budget_s": budget_s, "seed": seed_of(contestant),
            "plan": plan, "steps": steps,
            "median_step_s": round(step_s, 3), "train_wall_s": train.wall_s,
            "train_peak_rss_gib": round(train.peak_rss_bytes / 2**30, 2), "predict_wall_s": predict.wall_s,
            "predict_peak_rss_gib": round(predict.peak_rss_bytes / 2**30, 2), "predictions": str(out_dir), **extra}


def score(pred_dir: Path, task: Path, classes: dict[int, str] = CLASSES) -> dict[str, Any]:
    """Per-case and mean per-class Dice of a prediction folder against the task's test labels (a
    class absent from both prediction and reference has no Dice and is left out of the mean), and
    each case's lesion-wise figures (``race_task.case_lesions``)."""
    from autoseg.io import read_label
    from autoseg.metrics import dice_per_class, mean_present

    cases: dict[str, dict[str, float | None]] = {}
    lesions: dict[str, dict[str, dict[str, Any]]] = {}
    for ref_path in sorted((task / "labelsTs").glob("*.nii.gz")):
        if ref_path.name.startswith("."):
            continue
        ref, ref_geom = read_label(ref_path)
        pred, geom = read_label(pred_dir / ref_path.name)
        if not geom.same_grid(ref_geom):
            raise SystemExit(f"{pred_dir / ref_path.name} is not on its image's grid")
        cases[ref_path.name] = {classes[k]: (None if np.isnan(v) else round(float(v), 4))
                                for k, v in dice_per_class(pred, ref, sorted(classes)).items()}
        lesions[ref_path.name] = rt.case_lesions(pred, ref, ref_geom.spacing_zyx, classes)
    mean = {c: mean_present([s[c] for s in cases.values()]) for c in classes.values()}
    return {"test_dice": {c: None if m is None else round(m, 4) for c, m in mean.items()}, "test_cases": cases,
            "lesions": lesions}


#: The rows the larger held-out set scores by default: the current plan of each tool.
LARGE_TEST_ROWS = ("autoseg@20m", "nnunet_small@20m", "autoseg@60m", "nnunet_small@60m")
BOOTSTRAP_SAMPLES = 10000


def large_test_task(work: Path, n: int, test: int, extra: int, seed: int, race_task: Path) -> Path:
    """The race's task with ``extra`` more held-out phantoms: the same seed, so its training cases
    and first ``test`` test cases are the race's own (checked byte for byte on the first of each)."""
    task = make_task(work / "large", n, test + extra, seed)
    for sub, name in (("imagesTr", f"hepaticvessel_{0:03d}.nii.gz"), ("labelsTs", f"hepaticvessel_{n:03d}.nii.gz")):
        if (task / sub / name).read_bytes() != (race_task / sub / name).read_bytes():
            raise SystemExit(f"{task / sub / name} differs from the race's {race_task / sub / name}: "
                             "the generator changed since the race's task was written")
    return task


def score_large_test(results: dict[str, Any], work: Path, task: Path, keys: list[str]) -> None:
    """Predict the larger held-out set with each named row's model (still on disk) and score it."""
    inputs = test_inputs(task, work / "large" / "test_inputs")
    for key in keys:
        if key not in results["runs"]:
            raise SystemExit(f"no row {key} in the results; rows: {', '.join(results['runs'])}")
        row = results["runs"][key]
        tag = f"{row['contestant']}_{row['budget']}"
        out_dir = work / "large" / "predictions" / tag
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd, env = predict_command(row["contestant"], row["budget"], work, inputs, out_dir)
        run = run_measured(tag, cmd, env, work / "logs" / f"{tag}_predict_large.log", {}, 7200)
        if run.returncode:
            raise SystemExit(f"{run.tool} failed: see {run.log}")
        row["large_test"] = {**score(out_dir, task), "predict_wall_s": run.wall_s,
                             "time": time.strftime("%Y-%m-%d %H:%M")}
        print(key, row["large_test"]["test_dice"], f"{run.wall_s:.0f} s", flush=True)


def paired_difference(a: dict[str, dict[str, float | None]], b: dict[str, dict[str, float | None]],
                      cls: str, seed: int = 0) -> dict[str, float]:
    """Mean per-case Dice difference a - b over the cases where both are defined, with a 95 %
    percentile-bootstrap interval (cases resampled) and the number of cases a wins."""
    diffs = np.array([a[c][cls] - b[c][cls] for c in a if a[c][cls] is not None and b.get(c, {}).get(cls) is not None])
    rng = np.random.default_rng(seed)
    boot = diffs[rng.integers(0, len(diffs), (BOOTSTRAP_SAMPLES, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "low": float(lo), "high": float(hi), "cases": int(len(diffs)),
            "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum())}


def large_table(results: dict[str, Any]) -> str:
    """Dice on the larger held-out set, and autoseg's paired difference to nnU-Net's shrunk plan."""
    rows = [(k, r) for k, r in sorted(results["runs"].items(), key=lambda kr: (budget_order(kr[1]), kr[0]))
            if "large_test" in r]
    if not rows:
        return ""
    n = len(rows[0][1]["large_test"]["test_cases"])
    lines = [f"| budget | contestant | vessel Dice | tumour Dice ({n} held-out cases) | predict (s) |",
             "|---|---|---|---|---|"]
    for _, r in rows:
        d = r["large_test"]["test_dice"]
        lines.append(f"| {r['budget']} | {r['contestant']} | {d['vessel']:.3f} | {d['tumour']:.3f} | "
                     f"{r['large_test']['predict_wall_s']:.0f} |")
    by_key = dict(rows)
    pairs = [(k, f"nnunet_small@{r['budget']}") for k, r in rows if r["contestant"].startswith("autoseg")]
    pairs = [(a, b) for a, b in pairs if b in by_key]
    if pairs:
        lines += ["", "| paired per case, mean and 95 % bootstrap interval | vessel | tumour |", "|---|---|---|"]
        for a, b in pairs:
            lines.append(f"| {a} minus {b} | "
                         f"{_paired_cells(by_key[a]['large_test']['test_cases'], by_key[b]['large_test']['test_cases'])} |")
    pooled = pooled_pairs(rows)
    if pooled:
        lines += ["", "| each draw of one tool against each of the other, and the per-case mean over each side's draws "
                  "(intervals resample cases, not training draws) | vessel | tumour |", "|---|---|---|"]
        for name, a, b in pooled:
            lines.append(f"| {name} | {_paired_cells(a, b)} |")
    return "\n".join(lines)


def _paired_cells(a: dict[str, dict[str, float | None]], b: dict[str, dict[str, float | None]]) -> str:
    """The table cells of a paired per-case difference a - b, one per class."""
    cells = []
    for cls in CLASSES.values():
        d = paired_difference(a, b, cls)
        cells.append(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], wins {d['wins']}, losses {d['losses']} of {d['cases']}")
    return " | ".join(cells)


def mean_over_draws(draws: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """Per case and class, the mean Dice over the draws in which it is defined (None in none)."""
    out: dict[str, dict[str, float | None]] = {}
    for case in draws[0]:
        out[case] = {}
        for cls in CLASSES.values():
            values = [d[case][cls] for d in draws if d.get(case, {}).get(cls) is not None]
            out[case][cls] = float(np.mean(values)) if values else None
    return out


def pooled_pairs(rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict, dict]]:
    """For each budget where autoseg or nnU-Net's shrunk plan has more than one draw on the larger
    test set: every draw of one against every draw of the other, then the two sides' per-case means
    over their draws. Draws of a side must share its plan and test cases, else the budget is left out."""
    out = []
    for budget in dict.fromkeys(r["budget"] for _, r in rows):
        sides = {name: [(k, r) for k, r in rows if r["budget"] == budget and draw_of(r["contestant"]) == name]
                 for name in ("autoseg", "nnunet_small")}
        if not all(sides.values()) or max(map(len, sides.values())) < 2:
            continue
        if any(len({json.dumps(r["plan"], sort_keys=True) for _, r in side}) > 1
               or len({tuple(sorted(r["large_test"]["test_cases"])) for _, r in side}) > 1 for side in sides.values()):
            print(f"race: the draws at {budget} differ in plan or test cases; not pooled", file=sys.stderr)
            continue
        for ka, ra in sides["autoseg"]:
            for kb, rb in sides["nnunet_small"]:
                out.append((f"{ka} minus {kb}", ra["large_test"]["test_cases"], rb["large_test"]["test_cases"]))
        n_a, n_b = len(sides["autoseg"]), len(sides["nnunet_small"])
        label = (f"mean of autoseg's {n_a} draw{'s' * (n_a > 1)} minus mean of nnunet_small's "
                 f"{n_b} draw{'s' * (n_b > 1)}, {budget}")
        out.append((label, mean_over_draws([r["large_test"]["test_cases"] for _, r in sides["autoseg"]]),
                    mean_over_draws([r["large_test"]["test_cases"] for _, r in sides["nnunet_small"]])))
    return out


# --- results and report -----------------------------------------------------------------------------

def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def _started(row: dict[str, Any]) -> str:
    """When a run began ("%Y-%m-%d %H:%M"): its finishing time less its training and prediction."""
    from datetime import datetime, timedelta

    if "time" not in row:
        return ""
    end = datetime.strptime(row["time"], "%Y-%m-%d %H:%M")
    return (end - timedelta(seconds=row.get("train_wall_s", 0) + row.get("predict_wall_s", 0))).strftime("%Y-%m-%d %H:%M")


def _best(row: dict[str, Any]) -> str:
    """The row's test Dice with the best-validation checkpoint, where it was scored."""
    b = row.get("test_dice_best")
    if not b:
        return ""
    return f"{b['vessel']:.3f}, {b['tumour']:.3f} ({row['best_epoch']} of {row['epochs']})"


def table(results: dict[str, Any]) -> str:
    """The markdown table of the latest results and the ratios to nnU-Net."""
    lines = []
    plan = results.get("plan_and_preprocess")
    old = bool(plan) and plan.get("time", "") < PSS_SAMPLER_FIXED
    if plan:
        n = plan["nnunet"]
        rounds = f", median of {plan['repeats']}" if plan.get("repeats") else ""
        rounds += " *" if old else ""
        lines += [f"| plan + preprocess{rounds} | wall (s) | peak RSS (GiB) | ratio to nnU-Net (wall, memory) |",
                  "|---|---|---|---|"]
        for key, name in (("autoseg", "autoseg, first run (calibrates the CPU)"),
                          ("autoseg_cached", "autoseg, calibration cached")):
            if key in plan:
                a = plan[key]
                lines.append(f"| {name} | {a['wall_s']:.1f} | {a['peak_rss_gib']:.2f} | "
                             f"{a['wall_s'] / n['wall_s']:.2f}, {a['peak_rss_gib'] / n['peak_rss_gib']:.2f} |")
        lines += [f"| nnU-Net 3d_fullres | {n['wall_s']:.1f} | {n['peak_rss_gib']:.2f} | |", ""]
    runs = sorted(results["runs"].values(), key=lambda r: (budget_order(r), r["contestant"]))
    lines += ["| budget | contestant | network: patch, batch, features | steps | s/step | voxels trained per s | vessel Dice | "
              "tumour Dice | predict test set (s) | best-validation weights: vessel, tumour (epoch) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r["plan"]
        desc = f"{p.get('network', '?')}: {'x'.join(map(str, p['patch_size']))}, {p['batch_size']}, {p['features_per_stage'][0]}..{p['features_per_stage'][-1]}"
        d = r["test_dice"]
        mark = "*" if _started(r) < PSS_SAMPLER_FIXED else ""
        old = old or bool(mark)
        rate = p["batch_size"] * math.prod(p["patch_size"]) / r["median_step_s"]  # patch voxels through a step
        lines.append(f"| {r['budget']} | {r['contestant']} | {desc} | {r['steps']}{mark} | {r['median_step_s']:.2f}{mark} | "
                     f"{rate / 1000:.0f}k{mark} | {d['vessel']:.3f} | {d['tumour']:.3f} | {r['predict_wall_s']:.0f} | {_best(r)} |")
    if old:
        lines += ["", "\\* timed before the harness's memory sampler was fixed (it slowed every training step it "
                  "watched, autoseg's from 0.46 to 0.62 s; nnU-Net's too, by an amount not measured): fewer steps "
                  "in the budget, and longer plan runs, than today."]
    large = large_table(results)
    if large:
        lines += ["", "The same models on a larger held-out set (`--large-test`; the race's test cases among them):",
                  "", large]
    return "\n".join(lines)


def write_docs(results: dict[str, Any]) -> None:
    text = DOCS.read_text()
    begin, end = "<!-- race:begin -->", "<!-- race:end -->"
    if begin not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    meta = results.get("machine", {})
    block = (f"{begin}\n_Generated by `.venv/bin/python benchmarks/race.py --report` from "
             f"`benchmarks/results/race.json` ({meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
             f"autoseg {meta.get('autoseg_commit', '?')}, task: {results.get('task', '?')})._\n\n"
             f"{table(results)}\n{end}")
    DOCS.write_text(head + block + tail)


def draw_row(contestant: str, seed: int) -> str:
    """The row of a contestant's draw with ``seed``: the plain name for seed 1, ``name[drawS]`` else
    (``seed_of`` reads it back)."""
    return contestant if seed == 1 else f"{contestant}[draw{seed}]"


def planned_rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(budget, row name) of every training the arguments ask for, in the order they run."""
    seeds = args.seeds or [args.draw or 1]
    named = [f"autoseg[{args.variant}]" if c == "autoseg" and args.variant else c for c in args.contestants]
    return [(b, draw_row(c, s)) for b in args.budgets for c in named for s in seeds]


def task_plan_command(task: rt.RaceTask, args: argparse.Namespace) -> list[str]:
    """autoseg's plan + preprocess of the race's task, with the task's plan arguments."""
    return [sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", str(task.root), "-j", "2",
            *shlex.split(args.autoseg_plan_args)]


def retime_task_plans(args: argparse.Namespace, task: rt.RaceTask, desc: dict[str, Any], work: Path,
                      results: dict[str, Any], results_path: Path) -> int:
    """``--task ... --retime-plans N``: both tools' plan + preprocess of the task (``desc``: its
    description) timed N rounds (autoseg alone unless an nnU-Net contestant is named), beside the
    race's rows; trains nothing."""
    old = results.get("task")
    if old not in (None, desc):
        held = f"the race on {old.get('path')}" if isinstance(old, dict) else "the phantom race"
        raise SystemExit(f"{results_path} holds {held} with other cases, classes or plan arguments than "
                         f"{task.root} has now; give the retiming its own file (--results)")
    with_nnunet = any(c.startswith("nnunet") for c in args.contestants)
    retimed = retime_plans(work, args.retime_plans, task_plan_command(task, args), task.name,
                           (lambda raw: rt.nnunet_raw(task, raw / nn.DATASET)) if with_nnunet else None)
    retimed["machine"] = machine_info(nn.PYTHON)  # the rows keep theirs
    results.update(task=desc, runs=results.get("runs", {}), plan_and_preprocess_retimed=retimed)
    save_results(results, results_path)
    if results["runs"]:
        results_path.with_suffix(".md").write_text(rt.report(results))
    print(rt.plan_timing(results))
    return 0


def task_race(args: argparse.Namespace) -> int:
    """The race on the MSD task folder ``args.task``: autoseg's plan of it (nnU-Net's only when an
    nnU-Net contestant races), a seeded draw per seed and contestant, the report beside the results."""
    given = [flag for flag, on in (("-n", args.num_training is not None), ("--test", args.test is not None),
                                   ("--seed", args.seed is not None), ("--draw", args.draw is not None),
                                   ("--large-test", args.large_test is not None), ("--score-best", args.score_best),
                                   ("--replan-autoseg", args.replan_autoseg)) if on]
    if given:
        raise SystemExit(f"{', '.join(given)}: for the phantom race only; with --task the task's own cases are "
                         "raced (seeded draws: --seeds; a new plan: change --autoseg-plan-args)")
    if args.retime_plans is not None and (args.report or args.postprocess):
        raise SystemExit("--retime-plans times plan + preprocess only: not with --report or --postprocess")
    task = rt.load_task(args.task)
    work = (args.work or BENCH / "work" / f"race_{task.name}").resolve()
    results_path = args.results or BENCH / "results" / f"race_{task.name}.json"
    results = load_results(results_path)
    desc = task.describe(args.autoseg_plan_args)
    old_task = results.get("task")
    if results.get("runs") and (not isinstance(old_task, dict) or old_task.get("path") != desc["path"]):
        where = "the phantom race" if not isinstance(old_task, dict) else f"the race on {old_task.get('path')}"
        raise SystemExit(f"{results_path} holds {where}; give this task its own file (--results)")
    if args.report:
        print(rt.report(with_rows_of(results, args.also, task)))
        return 0
    if args.also:
        raise SystemExit("--also adds rows to a --report only")
    if args.postprocess:
        if old_task != desc:
            raise SystemExit(f"--postprocess: {results_path} holds no race of {task.root} as it is now")
        return postprocess_rows(args, task, work, test_inputs(task.root, work / "test_inputs"), results,
                                results_path)
    if args.autoseg_args and not args.variant:
        raise SystemExit("--autoseg-args needs --variant NAME (the rows' name)")
    (BENCH / "work").mkdir(exist_ok=True)  # where run_measured runs the tools
    if args.retime_plans is not None:
        return retime_task_plans(args, task, desc, work, results, results_path)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if results.get("runs") and old_task != desc:
        print(f"{task.root}: its cases, classes or plan arguments changed since {results_path} was written: "
              f"planning again; the {len(results['runs'])} rows of the old plan are dropped", flush=True)
    if (old_task != desc or "plan_and_preprocess" not in results  # a file that only holds a retiming
            or not (work / "autoseg_pre" / task.name / "plans.json").is_file()):
        for old in ("autoseg_pre", "nnunet", "autoseg_results", "nnunet_results", "predictions"):
            shutil.rmtree(work / old, ignore_errors=True)
        retimed = results.get("plan_and_preprocess_retimed") if old_task == desc else None
        results = {"task": desc, "runs": {},
                   "plan_and_preprocess": {"autoseg": timed("autoseg", task_plan_command(task, args),
                                                            autoseg_env(work, work / "unused"),
                                                            logs / "autoseg_plan.log")}}
        if retimed:  # the same task and plan arguments: its retiming still holds
            results["plan_and_preprocess_retimed"] = retimed
    if any(c.startswith("nnunet") for c in args.contestants):
        nn.require_venv()
        install_budget_trainer()
        if "nnunet" not in results["plan_and_preprocess"] or not (work / "nnunet").is_dir():
            shutil.rmtree(work / "nnunet", ignore_errors=True)
            results.pop("nnunet_small_plan", None)
            rt.nnunet_raw(task, work / "nnunet" / "raw" / nn.DATASET)
            results["plan_and_preprocess"]["nnunet"] = timed("nnunet", nnunet_plan_command(), nn.env(work / "nnunet"),
                                                             logs / "nnunet_plan.log")
            write_nnunet_splits(work, task.name)
        if "nnunet_small" in args.contestants and "nnunet_small_plan" not in results:
            results["nnunet_small_plan"] = shrink_nnunet_plan(work, dataset_name=task.name)
    inputs = test_inputs(task.root, work / "test_inputs")
    results["machine"] = machine_info(nn.PYTHON)
    save_results(results, results_path)
    for budget, name in planned_rows(args):
        row = train_and_predict(name, budget, budget_seconds(budget), work, inputs, args.autoseg_args,
                                dataset=str(task.root), dataset_name=task.name, best=False)
        row.update(score(Path(row["predictions"]), task.root, task.classes), base=draw_of(name),
                   time=time.strftime("%Y-%m-%d %H:%M"),
                   autoseg_commit=commit_label())  # "machine" is the latest run's only
        results["runs"][f"{name}@{budget}"] = row
        save_results(results, results_path)
        print(json.dumps({k: row[k] for k in ("contestant", "budget", "seed", "steps", "test_dice")}), flush=True)
    text = rt.report(results)
    results_path.with_suffix(".md").write_text(text)
    print(text)
    print(f"results: {results_path}, report: {results_path.with_suffix('.md')}")
    return 0


def with_rows_of(results: dict[str, Any], files: list[Path], task: "rt.RaceTask") -> dict[str, Any]:
    """``results`` with the rows of the race results ``files`` added (``--also``): each must be a race
    of the same task folder, cases and classes, and name its rows apart from every other file's."""
    merged = {**results, "runs": dict(results.get("runs", {}))}
    for path in files:
        other = load_results(path)
        theirs, ours = other.get("task"), results.get("task")
        same = ("path", "classes", "training_cases", "test_cases")
        if not isinstance(theirs, dict) or not isinstance(ours, dict) or any(theirs.get(k) != ours.get(k) for k in same):
            raise SystemExit(f"--also {path}: not a race of {task.root} with the same cases and classes")
        clash = sorted(set(other["runs"]) & set(merged["runs"]))
        if clash:
            raise SystemExit(f"--also {path}: rows {', '.join(clash)} are in two files; race the variant with "
                             "--variant NAME so that its rows are named apart")
        merged["runs"].update(other["runs"])
    return merged


def postprocessed_row(name: str) -> str:
    """The row of an autoseg row's post-processed predictions (``autoseg[draw2]`` -> ``autoseg[pp][draw2]``)."""
    return draw_row(f"{draw_of(name)}[pp]", seed_of(name))


def postprocess_rows(args: argparse.Namespace, task: "rt.RaceTask", work: Path, inputs: Path,
                     results: dict[str, Any], results_path: Path) -> int:
    """``--postprocess``: each trained autoseg row of the arguments' budgets and seeds decides its
    post-processing from fold 0's held-out cases (``autoseg find_best`` writes ``postprocessing.json``
    into the row's model folder) and predicts the test cases with it (``predict`` applies it), scored
    as the row :func:`postprocessed_row`. nnU-Net's rows stay as they are (raw, as raced)."""
    logs = work / "logs"
    rows = [(b, n) for b, n in planned_rows(args) if n.startswith("autoseg") and "[pp]" not in n]
    missing = [f"{n}@{b}" for b, n in rows if f"{n}@{b}" not in results["runs"]]
    if missing or not rows:
        raise SystemExit(f"--postprocess: no trained row {', '.join(missing) or 'of autoseg'} in {results_path}; "
                         "race it first (without --postprocess)")
    for budget, name in rows:
        tag = f"{name}_{budget}"
        out_dir = work / "predictions" / f"{postprocessed_row(name)}_{budget}"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd, env = predict_command(name, budget, work, inputs, out_dir, dataset_name=task.name)
        decide = run_measured(tag, [sys.executable, "-m", "autoseg", "find_best", "-d", str(task.root)], env,
                              logs / f"{tag}_find_best.log", {}, 7200)
        if decide.returncode:
            raise SystemExit(f"autoseg find_best failed: see {decide.log}")
        rules = rt.decision_rules(autoseg_model(work, tag, task.name) / "postprocessing.json")
        predict = run_measured(tag, cmd, env, logs / f"{tag}_pp_predict.log", {}, 7200)
        if predict.returncode:
            raise SystemExit(f"autoseg predict failed: see {predict.log}")
        row = {**results["runs"][f"{name}@{budget}"], "contestant": postprocessed_row(name),
               "predictions": str(out_dir), "predict_wall_s": predict.wall_s,
               "predict_peak_rss_gib": round(predict.peak_rss_bytes / 2**30, 2), "find_best_wall_s": decide.wall_s,
               "postprocessing": rules, "postprocess_autoseg_commit": commit_label(),
               "time": time.strftime("%Y-%m-%d %H:%M")}
        row.update(score(out_dir, task.root, task.classes), base=draw_of(row["contestant"]))
        results["runs"][f"{row['contestant']}@{budget}"] = row
        save_results(results, results_path)
        print(json.dumps({k: row[k] for k in ("contestant", "budget", "seed", "postprocessing", "test_dice")}),
              flush=True)
    text = rt.report(results)
    results_path.with_suffix(".md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant and draw_of(f"x[{args.variant}]") == "x":
        raise SystemExit(f"--variant {args.variant}: names drawN are kept for --draw N")
    if args.seeds is not None:
        if args.draw is not None:
            raise SystemExit("--seeds and --draw both name draws (--draw N is --seeds N): give one")
        if args.report or args.large_test is not None or args.score_best or args.retime_plans is not None:
            raise SystemExit("--seeds trains; it does nothing with --report, --large-test, --score-best or --retime-plans")
        if len(set(args.seeds)) < len(args.seeds):
            raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice would train one draw twice")
    if args.postprocess and (args.task is None or args.report):
        raise SystemExit("--postprocess scores the trained autoseg rows of a --task race; give --task, not --report")
    if args.task is not None:
        return task_race(args)
    if args.draw is not None:
        if args.variant or args.autoseg_args or args.autoseg_plan_args or args.draw < 2:
            raise SystemExit("--draw N repeats the current plans as they are (N >= 2, the first draw is the "
                             "plain row); it cannot be combined with --variant or --autoseg-*args")
        if args.report or args.large_test is not None or args.score_best or args.retime_plans is not None:
            raise SystemExit("--draw N trains; it does nothing with --report, --large-test, --score-best or --retime-plans")
    results = load_results(args.results)
    if args.draw is not None or args.seeds is not None:
        taken = [f"{c}@{b}" for b, c in planned_rows(args) if c != draw_of(c) and f"{c}@{b}" in results["runs"]]
        if taken:
            raise SystemExit(f"rows {', '.join(taken)} exist; use another seed (a draw is never overwritten)")
    if args.report:
        print(table(results))
        if not args.no_docs:
            write_docs(results)
        return 0
    nn.require_venv()
    install_budget_trainer()
    work = args.work.resolve()
    (BENCH / "work").mkdir(exist_ok=True)
    task = make_task(work, args.num_training, args.test, args.seed)
    task_desc = f"{args.num_training} training + {args.test} test phantoms, seed {args.seed}"
    if results.get("task") != task_desc or not (work / "nnunet").is_dir():
        results = {"runs": {}, "task": task_desc}
        results["plan_and_preprocess"] = plan_stage(work, task)
        results["nnunet_small_plan"] = shrink_nnunet_plan(work)
        write_nnunet_splits(work)
    if args.replan_autoseg:
        results["autoseg_replan"] = replan_autoseg(work)  # one run; --retime-plans makes the table's row
    results["machine"] = machine_info(nn.PYTHON)
    if args.score_best:
        score_best_checkpoints(results, work, task)
        save_results(results, args.results)
        print(table(results))
        return 0
    if args.large_test is not None:
        large = large_test_task(work, args.num_training, args.test, args.large_test, args.seed, task)
        score_large_test(results, work, large, args.large_test_rows)
        save_results(results, args.results)
        print(large_table(results))
        return 0
    if args.retime_plans is not None:
        results["plan_and_preprocess"] = retime_plans(work, args.retime_plans, AUTOSEG_PLAN, MSD_TASK,
                                                      lambda raw: to_nnunet_raw(task, raw))
        save_results(results, args.results)
        print(table(results))
        return 0
    save_results(results, args.results)
    inputs = test_inputs(task, work / "test_inputs")
    if (args.autoseg_plan_args or args.autoseg_args) and not args.variant:
        raise SystemExit("--autoseg-plan-args and --autoseg-args need --variant NAME (the entry's name)")
    pre = plan_variant(work, args.variant, args.autoseg_plan_args) if args.autoseg_plan_args else "autoseg_pre"
    for budget, contestant in planned_rows(args):
        row = train_and_predict(contestant, budget, budget_seconds(budget), work, inputs, args.autoseg_args, pre)
        row.update(score(Path(row["predictions"]), task))
        if "predictions_best" in row:
            row["test_dice_best"] = score(Path(row["predictions_best"]), task)["test_dice"]
        row["time"] = time.strftime("%Y-%m-%d %H:%M")
        results["runs"][f"{contestant}@{budget}"] = row
        save_results(results, args.results)
        print(json.dumps({k: row[k] for k in ("contestant", "budget", "steps", "median_step_s", "test_dice")}),
              flush=True)
    print(table(results))
    if not args.no_docs:
        write_docs(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
