"""End-of-fold validation: sliding-window prediction of the fold's held-out cases, per-class Dice.

Patch-based validation during training is a cheap trend; this is the score that counts. Each
validation case is predicted whole on its preprocessed grid (Gaussian-weighted sliding window, as
``autoseg predict`` does), compared with its preprocessed label map, and written back on the
case's original grid as ``validation/<case>.nii.gz`` so that ``autoseg evaluate`` can score it
against the raw labels (and kept on the preprocessed grid as ``<case>.pred.npz``, from which
``autoseg find_best`` decides the post-processing and scores ensembles of networks, with the
softmax quantised to uint8). ``validation/summary.json`` holds per-case and mean per-class Dice; the
mean never includes the background, and a class absent from both reference and prediction of a
case is left out of that case's mean (reported as null).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from autoseg.artefacts import CaseProperties, FoldSummary
from autoseg.io import atomic_path, write_image
from autoseg.layout import ValidationFolder
from autoseg.metrics import case_dice
from autoseg.plans import Plans
from autoseg.networks import SegmentationNetwork
from autoseg.preprocessing import labels_on_original_grid
from autoseg.sliding_window import WindowOptions, inference_network, runtime_of, slide
from autoseg.training.data import CaseStore

log = logging.getLogger(__name__)


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """Softmax probabilities as uint8 (1/255 steps): a quarter of float32 and compresses well."""
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)


def validate_fold(network: torch.nn.Module, plans: Plans, store: CaseStore, out_dir: Path,
                  window: WindowOptions | None = None, write_predictions: bool = True) -> FoldSummary:
    """Predict every case of ``store`` into the validation folder ``out_dir`` and write its summary;
    returns the summary. ``window``: as ``autoseg predict`` slides (device, precision, and the
    training's CoreShare.adapt between batches, and the edge context a model trained with it predicts
    with), without mirroring."""
    window = window or WindowOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = ValidationFolder(out_dir)
    names = {int(k): v for k, v in plans.labels.items() if int(k) != 0}
    switch = cast(SegmentationNetwork, network)
    was_ds = switch.deep_supervision
    switch.deep_supervision = False
    network.eval()
    network = inference_network(network, window)  # one copy for every case; the trained network stays as it is
    per_case: dict[str, dict[str, float | None]] = {}
    t0 = time.perf_counter()
    try:
        for case in tqdm(store.cases, desc="fold validation", unit="case", leave=False, disable=None):
            probs = slide(network, store.image(case)[...], plans, window)
            pred = probs.argmax(0).astype(np.uint8)
            ref = store.labels(case)[...]
            per_case[case] = case_dice(pred, ref, names, plans.label_space)
            if write_predictions:
                _write_on_original_grid(probs, store.properties(case), folder.label_map(case),
                                        plans.resampling.keeps_label_volume)
                with atomic_path(folder.prediction(case)) as tmp:  # for post-processing decisions
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, labels=pred, probabilities=quantise(probs))
    finally:
        switch.deep_supervision = was_ds
    summary = write_summary(out_dir, per_case, names, seconds=round(time.perf_counter() - t0, 2),
                            runtime=runtime_of(window))
    log.info("validation of %d cases: %s", len(per_case),
             {k: v and round(v, 3) for k, v in summary.mean_dice.items()})
    return summary


def write_summary(out_dir: Path, per_case: dict[str, dict[str, float | None]], names: dict[int, str],
                  **extra: Any) -> FoldSummary:
    """The validation folder ``out_dir``'s summary (:meth:`FoldSummary.from_cases`), written."""
    summary = FoldSummary.from_cases(per_case, names, **extra)
    summary.save(ValidationFolder(out_dir).summary)
    return summary


def _write_on_original_grid(probs: np.ndarray, properties: CaseProperties, path: Path, keep_volume: bool) -> None:
    """The validation prediction on the case's input grid, made as ``autoseg predict`` makes it."""
    labels = labels_on_original_grid(probs, properties, keep_volume)
    write_image(path, labels, properties.original_geometry)
