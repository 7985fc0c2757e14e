"""``autoseg train``: resolve the dataset, apply overrides to the plans, train the requested folds.

Results: ``$AUTOSEG_RESULTS/<dataset>/<network>/`` holds ``plans.json`` (the plans the folds were
trained with, so the model folder is self-contained) and ``fold_K/``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.artefacts import Fingerprint, FoldRecord, FoldSchedule
from autoseg.datasets import find_preprocessed
from autoseg.errors import AutosegError, ConfigurationError, PlansError
from autoseg.networks import default_network_kwargs
from autoseg.networks.registry import REGISTRY as NETWORKS
from autoseg.layout import NUM_FOLDS, FoldFolder, ModelFolder, PreprocessedDataset, ResultsDataset
from autoseg.locks import check_unlocked, folder_lock
from autoseg.plans import Estimates, Plans, Recipe
from autoseg.precision import resolve_precision
from autoseg.regions import Region, regions_from_nesting
from autoseg.settings import Settings
from autoseg.training.loop import FoldTrainer, TrainOptions
from autoseg.training.losses import LOSSES
from autoseg.training.recipes import check_recipe, recipe_named
from autoseg.training.splits import load_or_create_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for on the command line."""

    dataset: str
    folds: tuple[int, ...] = tuple(range(NUM_FOLDS))
    network: str | None = None
    recipe: str | None = None
    loss: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    time_budget_s: float | None = None
    #: A budget in training steps: ``steps`` directly, or ``compute_budget_s`` seconds of the plan's
    #: calibrated step time (``plans.estimates.step_time_estimate_s``).
    steps: int | None = None
    compute_budget_s: float | None = None
    precision: str | None = None
    force: bool = False
    #: Seed of initialisation, sampling and augmentation (None: the fold's recorded seed when
    #: resuming, else the plans' seed).
    seed: int | None = None
    #: Region outputs (:mod:`autoseg.regions`) from the fingerprint's nesting, in a model folder of their own.
    regions: bool = False
    #: Train the dataset's localiser (``<preprocessed>/<dataset>/localiser``) instead of the model.
    localiser: bool = False
    #: How foreground-forced patches pick their centre (``Recipe.sampler``; None: the recipe's).
    sampler: str | None = None
    #: Class contrast randomisation (``Recipe.class_contrast``; None: the recipe's).
    class_contrast: float | None = None
    #: Mirrored reach beyond the slice axis's ends (``Recipe.edge_context``; None: the recipe's).
    edge_context: float | None = None
    #: Lesion pasting (``Recipe.lesion_paste``; None: the recipe's, 0: off) and the name of the class
    #: pasted (None: the one class named like a lesion).
    lesion_paste: float | None = None
    lesion_class: str | None = None

    @property
    def sets_schedule(self) -> bool:
        """True when the request names a budget (epochs, time, steps or compute)."""
        return any(v is not None for v in (self.epochs, self.time_budget_s, self.steps, self.compute_budget_s))


#: Recipe fields that are a fold's budget, not a planning decision: folds of one model may differ
#: in them, and a resumed fold keeps its own (recorded in ``fold_K/fold.json``).
SCHEDULE_FIELDS = ("epochs", "iterations_per_epoch", "time_budget_s", "steps")


def preprocessed_dataset(spec: str, settings: Settings) -> PreprocessedDataset:
    """The dataset's preprocessed folder, found by the same names as the raw one."""
    return find_preprocessed(spec, settings.raw, settings.preprocessed)


def apply_overrides(plans: Plans, req: TrainRequest, fingerprint: Path | None = None) -> Plans:
    """Plans with the user's network, recipe, loss, schedule and output choices applied
    (``fingerprint``: the dataset's ``fingerprint.json``, which ``--regions`` takes its nesting from)."""
    recipe = recipe_named(req.recipe, plans.recipe) if req.recipe else plans.recipe
    changes: dict[str, Any] = {}
    for field, value in (("loss", req.loss), ("iterations_per_epoch", req.iterations_per_epoch),
                         ("precision", req.precision), ("sampler", req.sampler),
                         ("class_contrast", req.class_contrast)):
        if value is not None:
            changes[field] = value
    if req.edge_context is not None:
        if req.edge_context and len(plans.patch_size) != 3:
            raise ConfigurationError(f"--edge-context {req.edge_context}: this plan is 2D, and a 2D patch has no "
                                     "slice axis to reach beyond", fix="leave --edge-context out for a 2D plan")
        changes["edge_context"] = req.edge_context or None  # 0 is the default, which plans leave out
    if req.lesion_class is not None and not req.lesion_paste:
        raise ConfigurationError(f"--lesion-class {req.lesion_class}: it names the class --lesion-paste pastes, "
                                 "and lesion pasting is off", fix="add --lesion-paste P above 0 (e.g. 0.3)")
    if req.lesion_paste is not None:
        changes.update(_lesion_paste(plans, req, fingerprint))
    if req.sets_schedule:  # one budget replaces any other the plans had
        changes.update(epochs=req.epochs or recipe.epochs, time_budget_s=req.time_budget_s,
                       steps=_requested_steps(req, plans))
    if req.loss is not None:
        LOSSES.check(req.loss)  # before the recipe is built: the error names the flag's value
    recipe = dataclasses.replace(recipe, **changes)
    regions = _regions(plans, fingerprint) if req.regions else plans.regions
    check_recipe(recipe, regions=bool(regions))  # every name implemented, before any plans are written
    network = plans.network
    if req.network and req.network != network.name:
        NETWORKS.check(req.network)
        k = network.kwargs
        kwargs = default_network_kwargs(req.network, n_stages=k["n_stages"],
                                        features_per_stage=k["features_per_stage"], strides=k["strides"],
                                        kernel_sizes=k["kernel_sizes"], deep_supervision=recipe.deep_supervision)
        network = dataclasses.replace(network, name=req.network, kwargs=kwargs)
    return plans.replace(recipe=recipe, network=network, regions=regions)


def _lesion_paste(plans: Plans, req: TrainRequest, fingerprint: Path | None) -> dict[str, Any]:
    """The recipe fields of ``--lesion-paste`` (all None for 0: off): the lesion class, and the class
    it lies inside from the fingerprint's nesting (0 where none is labelled)."""
    from autoseg.training.lesion_paste import host_class_of, lesion_class_of

    if not req.lesion_paste:
        return {"lesion_paste": None, "lesion_class": None, "lesion_host": None}
    if plans.partial_labels:
        raise ConfigurationError(f"--lesion-paste {req.lesion_paste} does not combine with partial labels (a merged "
                                 "dataset): a case that does not annotate the lesion's host says nothing about "
                                 "where a lesion may go", fix="train the merged dataset without --lesion-paste")
    if len(plans.patch_size) != 3:
        raise ConfigurationError(f"--lesion-paste {req.lesion_paste}: this plan is 2D, and lesions are pasted as "
                                 "3D components", fix="leave --lesion-paste out for a 2D plan")
    lesion = lesion_class_of(plans.labels, req.lesion_class)
    nesting = Fingerprint.load(fingerprint).label_nesting if fingerprint and fingerprint.is_file() else None
    if nesting is None:  # which class a lesion lies in is the fingerprint's to say: never guessed
        raise ConfigurationError("--lesion-paste needs the fingerprint's label nesting (which class a lesion lies "
                                 "inside), and this dataset's fingerprint has none (written by an older autoseg)",
                                 fingerprint, f"fingerprint it again (the plans are kept): `autoseg "
                                 f"plan_and_preprocess -d {plans.dataset_name} --only fingerprint --force`")
    host = host_class_of(nesting, lesion, plans.labels)
    if not host and not any(k not in (0, lesion) for k in plans.labels):
        raise ConfigurationError(f"--lesion-paste: {plans.labels[lesion]} is the only class of this dataset and lies "
                                 "inside none, so there is nowhere a pasted lesion is known to belong",
                                 fix="leave --lesion-paste out for this dataset")
    log.info("lesion pasting: %s into %s, p %s", plans.labels[lesion],
             plans.labels[host] if host else "background near the other classes", req.lesion_paste)
    return {"lesion_paste": req.lesion_paste, "lesion_class": lesion, "lesion_host": host}


def _regions(plans: Plans, fingerprint: Path | None) -> tuple[Region, ...]:
    """The region outputs of ``--regions``, from the nesting the fingerprint found."""
    if plans.partial_labels:
        raise ConfigurationError("--regions does not combine with partial labels (a merged dataset): a voxel "
                                 "that may be one of several classes has no region target",
                                 fix="train the merged dataset without --regions")
    nesting = Fingerprint.load(fingerprint).label_nesting if fingerprint and fingerprint.is_file() else None
    if nesting is None:
        raise ConfigurationError("--regions needs the fingerprint's label nesting, and this dataset's fingerprint "
                                 "has none (written by an older autoseg)", fingerprint,
                                 f"fingerprint it again (the plans are kept): `autoseg plan_and_preprocess -d "
                                 f"{plans.dataset_name} --only fingerprint --force`")
    regions = regions_from_nesting(plans.labels, nesting)
    log.info("region outputs: %s", ", ".join(f"{plans.labels[r.label]} = {'+'.join(plans.labels[c] for c in r.classes)}"
                                             for r in regions))
    return regions


def check_plan_device(plans: Plans, device: str, dataset: str) -> None:
    """Refuse to train a GPU plan on the CPU (its patch and batch are sized for GPU memory: days per
    fold), naming the flags; warn when a CPU plan trains on a GPU (it leaves the GPU's memory unused)."""
    planned = plans.estimates.device
    on_gpu = device.startswith("cuda")
    if planned == "cuda" and not on_gpu:
        budget = plans.estimates.memory_budget_bytes / 2**30
        raise ConfigurationError(
            f"these plans were made for a GPU (--device cuda, a {budget:.0f} GB budget: patch "
            f"{'x'.join(map(str, plans.patch_size))}, batch {plans.batch_size}) and this run trains on the CPU",
            fix=f"train on the GPU with --device cuda (or auto), or plan for this machine with "
                f"`autoseg plan_and_preprocess -d {dataset} --device cpu --force`")
    if planned == "cpu" and on_gpu:
        log.warning("these plans were made for the CPU (a small patch and batch 2); on the GPU they leave its "
                    "memory unused: plan for it with `autoseg plan_and_preprocess -d %s --device cuda --force`",
                    dataset)


def _requested_steps(req: TrainRequest, plans: Plans) -> int | None:
    """``--steps``, or ``--compute-budget`` over the plan's calibrated step time."""
    if req.compute_budget_s is None:
        return req.steps
    estimate = plans.estimates.step_time_estimate_s
    if not estimate:
        raise ConfigurationError("--compute-budget needs the plan's calibrated step time, and this plan has "
                                 "none (a GPU plan or a hand-written one)",
                                 fix="give the budget in steps with --steps N, or in wall time with --time-budget")
    if not plans.estimates.calibrated:
        raise ConfigurationError("--compute-budget needs the plan's calibrated step time, and this plan's comes "
                                 "from a throughput given with --cpu-gflops, not from this machine",
                                 fix="give the budget in steps with --steps N, or plan without --cpu-gflops")
    return max(1, round(req.compute_budget_s / estimate))


def without_schedule(plans: Plans) -> Plans:
    """The plans with the fold-level budget fields at their defaults: what all folds of one model share."""
    default = Recipe()
    return plans.replace(recipe=dataclasses.replace(
        plans.recipe, **{f: getattr(default, f) for f in SCHEDULE_FIELDS}))


def model_folder(settings: Settings, plans: Plans) -> ModelFolder:
    return ResultsDataset(settings.results / plans.dataset_name).model(plans.configuration)


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold needs, picklable, so a fold can run in another process or on another node."""

    fold: int
    plans: Plans
    data_dir: Path
    fold_dir: FoldFolder
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    force: bool
    seed: int = 12345


FOLD_IN_USE_FIX = ("wait for that run to end or stop it; the lock of a process that has ended is released "
                   "by itself")


def localiser_dataset(req: TrainRequest, pre: PreprocessedDataset) -> PreprocessedDataset:
    """The localiser's preprocessed folder for ``train --localiser``, checked."""
    if req.regions or req.network:
        raise ConfigurationError("--localiser trains the planned network with one softmax: --regions and --network "
                                 "do not apply to it", fix="drop --regions / --network")
    loc = pre.localiser
    if not loc.plans.is_file() or not loc.case_ids():
        raise AutosegError("the dataset's localiser is not planned and preprocessed", loc.root,
                           f"run `autoseg plan_and_preprocess -d {req.dataset} --localiser` first")
    if not Plans.load(loc.plans).is_localiser_of(Plans.load(pre.plans)):
        raise PlansError("the localiser was planned from other plans than the dataset's current ones", loc.plans,
                         f"plan and preprocess it again: `autoseg plan_and_preprocess -d {req.dataset} --localiser`")
    return loc


def prepare(req: TrainRequest, settings: Settings, options: TrainOptions) -> list[FoldJob]:
    """Check the request, write splits and the model's plans once, and list the folds still to train."""
    pre = preprocessed_dataset(req.dataset, settings)
    check_unlocked(pre.root, f"the preprocessed folder of {pre.name}",
                   "wait for its `autoseg plan_and_preprocess` to finish, then train")
    if req.localiser:
        pre = localiser_dataset(req, pre)
    plans = apply_overrides(Plans.load(pre.plans), req, pre.fingerprint)
    check_plan_device(plans, options.device, req.dataset)
    resolve_precision(plans.recipe.precision, options.device)  # refuse e.g. fp16 on a CPU before writing
    if any(f not in range(NUM_FOLDS) for f in req.folds):
        raise ConfigurationError(f"folds must be 0-{NUM_FOLDS - 1} or 'all', got {list(req.folds)}")
    cases = pre.case_ids()
    splits = load_or_create_splits(pre.splits, cases, plans.seed)
    out = model_folder(settings, plans)
    if options.dist.is_main:  # under torchrun the main rank holds the fold's lock for all ranks
        for fold in req.folds:
            check_unlocked(out.fold(fold).root, f"fold {fold}", FOLD_IN_USE_FIX)
        _write_model_plans(out, plans, req.force and set(req.folds) == set(range(NUM_FOLDS)))
    jobs = []
    for fold in req.folds:
        fold_dir = out.fold(fold)
        if fold_dir.final.is_file() and not req.force:
            log.info("fold %d already finished (%s); use --force to retrain it", fold, fold_dir.root)
            continue
        resuming = fold_dir.latest.is_file() and not req.force
        if resuming and not options.continue_training:
            raise AutosegError(f"fold {fold} has an unfinished run", fold_dir.root,
                               f"resume it with --continue, or start this fold over with -f {fold} --force")
        fold_plans, seed = (_resumed(fold_dir, plans, req) if resuming
                            else (plans, req.seed if req.seed is not None else plans.seed))
        jobs.append(FoldJob(fold, fold_plans, pre.data, fold_dir, tuple(splits[fold]["train"]),
                            tuple(splits[fold]["val"]), req.force, seed))
    return jobs


def _resumed(fold_dir: FoldFolder, plans: Plans, req: TrainRequest) -> tuple[Plans, int]:
    """The plans and seed an unfinished fold resumes with: its recorded budget and seed unless the
    request names new ones (a longer budget is allowed; the seed of a started run is not changed)."""
    record = read_fold_record(fold_dir)
    seed = record.seed if isinstance(record, FoldRecord) else plans.seed
    if req.seed is not None and req.seed != seed:
        log.warning("fold %d started with seed %d; resuming with it, not --seed %d", fold_dir.fold, seed, req.seed)
    if req.sets_schedule or record is None:
        return plans, seed
    schedule = record.schedule if isinstance(record, FoldRecord) else record
    recorded = {f: getattr(schedule, f) for f in SCHEDULE_FIELDS}
    if req.iterations_per_epoch is not None:
        recorded["iterations_per_epoch"] = req.iterations_per_epoch
    log.info("resuming fold %d with its recorded budget %s", fold_dir.fold,
             {k: v for k, v in recorded.items() if v is not None})
    return plans.replace(recipe=dataclasses.replace(plans.recipe, **recorded)), seed


def read_fold_record(fold_dir: FoldFolder) -> FoldRecord | FoldSchedule | None:
    """``fold_K/fold.json`` (seed and budget of the fold's run); for a fold started by an older
    autoseg, only the budget, from its latest checkpoint's plans; None for a fold not started."""
    if fold_dir.record.is_file():
        return FoldRecord.load(fold_dir.record)
    if fold_dir.latest.is_file():
        from autoseg.checkpoint import load_checkpoint

        recipe = Plans.from_dict(load_checkpoint(fold_dir.latest)["plans"], fold_dir.latest).recipe
        return FoldSchedule(**{f: getattr(recipe, f) for f in SCHEDULE_FIELDS})
    return None


def write_fold_record(job: FoldJob, threads: int | None, fresh: bool) -> None:
    """Record a fold's seed and budget when its run starts, so that ``--continue`` needs no flags; a
    resumed run keeps the start time and records the budget it resumed with (a longer one, if given)."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    before = None if fresh else read_fold_record(job.fold_dir)
    started = before.started if isinstance(before, FoldRecord) and before.started else now
    FoldRecord(fold=job.fold, seed=job.seed,
               schedule=FoldSchedule(**{f: getattr(job.plans.recipe, f) for f in SCHEDULE_FIELDS}),
               step_time_estimate_s=job.plans.estimates.step_time_estimate_s, threads_at_start=threads,
               started=started, resumed=None if fresh else now).save(job.fold_dir.record)


def run_fold(job: FoldJob, options: TrainOptions) -> dict[str, Any]:
    """Train one fold (in this process), holding the fold's lock; returns its final epoch record."""
    lock = (folder_lock(job.fold_dir.root, f"fold {job.fold}", FOLD_IN_USE_FIX) if options.dist.is_main
            else contextlib.nullcontext())
    with lock:
        fresh = job.force or not job.fold_dir.latest.is_file()
        if job.force and job.fold_dir.root.is_dir() and options.dist.is_main:
            for path in job.fold_dir.run_files():
                path.unlink(missing_ok=True)
        options.dist.barrier()
        trainer = FoldTrainer(job.plans, job.data_dir, job.fold_dir, list(job.train_cases), list(job.val_cases),
                              dataclasses.replace(options, seed=job.seed))
        if options.dist.is_main:
            write_fold_record(job, trainer.cores.threads if trainer.cores else None, fresh)
        return {"fold": job.fold, **trainer.run()}


def train(req: TrainRequest, settings: Settings, options: TrainOptions) -> list[dict[str, Any]]:
    """Train the requested folds one after another; returns each fold's final epoch record."""
    jobs = prepare(req, settings, options)
    return [run_fold(job, options) for job in jobs]


def _write_model_plans(out: ModelFolder, plans: Plans, replace: bool) -> None:
    """Write the model's plans (without the fold-level budget) or check them against the folder's.

    ``replace``: every fold is being retrained, so new plans may replace the old ones."""
    path = out.plans
    if path.is_file() and not replace:
        changed = changed_plans(Plans.load(path), plans)
        if changed:
            raise PlansError(f"this model folder was trained with different plans ({', '.join(changed)} "
                             "differ); its folds must share one plan", path,
                             "train with the plans the folds were trained with (restore them, or drop the "
                             "overriding flags), or move this model folder aside to train a new model")
        return
    without_schedule(plans).save(path)


def changed_plans(existing: Plans, plans: Plans) -> list[str]:
    """The fields the folds of one model share (all but the fold-level budget) that differ between
    ``existing`` and ``plans``, as dotted names; empty when they agree. The planner's estimates (what
    it predicted of memory and step time) are left out: they change with the machine and with the
    autoseg version that planned, not the network."""
    old, new = (without_schedule(p.replace(estimates=Estimates(p.estimates.device, 0, 0))) for p in (existing, plans))
    if old == new:
        return []
    return _changed_fields(old.to_dict(), new.to_dict()) or ["plans"]


def _changed_fields(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two plans dictionaries."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_changed_fields(a, b, name + "."))
        elif a != b:
            out.append(name)
    return out
