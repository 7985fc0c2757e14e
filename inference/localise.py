"""Localised prediction: one quick look over the whole case, then the full ensemble only where it
found something.

The quick look is the dataset's *localiser* when one is trained (``plan_and_preprocess
--localiser``, ``train --localiser``): the model's network and patch at twice the spacing along
every axis (:func:`~autoseg.planners.planner.localiser_plans`), an eighth of the voxels, so its pass
costs about an eighth of the scout's. It preprocesses the case with its own plans (same crop, so
its grid covers the same box as the model's) and its probabilities are resized onto the model's
grid (:func:`localiser_scout`). Without one, the scout below looks.

The three structures autoseg segments (liver, its vessels, its tumours) fill a small part of an
abdominal CT. A sliding window at overlap 0.5 computes every voxel about eight times (twice per
axis), for every fold. Here the model's first network first slides over the whole case with tiles
that do not overlap (about an eighth of one fold's work: the *scout* pass). The voxels to which the
scout gives at least :data:`FOREGROUND_PROBABILITY` of foreground (in components of at least
:data:`MIN_COMPONENT_ML`), grown by :data:`GROW_SHARE` of a patch, are *wanted*. Every fold then
slides over the usual tile grid (the asked overlap) but predicts only the tiles whose cell, the
voxels nearer that tile's centre than any other's, holds a wanted voxel
(:func:`~autoseg.sliding_window.predict_sliding_window` with ``where``). Each kept tile keeps the
weight it has in the whole grid, and the weight of the tiles not kept goes to the scout: a voxel
all of whose tiles were kept is predicted exactly as over the whole case; one at the kept region's
border, which the kept tiles see only near their own borders, is blended with the scout in
proportion to the missing tiles' weight; one no kept tile covers keeps the scout's probabilities.

Measured in docs/benchmarks.md ("Localised prediction"): the time it saves and the paired Dice of
held-out phantoms against predicting the whole case. ``autoseg predict --localise`` switches it on
(not the default: its Dice has not yet been shown unchanged on a well-trained ensemble). Each
model gives its scout (``Model.scout``) and predicts where asked (``Model.probabilities(...,
where=mask)``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from autoseg.cropping import BBox
from autoseg.errors import ConfigurationError
from autoseg.layout import ModelFolder, ResultsDataset
from autoseg.plans import Plans
from autoseg.preprocessing import PreprocessedCase, preprocess_case, resample_probabilities
from autoseg.inference.model import Model, TrainedModel
from autoseg.sliding_window import WindowOptions

log = logging.getLogger(__name__)

#: A voxel the scout gives at least this much foreground (one minus its background probability)
#: is predicted by every fold. 0.2 was measured too: one undertrained network's diffuse foreground
#: then reached 71 % of the tiles (docs/benchmarks.md).
FOREGROUND_PROBABILITY = 0.5
#: Connected specks of the scout's foreground smaller than this (mL; a sphere of 3.9 mm) are not
#: looked at again: one network's scattered false positives, most of a few voxels, would otherwise
#: pull in a tile each. They keep the scout's probabilities.
MIN_COMPONENT_ML = 0.03
#: The voxels the scout found are grown by this share of the patch along each axis before the tiles
#: are chosen, so that a lesion's rim, which the scout's tile borders often see as background, is
#: predicted by the folds too. Measured with the tiles chosen by cell (docs/benchmarks.md, "Tiles
#: chosen by cell"): growing by 0, 1/16 and 1/8 of the patch on 8 clinical-size phantoms gave tumour
#: Dice against the whole case of at worst -0.013, -0.019 and -0.0002.
GROW_SHARE = 1 / 8


def scout_options(options: WindowOptions) -> WindowOptions:
    """The scout's window: tiles side by side (no overlap), no mirroring."""
    return dataclasses.replace(options, overlap=0.0, mirror=False)


def wanted_voxels(scout: np.ndarray, spacing: tuple[float, ...], threshold: float = FOREGROUND_PROBABILITY,
                  min_ml: float = MIN_COMPONENT_ML) -> np.ndarray:
    """The voxels of scout probabilities ``(K, z, y, x)`` with at least ``threshold`` foreground, in
    26-connected components of at least ``min_ml`` at voxel ``spacing`` (mm)."""
    found = scout[0] <= 1 - threshold
    components, count = cc3d.connected_components(found, connectivity=26, return_N=True)
    if count == 0:
        return np.asarray(found)
    sizes = np.bincount(components.ravel())
    big = sizes * float(np.prod(spacing)) / 1000 >= min_ml
    big[0] = False
    return np.asarray(big[components])


def grown(wanted: np.ndarray, patch: tuple[int, ...], share: float = GROW_SHARE) -> np.ndarray:
    """``wanted`` grown by ``share`` of ``patch`` (at least one voxel) along each axis (a box, separably)."""
    size = [2 * max(1, int(p * share)) + 1 for p in patch]
    return np.asarray(ndimage.maximum_filter(wanted.view(np.uint8), size=size) > 0)


def find_localiser(model: Model) -> TrainedModel | None:
    """The localiser trained beside a model's folder (``<results>/<dataset>/localiser`` for a network
    or an ensemble in ``<results>/<dataset>/``), or None, logged, when there is none to use (an
    export, none trained, or one that does not fit the model: the scout looks instead)."""
    home = getattr(model, "folder", None)
    if not isinstance(home, Path) or not home.is_dir():
        log.info("--localise: %s is no model folder beside a localiser; localising with the scout", home)
        return None
    folder = ResultsDataset(home.parent).localiser
    if folder.root == home or not folder.plans.is_file():
        log.info("--localise: no localiser in %s (train --localiser); localising with the scout", folder.root)
        return None
    if not folder.finished_folds():
        log.warning("the localiser in %s has no finished fold; localising with the scout", folder.root)
        return None
    try:
        return open_localiser(folder.root, model)
    except ConfigurationError as exc:
        log.warning("the localiser in %s does not fit the model (%s); localising with the scout", folder.root,
                    str(exc).splitlines()[0])
        return None


#: Plans fields in which a localiser must agree with its model: the same classes from the same
#: channels, and the same crop and axis order, so that its grid is a resize of the model's.
MATCHING_FIELDS = ("labels", "channel_names", "crop_to_body", "orientation")


def open_localiser(folder: Path, model: Model) -> TrainedModel:
    """A localiser's folder opened for ``model`` with its finished folds (the first is used): its plans
    must be a localiser's and agree with the model's in :data:`MATCHING_FIELDS`."""
    layout = ModelFolder(folder)
    if layout.plans.is_file():
        plans = Plans.load(layout.plans)
        if not plans.localiser:
            raise ConfigurationError("this is a model, not a localiser", folder,
                                     "train one with `autoseg train -d <dataset> --localiser -f 0` and pass "
                                     "results/<dataset>/localiser")
        for name in MATCHING_FIELDS:
            mine, theirs = getattr(plans, name), getattr(model.plans, name)
            if mine != theirs:
                raise ConfigurationError(f"the localiser's {name} is {mine!r}, the model's {theirs!r}", folder,
                                         "use the localiser trained on the model's dataset (train --localiser)")
    return TrainedModel.open(folder, layout.finished_folds() or None)  # no plans or no fold: its own clear error


def localiser_scout(localiser: Model, image_path: Path, name: str, pre: PreprocessedCase,
                    options: WindowOptions, region: BBox | None = None,
                    timings: dict[str, float] | None = None) -> np.ndarray | None:
    """The localiser's softmax for the case of ``pre`` (preprocessed for the model), on the model's
    grid: the localiser preprocesses the input with its own plans and its first network slides
    without overlap, and the probabilities are resized linearly onto ``pre``'s grid, which covers the
    same crop in the same axis order. None, with a warning, when the crop or the order differs: the
    scout is used instead."""
    mine = preprocess_case([image_path], None, localiser.plans, case_id=name, region=region)
    if (mine.properties.crop_bbox != pre.properties.crop_bbox
            or mine.properties.reorientation != pre.properties.reorientation):
        log.warning("%s: the localiser cropped %s (axes %s), the model %s (axes %s); localising with the scout",
                    image_path, mine.properties.crop_bbox, mine.properties.reorientation,
                    pre.properties.crop_bbox, pre.properties.reorientation)
        return None
    probs = localiser.scout(mine.data, scout_options(options), timings)
    return resample_probabilities(probs, pre.data.shape[1:])


def localised_probabilities(model: Model, data: np.ndarray, options: WindowOptions,
                            timings: dict[str, float] | None = None,
                            stats: dict[str, object] | None = None,
                            scout: np.ndarray | None = None) -> np.ndarray:
    """The model's fold-averaged softmax ``(K, *spatial)`` for preprocessed ``data``, computed by every
    fold only in the tiles whose cell holds a voxel its scout found foreground in, or within
    :data:`GROW_SHARE` of a patch of one; what the tiles not kept would have carried comes from the
    scout (module docstring). ``scout``: a quick look already taken (:func:`localiser_scout`);
    None: the model's scout. ``stats`` gets the kept and total tiles of the folds' grid and the
    share of the case's voxels that the folds carry more than half of."""
    if scout is None:
        scout = model.scout(data, scout_options(options), timings, keep_network=True)  # the folds' pass follows
    elif scout.shape != (model.plans.num_classes, *data.shape[1:]):
        raise ValueError(f"a scout of shape {scout.shape} for data of shape {data.shape}")
    wanted = wanted_voxels(scout, model.plans.target_spacing)
    if wanted.any():
        wanted = grown(wanted, tuple(model.plans.patch_size))
    else:
        log.info("the scout found no foreground: the case is background (no fold ran over it)")
        if stats is not None:
            stats.update(tiles=None, share=0.0)
        return scout
    counts = timings if timings is not None else {}  # the folds' forward time, and the tiles they kept
    probs = model.probabilities(data, options, counts, where=wanted)
    # what the tiles not kept (of every member) would have carried: the scout's; a class at a time
    uncovered = np.subtract(1, probs.sum(0), dtype=np.float32)
    np.clip(uncovered, 0, 1, out=uncovered)
    for k in range(len(probs)):
        probs[k] += uncovered * scout[k]
    if stats is not None:
        stats.update(tiles=(int(counts.get("tiles", 0)), int(counts.get("tiles_total", 0))),
                     share=round(float(np.mean(uncovered < 0.5)), 4))
    return probs
