"""Post-processing decided from cross-validation and stored with the model.

First, for all foreground classes as one (as nnU-Net does): keep only the largest component of
their union, which removes whatever the model found outside the one organ its classes live in (a
liver model's false "liver" in the spleen or a muscle, with any vessel or tumour predicted there);
chosen where it raises the mean Dice over the classes and lowers no class's (nnU-Net's two conditions:
a rule that raised the mean by clearing one class's false positives while cutting another class
would trade one structure for another). Then the candidates, per foreground class
(26-connected components):

- keep only the class's largest component, which removes scattered false positives of a class that
  is one object per patient (the liver) and harms a class with several objects (tumours, vessels);
- drop the class's components smaller than a volume (``MIN_COMPONENT_LADDER_ML``: 0.01 to 1 mL, the
  volume of spheres of 2.7 to 12 mm), which removes the specks a weak model scatters while keeping
  every lesion above the size;
- drop the class's components whose most certain voxel stays under a probability
  (``MIN_CONFIDENCE_LADDER``: 0.6 to 0.95), which removes unsure false lesions of any size (a
  tumour-free liver's several-mL "tumour" that the network half believes) while keeping the lesions
  it is sure of. A dropped voxel takes the most probable of the other classes (a false tumour in the
  liver becomes liver). It needs the probabilities: in prediction it runs on the network's grid
  before the labels go back to the input's, first of all the rules.
- drop the class's components that touch no voxel of the class it lies inside (the fingerprint's
  ``label_nesting``: a tumour in its liver) or of the other classes nested there (vessels): a
  "tumour" in the spleen or the bowel, outside the organ a model of liver lesions predicts. Tried
  only for a nested class of a model that predicts its parent; applied last, after the parent's own
  rules.

Each confidence rule is also tried followed by each of the other rules on what it left (a class
may need both: a liver model's unsure false "tumour" inside the liver goes with the confidence
rule, its sure one in a spleen it calls liver only with the largest-component rule of the liver and
the inside-its-parent rule of the tumour). For each class the candidate with the highest mean Dice
over all cross-validation cases (the folds' validation predictions on the preprocessed grid against
the preprocessed labels) is chosen, and only where it beats doing nothing; of equal candidates the
one with fewer rules. No rule is chosen that loses an object the class found: a reference component
of at least ``GUARDED_OBJECT_ML`` (a lesion of 10 mm, RECIST's smallest measurable one) that the
class's prediction touched in a CV case and no longer touches after the rule. Dice weighs voxels, so
a rule that drops a found 1 mL lesion together with 3 mL of false tumour raises the mean Dice; a
reader counts the lesion lost (issue 22: a 0.3 mL minimum and a 0.95 confidence, chosen by Dice on
four CV cases, dropped found 0.5-3 mL lesions of the test phantoms). Sizes are volumes, so a
decision taken on the preprocessed grid applies on any input grid. The decision and its evidence
(:class:`~autoseg.artefacts.PostprocessingDecision`) are stored with the model
(``ModelFolder.postprocessing``); ``autoseg predict`` applies it and ``autoseg export`` ships it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import cc3d
import numpy as np
from scipy import ndimage

from autoseg.artefacts import ClassEvidence, Fingerprint, PostprocessingDecision, PostprocessingRules
from autoseg.errors import AutosegError
from autoseg.evaluation import components
from autoseg.layout import ExportNames, ModelFolder, PreprocessedDataset, case_files_in
from autoseg.metrics import dice_per_class, mean_present
from autoseg.partial_labels import LabelSpace
from autoseg.inference.model import stored_artefact
from autoseg.preprocessing import load_labels
from autoseg.schema import FieldError, build

log = logging.getLogger(__name__)

#: Component volumes tried as a minimum, in mL (log-spaced; a 5 mm sphere is 0.065 mL).
MIN_COMPONENT_LADDER_ML = (0.01, 0.03, 0.1, 0.3, 1.0)
#: Highest probabilities tried as a component's minimum.
MIN_CONFIDENCE_LADDER = (0.6, 0.7, 0.8, 0.9, 0.95)
#: Reference components of at least this volume (mL) are guarded: no rule is chosen that loses one
#: the class found in cross-validation. 0.52 mL is a sphere 10 mm across, RECIST 1.1's smallest
#: measurable lesion (and issue 22's recall target counts lesions from 0.5 mL).
GUARDED_OBJECT_ML = 0.52
#: Joins the two rules of a combined candidate's name: a confidence rule, then a component rule on
#: what it left (``min_component_confidence=0.9+keep_largest_component``).
COMBINED = "+"


def _keep_largest_of(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``labels`` (a copy) with every 26-connected component of ``mask`` but the largest set to background."""
    out = labels.copy()
    if not mask.any():
        return out
    components = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[mask & (components != int(sizes.argmax()))] = 0
    return out


def keep_largest_component(labels: np.ndarray, label: int) -> np.ndarray:
    """``labels`` with every component of ``label`` but the largest set to background (a copy)."""
    return _keep_largest_of(labels, labels == label)


def keep_largest_foreground(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every component of the union of the foreground classes but the largest set
    to background (a copy)."""
    return _keep_largest_of(labels, labels > 0)


def remove_small_components(labels: np.ndarray, label: int, min_ml: float,
                            spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """``labels`` with the components of ``label`` under ``min_ml`` millilitres set to background."""
    out = labels.copy()
    mask = labels == label
    if not mask.any():
        return out
    components = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(components.ravel()) * (float(np.prod(spacing_zyx)) / 1000.0)
    small = sizes < min_ml
    small[0] = False
    out[small[components]] = 0
    return out


def unsure_components(labels: np.ndarray, probabilities: np.ndarray, label: int, min_confidence: float) -> np.ndarray:
    """Mask of the 26-connected components of ``label`` whose highest probability of ``label``
    (``probabilities``: (K, ...) in 0..1, or uint8 0..255) is under ``min_confidence``."""
    mask = labels == label
    if not mask.any():
        return mask
    components, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    scale = 255.0 if probabilities.dtype == np.uint8 else 1.0
    peaks = np.asarray(ndimage.maximum(probabilities[label], components, index=np.arange(1, n + 1)), dtype=float)
    unsure = np.zeros(n + 1, dtype=bool)
    unsure[1:] = peaks < min_confidence * scale
    return unsure[components]


def outside_parent(labels: np.ndarray, label: int, parent: tuple[int, ...]) -> np.ndarray:
    """Mask of the 26-connected components of ``label`` that have no 26-neighbour of the classes
    ``parent`` (a tumour component with no liver or vessel voxel beside it)."""
    mask = labels == label
    if not mask.any():
        return mask
    # only the label's bounding box and one voxel around it can hold a neighbour: no whole-grid dilation
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(mask))
    components, n = cc3d.connected_components(mask[box], connectivity=26, return_N=True)
    near = ndimage.binary_dilation(np.isin(labels[box], parent), structure=np.ones((3,) * labels.ndim, dtype=bool))
    outside = np.ones(n + 1, dtype=bool)
    outside[0] = False
    outside[np.unique(components[near & mask[box]])] = False
    found = np.zeros_like(mask)
    found[box] = outside[components]
    return found


def drop_outside_parent(labels: np.ndarray, label: int, parent: tuple[int, ...]) -> np.ndarray:
    """``labels`` with ``label``'s components outside ``parent`` (:func:`outside_parent`) made background."""
    drop = outside_parent(labels, label, parent)
    if not drop.any():
        return labels
    out = labels.copy()
    out[drop] = 0
    return out


def parent_classes(nesting: Mapping[int, int], label: int) -> tuple[int, ...]:
    """The class ``label`` lies inside (``nesting``: class -> the class around it) and every other
    class nested in that one at any depth, apart from ``label``'s own (a tumour's necrotic core is no
    liver); empty when ``label`` is nested in nothing."""
    nesting = {int(k): int(v) for k, v in nesting.items()}
    if label not in nesting:
        return ()
    parent = nesting[label]

    def inside(c: int) -> bool:  # nested in the parent at any depth, and not through ``label``
        seen = {c}
        while c in nesting and nesting[c] not in seen:
            c = nesting[c]
            if c in (parent, label):
                return c == parent
            seen.add(c)
        return False

    return (parent, *sorted(c for c in nesting if c not in (label, parent) and inside(c)))


def suppress_unsure(probabilities: np.ndarray, decision: "Decision") -> np.ndarray:
    """The probabilities with the decision's unsure components' class set to 0 there (a copy when
    something is dropped), so that the labels made from them leave those components out.

    A dropped component's voxels take their next most probable class, which may be one with a rule
    of its own (unsure vessel voxels that become tumour): the labels are made again after every drop
    and the rules applied again until none drops anything, so such voxels are judged as that class."""
    rules = rules_of(decision)
    if not rules.min_component_confidence:
        return probabilities
    out = probabilities
    labels = probabilities.argmax(axis=0)
    for _ in range(len(probabilities)):  # each round removes a class from some voxels: at most K rounds
        dropped = False
        for label, minimum in sorted(rules.min_component_confidence.items()):
            drop = unsure_components(labels, out, label, minimum)
            if drop.any():
                out = out.copy() if out is probabilities else out
                out[label][drop] = 0
                labels = out.argmax(axis=0)
                dropped = True
        if not dropped:
            break
    return out


Decision = PostprocessingDecision | PostprocessingRules | Mapping[str, Any] | None


def rules_of(decision: Decision) -> PostprocessingRules:
    """The rules of a decision (None: none; a mapping: its two rule keys, checked)."""
    if decision is None:
        return PostprocessingRules()
    if isinstance(decision, PostprocessingDecision):
        return decision.rules
    if isinstance(decision, PostprocessingRules):
        return decision
    keys = ("keep_largest_component", "min_component_ml", "keep_largest_foreground", "min_component_confidence",
            "inside_parent")
    try:
        return build(PostprocessingRules, {k: decision[k] for k in keys if k in decision}, "postprocessing")
    except FieldError as exc:
        raise PostprocessingDecision.ERROR(str(exc), fix=PostprocessingDecision.FIX) from None


def apply_postprocessing(labels: np.ndarray, decision: Decision,
                         spacing_zyx: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Apply a decision (None: unchanged) to labels on a grid of ``spacing_zyx`` mm; its confidence
    rule is not among them (it needs the probabilities: :func:`suppress_unsure`, before)."""
    rules = rules_of(decision)
    if rules.keep_largest_foreground:
        labels = keep_largest_foreground(labels)
    for label in rules.keep_largest_component:
        labels = keep_largest_component(labels, label)
    for label, min_ml in rules.min_component_ml.items():
        labels = remove_small_components(labels, label, min_ml, spacing_zyx)
    for label, parent in rules.inside_parent.items():
        labels = drop_outside_parent(labels, label, tuple(parent))
    return labels


def describe(decision: Decision, names: dict[int, str]) -> str:
    """One line for people: what the decision does to which class."""
    rules = rules_of(decision)
    parts = ["keep the largest foreground component"] if rules.keep_largest_foreground else []
    parts += [f"keep the largest component of {names[k]}" for k in rules.keep_largest_component]
    parts += [f"drop {names[k]} components under {v} mL" for k, v in rules.min_component_ml.items()]
    parts += [f"drop {names[k]} components whose highest probability is under {v}"
              for k, v in rules.min_component_confidence.items()]
    parts += [f"drop {names[k]} components beside no {' or '.join(names[p] for p in v)}"
              for k, v in rules.inside_parent.items()]
    return "; ".join(parts) or "nothing"


def cv_predictions(model_dir: Path, data_dir: Path, use: str) -> Iterator[tuple[int, str, Path]]:
    """(fold, case, prediction file) of every fold's validation predictions on the preprocessed grid
    whose preprocessed case exists in ``data_dir``; the others are logged as left out of ``use``."""
    for fold in ModelFolder(model_dir).folds():
        if not fold.validation.root.is_dir():
            continue
        for case in fold.validation.predicted_cases():
            pred_file = fold.validation.prediction(case)
            if not case_files_in(data_dir, case).image.is_file():
                log.warning("no preprocessed case for %s; left out of the %s", pred_file, use)
                continue
            yield fold.fold, case, pred_file


def _cv_pairs(model_dir: Path, data_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(case, prediction, reference, uint8 probabilities or None) of every CV case."""
    pairs = []
    for _, case, pred_file in cv_predictions(model_dir, data_dir, "post-processing decision"):
        with np.load(pred_file) as stored:
            pred = stored["labels"]
            probs = stored["probabilities"] if "probabilities" in stored.files else None
        ref = load_labels(data_dir, case)  # a clear error for a folder from before preprocessing version 3
        pairs.append((case, pred, ref, probs))
    return pairs


def _mean_dice(pairs: list[tuple[np.ndarray, np.ndarray]], label: int, space: LabelSpace | None = None) -> float:
    values = [dice_per_class(p, r, [label], space)[label] for p, r in pairs]
    present = [v for v in values if not math.isnan(v)]
    return float(np.mean(present)) if present else math.nan


def _class_masks(pred: np.ndarray, ref: np.ndarray, label: int,
                 space: LabelSpace | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The prediction and reference masks ``label`` is scored on (None where the case does not
    annotate it: partial labels), as :func:`autoseg.metrics.dice_per_class` scores them."""
    if space is not None and space.is_partial:
        return space.masks(pred, ref, label, np.unique(ref).tolist())
    return pred == label, ref == label


class _ObjectGuard:
    """The CV references' components of one class of at least :data:`GUARDED_OBJECT_ML`, and how
    many of them a set of predictions touches (a lesion is found when a predicted voxel of the class
    touches it, as ``autoseg evaluate`` counts it)."""

    def __init__(self, refs: list[np.ndarray], label: int, space: LabelSpace | None, voxel_ml: float) -> None:
        self.label, self.space = label, space
        self.objects: list[tuple[np.ndarray, np.ndarray] | None] = []  # per case: components, guarded ids
        for ref in refs:
            masks = _class_masks(ref, ref, label, space)
            labelled, n = components(masks[1]) if masks is not None else (None, 0)
            if labelled is None or n == 0:
                self.objects.append(None)
                continue
            sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:] * voxel_ml
            ids = np.flatnonzero(sizes >= GUARDED_OBJECT_ML) + 1
            self.objects.append((labelled, ids) if ids.size else None)

    def found(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> int:
        total = 0
        for (pred, ref), objects in zip(pairs, self.objects):
            if objects is None:
                continue
            labelled, ids = objects
            masks = _class_masks(pred, ref, self.label, self.space)
            if masks is not None:
                total += int(np.isin(ids, labelled[masks[0]]).sum())
        return total


def _judge(guard: _ObjectGuard, pairs: list[tuple[np.ndarray, np.ndarray]], lost: dict[str, int],
           space: LabelSpace | None) -> Callable[[str, list[tuple[np.ndarray, np.ndarray]]], float]:
    """A function of (candidate, its CV cases) that returns the candidate's mean CV Dice of the
    guard's class and writes to ``lost`` how many guarded objects found in ``pairs`` it loses."""
    found_before = guard.found(pairs)

    def judge(cand: str, made: list[tuple[np.ndarray, np.ndarray]]) -> float:
        lost[cand] = found_before - guard.found(made)
        return _mean_dice(made, guard.label, space)
    return judge


def _mean_over_classes(values: list[float]) -> float:
    """Mean of the classes' mean CV Dice, classes no case holds (NaN) left out; NaN when none is held."""
    mean = mean_present(values)
    return math.nan if mean is None else mean


def _side_effect(pairs: list[tuple[np.ndarray, np.ndarray]], before: dict[int, float],
                 space: LabelSpace | None) -> float:
    """The summed change of the other classes' mean CV Dice (``before``) that a rule of one class
    causes: a dropped component's voxels take their next most probable class, and a rule that turns
    unsure vessel voxels into false tumour must not look free."""
    change = 0.0
    for k, was in before.items():
        now = _mean_dice(pairs, k, space)
        if not (math.isnan(was) or math.isnan(now)):
            change += now - was
    return change


def _candidates(label: int, spacing_zyx: tuple[float, ...]):
    """(name, function of a label map) of every volume and largest-component rule tried for ``label``
    (the confidence rule needs the probabilities: :func:`_with_confidence`; the inside-its-parent
    rule the rules chosen before it: :func:`determine_postprocessing`)."""
    yield "keep_largest_component", lambda p: keep_largest_component(p, label)
    for ml in MIN_COMPONENT_LADDER_ML:
        yield f"min_component_ml={ml}", lambda p, ml=ml: remove_small_components(p, label, ml, spacing_zyx)


def _with_confidence(pairs: list[tuple[np.ndarray, np.ndarray]], probabilities: list[np.ndarray],
                     rules: dict[int, float], foreground: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The CV cases' labels as prediction makes them with the confidence ``rules``: applied on the
    probabilities until none drops more (:func:`suppress_unsure`, as ``predict``), then the
    foreground rule when chosen. Without rules, the stored labels."""
    out = []
    for (pred, ref), probs in zip(pairs, probabilities):
        labels = pred if not rules else np.asarray(
            suppress_unsure(probs, PostprocessingRules(min_component_confidence=dict(rules))).argmax(axis=0),
            dtype=pred.dtype)
        out.append((keep_largest_foreground(labels) if foreground else labels, ref))
    return out


def determine_postprocessing(model_dir: Path, data_dir: Path, labels: dict[int, str],
                             spacing_zyx: tuple[float, ...], space: LabelSpace | None = None,
                             nesting: Mapping[int, int] | None = None) -> PostprocessingDecision | None:
    """Decide per class from the folds' validation predictions (on a grid of ``spacing_zyx`` mm,
    the plans' target spacing); write and return the decision. ``space``: the plans' label space,
    so that partial labels are scored as annotated (:mod:`autoseg.partial_labels`). ``nesting``:
    the fingerprint's ``label_nesting``, for the inside-its-parent candidate of nested classes whose
    parent the model predicts.

    Returns None (and writes nothing) when no fold has validation predictions.
    """
    cases = _cv_pairs(model_dir, data_dir)
    if not cases:
        return None
    raw = [(p, r) for _, p, r, _ in cases]
    probabilities = [q for _, _, _, q in cases]
    with_probabilities = all(q is not None for q in probabilities)
    largest: list[int] = []
    min_sizes: dict[int, float] = {}
    min_confidence: dict[int, float] = {}
    inside: dict[int, tuple[int, ...]] = {}
    evidence: dict[str, ClassEvidence] = {}
    classes = [k for k in sorted(labels) if k != 0]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    guards = {k: _ObjectGuard([r for _, r in raw], k, space, voxel_ml) for k in classes}
    whole = [(keep_largest_foreground(p), r) for p, r in raw]
    per_class = {k: (_mean_dice(raw, k, space), _mean_dice(whole, k, space)) for k in classes}
    before_all, with_all = (_mean_over_classes([v[i] for v in per_class.values()]) for i in (0, 1))
    change = {labels[k]: after - before for k, (before, after) in per_class.items()}
    falls = [name for name, d in change.items() if d < 0]  # NaN (no case has the class) never falls
    lost_whole = sum(g.found(raw) - g.found(whole) for g in guards.values())
    foreground = not math.isnan(before_all) and with_all > before_all and not falls and lost_whole <= 0
    evidence["all foreground"] = ClassEvidence(label=0, dice_before=before_all,
                                               candidates={"keep_largest_foreground": with_all},
                                               choice="keep_largest_foreground" if foreground else "none",
                                               dice_after=with_all if foreground else before_all, enabled=foreground,
                                               class_change=change,
                                               objects_lost={"keep_largest_foreground": lost_whole}
                                               if lost_whole > 0 else None)
    pairs = whole if foreground else raw
    for label, name in sorted(labels.items()):
        if label == 0:
            continue
        # the cases as prediction leaves them with the confidence rules chosen so far (classes before this)
        before = _mean_dice(pairs, label, space)
        structural = dict(_candidates(label, spacing_zyx))
        parent = tuple(c for c in parent_classes(nesting or {}, label) if c in labels)
        if parent:  # after the rules chosen for the parent classes, as prediction applies it
            chosen = PostprocessingRules(tuple(k for k in largest if k in parent),
                                         {k: v for k, v in min_sizes.items() if k in parent})
            structural["inside_parent"] = (lambda p, chosen=chosen, parent=parent, label=label:
                                           drop_outside_parent(apply_postprocessing(p, chosen, spacing_zyx),
                                                               label, parent))
        lost: dict[str, int] = {}
        judge = _judge(guards[label], pairs, lost, space)
        tried = {cand: judge(cand, [(f(p), r) for p, r in pairs]) for cand, f in structural.items()}
        side: dict[str, float] = {}
        confident: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        if with_probabilities:
            kept = [q for q in probabilities if q is not None]  # every case's (with_probabilities)
            others = {k: _mean_dice(pairs, k, space) for k in classes if k != label}
            for t in MIN_CONFIDENCE_LADDER:
                cand = f"min_component_confidence={t}"
                confident[cand] = _with_confidence(raw, kept, {**min_confidence, label: t}, foreground)
                tried[cand] = judge(cand, confident[cand])
                side[cand] = _side_effect(confident[cand], others, space)  # dropped voxels become other classes
                for rule, f in structural.items():  # then a component rule on what the confidence rule left
                    tried[f"{cand}{COMBINED}{rule}"] = judge(f"{cand}{COMBINED}{rule}",
                                                             [(f(p), r) for p, r in confident[cand]])
                    side[f"{cand}{COMBINED}{rule}"] = side[cand]  # component rules make background only
        # a candidate that loses a found guarded object is never chosen, whatever its Dice
        score = {c: tried[c] + side.get(c, 0.0) for c in tried if lost[c] <= 0}
        # ties: the fewer rules, then the simpler one
        best = max(score, key=lambda c: (score[c], -c.count(COMBINED), c.endswith("keep_largest_component")),
                   default="none")
        enabled = best != "none" and not math.isnan(before) and score[best] > before
        evidence[name] = ClassEvidence(label=label, dice_before=before, candidates=tried,
                                       choice=best if enabled else "none",
                                       dice_after=tried[best] if enabled else before, enabled=enabled,
                                       other_classes_change=side or None,
                                       objects_lost={c: n for c, n in lost.items() if n > 0} or None)
        for part in best.split(COMBINED) if enabled else ():
            if part == "keep_largest_component":
                largest.append(label)
            elif part == "inside_parent":
                inside[label] = parent
            elif part.startswith("min_component_confidence"):
                min_confidence[label] = float(part.split("=")[1])
                pairs = confident[part]
            else:
                min_sizes[label] = float(part.split("=")[1])
    decision = PostprocessingDecision(
        keep_largest_component=tuple(largest), min_component_ml=min_sizes, evidence=evidence, cases=len(cases),
        grid_spacing_zyx=tuple(float(s) for s in spacing_zyx), keep_largest_foreground=foreground,
        min_component_confidence=min_confidence, inside_parent=inside,
        rule="all foreground as one where it raises the mean CV Dice over the classes and lowers none (as nnU-Net "
             "decides it); then class by class, the "
             "candidate with the highest mean CV Dice, where it beats none. Confidence candidates (where every CV "
             "case kept its probabilities) are tried as prediction applies them: with the confidence rules of the "
             "classes before, on the probabilities until none drops more, then the foreground rule; each is "
             "scored with the change it causes in the other classes' Dice, alone and followed by each component "
             "rule. A class nested in another that the model "
             "predicts (the fingerprint's label nesting) also tries dropping its components beside none of that "
             "class and the classes nested in it. No candidate is chosen that loses a reference component of at "
             f"least {GUARDED_OBJECT_ML} mL the class's prediction touched in a CV case (a lesion of 10 mm)")
    decision.save(ModelFolder(model_dir).postprocessing)
    log.info("post-processing from %d CV cases: %s", len(cases), describe(decision, labels))
    return decision


def decide_postprocessing(model_dir: Path, preprocessed: Path) -> PostprocessingDecision | None:
    """:func:`determine_postprocessing` for the model folder ``model_dir`` with its dataset's
    preprocessed cases and label nesting (its fingerprint) under the preprocessed root ``preprocessed``."""
    from autoseg.inference.ensembles import plans_of

    plans = plans_of(model_dir)
    dataset = PreprocessedDataset(preprocessed / plans.dataset_name)
    nesting = None
    try:
        nesting = Fingerprint.load(dataset.fingerprint).label_nesting if dataset.fingerprint.is_file() else None
    except AutosegError as exc:  # an older or damaged fingerprint costs only the inside-its-parent candidate
        log.warning("no label nesting for the post-processing decision (%s); fingerprint the dataset again "
                    "(`autoseg plan_and_preprocess -d %s --only fingerprint --force`) to try it", exc,
                    plans.dataset_name)
    return determine_postprocessing(model_dir, dataset.data, {int(k): v for k, v in plans.labels.items()},
                                    plans.target_spacing, plans.label_space, nesting)


def load_postprocessing(model: Any) -> PostprocessingDecision | None:
    """The decision stored with a model folder, an ONNX export or an archive (None if absent),
    checked: a damaged or hand-broken one is an error naming the file and the field."""
    return stored_artefact(model, PostprocessingDecision, ExportNames.POSTPROCESSING)
