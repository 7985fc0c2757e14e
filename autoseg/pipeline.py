"""``autoseg plan_and_preprocess``: fingerprint, plan and preprocess, each skipped when current.

The orchestrator of the first three stages, beside the CLI (it runs the planner and the
preprocessing, so it belongs to neither). Outputs in ``$AUTOSEG_PREPROCESSED/<dataset>/``
(:class:`autoseg.layout.PreprocessedDataset`): the fingerprint and its slice plot, the plans and
``data/`` (per case an image array, a uint8 label array and a properties JSON).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from autoseg.datasets import Dataset, find_dataset
from autoseg.artefacts import Fingerprint
from autoseg.errors import AutosegError, PlansError
from autoseg.layout import PreprocessedDataset
from autoseg.locks import folder_lock
from autoseg.plans import Plans
from autoseg.planners.fingerprint import fingerprint_dataset, load_fingerprint, save_fingerprint
from autoseg.planners.planner import PlannerOptions, localiser_plans, plan
from autoseg.preprocessing import preprocess_dataset
from autoseg.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("fingerprint", "plan", "preprocess")
PREPROCESSED_IN_USE_FIX = ("wait for that run to end or stop it (the lock of a process that has ended is "
                           "released by itself), then run again; its current outputs are kept")


def inputs_key(dataset: Dataset, max_slices: int | None, seed: int) -> str:
    """Hash of what the fingerprint depends on: case files (name, size, mtime), options, and the axis
    order its spacings and shapes are in (LPS since 2026-12-05: an older fingerprint, in each file's
    order, is computed again)."""
    h = hashlib.sha256()
    h.update(json.dumps({"labels": dataset.labels, "channels": dataset.channel_names,
                         **({"partial": [repr(p) for p in dataset.partial]} if dataset.partial else {}),
                         "max_slices": max_slices, "seed": seed, "axis_order": "LPS"}, sort_keys=True).encode())
    for case in dataset.cases:
        for path in (*case.images, case.label):
            if path is not None:
                st = path.stat()
                h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def ensure_fingerprint(dataset: Dataset, out: PreprocessedDataset, options: PlannerOptions,
                       max_slices: int | None, workers: int, force: bool) -> tuple[Fingerprint, bool]:
    """Load a current fingerprint or compute one; returns it and whether it was recomputed. A
    fingerprint that does not load (another autoseg version's, damaged) is recomputed."""
    path = out.fingerprint
    key = inputs_key(dataset, max_slices, options.seed)
    if path.is_file() and not force:
        try:
            existing = load_fingerprint(path)
        except AutosegError as exc:
            log.info("fingerprint: %s is not current (%s); fingerprinting again", path, str(exc).splitlines()[0])
        else:
            if existing.inputs_key == key:
                log.info("fingerprint: %s is current, skipping", path)
                return existing, False
    fingerprint = fingerprint_dataset(dataset, num_workers=workers, seed=options.seed, max_slices=max_slices,
                                      inputs_key=key)
    save_fingerprint(fingerprint, out.root)
    for warning in fingerprint.warnings:
        log.warning("fingerprint: %s", warning)
    log.info("fingerprint: wrote %s", path)
    return fingerprint, True


def ensure_plans(fingerprint: Fingerprint, out: PreprocessedDataset, options: PlannerOptions,
                 replan: bool) -> Plans:
    """Keep existing plans (hand edits included) unless re-planning is needed or forced."""
    path = out.plans
    if path.is_file() and not replan:
        log.info("plan: keeping existing %s (use --force to re-plan)", path)
        return Plans.load(path)
    plans = plan(fingerprint, options)
    plans.save(path)
    log.info("plan: wrote %s (patch %s, batch %d, network %s)", path, plans.patch_size, plans.batch_size,
             plans.network.name)
    return plans


def ensure_localiser_plans(out: PreprocessedDataset, replan: bool) -> Plans:
    """The localiser's plans (:func:`localiser_plans` of the dataset's), kept like the dataset's own
    (hand edits included) while they were derived from the dataset's current plans; derived again
    when re-planning is forced or those plans changed."""
    loc, source = out.localiser, Plans.load(out.plans)
    if loc.plans.is_file() and not replan:
        kept = Plans.load(loc.plans)
        if kept.is_localiser_of(source):
            log.info("plan: keeping the localiser's %s (use --force to re-plan)", loc.plans)
            return kept
        log.info("plan: the dataset's plans changed since its localiser was planned; planning the localiser again")
    plans = localiser_plans(source)
    plans.save(loc.plans)
    log.info("plan: wrote the localiser's %s (spacing %s, patch %s)", loc.plans, plans.target_spacing,
             plans.patch_size)
    return plans


def stale_localiser(out: PreprocessedDataset) -> bool:
    """True when the dataset has localiser plans derived from other plans than its current ones."""
    loc = out.localiser
    if not (loc.plans.is_file() and out.plans.is_file()):
        return False
    return not Plans.load(loc.plans).is_localiser_of(Plans.load(out.plans))


def plan_and_preprocess(spec: str | Path, settings: Settings, options: PlannerOptions,
                        stages: tuple[str, ...] = STAGES, max_slices: int | None = None,
                        workers: int = 2, force: bool = False, localiser: bool = False) -> Path:
    """Run the requested stages for one dataset and return its preprocessed folder; with
    ``localiser``, plan and preprocess its localiser too (``<dataset>/localiser/``).

    The folder is locked while the stages run: a second ``plan_and_preprocess`` of the same dataset
    (here or on another machine sharing the folder) is refused, naming the process that holds it,
    instead of both writing the same cases."""
    dataset = find_dataset(spec, settings.raw)
    out = PreprocessedDataset(settings.preprocessed / dataset.name)
    with folder_lock(out.root, f"the preprocessed folder of {dataset.name}", PREPROCESSED_IN_USE_FIX):
        _run_stages(dataset, out, options, stages, max_slices, workers, force, localiser)
    return out.root


def _run_stages(dataset: Dataset, out: PreprocessedDataset, options: PlannerOptions, stages: tuple[str, ...],
                max_slices: int | None, workers: int, force: bool, localiser: bool = False) -> None:
    """The stages of :func:`plan_and_preprocess`, run while its lock is held."""
    recomputed = False
    if "fingerprint" in stages or ("plan" in stages and not out.fingerprint.is_file()):
        fingerprint, recomputed = ensure_fingerprint(dataset, out, options, max_slices, workers,
                                                     force and "fingerprint" in stages)
    elif out.fingerprint.is_file():
        fingerprint = load_fingerprint(out.fingerprint)
    if "plan" in stages:
        ensure_plans(fingerprint, out, options, replan=force or recomputed)
        if localiser:
            ensure_localiser_plans(out, replan=force or recomputed)
        elif stale_localiser(out):
            log.warning("plan: the localiser in %s was planned from other plans than the dataset's current ones; "
                        "plan and preprocess it again with `autoseg plan_and_preprocess -d %s --localiser`",
                        out.localiser.root, dataset.name)
    if "preprocess" in stages:
        plans = Plans.load(out.plans)
        if plans.dataset_name != dataset.name:
            raise PlansError(f"plans are for dataset '{plans.dataset_name}', not '{dataset.name}'",
                             out.plans, "re-run with --only plan --force")
        included = None
        if out.fingerprint.is_file():
            included = [c.case for c in load_fingerprint(out.fingerprint).cases]
        done = preprocess_dataset(dataset, plans, out.root, num_workers=workers, cases=included)
        log.info("preprocess: %d cases in %s", len(done), out.data)
        if localiser:
            loc = out.localiser
            if not loc.plans.is_file():
                raise PlansError("the localiser has no plans yet", loc.plans,
                                 f"plan it first: `autoseg plan_and_preprocess -d {dataset.name} --localiser`")
            done = preprocess_dataset(dataset, Plans.load(loc.plans), loc.root, num_workers=workers, cases=included)
            log.info("preprocess: %d cases of the localiser in %s", len(done), loc.data)
