"""``autoseg pretrain NAME``: make a built-in model (:mod:`autoseg.builtin`) from its recipe on this machine.

It runs the user's own commands in a working folder: ``phantom`` (family 3, the recipe's cases and
seed), ``plan_and_preprocess`` (planned again every time, with the recipe's plan flags), ``train``
(each of the recipe's folds with its steps, threads, seed and training flags), the post-processing
decision on those folds' validation phantoms with the recipe's one-organ rule added, and ``export``
of the folds (predicted as their ensemble) into the cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoseg.builtin import RECIPES, Recipe
from autoseg.errors import ConfigurationError
from autoseg.io import read_json, write_json
from autoseg.settings import Settings

if TYPE_CHECKING:
    from autoseg.artefacts import PostprocessingDecision

log = logging.getLogger(__name__)


def pretrain(recipe: Recipe, settings: Settings, work: Path, force: bool = False) -> Path:
    """Make the built-in model of ``recipe`` in ``work`` and export it to the cache; returns the archive.

    Each stage skips what is already current (phantoms, preprocessing, a finished fold), so an
    interrupted run goes on with ``--continue`` semantics: run the command again. An archive already
    in the cache is kept unless ``force``.
    """
    from autoseg.cli import build_parser
    from autoseg.phantom import write_task

    out = settings.cache / "models" / recipe.archive_name
    if out.exists() and not force:
        raise ConfigurationError(f"{out} exists", fix="pass --force to make it again and replace it")
    local = replace(settings, raw=work / "raw", preprocessed=work / "preprocessed", results=work / "results")
    _refuse_other_phantoms(recipe, work)
    write_task(local.raw, recipe.task, num_training=recipe.cases, num_test=0, seed=recipe.seed, family=3,
               spacing_range=recipe.spacing_range, trunk_version=recipe.trunk_version)
    plan = ["plan_and_preprocess", "-d", recipe.dataset, "--features", str(recipe.features), *recipe.plan_args]
    # The plan is made again every time (the recipe owns it, and planning is cheap): plans kept from an
    # older recipe in the work folder would otherwise train the new recipe's steps on the old network.
    parser = build_parser()
    for argv in (plan + ["--only", "fingerprint"], plan + ["--only", "plan", "--force"],
                 plan + ["--only", "preprocess"]):
        _run(parser, argv, local)
    runs = {fold: _parsed(parser, ["train", "-d", recipe.dataset, "-f", str(fold), "--steps", str(recipe.steps),
                                   "--threads", str(recipe.threads), "--seed", str(recipe.seed), *recipe.train_args])
            for fold in recipe.folds}
    # Every fold's state before any is trained: a fold of another recipe is refused before the stamp
    # could be rewritten over it, and the stamp is written only into a folder without any trained fold.
    states = {fold: _fold_state(local, recipe, work, fold, args) for fold, args in runs.items()}
    if all(state == "absent" for state in states.values()):
        write_json(work / RECIPE_STAMP, recipe_stamp(recipe))
    for fold, args in runs.items():
        if states[fold] == "finished":
            log.info("fold %d is already trained in %s", fold, local.results)
            continue
        if states[fold] == "unfinished":  # an interrupted run of this recipe: go on from its last checkpoint
            log.info("fold %d: resuming its unfinished run in %s", fold, local.results)
            args.continue_training = True
        args.func(args, local)
    _decide_postprocessing(recipe, local)
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(parser, ["export", "-d", recipe.dataset, "-o", str(out), "-f", *map(str, recipe.folds)]
         + (["--overwrite"] if force else []), local)
    log.info("built-in model '%s' written to %s", recipe.name, out)
    return out


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "device", None) == "auto":
        args.device = "cpu"  # the recipe is a CPU recipe: its step count fixes the weights
    return args


def _run(parser: argparse.ArgumentParser, argv: list[str], settings: Settings) -> None:
    args = _parsed(parser, argv)
    args.func(args, settings)


def _decide_postprocessing(recipe: Recipe, settings: Settings) -> None:
    """Post-processing from the folds' validation phantoms (never from real CT), with the recipe's
    one-organ rule added where they did not choose it; shipped with the model."""
    from autoseg.inference.ensembles import plans_of
    from autoseg.inference.model import trained_model_folder
    from autoseg.inference.postprocessing import decide_postprocessing, describe
    from autoseg.layout import ModelFolder

    folder = trained_model_folder(recipe.dataset, None, settings)
    decision = decide_postprocessing(folder, settings.preprocessed)
    if decision is None and recipe.one_organ:
        log.warning("no validation predictions to decide the post-processing on: the model ships without any, "
                    "the recipe's one-organ rule included")
    elif decision is not None and recipe.one_organ and not decision.keep_largest_foreground:
        decision = with_one_organ(decision)
        decision.save(ModelFolder(folder).postprocessing)
    labels = {int(k): v for k, v in plans_of(folder).labels.items()}
    log.info("post-processing: %s", describe(decision, labels) if decision else "no validation predictions")


def with_one_organ(decision: "PostprocessingDecision") -> "PostprocessingDecision":
    """``decision`` with the recipe's rule added: keep the largest foreground component (one liver, its
    vessels and tumours inside it), and its evidence saying that the recipe, not the phantoms, chose it."""
    whole = decision.evidence.get("all foreground")
    evidence = dict(decision.evidence)
    if whole is not None:
        evidence["all foreground"] = replace(whole, choice="keep_largest_foreground (the recipe's)", enabled=True,
                                             dice_after=whole.candidates.get("keep_largest_foreground",
                                                                             whole.dice_after))
    return replace(decision, keep_largest_foreground=True, evidence=evidence, rule=decision.rule + (
        ". The recipe adds: keep the largest foreground component (one liver, its vessels and tumours inside "
        "it), which the validation phantoms did not choose; the per-class rules were chosen without it"))


#: The recipe a work folder's fold was trained with, written when its training starts.
RECIPE_STAMP = "recipe.json"


def recipe_stamp(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON data, with the version of the generator that drew its phantoms (what
    :data:`RECIPE_STAMP` holds): a new generator rewrites the phantoms, and a fold trained on the old
    ones must not be exported as the new model. The version is stamped as ``phantom_generator`` only,
    as stamps have recorded it since version 1, so a folder of the same recipe stays current."""
    fields = {k: v for k, v in asdict(recipe).items() if k != "trunk_version"}
    return {**json.loads(json.dumps(fields)), "phantom_generator": f"trunk v{recipe.trunk_version}"}


#: The stamp's fields that decide the training phantoms (and so the preprocessed cases).
PHANTOM_FIELDS = ("task", "cases", "seed", "spacing_range", "phantom_generator")


def _refuse_other_phantoms(recipe: Recipe, work: Path) -> None:
    """Refuse, before any phantom is written, a work folder whose folds were trained on other phantoms:
    drawing this recipe's phantoms over theirs would leave those folds without their data."""
    stamp_file = work / RECIPE_STAMP
    if not (stamp_file.is_file() and (work / "results").exists()):
        return
    stamp, ours = read_json(stamp_file), recipe_stamp(recipe)
    fields = sorted(k for k in PHANTOM_FIELDS if stamp.get(k) != ours[k])
    if fields:
        raise ConfigurationError(f"{work} holds a run of another recipe ({', '.join(fields)} differ from "
                                 f"{stamp_file}), trained on other phantoms than this recipe's",
                                 fix="give another --work (or AUTOSEG_CACHE) to keep it, or pass --force to train "
                                     "there again with this recipe")


def _fold_state(settings: Settings, recipe: Recipe, work: Path, fold_index: int, train: argparse.Namespace
                ) -> Literal["absent", "unfinished", "finished"]:
    """Fold ``fold_index``: ``absent``, ``unfinished`` (an interrupted run of this recipe, to resume) or
    ``finished`` (its final checkpoint, made with the plans just planned as its ``train`` arguments turn
    them into the model's, the recipe's steps and the recipe itself). The recipe is its stamp in
    ``work`` (seed, cases, folds, plan and training flags, phantom generator...). A fold of another
    recipe, finished or not, is an error with the fix, never resumed or exported as this one."""
    from autoseg.artefacts import FoldRecord
    from autoseg.inference.model import trained_model_folder
    from autoseg.layout import ModelFolder, PreprocessedDataset
    from autoseg.plans import Plans
    from autoseg.cli import train_request
    from autoseg.training.run import apply_overrides, changed_plans

    folder = trained_model_folder(recipe.dataset, None, settings)
    model = ModelFolder(folder)
    fold = model.fold(fold_index)
    finished = fold.final.is_file()
    if not finished and not fold.latest.is_file():
        return "absent"
    other = []
    if finished:
        trained = Plans.load(model.plans)
        dataset = PreprocessedDataset(settings.preprocessed / trained.dataset_name)
        planned = apply_overrides(Plans.load(dataset.plans), train_request(train), dataset.fingerprint)
        changed = changed_plans(trained, planned)
        other = [f"other plans ({', '.join(changed)} differ)"] if changed else []
        steps = FoldRecord.load(fold.record).schedule.steps if fold.record.is_file() else None
        if steps != recipe.steps:
            other.append(f"{steps} steps, not the recipe's {recipe.steps}")
    stamp = read_json(work / RECIPE_STAMP) if (work / RECIPE_STAMP).is_file() else {}
    fields = sorted(k for k, v in recipe_stamp(recipe).items() if stamp.get(k) != v and (k != "steps" or not finished))
    if fields:
        other.append(f"another recipe ({', '.join(fields)} differ from {work / RECIPE_STAMP})" if stamp
                     else f"an unrecorded recipe (no {work / RECIPE_STAMP})")
    if other:
        what = "a fold trained" if finished else "an unfinished run"
        raise ConfigurationError(f"{fold.root} holds {what} with {' and '.join(other)}",
                                 fix="pass --force to train it again with this recipe (phantoms and preprocessed "
                                     "cases are kept)")
    return "finished" if finished else "unfinished"


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="make a built-in model (e.g. synthetic) on this machine",
                       description="Make a built-in model from its recipe: write its training phantoms, plan, "
                                   "preprocess, train and export it to the cache ($AUTOSEG_CACHE/models), where "
                                   "`predict -m NAME` finds it. docs/synthetic_model.md is its model card.")
    p.add_argument("name", choices=sorted(RECIPES), help="the built-in model")
    p.add_argument("--work", type=Path, default=None,
                   help="working folder for phantoms, preprocessed data and the trained folds "
                        "(default: $AUTOSEG_CACHE/pretrain/NAME); kept, so a second run goes on where it stopped")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--cases", type=int, default=None, help="training phantoms (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="seed of phantoms and training (default: the recipe's)")
    p.add_argument("--trunk-version", type=int, default=None, metavar="V",
                   help="the trunk generator's version that draws the training phantoms (default: the recipe's; "
                        "docs/synthetic_model.md says what each version changed). The model is still exported as "
                        "NAME: give another AUTOSEG_CACHE and --work to keep the recipe's own model beside it")
    p.add_argument("--force", action="store_true", help="replace an archive already in the cache")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace, settings: Settings) -> int:
    recipe = RECIPES[args.name]
    changes = {k: v for k, v in (("steps", args.steps), ("cases", args.cases), ("seed", args.seed),
                                 ("trunk_version", args.trunk_version)) if v is not None}
    if any(v < 1 for k, v in changes.items() if k in ("steps", "cases")):
        raise ConfigurationError("--steps and --cases must be positive", fix="e.g. --steps 5000 --cases 80")
    recipe = replace(recipe, **changes)
    if args.trunk_version is not None:
        from autoseg.phantom_trunk import check_version

        check_version(args.trunk_version)  # before the archive or the work folder is looked at
    work = args.work or settings.cache / "pretrain" / recipe.name
    if args.force and (work / "results").exists():
        log.info("--force: training again in %s", work)
        shutil.rmtree(work / "results")
    out = pretrain(recipe, settings, work, force=args.force)
    print(f"built-in model '{recipe.name}' ready: {out} (autoseg predict -i CT -o OUT -m {recipe.name})")
    return 0
