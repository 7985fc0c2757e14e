"""Folds in parallel on a Ray cluster: ``autoseg train --executor ray [--ray-address ADDR]``.

Each fold is one Ray task that trains it with :func:`~autoseg.training.run.run_fold`; the driver
writes the splits and the model's plans first, so no two tasks race on them. A task asks for one
GPU on CUDA and ``cpus_per_fold`` CPUs otherwise, and sets PyTorch's thread count to the CPUs Ray
gave it. The preprocessed data and the results folder must be on storage every node sees (the
same paths), as for nnU-Net on a cluster. Without ``--ray-address`` a local Ray instance is
started on this machine and stopped afterwards. Ray is an optional extra:
``pip install -e '.[distributed]'`` in the autoseg checkout.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from autoseg.errors import ConfigurationError
from autoseg.training.loop import TrainOptions
from autoseg.training.run import FoldJob, run_fold

log = logging.getLogger(__name__)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigurationError("--executor ray needs the Ray package, which is not installed",
                                 fix="pip install -e '.[distributed]' in the autoseg checkout (or pip install ray), "
                                     "or train with the default local executor") from None
    return ray


def _fold_task(job: FoldJob, options: TrainOptions) -> dict[str, Any]:
    """Body of one Ray task: threads from the assigned CPUs, then the fold."""
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    # Ray's allocation is the share of this task: a fixed thread count, not adapted to the machine
    return run_fold(job, dataclasses.replace(options, threads=max(1, int(cpus))))


def run_folds_on_ray(jobs: list[FoldJob], options: TrainOptions, address: str | None,
                     cpus_per_fold: int | None) -> list[dict[str, Any]]:
    """Run ``jobs`` as Ray tasks and wait for all of them; a failed fold raises after all finish."""
    if not jobs:
        return []
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
    cuda = options.device.startswith("cuda")
    cpus = cpus_per_fold or (1 if cuda else max(1, (os.cpu_count() or 1) // len(jobs)))
    task = ray.remote(num_cpus=cpus, num_gpus=1 if cuda else 0, max_retries=0)(_fold_task)
    log.info("Ray: %d folds as tasks of %d CPU(s)%s each", len(jobs), cpus, " and 1 GPU" if cuda else "")
    try:
        futures = {job.fold: task.remote(job, options) for job in jobs}
        results, errors = [], []
        for fold, future in futures.items():
            try:
                results.append(ray.get(future))
            except ray.exceptions.RayTaskError as exc:
                errors.append((fold, exc))
        if errors:
            fold, error = errors[0]
            cause = error.as_instanceof_cause() if hasattr(error, "as_instanceof_cause") else error
            raise cause
        return results
    finally:
        if started_here:
            ray.shutdown()
