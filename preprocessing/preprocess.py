"""Preprocess cases as the plans say: read, validate, crop to the body, normalise, resample, store.

:func:`preprocess_case` works on files and returns arrays (inference uses it on a new image);
:func:`restore_to_original` puts a prediction back on the input grid; :func:`preprocess_dataset`
runs every training case in worker processes and skips the ones already done with the same plans.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import multiprocessing as mp
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from autoseg.orientation import reorientation_for
from autoseg.artefacts import CaseProperties
from autoseg.datasets import Case, Dataset
from autoseg.errors import ConfigurationError, DatasetError, ImageReadError
from autoseg.io import Geometry, read_case_images, read_label_on, strip_image_suffix
from autoseg.plans import Plans
from autoseg.processes import die_with_parent
from autoseg.cropping import BBox, bbox_slices, body_mask, crop_bbox
from autoseg.preprocessing.normalisation import needs_mask, normalise
from autoseg.preprocessing.resampling import (probabilities_to_labels, resample_image, resample_labels,
                                              resample_probabilities, target_shape, torch_threads)
from autoseg.preprocessing.storage import LABELS_SUFFIX, is_up_to_date, plans_key, write_case
from autoseg.validation import validate_case

log = logging.getLogger(__name__)

MAX_CLASS_LOCATIONS = 10_000


@dataclass
class PreprocessedCase:
    """One case on the target grid: normalised channels, labels (if any) and its properties."""

    data: np.ndarray  # float32 (C, z, y, x)
    seg: np.ndarray | None  # uint8 (z, y, x)
    #: ``properties[key]`` reads a value as the JSON file holds it (see CaseProperties).
    properties: CaseProperties


def case_id_from_path(path: Path) -> str:
    """A case identifier from an image file name (``liver_3_0000.nii.gz`` -> ``liver_3``)."""
    return re.sub(r"_\d{4}$", "", strip_image_suffix(Path(path).name))


def case_seed(seed: int, case_id: str) -> np.random.Generator:
    """A generator seeded by the plans' seed and the case id, the same in every process and run."""
    return np.random.default_rng([seed, int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)])


def target_spacing_for(plans: Plans, spacing: Sequence[float]) -> tuple[float, float, float]:
    """The plans' 3D target spacing; a 2D plan (y, x) keeps the case's own z spacing."""
    ts = tuple(float(s) for s in plans.target_spacing)
    return (float(spacing[0]), *ts) if len(ts) == 2 else ts  # type: ignore[return-value]


def memory_bound_bytes() -> tuple[int, str]:
    """The most one resampled array may take: half of this machine's physical memory (16 GiB
    assumed where the OS does not say), and how the bound was derived, for messages."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    if total <= 0:
        return 8 * 2**30, "half of an assumed 16 GiB (this OS does not report its memory)"
    return total // 2, f"half of this machine's {total / 2**30:.0f} GiB of memory"


def check_resampled_size(shape: Sequence[int], channels: int, src: Sequence[float], dst: Sequence[float],
                         path: Path) -> None:
    """Refuse, before any work, a resampling whose float32 result would not fit in memory (a wrong
    header spacing such as z = 1e6 mm), and warn when an axis grows more than 4-fold."""
    out = target_shape(shape, src, dst)
    need = channels * 4 * int(np.prod(out, dtype=object))
    bound, why = memory_bound_bytes()
    if need > bound:
        raise ImageReadError(
            f"resampling from spacing {_mm(src)} to the plans' {_mm(dst)} mm (z, y, x) would make an array "
            f"of {tuple(out)} voxels, {need / 2**30:,.1f} GiB, more than the {bound / 2**30:.1f} GiB allowed "
            f"({why})", path,
            "check the voxel spacing in the file's header (a wrong slice thickness is the usual cause) and "
            "correct it, or crop/resample the image to a sensible grid first")
    for axis, n, m, sp, d in zip("zyx", shape, out, src, dst):
        if m > 4 * n:
            log.warning("%s: resampling makes axis %s %d -> %d voxels (spacing %.4g mm, plans %.4g mm); "
                        "check the spacing if that is not expected", path, axis, n, m, sp, d)


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def class_locations(seg: np.ndarray, labels: Sequence[int], rng: np.random.Generator,
                    max_per_class: int = MAX_CLASS_LOCATIONS) -> dict[str, list[list[int]]]:
    """Up to ``max_per_class`` voxel coordinates (z, y, x) of each label, sampled without replacement."""
    out: dict[str, list[list[int]]] = {}
    for lab in labels:
        where = np.flatnonzero(seg.reshape(-1) == lab)
        if where.size > max_per_class:
            where = np.sort(rng.choice(where, max_per_class, replace=False))
        out[str(lab)] = np.stack(np.unravel_index(where, seg.shape), axis=1).tolist()
    return out


def read_case(image_paths: Sequence[Path], label_path: Path | None, plans: Plans, case_id: str
              ) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Read a case's channels and label (reordered onto the image grid if needed) and validate them."""
    image, geom = read_case_images(image_paths)
    label, label_geom = read_label_on(label_path, geom) if label_path else (None, None)
    validate_case(Case(case_id, tuple(image_paths), label_path), image, geom, label, label_geom,
                  plans.stored_labels, plans.num_channels)
    return image, geom, label


def preprocess_case(image_paths: Sequence[str | Path], label_path: str | Path | None, plans: Plans,
                    case_id: str | None = None, num_threads: int | None = None,
                    region: BBox | None = None) -> PreprocessedCase:
    """Read, validate, crop, normalise and resample one case; the input files are only read.

    ``properties`` holds everything needed to put a prediction back on the input grid (see
    :func:`restore_to_original`) and, with labels, ``class_locations`` for oversampling.
    ``num_threads``: torch threads for resampling (None: the caller's setting). ``region``: crop to
    this box of the input grid (a cascade's region of interest) instead of the body.
    """
    paths = tuple(Path(p) for p in image_paths)
    label_file = Path(label_path) if label_path is not None else None
    case_id = case_id or case_id_from_path(paths[0])
    if plans.num_classes > 256:
        raise ConfigurationError(f"{plans.num_classes} classes do not fit the uint8 label storage",
                                 fix="use at most 255 foreground labels")
    image, geom, label = read_case(paths, label_file, plans, case_id)
    reo = reorientation_for(plans.orientation, geom)
    if not reo.is_identity:  # the network's axis order; crop, region and spacing follow it
        image = np.ascontiguousarray(reo.apply(image))
        label = np.ascontiguousarray(reo.apply(label)) if label is not None else None
        region = reo.box(region, geom.shape_zyx) if region is not None else None
    ct_channel = 0 if plans.is_ct else None
    full = tuple((0, int(n)) for n in image.shape[1:])
    bbox: BBox = crop_bbox(image, ct_channel) if plans.crop_to_body else full  # type: ignore[assignment]
    if region is not None:  # the region of interest, within the body
        inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(bbox, region))
        bbox = inter if all(a < b for a, b in inter) else region  # type: ignore[assignment]
    src = reo.spacing(geom.spacing_zyx)
    dst = target_spacing_for(plans, src)
    check_resampled_size([b - a for a, b in bbox], image.shape[0], src, dst, paths[0])
    lows = tuple(float(image[c].min()) for c in range(image.shape[0]))
    highs = tuple(float(image[c].max()) for c in range(image.shape[0]))
    cropped = image[(slice(None), *bbox_slices(bbox))]
    del image
    mask = body_mask(cropped, ct_channel) if needs_mask(plans.normalisation) else None
    cropped = normalise(cropped, plans.normalisation, mask, inplace=True)  # our own array: reuse it
    del mask
    with torch_threads(num_threads):
        data = resample_image(cropped, src, dst, plans.resampling)
        del cropped
        seg = None
        if label is not None:
            seg = resample_labels(label[bbox_slices(bbox)], src, dst, plans.label_space.num_values,
                                  keep_volume=plans.resampling.keeps_label_volume)
    voxels, locations = None, None
    if seg is not None:
        # oversampling centres on every value that is certainly foreground (a partial label such as a
        # merged Task03's "liver or vessel" too); the classes' own values are counted even if absent
        foreground = sorted({*(k for k in plans.labels if k != 0), *plans.label_space.foreground_values()})
        voxels = {k: int(np.count_nonzero(seg == k)) for k in foreground}
        locations = {int(k): tuple((p[0], p[1], p[2]) for p in v)
                     for k, v in class_locations(seg, foreground, case_seed(plans.seed, case_id)).items()}
    properties = CaseProperties(
        case_id=case_id, image_files=tuple(p.name for p in paths), label_file=label_file.name if label_file else None,
        original_geometry=geom, original_shape=tuple(int(n) for n in geom.shape_zyx),
        original_spacing=tuple(float(s) for s in geom.spacing_zyx),
        crop_bbox=tuple((int(a), int(b)) for a, b in bbox), shape_after_crop=tuple(int(b - a) for a, b in bbox),
        intensity_min=lows, intensity_max=highs, shape_after_resampling=tuple(int(n) for n in data.shape[1:]),
        target_spacing=tuple(float(s) for s in dst), num_channels=int(data.shape[0]), has_label=seg is not None,
        class_voxels=voxels, class_locations=locations, reorientation=None if reo.is_identity else reo)
    return PreprocessedCase(data, seg, properties)


def restore_to_original(array: np.ndarray | torch.Tensor, properties: CaseProperties,
                        num_threads: int | None = None) -> np.ndarray:
    """Bring a prediction on the preprocessed grid back to the input grid (z, y, x).

    ``array``: probabilities ``(K, z, y, x)`` (resampled linearly; outside the crop the background
    channel is 1 and the others 0) or a label map ``(z, y, x)`` (one-hot resampling, 0 outside).
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    crop_shape, region, original = _crop_placement(array.shape, properties, (3, 4))
    if array.ndim == 4:
        probs = resample_probabilities(array, crop_shape, num_threads=num_threads)
        full = np.zeros((array.shape[0], *original), dtype=np.float32)
        full[0] = 1.0
        full[(slice(None), *region)] = probs
        return _file_order(full, properties)
    labels = resample_labels(array, dst_shape=crop_shape, num_threads=num_threads)
    out = np.zeros(original, dtype=np.uint8)
    out[region] = labels
    return _file_order(out, properties)


def labels_on_original_grid(probs: np.ndarray | torch.Tensor, properties: CaseProperties,
                            keep_volume: bool = True, num_threads: int | None = None) -> np.ndarray:
    """Labels on the input grid (z, y, x) from probabilities ``(K, z, y, x)`` on the preprocessed
    grid: resampled to the crop and arg-maxed there (keeping each class's volume, see
    ``probabilities_to_labels``), background outside the crop."""
    crop_shape, region, original = _crop_placement(tuple(probs.shape), properties, (4,))
    labels = np.zeros(original, dtype=np.uint8)
    labels[region] = probabilities_to_labels(probs, crop_shape, keep_volume=keep_volume, num_threads=num_threads)
    return _file_order(labels, properties)


def _file_order(array: np.ndarray, properties: CaseProperties) -> np.ndarray:
    """An array on the (reoriented) input grid, in the input file's own axis order."""
    return properties.reorientation.undo(array) if properties.reorientation is not None else array


def _crop_placement(shape: Sequence[int], properties: CaseProperties,
                    ndims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[slice, ...], tuple[int, ...]]:
    """For a prediction of ``shape`` on the preprocessed grid: the crop's shape on the input grid,
    the crop's region there and the input grid's shape (a clear error when the shape is wrong)."""
    expected = properties.shape_after_resampling
    if len(shape) not in ndims or tuple(shape[-3:]) != expected:
        raise ValueError(f"the axes of prediction shape {tuple(shape)} do not match the preprocessed "
                         f"shape {expected}")
    region = bbox_slices(properties.crop_bbox)  # type: ignore[arg-type]
    original = properties.original_shape
    if properties.reorientation is not None:
        original = properties.reorientation.shape(original)
    return properties.shape_after_crop, region, tuple(original)


def _process_one(case: Case, plans: Plans, out_dir: Path, key: str) -> str:
    """Preprocess and store one case (runs in a worker process)."""
    pre = preprocess_case(case.images, case.label, plans, case_id=case.identifier)
    write_case(out_dir, case.identifier, pre.data, pre.seg, dataclasses.replace(pre.properties, plans_key=key),
               patch_size=tuple(plans.patch_size))
    return case.identifier


def _init_worker(threads: int) -> None:
    die_with_parent()  # a killed parent must not leave workers writing cases and then hanging
    torch.set_num_threads(threads)  # this worker process only


def _select(dataset: Dataset, cases: list[str] | None) -> list[Case]:
    if cases is None:
        return list(dataset.cases)
    by_id = {c.identifier: c for c in dataset.cases}
    missing = [c for c in cases if c not in by_id]
    if missing:
        raise DatasetError(f"case(s) not in the dataset: {', '.join(missing[:10])}", dataset.root,
                           "check the case identifiers (file names without suffix)")
    return [by_id[c] for c in cases]


def preprocess_dataset(dataset: Dataset, plans: Plans, out_dir: Path, num_workers: int = 2,
                       cases: list[str] | None = None) -> list[str]:
    """Preprocess the dataset's cases (or ``cases``) into ``out_dir/data``; skips up-to-date ones.

    Returns the identifiers of all selected cases, now up to date. Each worker process handles one
    case at a time, so peak memory is ``num_workers`` cases. A failing case raises its AutosegError
    after the cases in flight finish; its own files are never written. As with any multiprocessing
    code, a script calling this with ``num_workers > 1`` needs an ``if __name__ == "__main__":`` guard.
    """
    out_dir = Path(out_dir)
    selected = _select(dataset, cases)
    ids = {c.identifier for c in dataset.cases}
    clash = sorted(i for i in ids if i.endswith(LABELS_SUFFIX) and i[:-len(LABELS_SUFFIX)] in ids)
    if clash:
        raise DatasetError(f"case(s) {', '.join(clash[:5])} would share a preprocessed file name with the label "
                           f"map of case(s) {', '.join(c[:-len(LABELS_SUFFIX)] for c in clash[:5])}", dataset.root,
                           f"rename the case(s) so that no identifier is another's plus '{LABELS_SUFFIX}'")
    key = plans_key(plans)
    todo = [c for c in selected if not is_up_to_date(out_dir, c.identifier, key)]
    log.info("preprocess: %d of %d cases up to date, %d to do (plans key %s)",
             len(selected) - len(todo), len(selected), len(todo), key)
    workers = max(1, min(num_workers, len(todo)))
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not todo)
    try:
        if workers == 1:
            for case in todo:
                _process_one(case, plans, out_dir, key)
                bar.update()
        else:
            _run_pool(todo, plans, out_dir, key, workers, bar)
    finally:
        bar.close()
    return [c.identifier for c in selected]


def _context() -> mp.context.BaseContext:
    """A start method that is safe after this process has run torch's thread pools.

    Plain fork is not (a forked child can hang in OpenMP). A fork server starts from a fresh
    interpreter, imports this module once and forks the workers from that clean state, so they start
    in a fraction of spawn's time; where there is none (Windows), spawn.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _run_pool(todo: list[Case], plans: Plans, out_dir: Path, key: str, workers: int, bar: tqdm) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=_context(),
                                  initializer=_init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(_process_one, c, plans, out_dir, key): c for c in todo}
        for future in cf.as_completed(futures):
            future.result()  # re-raises the case's error
            bar.update()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # cases in flight finish and write whole files
        raise
    pool.shutdown(wait=True)
