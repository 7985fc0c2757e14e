"""Cross-validation results of a dataset's trained networks: ``autoseg summarize``, ``autoseg
find_best`` and which network ``autoseg predict -d`` uses.

Reads what fold validation writes, each fold's validation summary
(:class:`~autoseg.artefacts.FoldSummary`: per-case Dice of each foreground class on the fold's
held-out cases), and each network folder's plans for its recipe. Writes the dataset's
cross-validation summary (:class:`~autoseg.artefacts.CvSummary`) and best-model choice
(:class:`~autoseg.artefacts.BestChoice`). Ensembles of networks (``inference/ensembles.py``) are
folders beside the networks with the same validation files, so they are listed and chosen like
networks.
"""
from __future__ import annotations

import logging
from pathlib import Path

from autoseg.artefacts import BestChoice, Candidate, CvSummary, FoldSummary, NetworkResult
from autoseg.datasets import resolve_dataset_path
from autoseg.errors import AutosegError, EvaluationError
from autoseg.layout import LOCALISER_FOLDER, NUM_FOLDS, ModelFolder, ResultsDataset
from autoseg.metrics import BOOTSTRAP_RESAMPLES, DEFAULT_SEED, bootstrap_interval, mean_present, median_present, scored
from autoseg.settings import Settings

log = logging.getLogger(__name__)


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


def _recipe_name(model: ModelFolder) -> str | None:
    from autoseg.plans import Plans

    if model.is_ensemble:
        return "ensemble"
    try:
        return Plans.load(model.plans).recipe.name
    except AutosegError as exc:
        log.warning("%s: recipe unknown (%s)", model.root, str(exc).splitlines()[0])
        return None


def summarize_network(network_dir: Path) -> NetworkResult | None:
    """Pooled cross-validation Dice of one network folder; None when no fold has been validated.

    Every validation case of every fold counts once per fold it appears in; a class absent from
    both reference and prediction of a case (null in the fold's summary) is left out of that class's
    mean, median and bootstrap interval (seeded: the same summaries give the same interval).
    """
    model = ModelFolder(network_dir)
    folds = {f.fold: FoldSummary.load(f.validation.summary) for f in model.folds() if f.validation.summary.is_file()}
    if not folds:
        return None
    classes = list(dict.fromkeys(name for s in folds.values() for name in s.mean_dice))
    cases = [scores for s in folds.values() for scores in s.cases.values()]
    values = {name: [c.get(name) for c in cases] for name in classes}
    mean_dice = {name: mean_present(v) for name, v in values.items()}
    return NetworkResult(recipe=_recipe_name(model), folds=tuple(sorted(folds)), num_cases=len(cases),
                         mean_dice=mean_dice, mean_foreground_dice=mean_present(list(mean_dice.values())),
                         fold_mean_foreground_dice={f: s.mean_foreground_dice for f, s in folds.items()},
                         median_dice={name: median_present(v) for name, v in values.items()},
                         dice_ci95={name: bootstrap_interval(v) for name, v in values.items()},
                         dice_cases={name: len(scored(v)) for name, v in values.items()})


def summarize(dataset_dir: Path) -> CvSummary:
    """Cross-validation table of every network of a dataset's results folder."""
    networks = {}
    for network_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir() and p.name != LOCALISER_FOLDER):
        summary = summarize_network(network_dir)  # the localiser finds the structures; it is no candidate
        if summary is not None:
            networks[network_dir.name] = summary
    if not networks:
        raise EvaluationError("no validated folds (no fold of any network has a validation summary)", dataset_dir,
                              f"train first: `autoseg train -d {dataset_dir.name}` (each fold validates its "
                              "held-out cases when it finishes)")
    return CvSummary(dataset=dataset_dir.name, num_folds=NUM_FOLDS, networks=networks)


def write_cv_summary(dataset_dir: Path, summary: CvSummary) -> Path:
    path = ResultsDataset(dataset_dir).cv_summary
    summary.save(path)
    return path


def choose_best(summary: CvSummary) -> BestChoice:
    """The network with the highest mean foreground Dice among those with all folds validated.

    When no network has every fold, the networks with the most folds compete, with a warning.
    """
    networks = summary.networks
    most = max(len(n.folds) for n in networks.values())
    if most < NUM_FOLDS:
        log.warning("no network has all %d folds validated; choosing among those with %d", NUM_FOLDS, most)
    eligible = {name: n for name, n in networks.items()
                if len(n.folds) == most and n.mean_foreground_dice is not None}
    if not eligible:
        raise EvaluationError("no network with the most validated folds has a foreground Dice (every "
                              "validation case was empty in both reference and prediction)",
                              fix="check the validation labels, or train more folds")
    best = max(sorted(eligible), key=lambda name: eligible[name].mean_foreground_dice or 0.0)
    candidates = {name: Candidate(mean_foreground_dice=n.mean_foreground_dice, folds=n.folds, recipe=n.recipe,
                                  eligible=name in eligible) for name, n in networks.items()}
    chosen = eligible[best]
    return BestChoice(network=best, mean_foreground_dice=chosen.mean_foreground_dice, folds=chosen.folds,
                      recipe=chosen.recipe, all_folds_validated=most == NUM_FOLDS, candidates=candidates)


def write_best(dataset_dir: Path, best: BestChoice) -> Path:
    path = ResultsDataset(dataset_dir).best
    best.save(path)
    return path


def best_network(dataset_dir: Path) -> str | None:
    """The network named by the best-model choice, or None when ``find_best`` has not been run."""
    path = ResultsDataset(dataset_dir).best
    return BestChoice.load(path).network if path.is_file() else None


def choose_network(dataset_dir: Path, planned: str, override: str | None = None) -> str:
    """Network for ``predict -d``: ``--network``, else find_best's choice, else the planned one."""
    if override:
        return override
    best = best_network(dataset_dir)
    if best is not None:
        log.info("using network %s from %s", best, ResultsDataset(dataset_dir).best)
        return best
    return planned


def format_cv_table(summary: CvSummary) -> str:
    """Text table: one row per network with per-class and mean foreground Dice."""
    networks = summary.networks
    classes = list(dict.fromkeys(c for n in networks.values() for c in n.mean_dice))
    width = max(14, *(len(name) + 2 for name in networks))
    head = f"{'network':<{width}}{'recipe':<14}{'folds':<11}{'cases':>6}" + "".join(f"{c[:11]:>12}" for c in classes)
    head += f"{'mean fg':>10}"
    lines = [head, "-" * len(head)]
    for name, n in networks.items():
        cells = [n.mean_dice.get(c) for c in classes] + [n.mean_foreground_dice]
        widths = [12] * len(classes) + [10]
        text = "".join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(cells, widths))
        folds = ",".join(str(f) for f in n.folds)
        lines.append(f"{name:<{width}}{str(n.recipe or '-'):<14}{folds:<11}{n.num_cases:>6}{text}")
    return "\n".join(lines + ["", _spread_table(summary, width)])


def _spread_table(summary: CvSummary, width: int) -> str:
    """Per network and class: the cases in which the class is scored, its mean, median and interval."""
    head = f"{'network':<{width}}{'class':<14}{'cases':>6}{'mean':>8}{'median':>8}   95% CI of the mean"
    lines = [f"Dice per class over the validation cases in which it is scored (absent from reference and "
             f"prediction: left out); 95% CI: bootstrap of the mean, {BOOTSTRAP_RESAMPLES} resamples of the cases, "
             f"seed {DEFAULT_SEED}", head, "-" * len(head)]
    for name, n in summary.networks.items():
        for i, cls in enumerate(n.mean_dice):
            ci = (n.dice_ci95 or {}).get(cls)
            cells = [n.mean_dice.get(cls), (n.median_dice or {}).get(cls)]
            text = "".join(f"{'-' if v is None else f'{v:.3f}':>8}" for v in cells)
            interval = "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            cases = (n.dice_cases or {}).get(cls, "-")
            lines.append(f"{name if i == 0 else '':<{width}}{cls[:13]:<14}{cases:>6}{text}   {interval}")
    return "\n".join(lines)
