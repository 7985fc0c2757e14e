"""Cross-validation results of a dataset's trained networks: ``autoseg summarize``, ``autoseg
find_best`` and which network ``autoseg predict -d`` uses.

Reads what fold validation writes, ``$AUTOSEG_RESULTS/<dataset>/<network>/fold_K/validation/
summary.json`` (per-case Dice of each foreground class on the fold's held-out cases), and each
network folder's ``plans.json`` for its recipe. Writes ``<dataset>/cv_summary.json`` and
``<dataset>/best.json``. Ensembles of networks (``inference/ensembles.py``) are folders beside the
networks with the same validation files, so they are listed and chosen like networks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoseg.datasets import resolve_dataset_path
from autoseg.errors import AutosegError, EvaluationError
from autoseg.io import read_json, write_json
from autoseg.metrics import mean_present
from autoseg.settings import Settings
from autoseg.training.splits import NUM_FOLDS

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
CV_SUMMARY_FILE = "cv_summary.json"


def results_dataset_dir(spec: str, settings: Settings) -> Path:
    """``$AUTOSEG_RESULTS/<dataset>`` for ``Task08``, ``8``, a full folder name or a raw dataset path."""
    try:
        found = resolve_dataset_path(spec, settings.results)
    except AutosegError:
        found = None
    folder = settings.results / found.name if found is not None else None
    if folder is None or not folder.is_dir():
        known = sorted(p.name for p in settings.results.iterdir() if p.is_dir()) if settings.results.is_dir() else []
        raise EvaluationError(f"no trained models for dataset '{spec}' (results folder holds: "
                              f"{', '.join(known) or 'nothing'})", settings.results,
                              f"train first: `autoseg train -d {spec}`, or set AUTOSEG_RESULTS")
    return folder


def _fold_summary(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the fold's validation summary ({exc})", path,
                              "delete it and retrain the fold with --force") from None
    if not (isinstance(data, dict) and isinstance(data.get("cases"), dict)
            and isinstance(data.get("mean_dice"), dict)):
        raise EvaluationError("validation summary lacks 'cases' or 'mean_dice'", path,
                              "delete it and retrain the fold with --force")
    return data


def _recipe_name(network_dir: Path) -> str | None:
    from autoseg.inference.ensembles import is_ensemble_folder
    from autoseg.plans import Plans

    if is_ensemble_folder(network_dir):
        return "ensemble"
    try:
        return Plans.load(network_dir / "plans.json").recipe.name
    except AutosegError as exc:
        log.warning("%s: recipe unknown (%s)", network_dir, str(exc).splitlines()[0])
        return None


def summarize_network(network_dir: Path) -> dict[str, Any] | None:
    """Pooled cross-validation Dice of one network folder; None when no fold has been validated.

    Every validation case of every fold counts once per fold it appears in; a class absent from
    both reference and prediction of a case (null in summary.json) is left out of that class's mean.
    """
    summaries = {f: network_dir / f"fold_{f}" / "validation" / "summary.json" for f in range(NUM_FOLDS)}
    folds = {f: _fold_summary(p) for f, p in summaries.items() if p.is_file()}
    if not folds:
        return None
    classes = list(dict.fromkeys(name for s in folds.values() for name in s["mean_dice"]))
    cases = [scores for s in folds.values() for scores in s["cases"].values()]
    mean_dice = {name: mean_present([c.get(name) for c in cases]) for name in classes}
    return {"recipe": _recipe_name(network_dir), "folds": sorted(folds), "num_cases": len(cases),
            "mean_dice": mean_dice, "mean_foreground_dice": mean_present(list(mean_dice.values())),
            "fold_mean_foreground_dice": {str(f): s.get("mean_foreground_dice") for f, s in folds.items()}}


def summarize(dataset_dir: Path) -> dict[str, Any]:
    """Cross-validation table of every network of a dataset's results folder."""
    networks = {}
    for network_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        summary = summarize_network(network_dir)
        if summary is not None:
            networks[network_dir.name] = summary
    if not networks:
        raise EvaluationError("no validated folds (no <network>/fold_K/validation/summary.json)", dataset_dir,
                              f"train first: `autoseg train -d {dataset_dir.name}` (each fold validates its "
                              "held-out cases when it finishes)")
    return {"dataset": dataset_dir.name, "num_folds": NUM_FOLDS, "networks": networks}


def write_cv_summary(dataset_dir: Path, summary: dict[str, Any]) -> Path:
    path = dataset_dir / CV_SUMMARY_FILE
    write_json(path, summary)
    return path


def choose_best(summary: dict[str, Any]) -> dict[str, Any]:
    """The network with the highest mean foreground Dice among those with all folds validated.

    When no network has every fold, the networks with the most folds compete, with a warning.
    """
    networks = summary["networks"]
    most = max(len(n["folds"]) for n in networks.values())
    if most < NUM_FOLDS:
        log.warning("no network has all %d folds validated; choosing among those with %d", NUM_FOLDS, most)
    eligible = {name: n for name, n in networks.items()
                if len(n["folds"]) == most and n["mean_foreground_dice"] is not None}
    if not eligible:
        raise EvaluationError("no network with the most validated folds has a foreground Dice (every "
                              "validation case was empty in both reference and prediction)",
                              fix="check the validation labels, or train more folds")
    best = max(sorted(eligible), key=lambda name: eligible[name]["mean_foreground_dice"])
    candidates = {name: {"mean_foreground_dice": n["mean_foreground_dice"], "folds": n["folds"],
                         "recipe": n["recipe"], "eligible": name in eligible} for name, n in networks.items()}
    return {"network": best, "mean_foreground_dice": eligible[best]["mean_foreground_dice"],
            "folds": eligible[best]["folds"], "recipe": eligible[best]["recipe"],
            "all_folds_validated": most == NUM_FOLDS, "candidates": candidates}


def write_best(dataset_dir: Path, best: dict[str, Any]) -> Path:
    path = dataset_dir / BEST_FILE
    write_json(path, best)
    return path


def best_network(dataset_dir: Path) -> str | None:
    """The network named by ``best.json``, or None when ``find_best`` has not been run."""
    path = dataset_dir / BEST_FILE
    if not path.is_file():
        return None
    try:
        name = read_json(path).get("network")
    except (OSError, ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not name:
        raise EvaluationError("best.json does not name a network", path,
                              "run `autoseg find_best` again, or delete the file")
    return name


def choose_network(dataset_dir: Path, planned: str, override: str | None = None) -> str:
    """Network for ``predict -d``: ``--network``, else best.json's, else the planned one."""
    if override:
        return override
    best = best_network(dataset_dir)
    if best is not None:
        log.info("using network %s from %s", best, dataset_dir / BEST_FILE)
        return best
    return planned


def format_cv_table(summary: dict[str, Any]) -> str:
    """Text table: one row per network with per-class and mean foreground Dice."""
    networks = summary["networks"]
    classes = list(dict.fromkeys(c for n in networks.values() for c in n["mean_dice"]))
    width = max(14, *(len(name) + 2 for name in networks))
    head = f"{'network':<{width}}{'recipe':<14}{'folds':<11}{'cases':>6}" + "".join(f"{c[:11]:>12}" for c in classes)
    head += f"{'mean fg':>10}"
    lines = [head, "-" * len(head)]
    for name, n in networks.items():
        cells = [n["mean_dice"].get(c) for c in classes] + [n["mean_foreground_dice"]]
        widths = [12] * len(classes) + [10]
        text = "".join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(cells, widths))
        folds = ",".join(str(f) for f in n["folds"])
        lines.append(f"{name:<{width}}{str(n['recipe'] or '-'):<14}{folds:<11}{n['num_cases']:>6}{text}")
    return "\n".join(lines)
