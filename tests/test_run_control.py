"""Training runs a user can reproduce and resume: seeds, budgets in steps, per-fold budgets,
``--continue`` without repeated flags, schedules that end, one process per fold, and the thread
count following the cores other processes leave free."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.errors import ConfigurationError
from autoseg.io import read_json, write_json
from tests.workspaces import lock_held_elsewhere, planned_workspace, use_workspace

PLAN = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]
DATASET = "Task08_HepaticVessel"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned_workspace(tmp_path_factory.mktemp("runs"), PLAN, num_training=5, seed=5)


@pytest.fixture
def env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_workspace(workspace, monkeypatch)


def _fold(root: Path, fold: int) -> Path:
    return root / "res" / DATASET / "arunet" / f"fold_{fold}"


def _weights(root: Path, fold: int) -> dict[str, torch.Tensor]:
    return torch.load(_fold(root, fold) / "checkpoint_final.pt", weights_only=True)["network"]


def test_same_seed_threads_and_steps_give_identical_weights(env: Path) -> None:
    """Initialisation, patch sampling and augmentation (in a background worker, -j 1) are seeded:
    two runs agree bit for bit; another seed trains other weights."""
    run = ["train", "-d", "8", "-f", "0", "--steps", "5", "--iterations", "3", "-j", "1", "--threads", "2",
           "--force"]
    assert main([*run, "--seed", "7"]) == 0
    first = _weights(env, 0)
    log = [json.loads(line) for line in (_fold(env, 0) / "log.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in log] == [7, 7] and sum(r["steps"] for r in log) == 5
    assert read_json(_fold(env, 0) / "fold.json")["seed"] == 7
    assert main([*run, "--seed", "7"]) == 0
    second = _weights(env, 0)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert main([*run, "--seed", "8"]) == 0
    other = _weights(env, 0)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_continue_resumes_with_the_folds_own_budget_and_seed(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted fold resumes with ``--continue`` alone: the budget (--steps 9, 3 iterations an
    epoch) and the seed come from the fold's record, not from flags repeated by hand."""
    from autoseg.settings import Settings
    from autoseg.training.loop import FoldTrainer, TrainOptions
    from autoseg.training.run import TrainRequest, prepare

    calls = {"n": 0}
    original = FoldTrainer.validate

    def interrupt_in_second_epoch(self, patches):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as Ctrl-C after the first epoch's checkpoint
        return original(self, patches)

    monkeypatch.setattr(FoldTrainer, "validate", interrupt_in_second_epoch)
    assert main(["train", "-d", "8", "-f", "1", "--steps", "9", "--iterations", "3", "-j", "0",
                 "--seed", "11", "--force"]) == 130
    monkeypatch.setattr(FoldTrainer, "validate", original)
    assert not (_fold(env, 1) / "checkpoint_final.pt").exists()
    [job] = prepare(TrainRequest("8", folds=(1,)), Settings.from_env(), TrainOptions(continue_training=True))
    assert (job.plans.recipe.steps, job.plans.recipe.iterations_per_epoch, job.seed) == (9, 3, 11)
    started = read_json(_fold(env, 1) / "fold.json")["started"]
    assert main(["train", "-d", "8", "-f", "1", "--continue", "-j", "0"]) == 0
    state = torch.load(_fold(env, 1) / "checkpoint_final.pt", weights_only=True)
    assert state["steps"] == 9 and state["epoch"] == 3
    record = read_json(_fold(env, 1) / "fold.json")
    assert (record["started"], record["seed"], record["schedule"]["steps"]) == (started, 11, 9) and record["resumed"]


def test_folds_of_one_model_have_their_own_budgets_but_share_the_plan(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-d", "8", "-f", "2", "--steps", "3", "--iterations", "3", "-j", "0", "--force"]) == 0
    model_plans = (env / "res" / DATASET / "arunet" / "plans.json").read_bytes()
    assert main(["train", "-d", "8", "-f", "3", "--epochs", "1", "--iterations", "2", "-j", "0", "--force"]) == 0
    assert (env / "res" / DATASET / "arunet" / "plans.json").read_bytes() == model_plans
    assert read_json(_fold(env, 3) / "fold.json")["schedule"]["epochs"] == 1
    capsys.readouterr()
    # a planning decision (the loss) is not a per-fold choice: refused, naming the field, and the
    # message proposes nothing that would discard finished folds
    assert main(["train", "-d", "8", "-f", "4", "--loss", "dice", "--steps", "3", "-j", "0", "--force"]) == 2
    err = capsys.readouterr().err
    assert "recipe.loss" in err and "--force" not in err
    assert (env / "res" / DATASET / "arunet" / "plans.json").read_bytes() == model_plans
    assert not (_fold(env, 4) / "checkpoint_latest.pt").exists()


@pytest.mark.parametrize("flags", [["--iterations", "0"], ["--time-budget", "0"], ["--steps", "0"],
                                   ["--epochs", "-1"], ["--compute-budget", "0s"]])
def test_schedules_that_never_end_are_refused(env: Path, flags: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "-d", "8", "-f", "0", *flags])
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("iterations_per_epoch", 0), ("epochs", 0), ("time_budget_s", 0),
                                         ("schedule", "cosine"), ("optimizer", "lion"), ("lesion_paste", 1.5),
                                         ("lesion_class", 0), ("lesion_host", 2)])
def test_hand_edited_recipe_that_cannot_train_names_the_field(tmp_path: Path, env: Path, field: str,
                                                              value: object) -> None:
    from autoseg.errors import PlansError
    from autoseg.plans import Plans

    data = read_json(env / "pre" / DATASET / "plans.json")
    if field.startswith("lesion_"):  # pasting's fields are checked where it is on
        data["recipe"].update(lesion_paste=0.5, lesion_class=2, lesion_host=0)
    data["recipe"][field] = value
    write_json(tmp_path / "plans.json", data)
    with pytest.raises(PlansError, match=f"recipe.{field}"):
        Plans.load(tmp_path / "plans.json")


def test_non_finite_numbers_in_plans_are_refused(tmp_path: Path, env: Path) -> None:
    from autoseg.errors import PlansError
    from autoseg.plans import Plans

    data = read_json(env / "pre" / DATASET / "plans.json")
    data["target_spacing"][0] = "nan"
    write_json(tmp_path / "plans.json", data)
    with pytest.raises(PlansError, match=r"target_spacing\[0\]' must be a finite number"):
        Plans.load(tmp_path / "plans.json")


def test_compute_budget_is_steps_of_the_calibrated_step_time(env: Path) -> None:
    from autoseg.plans import Plans
    from autoseg.training.run import TrainRequest, apply_overrides

    pinned = Plans.load(env / "pre" / DATASET / "plans.json")  # planned with --cpu-gflops
    estimate = pinned.estimates.step_time_estimate_s
    assert estimate and pinned.estimates.step_time_calibrated is False and not pinned.estimates.calibrated
    with pytest.raises(ConfigurationError, match="--cpu-gflops"):  # its estimate is not this machine's
        apply_overrides(pinned, TrainRequest("8", compute_budget_s=60 * estimate))
    plans = pinned.replace(estimates=dataclasses.replace(pinned.estimates, step_time_calibrated=True))
    recipe = apply_overrides(plans, TrainRequest("8", compute_budget_s=60 * estimate)).recipe
    assert (recipe.steps, recipe.time_budget_s) == (60, None)
    recipe = apply_overrides(plans.replace(recipe=recipe), TrainRequest("8", time_budget_s=30.0)).recipe
    assert (recipe.steps, recipe.time_budget_s) == (None, 30.0)  # one budget replaces the other
    assert recipe.sampler == "voxels"
    assert apply_overrides(plans, TrainRequest("8", sampler="components")).recipe.sampler == "components"
    assert recipe.class_contrast is None
    assert apply_overrides(plans, TrainRequest("8", class_contrast=0.3)).recipe.class_contrast == 0.3


def test_slow_steps_are_reported_against_a_calibrated_estimate_only(
        env: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pinned plan's step time comes from the throughput given with --cpu-gflops: steps three times
    slower say nothing about other processes (the synthetic recipe warned "3x the planned" on an idle
    EPYC). A calibrated plan's estimate still warns."""
    from types import SimpleNamespace

    from autoseg.plans import Plans
    from autoseg.training.loop import FoldTrainer

    pinned = Plans.load(env / "pre" / DATASET / "plans.json")
    estimate = pinned.estimates.step_time_estimate_s
    record = {"steps": 50, "step_time_s": 4 * estimate, "threads": 2, "others_busy_cores": 0.0}
    calibrated = pinned.replace(estimates=dataclasses.replace(pinned.estimates, step_time_calibrated=True))
    for plans, warned in ((pinned, False), (calibrated, True)):
        trainer = SimpleNamespace(plans=plans, device=torch.device("cpu"), epoch=1, fold_dir=SimpleNamespace(fold=0))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="autoseg.training.loop"):
            FoldTrainer._warn_if_cpu_contended(trainer, record)  # type: ignore[arg-type]
        assert ("4x the planned" in caplog.text) == warned


def test_a_fold_being_trained_elsewhere_is_refused_until_its_holder_ends(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fold_dir = _fold(env, 4)
    with lock_held_elsewhere(fold_dir) as holder:
        assert main(["train", "-d", "8", "-f", "4", "--steps", "2", "--iterations", "2", "-j", "0", "--force"]) == 2
        err = capsys.readouterr().err
        assert f"fold 4 is in use by process {holder.pid}" in err and "Fix:" in err
        assert not (fold_dir / "checkpoint_final.pt").exists()
    # the kernel released the dead holder's lock: the fold trains now
    assert main(["train", "-d", "8", "-f", "4", "--steps", "2", "--iterations", "2", "-j", "0", "--force"]) == 0
    assert (fold_dir / "checkpoint_final.pt").is_file()


def test_training_waits_for_a_dataset_being_preprocessed(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with lock_held_elsewhere(env / "pre" / DATASET) as holder:
        assert main(["train", "-d", "8", "-f", "3", "--steps", "2", "-j", "0", "--force"]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "plan_and_preprocess" in err


def test_threads_follow_the_cores_others_leave_free() -> None:
    from autoseg.cpu_share import threads_for

    assert [threads_for(2, o) for o in (0.0, 0.3, 0.6, 1.0, 1.9)] == [2, 2, 1, 1, 1]
    assert [threads_for(4, o) for o in (0.0, 1.0, 2.2, 3.8)] == [4, 3, 2, 1]


_BUSY = "import os, sys\nif os.fork(): sys.exit(0)\nprint(os.getpid(), flush=True)\nwhile True: pass\n"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_busy_processes_outside_the_tree_count_as_others_and_our_children_do_not() -> None:
    """Accounting, not timing: a busy process that is not ours shows up in ``others`` at least with
    the CPU it used; our own busy child shows up in our tree's seconds instead."""
    from autoseg.cpu_share import sample_cpu, others_busy_cores, own_tree_seconds, usable_cores

    # a busy loop re-parented away from us (double fork), as an unrelated program would be
    with subprocess.Popen([sys.executable, "-c", _BUSY], stdout=subprocess.PIPE, text=True) as launcher:
        stranger = int(launcher.stdout.readline())
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        before, s0, c0 = sample_cpu(usable_cores()), _cpu_seconds(stranger), _cpu_seconds(child.pid)
        own0 = own_tree_seconds()
        time.sleep(1.5)
        after, s1, c1 = sample_cpu(usable_cores()), _cpu_seconds(stranger), _cpu_seconds(child.pid)
        own1 = own_tree_seconds()
        tick = 2 / os.sysconf("SC_CLK_TCK")
        assert own1 - own0 >= (c1 - c0) - tick  # the child is ours
        others = others_busy_cores(before, after)
        assert others is not None
        assert others * (after.wall - before.wall) >= (s1 - s0) - 3 * tick
    finally:
        os.kill(stranger, signal.SIGKILL)
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_a_worker_that_ends_is_not_counted_as_others_using_the_cores() -> None:
    """An augmentation worker ending between two samples takes its CPU seconds out of our tree; that
    interval must not read as other processes keeping cores busy."""
    from autoseg.cpu_share import others_busy_cores, sample_cpu, usable_cores

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 60
        while _cpu_seconds(child.pid) < 1.5 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = sample_cpu(usable_cores())
    finally:
        child.kill()
        child.wait()
    time.sleep(0.3)
    # before the fix this read as others keeping more cores busy than the machine has (3.4 of 2);
    # now the interval is skipped
    assert others_busy_cores(before, sample_cpu(usable_cores())) is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_augmentation_workers_die_with_a_killed_training(env: Path) -> None:
    """SIGKILL of `autoseg train` (the OOM killer, kill -9) leaves no augmentation worker behind
    holding its memory (issue 20: ~360 MB stayed)."""
    (_fold(env, 2) / "checkpoint_latest.pt").unlink(missing_ok=True)  # wait for this run's own
    trainer = subprocess.Popen([sys.executable, "-m", "autoseg", "train", "-d", "8", "-f", "2", "--steps", "100000",
                                "--iterations", "5", "-j", "1", "--force"], env={**os.environ},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (_fold(env, 2) / "checkpoint_latest.pt").is_file() and time.monotonic() < deadline:
            assert trainer.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        workers = [p for p in _children(trainer.pid) if _alive(p)]
        assert workers, "no augmentation worker process found"
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, "augmentation workers outlived their killed training process"


def test_the_folds_of_a_model_share_its_plans_but_not_their_budget() -> None:
    """What `train` checks before a fold joins a model folder, and `pretrain` before it exports one."""
    import dataclasses

    from autoseg.training.run import changed_plans
    from tests.test_plans import make_plans

    base = make_plans()
    longer = base.replace(recipe=dataclasses.replace(base.recipe, steps=5000, epochs=7))
    assert changed_plans(base, longer) == []
    # the planner's estimates are not the network: a re-plan elsewhere, or by a newer autoseg that
    # records more of them (step_time_calibrated), is the same model
    other_machine = base.replace(estimates=dataclasses.replace(base.estimates, step_time_estimate_s=9.0,
                                                               step_time_calibrated=False))
    assert changed_plans(base, other_machine) == []
    assert changed_plans(base, make_plans(patch_size=(32, 64, 96))) == ["patch_size"]
    assert changed_plans(base, make_plans(batch_size=4, patch_size=(32, 64, 96))) == ["batch_size", "patch_size"]


def test_a_model_trained_with_edge_context_records_it_and_validates_its_fold_with_it(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --edge-context F` is a decision of the model (its plans' recipe), and the fold's final
    validation, which post-processing is decided on, slides with it as `predict` will."""
    from autoseg.training import loop

    seen: list[float] = []
    real = loop.validate_fold

    def spy(network, plans, store, out_dir, window=None, write_predictions=True):
        seen.append(window.edge_context)
        return real(network, plans, store, out_dir, window, write_predictions)

    monkeypatch.setattr(loop, "validate_fold", spy)
    run = ["train", "-d", "8", "-f", "0", "--network", "resenc_unet", "--steps", "2", "--iterations", "2", "-j", "0"]
    assert main([*run, "--edge-context", "0.5", "--force"]) == 0
    plans = read_json(env / "res" / DATASET / "resenc_unet" / "plans.json")
    assert plans["recipe"]["edge_context"] == 0.5 and seen == [0.5]


def test_a_model_trained_with_lesion_paste_records_it_and_pastes_its_training_lesions(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --lesion-paste P` is a decision of the model (its plans' recipe: the probability, the
    lesion class and its host); the fold builds its bank from its own training cases and pastes."""
    from autoseg.plans import Plans
    from autoseg.training import loop
    from autoseg.training.lesion_paste import LesionPasteTransform
    from autoseg.training.run import TrainRequest, apply_overrides

    banks: list[int] = []
    pasted: list[bool] = []
    real_bank, real_paste = loop.lesion_bank, LesionPasteTransform.paste

    def bank_spy(store, lesion, host, patch, seed):
        bank = real_bank(store, lesion, host, patch, seed)
        banks.append(len(bank))
        return bank

    def paste_spy(self, image, labels, lesion, flips=()):
        pasted.append(real_paste(self, image, labels, lesion, flips))
        return pasted[-1]

    monkeypatch.setattr(loop, "lesion_bank", bank_spy)
    monkeypatch.setattr(LesionPasteTransform, "paste", paste_spy)
    run = ["train", "-d", "8", "-f", "0", "--network", "plain_unet", "--steps", "3", "--iterations", "3", "-j", "0"]
    assert main([*run, "--lesion-paste", "1", "--force"]) == 0
    plans = read_json(env / "res" / DATASET / "plain_unet" / "plans.json")
    recipe = plans["recipe"]
    assert (recipe["lesion_paste"], recipe["lesion_class"], recipe["lesion_host"]) == (1.0, 2, 0)
    assert banks and banks[0] > 0
    assert len(pasted) == 3 * plans["batch_size"] and any(pasted)
    base = Plans.load(env / "pre" / DATASET / "plans.json")
    assert apply_overrides(base, TrainRequest("8", lesion_paste=0.0)).recipe.lesion_paste is None
    with pytest.raises(ConfigurationError, match="--lesion-paste"):
        apply_overrides(base, TrainRequest("8", lesion_class="tumour"))
    with pytest.raises(ConfigurationError, match="not a class"):
        apply_overrides(base, TrainRequest("8", lesion_paste=0.5, lesion_class="liver"))
    with pytest.raises(ConfigurationError, match="label nesting"):  # an old fingerprint: no host is guessed
        apply_overrides(base, TrainRequest("8", lesion_paste=0.5), fingerprint=None)
    only = base.replace(labels={0: "background", 1: "tumour"})
    with pytest.raises(ConfigurationError, match="nowhere"):
        apply_overrides(only, TrainRequest("8", lesion_paste=0.5), env / "pre" / DATASET / "fingerprint.json")
