"""``autoseg train``: resolve the dataset, apply overrides to the plans, train the requested folds.

Results: ``$AUTOSEG_RESULTS/<dataset>/<network>/`` holds ``plans.json`` (the plans the folds were
trained with, so the model folder is self-contained) and ``fold_K/``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.datasets import resolve_dataset_path
from autoseg.errors import AutosegError, ConfigurationError, PlansError
from autoseg.networks import default_network_kwargs, network_names
from autoseg.plans import Plans
from autoseg.precision import resolve_precision
from autoseg.preprocessing.storage import case_ids
from autoseg.settings import Settings
from autoseg.training.loop import FoldTrainer, TrainOptions, configure_threads
from autoseg.training.recipes import recipe_named
from autoseg.training.splits import NUM_FOLDS, load_or_create_splits

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
    precision: str | None = None
    force: bool = False


def preprocessed_dir(spec: str, settings: Settings) -> Path:
    """The dataset's preprocessed folder, found by the same names as the raw one."""
    for root in (settings.preprocessed, settings.raw):
        try:
            name = resolve_dataset_path(spec, root).name
        except AutosegError:
            continue
        if (settings.preprocessed / name / "plans.json").is_file():
            return settings.preprocessed / name
    raise PlansError(f"no preprocessed dataset '{spec}'", settings.preprocessed,
                     f"run `autoseg plan_and_preprocess -d {spec}` first")


def apply_overrides(plans: Plans, req: TrainRequest) -> Plans:
    """Plans with the user's network, recipe, loss and schedule choices applied."""
    recipe = recipe_named(req.recipe, plans.recipe) if req.recipe else plans.recipe
    changes: dict[str, Any] = {}
    for field, value in (("loss", req.loss), ("epochs", req.epochs),
                         ("iterations_per_epoch", req.iterations_per_epoch), ("time_budget_s", req.time_budget_s),
                         ("precision", req.precision)):
        if value is not None:
            changes[field] = value
    if req.loss is not None:
        from autoseg.training.losses import build_loss

        build_loss(req.loss)  # fails loudly on an unknown name
    recipe = dataclasses.replace(recipe, **changes)
    network = plans.network
    if req.network and req.network != network.name:
        if req.network not in network_names():
            from autoseg.errors import unknown_name

            raise unknown_name("network", req.network, network_names())
        k = network.kwargs
        kwargs = default_network_kwargs(req.network, n_stages=k["n_stages"],
                                        features_per_stage=k["features_per_stage"], strides=k["strides"],
                                        kernel_sizes=k["kernel_sizes"], deep_supervision=recipe.deep_supervision)
        network = dataclasses.replace(network, name=req.network, kwargs=kwargs)
    return plans.replace(recipe=recipe, network=network)


def model_dir(settings: Settings, plans: Plans) -> Path:
    return settings.results / plans.dataset_name / plans.network.name


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold needs, picklable, so a fold can run in another process or on another node."""

    fold: int
    plans: Plans
    data_dir: Path
    fold_dir: Path
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    force: bool


def prepare(req: TrainRequest, settings: Settings, options: TrainOptions) -> list[FoldJob]:
    """Check the request, write splits and the model's plans once, and list the folds still to train."""
    pre = preprocessed_dir(req.dataset, settings)
    plans = apply_overrides(Plans.load(pre / "plans.json"), req)
    resolve_precision(plans.recipe.precision, options.device)  # refuse e.g. fp16 on a CPU before writing
    if any(f not in range(NUM_FOLDS) for f in req.folds):
        raise ConfigurationError(f"folds must be 0-{NUM_FOLDS - 1} or 'all', got {list(req.folds)}")
    cases = case_ids(pre)
    splits = load_or_create_splits(pre / "splits.json", cases, plans.seed)
    out = model_dir(settings, plans)
    if options.dist.is_main:
        _write_model_plans(out, plans, req.force)
    jobs = []
    for fold in req.folds:
        fold_dir = out / f"fold_{fold}"
        if (fold_dir / "checkpoint_final.pt").is_file() and not req.force:
            log.info("fold %d already finished (%s); use --force to retrain", fold, fold_dir)
            continue
        if (fold_dir / "checkpoint_latest.pt").is_file() and not (options.continue_training or req.force):
            raise AutosegError(f"fold {fold} has an unfinished run", fold_dir,
                               "resume it with --continue, or start over with --force")
        jobs.append(FoldJob(fold, plans, pre / "data", fold_dir, tuple(splits[fold]["train"]),
                            tuple(splits[fold]["val"]), req.force))
    return jobs


def run_fold(job: FoldJob, options: TrainOptions) -> dict[str, Any]:
    """Train one fold (in this process); returns its final epoch record."""
    if job.force and job.fold_dir.is_dir() and options.dist.is_main:
        for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt", "log.jsonl"):
            (job.fold_dir / name).unlink(missing_ok=True)
    options.dist.barrier()
    trainer = FoldTrainer(job.plans, job.data_dir, job.fold_dir, list(job.train_cases), list(job.val_cases),
                          options)
    return {"fold": job.fold, **trainer.run()}


def train(req: TrainRequest, settings: Settings, options: TrainOptions) -> list[dict[str, Any]]:
    """Train the requested folds one after another; returns each fold's final epoch record."""
    jobs = prepare(req, settings, options)
    configure_threads(options.device)
    return [run_fold(job, options) for job in jobs]


def _write_model_plans(out: Path, plans: Plans, force: bool) -> None:
    path = out / "plans.json"
    if path.is_file() and not force:
        existing = Plans.load(path)
        if existing != plans:
            raise PlansError("this model folder was trained with different plans", path,
                             "pass --force to retrain all folds with the new plans, or restore the old ones")
        return
    plans.save(path)
