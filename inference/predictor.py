"""``autoseg predict``: preprocess each image as in training, predict with the folds' ensemble,
put the label map back on the input's exact grid, and write a report per case.

Memory is bounded: one fold's network at a time, its probabilities accumulated into one float32
array on the preprocessed grid, uint8 labels on the input grid at the end.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.artefacts import Calibration, CaseProperties, CaseReport, RoiReport
from autoseg.cpu_share import CoreShare
from autoseg.errors import AutosegError, ImageReadError
from autoseg.cropping import BBox, mask_bbox
from autoseg.io import (is_dicom_folder, read_case_images, strip_image_suffix,
                        write_json)
from autoseg.layout import CaseOutputs, RunOutputs
from autoseg.plans import Plans
from autoseg.precision import resolve_precision
from autoseg.preprocessing import labels_on_original_grid, preprocess_case
from autoseg.inference.localise import localised_probabilities, localiser_scout
from autoseg.inference.model import Model, OnnxModel
from autoseg.inference.postprocessing import (Decision, apply_postprocessing, keep_largest_component, rules_of,
                                              suppress_unsure)
from autoseg.inference.dicom_seg import check_dicom_seg_input
from autoseg.inference.outputs import OUTPUT_FORMATS, CasePrediction, write_prediction
from autoseg.inference.provenance import plans_sha256, provenance, weights_sha256
from autoseg.inference.report import measure_case
from autoseg.sliding_window import WindowOptions, edge_slices_of, runtime_of as window_runtime

log = logging.getLogger(__name__)

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CHANNEL_SUFFIX = "_0000"


@dataclass(frozen=True)
class PredictOptions:
    device: str = "cpu"
    tta: bool = False
    overlap: float = 0.5
    #: Tiles this many times the trained patch along each axis (``WindowOptions.tile_scale``).
    tile_scale: float = 1.0
    #: Mirrored context at the ends of the slice axis, a share of the patch (``WindowOptions.edge_context``).
    edge_context: float = 0.0
    #: On the CPU, slide channels-last copies of the networks (``WindowOptions.channels_last``).
    channels_last: bool = True
    #: What runs the networks on the CPU (``WindowOptions.runtime``): torch or openvino.
    runtime: str = "torch"
    #: Every fold predicts only the tiles holding the foreground a first, non-overlapping pass of one
    #: network found (:mod:`autoseg.inference.localise`); False: every fold over the whole case.
    localise: bool = False
    #: With ``localise``: the dataset's localiser, which finds the region instead of the scout
    #: (:func:`~autoseg.inference.localise.localiser_scout`); None: the scout.
    localiser: Model | None = None
    #: Autocast of the forward passes (autoseg.precision): auto, fp32, bf16 or fp16.
    precision: str = "auto"
    #: Extra outputs besides the label map and report (names in ``inference.outputs.OUTPUT_FORMATS``).
    outputs: tuple[str, ...] = ()
    #: A model (e.g. a liver model) whose foreground, grown by ``roi_margin_mm``, is the only region
    #: the main model predicts in (the linked models of the seed papers).
    roi_model: Model | None = None
    roi_margin_mm: float = 10.0
    #: The ROI model's own ``postprocessing.json`` decision, applied before its box is taken.
    roi_postprocessing: Decision = None
    #: Box only the largest connected component of the ROI model's foreground (one organ: stray
    #: false positives elsewhere in the body do not widen the box); False: every component.
    roi_largest_component: bool = True
    #: A linked run writes one map of the organ and the main model's classes (:func:`combine_labels`);
    #: False: the main model's classes only, the ROI model used only to crop.
    combine_roi: bool = True
    #: The model's ``postprocessing.json`` decision (None: none).
    postprocessing: Decision = None
    #: The model's ``calibration.json`` temperature, for ``--uncertainty`` (None: T = 1, uncalibrated).
    calibration: Calibration | None = None
    #: An ``autoseg.cpu_share.CoreShare``: CPU threads follow the cores other processes leave free,
    #: re-checked between sliding-window batches (None: threads as they are).
    cores: CoreShare | None = None
    #: The command line that asked for the prediction, for the report's provenance (None: not recorded).
    command_line: tuple[str, ...] | None = None


def find_inputs(path: Path) -> list[tuple[str, Path]]:
    """(case name, image path) pairs: a file, a DICOM series folder, or a folder of images/series.

    Names are unique by construction (:func:`case_names`); two inputs that would still share an
    output are refused before any work.
    """
    if not path.exists():
        raise ImageReadError("input does not exist", path, "pass an image file or a folder of images")
    if path.is_file():
        entries = [path]
    elif is_dicom_folder(path):
        return [(path.name, path)]
    else:
        entries = [p for p in sorted(path.iterdir())
                   if not p.name.startswith(".") and ((p.is_file() and p.name.lower().endswith(IMAGE_ENDINGS))
                                                      or (p.is_dir() and is_dicom_folder(p)))]
    if not entries:
        raise ImageReadError("folder holds no images (NIfTI, NRRD, MHA or DICOM series folders)", path,
                             "point -i at the images to segment")
    found = list(zip(case_names(entries), entries))
    _check_unique(found, path)
    return found


def case_names(paths: list[Path]) -> list[str]:
    """Output names of the inputs: each name without its image suffix. The nnU-Net channel suffix
    ``_0000`` is dropped only when every input ends in it (the one channel of a one-channel model,
    as nnU-Net names its inputs); any other ending, such as the ``_0001`` of patient_0001, is kept."""
    stems = [strip_image_suffix(p.name) if p.is_file() else p.name for p in paths]
    if all(len(s) > 5 and s.endswith(CHANNEL_SUFFIX) for s in stems):
        stems = [s[:-len(CHANNEL_SUFFIX)] for s in stems]
    return stems


def _check_unique(found: list[tuple[str, Path]], where: Path) -> None:
    """Refuse two inputs that map to one output (compared case-insensitively, as some disks do)."""
    seen: dict[str, Path] = {}
    for name, path in found:
        other = seen.setdefault(name.casefold(), path)
        if other != path:
            raise AutosegError(f"inputs {other.name} and {path.name} would both be written as "
                               f"{CaseOutputs(where, name).labels.name}; nothing was predicted", where,
                               "rename one of them, or predict them into separate output folders")


def check_output_location(inputs: Path, output: Path, cases: list[tuple[str, Path]] | None = None) -> None:
    """Refuse outputs that could touch an input: an output folder inside (or equal to) an input
    folder, ``-o`` naming a file, or a label map that would replace an input image."""
    for folder in (output, *output.parents):
        if folder.exists() and not folder.is_dir():
            what = "an existing file" if folder == output else f"a folder inside the file {folder}"
            raise AutosegError(f"-o names {what}; it must be a folder", output,
                               "pass a folder for the outputs (it is created if missing)")
    inp, out = inputs.resolve(), output.resolve()
    if inp.is_dir() and (out == inp or inp in out.parents):
        raise AutosegError("output folder is inside the input folder", output,
                           "write the segmentations to a folder outside the input folder")
    for name, path in cases or []:
        target = CaseOutputs(out, name).labels
        if path.resolve() == target or (target.exists() and path.exists() and target.samefile(path)):
            raise AutosegError(f"the label map {target.name} would overwrite the input image {path}", output,
                               "write the segmentations to another folder than the input's")


def existing_outputs(output: Path, name: str) -> tuple[Path, ...]:
    """Which of a case's two outputs (label map, report) already exist."""
    return tuple(p for p in CaseOutputs(output, name).required() if p.exists())


def check_looks_like_ct(lo: float, hi: float, path: Path, voxels: np.ndarray | None = None) -> None:
    """Refuse images that cannot be CT in Hounsfield units: a segmentation or label map given by
    mistake (a DICOM-SEG object, a predicted ``.nii.gz``: a few distinct whole numbers) or an 8-bit
    picture (PNG or screenshot export). ``voxels``: the image, when the caller has it; otherwise it
    is read again, only for an image already being refused, to tell the two apart."""
    if not (lo >= 0 and hi <= 255):
        if lo > -500:
            log.warning("%s: no voxel below -500 HU (no air); is this CT in Hounsfield units?", path)
        return
    if voxels is None:
        try:
            voxels = read_case_images([path])[0]
        except AutosegError:
            voxels = np.array([lo, hi])
    values = np.unique(voxels)
    if len(values) <= 32 and np.array_equal(values, np.round(values)):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ImageReadError(f"looks like a segmentation or label map, not CT: its voxels take only "
                             f"{len(values)} distinct whole-number value(s) ({shown})", path,
                             "pass the CT image itself (the scan that was segmented), not a label map, "
                             "a prediction or a DICOM-SEG object")
    raise ImageReadError(f"intensities {lo:.0f}..{hi:.0f} look like an 8-bit picture, not CT in "
                         "Hounsfield units", path, "use the original CT (NIfTI/DICOM), not a screenshot "
                         "or PNG export")


def window_options(options: PredictOptions) -> WindowOptions:
    """How the models slide over a case, from the prediction options."""
    return WindowOptions(overlap=options.overlap, mirror=options.tta, device=options.device,
                         precision=options.precision, tile_scale=options.tile_scale,
                         edge_context=options.edge_context,
                         channels_last=options.channels_last, runtime=options.runtime,
                         between_batches=options.cores.adapt if options.cores else None)


def runtime_of(model: Model, options: PredictOptions) -> str:
    """What runs ``model``'s networks with ``options`` (the report's ``runtime``)."""
    if isinstance(model, OnnxModel):
        return "onnxruntime"
    return window_runtime(window_options(options))


def predict_case(model: Model, name: str, image_path: Path, options: PredictOptions) -> CasePrediction:
    """Predict one case: preprocess as in training, the model's fold-averaged softmax, labels back on
    the input's exact grid, post-processing, the report. Writes nothing."""
    t0 = time.perf_counter()
    plans = model.plans
    region, roi_report, organ = None, None, None
    if options.roi_model is not None:
        region, roi_report, organ = region_of_interest(options.roi_model, name, image_path, options)
    pre = preprocess_case([image_path], None, plans, case_id=name, region=region)  # validates channels
    if plans.is_ct:
        check_looks_like_ct(pre.properties.intensity_min[0], pre.properties.intensity_max[0], image_path)
    geometry = pre.properties.original_geometry
    t_pre = time.perf_counter()
    timings: dict[str, float] = {}
    window, localised = window_options(options), {}  # type: WindowOptions, dict[str, Any]
    if region is not None and window.edge_context:  # the ROI box's ends lie inside the field of view
        window = dataclasses.replace(window, edge_context=0.0)
    t_loc = t_pre
    if options.localise:
        scout = None
        if options.localiser is not None:
            scout = localiser_scout(options.localiser, image_path, name, pre, window, region)
        localised["by"] = str(options.localiser.folder) if scout is not None and options.localiser else "scout"
        t_loc = time.perf_counter()  # the localiser's reading, preprocessing, pass and resize
        probs = localised_probabilities(model, pre.data, window, timings, localised, scout=scout)
    else:
        probs = model.probabilities(pre.data, window, timings)
    t_net = time.perf_counter()
    labels = apply_postprocessing(_labels_on_input_grid(suppress_unsure(probs, options.postprocessing),
                                                        pre.properties, plans),
                                  options.postprocessing, geometry.spacing_zyx)
    table = dict(plans.labels)
    if organ is not None and options.roi_model is not None and options.combine_roi:
        table = linked_label_table(options.roi_model.plans.labels, plans.labels)
        labels = combine_labels(organ, labels)
    by_localiser = options.localise and options.localiser is not None
    stages = {"preprocess": t_pre - t0, **({"localiser": t_loc - t_pre} if by_localiser else {}),
              "sliding_window": t_net - t_loc,  # networks' share: sliding_window
              "network_forward": timings.get("forward", 0.0), "restore": time.perf_counter() - t_net}
    measured = measure_case(labels, geometry, {k: v for k, v in table.items() if k != 0},
                            time.perf_counter() - t0, model.folds)
    report = dataclasses.replace(
        measured, input=str(image_path),
        precision=model.fixed_precision or resolve_precision(options.precision, options.device),
        runtime=runtime_of(model, options),
        edge_context=window.edge_context if edge_slices_of(plans, window.edge_context) else None,
        stage_seconds={k: round(v, 2) for k, v in stages.items()},
        region_shape=pre.properties.shape_after_resampling,  # the grid the window slides over
        localised_tiles=localised.get("tiles"), localised_share=localised.get("share"),
        localised_by=localised.get("by"),
        postprocessing=rules_of(options.postprocessing), roi=roi_report, label_table=table,
        provenance=provenance(model, image_path, options.command_line),
        warnings=context_warnings(pre.properties, plans) or None)
    for warning in report.warnings or ():
        log.warning("%s: %s", image_path, warning)
    formats = [OUTPUT_FORMATS[o] for o in options.outputs]  # an unknown name fails before any work is kept
    result = CasePrediction(name, image_path, labels, geometry, report, plans, label_table=table,
                            outputs=tuple(options.outputs))
    if any(f.needs_probabilities for f in formats):
        result.probabilities, result.properties = probs, pre.properties
        result.extras["uncertainty"] = options.calibration
    if any(f.needs_image for f in formats):
        result.image = read_case_images([image_path])[0][0]
    return result


#: An image shorter than this share of the network's patch along an axis gives it too little context.
MIN_CONTEXT_SHARE = 0.25


def context_warnings(properties: CaseProperties, plans: Plans) -> tuple[str, ...]:
    """Warnings for an image that spans less than :data:`MIN_CONTEXT_SHARE` of the network's patch
    along an axis (a few slices, a thin slab): the network then sees far less of the body than it
    was trained on, and its labels, empty or not, deserve no trust."""
    out = []
    for axis, n, p, s in zip("zyx", properties.shape_after_resampling, plans.patch_size, plans.target_spacing):
        if n < MIN_CONTEXT_SHARE * p:
            out.append(f"the image spans {n * s:.0f} mm along {axis} where the network's patch sees {p * s:.0f} mm: "
                       "too little context for it; treat these labels as unreliable")
    return tuple(out)


def region_of_interest(roi_model: Model, name: str, image_path: Path,
                       options: PredictOptions) -> tuple[BBox | None, RoiReport, np.ndarray]:
    """The ROI model's box on the input grid (:func:`roi_box`), what it found, and the organ: its
    foreground after its own post-processing (and only the largest component, as boxed)."""
    t0 = time.perf_counter()
    pre = preprocess_case([image_path], None, roi_model.plans, case_id=name)
    roi_probs = suppress_unsure(roi_model.probabilities(pre.data, window_options(options)), options.roi_postprocessing)
    labels = _labels_on_input_grid(roi_probs, pre.properties, roi_model.plans)
    spacing = pre.properties.original_geometry.spacing_zyx
    box, info = roi_box(labels, spacing, options)
    if box is None:
        log.warning("%s: the ROI model found no foreground; predicting the whole image", image_path)
    report = RoiReport(model=str(roi_model.folder), margin_mm=info["margin_mm"],
                       foreground_ml=info["foreground_ml"], dropped_ml=info["dropped_ml"],
                       bbox=box, seconds=round(time.perf_counter() - t0, 2),
                       plans_sha256=plans_sha256(roi_model.plans), weights_sha256=weights_sha256(roi_model))
    return box, report, roi_foreground(labels, spacing, options)


def roi_box(labels: np.ndarray, spacing_zyx: tuple[float, ...],
            options: PredictOptions) -> tuple[BBox | None, dict[str, Any]]:
    """The bounding box of an ROI model's foreground ``labels``, grown by the margin in mm.

    The labels get the ROI model's own post-processing decision; then (by default) only the
    largest 26-connected component of the foreground is boxed, so that a false positive far from
    the organ does not stretch the box over the whole body (``dropped_ml``: the volume either step
    removed). No foreground gives ``None`` (the main model then predicts the whole image), never an
    empty box that would hide a failure of the ROI model.
    """
    found = np.count_nonzero(labels)
    foreground = roi_foreground(labels, spacing_zyx, options)
    kept = np.count_nonzero(foreground)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    info: dict[str, Any] = {"margin_mm": options.roi_margin_mm, "foreground_ml": kept * voxel_ml,
                            "dropped_ml": (found - kept) * voxel_ml}
    box = mask_bbox(foreground)
    if box is None:
        return None, {**info, "bbox": None}
    margin = [int(np.ceil(options.roi_margin_mm / s)) for s in spacing_zyx]
    grown = tuple((max(0, a - m), min(n, b + m)) for (a, b), m, n in zip(box, margin, labels.shape))
    return grown, {**info, "bbox": [list(b) for b in grown]}  # type: ignore[return-value]


def roi_foreground(labels: np.ndarray, spacing_zyx: tuple[float, ...], options: PredictOptions) -> np.ndarray:
    """The ROI model's organ: every foreground class (a liver model's tumours are part of the liver),
    after the model's own post-processing, and only its largest 26-connected component unless
    ``roi_largest_component`` is off."""
    foreground = apply_postprocessing(labels, options.roi_postprocessing, spacing_zyx) > 0
    if options.roi_largest_component:
        foreground = keep_largest_component(foreground.astype(np.uint8), 1) > 0
    return foreground


def linked_label_table(roi_labels: dict[int, str], main_labels: dict[int, str]) -> dict[int, str]:
    """The classes of a linked run's one map: 1 the ROI model's organ (its label 1, e.g. liver),
    then the main model's foreground classes in their order (e.g. 2 vessel, 3 tumour)."""
    organ = roi_labels.get(1, "organ")
    return {0: "background", 1: organ, **{k + 1: v for k, v in sorted(main_labels.items()) if k != 0}}


def combine_labels(organ: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One map of the organ and the main model's classes (:func:`linked_label_table`'s ids).

    Overlaps are resolved by the later class: the main model's classes over the organ, and among
    them its arg-max already chose one (a tumour voxel is never also a vessel voxel), so for the
    liver -> vessel/tumour models the rule is tumour over vessel over liver. The main model's
    classes are kept outside the organ too (a hepatic vessel leaving the liver is still a vessel)."""
    if labels.max(initial=0) > 253:
        raise ValueError("a linked map holds at most 253 classes of the main model")
    out = np.where(organ, np.uint8(1), np.uint8(0))
    found = labels > 0
    out[found] = labels[found].astype(np.uint8) + 1
    return out


def _labels_on_input_grid(probs: np.ndarray, properties: CaseProperties, plans: Plans) -> np.ndarray:
    """The model's labels on the input grid, class volumes kept as its plans say."""
    return labels_on_original_grid(probs, properties, keep_volume=plans.resampling.keeps_label_volume)


@dataclass
class BatchResult:
    """What a ``predict`` run did: the reports of the cases predicted, and the cases skipped
    (outputs already there) or failed (with their error)."""

    reports: list[CaseReport] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


def predict(inputs: Path, output: Path, model: Model, options: PredictOptions,
            overwrite: bool = False, keep_going: bool = False) -> BatchResult:
    """Predict every image under ``inputs`` into ``output`` and write the run's ``report.json``.

    A case whose label map and report both exist is skipped unless ``overwrite``; one of the two
    without the other is refused before any work (it may be another tool's file). A case failing
    with an :class:`AutosegError` stops the run, or with ``keep_going`` is recorded and the run goes
    on. ``report.json`` lists what was done, skipped and failed, also when the run stops early.
    """
    cases = find_inputs(inputs)
    check_output_location(inputs, output, cases)
    if "dicom-seg" in options.outputs:  # before any prediction: a DICOM-SEG needs a DICOM series input
        for _, path in cases:
            check_dicom_seg_input(path)
    done = {name for name, _ in cases if len(existing_outputs(output, name)) == 2}
    partial = [p for name, _ in cases for p in existing_outputs(output, name) if name not in done]
    if partial and not overwrite:
        raise AutosegError(f"{', '.join(p.name for p in partial[:5])} exist(s) without the case's other "
                           "output (an interrupted run or another tool's file); nothing was predicted",
                           output, "pass --overwrite to replace them, or move them away")
    if options.tta and not model.plans.patch_mirror_axes:
        log.warning("--tta: %s was trained without mirroring (plans' augmentation.mirror_axes is empty), so "
                    "there is no flip to average over; predicting without", model.folder)
    output.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    try:
        for name, path in cases:
            if name in done and not overwrite:
                log.info("%s: %s and its report exist; skipped (--overwrite predicts it again)",
                         path, CaseOutputs(output, name).labels.name)
                result.skipped.append({"case": name, "input": str(path), "reason": "outputs exist"})
                continue
            log.info("predicting %s with folds %s", name, list(model.folds))
            try:
                result.reports.append(write_prediction(predict_case(model, name, path, options),
                                                       CaseOutputs(output, name)))
            except AutosegError as exc:
                result.failed.append({"case": name, "input": str(path), "error": str(exc)})
                if not keep_going:
                    raise
                log.error("%s failed; going on with the other cases (--keep-going):\n%s", path, exc)
            except BaseException as exc:  # a crash or Ctrl-C: recorded, never passed over
                result.failed.append({"case": name, "input": str(path), "error": f"{type(exc).__name__}: {exc}"})
                raise
    finally:
        write_json(RunOutputs(output).report, {"model": str(model.folder),
                                               "cases": [r.to_dict() for r in result.reports],
                                            "skipped": result.skipped, "failed": result.failed})
    return result
