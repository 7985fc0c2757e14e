"""The planner: from a fingerprint and a hardware budget to ``plans.json``.

Decisions, in order: target spacing; median case shape at that spacing; then, for base features
16 and 8, the largest patch (starting from the median shape, shrinking the axis that is largest
relative to the median shape) whose training step fits the budget — GPU memory on CUDA, a
step-time target (and RAM) on CPU; the batch size (at least 2; on a GPU, grown until the memory
budget is used); whether augmentation rotates in-plane only. Every estimate and the reason for each
choice are written into the plans.

The planner reads the fingerprint's JSON form (a :class:`~autoseg.artefacts.Fingerprint` is turned
into it), so a test or benchmark can hand it only the keys a function reads.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, cast

import numpy as np

from autoseg.orientation import CANONICAL
from autoseg.artefacts import Fingerprint
from autoseg.errors import ConfigurationError, PlansError
from autoseg.partial_labels import PartialLabel
from autoseg.networks import default_network_kwargs, estimate_training_memory, network_names
from autoseg.plans import (CPU_DEFAULT_RECIPE, GPU_DEFAULT_RECIPE, HU_BOUNDS, LOCALISER_SPACING_FACTOR, RECIPES,
                           Augmentation, Estimates, NetworkPlan, Normalisation, Plans, Precision, Resampling)
from autoseg.planners.topology import Topology, plan_topology
from autoseg.precision import resolve_precision

log = logging.getLogger(__name__)

#: CT intensities are clipped inside HU_BOUNDS; within it the plan narrows the window to the
#: labelled voxels' 0.5-99.5 percentiles, as nnU-Net's CT normalisation does, unless a window is
#: given (docs/planning.md, "The HU window").
FOREGROUND_PERCENTILES = ("percentile_00_5", "percentile_99_5")
#: A fitted window narrower than this (a label of one homogeneous tissue) falls back to HU_BOUNDS.
MIN_HU_WIDTH = 50.0
FEATURE_CAP = 320
MIN_BATCH = 2
MAX_GPU_BATCH = 64
#: On a GPU one batch holds at most this share of the dataset's voxels (its cases at the target
#: spacing), so a small dataset is not seen several times over in one step: nnU-Net's rule of thumb.
#: Without it an 8 GB plan of an 8-case phantom took batch 23 (benchmarks/gpu_check.py --dry-run).
MAX_BATCH_DATASET_SHARE = 0.05
GPU_RESERVED_BYTES = 1.5e9  # CUDA context, cuDNN workspaces, parameters and optimiser state
GPU_AMP_ACTIVATION_FACTOR = 0.6  # fp16 activations under autocast; norms and losses stay fp32
ANISOTROPY_RATIO = 3.0
MIN_PATCH_EDGE = 8
# Memory grows linearly with the features, CPU time quadratically: with 16 base features a GPU
# patch is about half the 8-feature one, a CPU patch about a quarter. Accept 16 down to 40 %.
WIDE_PATCH_SHARE = 0.4


#: ``plan_and_preprocess --mirror``: see :func:`mirror_axes`.
MIRROR_CHOICES = ("auto", "all", "none")
#: A class lies on one side along an axis when its median centre is this share of the body's box off
#: the middle (the phantoms' livers lie 0.11-0.12 of the body's width right of it) ...
SIDE_OFFSET = 0.05
#: ... and this share of the cases holding it put it on that side ...
SIDE_SHARE = 0.9
#: ... of at least this many cases.
SIDE_MIN_CASES = 5


@dataclass(frozen=True)
class PlannerOptions:
    """The budget and choices a user can set on the command line."""

    device: str = "cpu"
    gpu_memory_gb: float = 8.0
    step_time_target_s: float = 0.5  # chosen by the race (docs/benchmarks.md)
    ram_fraction: float = 0.5
    network: str = "arunet"
    base_features: int | None = None  # None: choose 8 or 16 by the budget
    hu_window: tuple[float, float] | None = None  # None: narrowed to the foreground within HU_BOUNDS
    cpu_gflops: float | None = None  # CPU throughput; None: calibrated on this machine (cached)
    verify: bool = False  # CPU: also time the chosen plan for real and adjust it
    calibration_cache: Path | None = None
    recalibrate: bool = False  # CPU: measure again and replace this machine's cached calibration
    max_stages: int = 6
    seed: int = 12345
    deep_supervision: bool = True
    precision: str = "auto"  # autoseg.precision; auto: fp16 on CUDA, bf16 on CPUs with native bf16
    extra_notes: tuple[str, ...] = field(default_factory=tuple)
    #: Mirror augmentation: ``auto`` along the axes no class lies on one side of (:func:`mirror_axes`),
    #: ``all`` along every axis (nnU-Net's default), ``none`` never.
    mirror: str = "auto"
    #: Plans of a trained model whose network, patch, batch and target spacing these plans adopt, so
    #: its weights can start training (``plan_and_preprocess --plans-from``, then ``train --init``).
    template: Plans | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigurationError(f"--device must be cpu or cuda, got '{self.device}'")
        if self.network not in network_names():
            from autoseg.errors import unknown_name

            raise unknown_name("network", self.network, network_names())
        if self.base_features not in (None, 8, 16):
            raise ConfigurationError(f"--features must be 8 or 16, got {self.base_features}")
        if self.gpu_memory_gb <= 0 or self.step_time_target_s <= 0:
            raise ConfigurationError("--gpu-memory and --step-time must be positive")
        if self.mirror not in MIRROR_CHOICES:
            raise ConfigurationError(f"--mirror must be one of {', '.join(MIRROR_CHOICES)}, got '{self.mirror}'")
        if self.hu_window is not None and self.hu_window[0] >= self.hu_window[1]:
            raise ConfigurationError(f"HU window low {self.hu_window[0]} must be below high {self.hu_window[1]}")


def mirror_axes(fingerprint: Mapping[str, Any], choice: str = "auto") -> tuple[tuple[int, ...], str]:
    """The LPS axes (0 z, 1 y, 2 x) to mirror along in training and test-time augmentation, and why.

    ``auto`` leaves out every axis along which some class lies on one side of the body: its centre
    of mass (``class_positions`` in the fingerprint) at least :data:`SIDE_OFFSET` of the body's box
    off the middle, on the same side in at least :data:`SIDE_SHARE` of the (at least
    :data:`SIDE_MIN_CASES`) cases that hold it. A liver sits on the patient's right in every
    abdomen; mirrored left to right, a patch shows a spleen where the liver belongs, and a network
    that must label both alike has to unlearn where the liver is (TotalSegmentator trains without
    mirroring for its sided organs; nnU-Net mirrors every axis unless told otherwise). Classes that
    lie on both sides or in the middle (a brain's hemispheres) keep the axis mirrored."""
    if choice == "all":
        return (0, 1, 2), "mirror augmentation along every axis (--mirror all)"
    if choice == "none":
        return (), "no mirror augmentation (--mirror none)"
    positions = fingerprint.get("class_positions")
    if positions is None:
        return (0, 1, 2), ("mirror augmentation along every axis: the fingerprint predates class positions "
                           "(`plan_and_preprocess --force` fingerprints and plans again)")
    if not positions:
        return (0, 1, 2), "mirror augmentation along every axis: no labelled class to place"
    names = fingerprint.get("labels", {})
    sided: dict[int, list[str]] = {}
    for cls, pos in positions.items():
        if int(pos["cases"]) < SIDE_MIN_CASES:
            continue
        for axis in range(3):
            offset = float(pos["median"][axis]) - 0.5
            if abs(offset) >= SIDE_OFFSET and float(pos["same_side_share"][axis]) >= SIDE_SHARE:
                name = names.get(str(cls), str(cls))
                sided.setdefault(axis, []).append(f"{name} at {float(pos['median'][axis]):.2f}")
    axes = tuple(a for a in range(3) if a not in sided)
    if not sided:
        return axes, "mirror augmentation along every axis: no class lies on one side of the body"
    why = "; ".join(f"{'zyx'[a]}: {', '.join(v)}" for a, v in sorted(sided.items()))
    return axes, (f"mirror augmentation along {', '.join('zyx'[a] for a in axes) or 'no axis'} only: "
                  f"classes on one side of the body's box (median centre, 0 to 1) along {why}")


def target_spacing(fingerprint: Mapping[str, Any]) -> tuple[float, ...]:
    """Median spacing; for strongly anisotropic data the coarse axis takes its 10th percentile.

    Resampling thick-slice cases to the median slice thickness would blur the thin-slice ones; the
    10th percentile keeps more of the through-plane resolution when most cases have fine in-plane
    and coarse through-plane spacing (the nnU-Net rule, restated).
    """
    median = np.array(fingerprint["spacing"]["median"], dtype=float)
    p10 = np.array(fingerprint["spacing"]["percentile_10"], dtype=float)
    coarse = int(np.argmax(median))
    others = np.delete(median, coarse)
    if median[coarse] > ANISOTROPY_RATIO * others.max():
        median[coarse] = max(p10[coarse], ANISOTROPY_RATIO * others.max())
    return tuple(float(round(s, 4)) for s in median)


def median_shape_at(fingerprint: Mapping[str, Any], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Median cropped case shape after resampling to ``spacing``."""
    shapes = [np.array(c["shape_after_crop"]) * np.array(c["spacing"]) / np.array(spacing)
              for c in fingerprint["cases"]]
    return tuple(int(round(v)) for v in np.median(np.array(shapes), axis=0))


def hu_window_for(stats: dict[str, Any], window: tuple[float, float] | None) -> tuple[float, float]:
    """The CT window of a channel: ``window`` as given, else the labelled voxels' 0.5 and 99.5
    percentiles, each bounded by its side of ``HU_BOUNDS`` (the bounds themselves where the
    fingerprint lacks the percentiles or they leave under ``MIN_HU_WIDTH``)."""
    if window is not None:
        return float(window[0]), float(window[1])
    if not all(k in stats for k in FOREGROUND_PERCENTILES):
        return HU_BOUNDS
    lo = max(HU_BOUNDS[0], float(stats[FOREGROUND_PERCENTILES[0]]))
    hi = min(HU_BOUNDS[1], float(stats[FOREGROUND_PERCENTILES[1]]))
    return (lo, hi) if hi - lo >= MIN_HU_WIDTH else HU_BOUNDS


def normalisation_for(fingerprint: Mapping[str, Any],
                      window: tuple[float, float] | None = None) -> tuple[Normalisation, ...]:
    """CT channels: clip to the HU window (:func:`hu_window_for`), z-score with the clipped
    foreground statistics."""
    out = []
    for ch in sorted(fingerprint["intensity"], key=int):
        stats = fingerprint["intensity"][ch]["foreground"]
        if not fingerprint["is_ct"] or stats.get("n", 0) == 0:
            out.append(Normalisation("zscore"))
            continue
        lo, hi = hu_window_for(stats, window)
        # Statistics of the clipped distribution, from the 101 stored quantiles (percentile 0..100).
        q = np.clip(np.array(stats["quantiles"], dtype=float), lo, hi)
        mids = (q[:-1] + q[1:]) / 2
        mean = float(mids.mean())
        std = float(mids.std()) or 1.0
        out.append(Normalisation("ct", window=(lo, hi), mean=mean, std=std))
    return tuple(out)


@dataclass
class Candidate:
    """One priced configuration."""

    topology: Topology
    base_features: int
    batch_size: int
    network_kwargs: dict[str, Any]
    memory_bytes: int
    flops: int = 0
    step_time_s: float | None = None

    @property
    def patch_voxels(self) -> int:
        return math.prod(self.topology.patch_size)


class Pricer:
    """Prices candidates against the budget of one device."""

    def __init__(self, fingerprint: Mapping[str, Any], options: PlannerOptions):
        self.options = options
        self.in_channels = len(fingerprint["channel_names"])
        self.num_classes = max(int(k) for k in fingerprint["labels"]) + 1
        self.time_model: Any = None
        self.precision = resolve_precision(options.precision, options.device)
        if options.device == "cuda":
            usable = options.gpu_memory_gb * 1024**3 - GPU_RESERVED_BYTES
            self.memory_budget = int(max(usable, 0.25 * options.gpu_memory_gb * 1024**3))
        else:
            self.memory_budget = int(_ram_bytes() * options.ram_fraction)

    def candidate(self, topology: Topology, base: int, batch: int) -> Candidate:
        features = [min(base * 2**i, FEATURE_CAP) for i in range(topology.n_stages)]
        kwargs = default_network_kwargs(
            self.options.network, n_stages=topology.n_stages, features_per_stage=features,
            strides=[list(s) for s in topology.strides],
            kernel_sizes=[list(k) for k in topology.kernel_sizes],
            deep_supervision=self.options.deep_supervision)
        memory = self.memory_of(kwargs, topology.patch_size, batch)
        return Candidate(topology, base, batch, kwargs, memory)

    def memory_of(self, kwargs: dict[str, Any], patch: tuple[int, ...], batch: int) -> int:
        raw = estimate_training_memory(self.options.network, kwargs, self.in_channels, self.num_classes,
                                       patch, batch)
        return int(raw * GPU_AMP_ACTIVATION_FACTOR) if self.options.device == "cuda" else int(raw)

    def fits(self, cand: Candidate) -> bool:
        if cand.memory_bytes > self.memory_budget:
            return False
        if self.options.device == "cuda":
            return True
        from autoseg.planners.cost import training_flops

        cand.flops = training_flops(self.options.network, cand.network_kwargs, self.in_channels,
                                    self.num_classes, cand.topology.patch_size, cand.batch_size)
        cand.step_time_s = self.predicted_seconds(cand)
        return cand.step_time_s <= self.options.step_time_target_s

    def predicted_seconds(self, cand: Candidate) -> float:
        """The CPU time model's step time for ``cand`` (its ``flops`` already counted)."""
        return self.time_model.predict(cand.flops, cand.patch_voxels * cand.batch_size)


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):  # total, not available: plans must not vary with load
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def shrink_sequence(median_shape: tuple[int, ...], spacing: tuple[float, ...],
                    max_stages: int) -> list[Topology]:
    """Topologies from the median shape down to the smallest patch, largest first.

    Each step shrinks the axis that is largest relative to the median shape; ties go to the last
    (in-plane) axis, so a thick-slice volume keeps its few slices until the in-plane extent has come
    down to the same share of the case.
    """
    seq = [plan_topology(tuple(median_shape), spacing, max_stages)]
    while True:
        topology = seq[-1]
        ratios = [p / m for p, m in zip(topology.patch_size, median_shape)]
        shrinkable = [a for a in range(len(median_shape)) if topology.patch_size[a] > MIN_PATCH_EDGE]
        if not shrinkable:
            return seq
        axis = max(reversed(shrinkable), key=lambda a: ratios[a])
        step = max(topology.total_stride[axis], int(0.1 * topology.patch_size[axis]) // 2 * 2, 2)
        patch = list(topology.patch_size)
        patch[axis] = max(topology.patch_size[axis] - step, MIN_PATCH_EDGE)
        seq.append(plan_topology(tuple(patch), spacing, max_stages))


def fit_patch(pricer: Pricer, median_shape: tuple[int, ...], spacing: tuple[float, ...],
              base: int) -> Candidate:
    """Largest patch of the shrink sequence whose step fits the budget at batch 2 (bisection:
    the cost falls along the sequence, so about log2(n) candidates are priced)."""
    seq = shrink_sequence(median_shape, spacing, pricer.options.max_stages)
    lo, hi = 0, len(seq) - 1
    last = pricer.candidate(seq[hi], base, MIN_BATCH)
    if not pricer.fits(last):
        raise PlansError(f"no patch fits the budget even at {seq[hi].patch_size} with {base} base "
                         f"features", fix="raise --gpu-memory or --step-time")
    best = last
    while lo < hi:
        mid = (lo + hi) // 2
        cand = pricer.candidate(seq[mid], base, MIN_BATCH)
        if pricer.fits(cand):
            best, hi = cand, mid
        else:
            lo = mid + 1
    return best


def dataset_batch_cap(dataset_voxels: int, patch_size: tuple[int, ...]) -> int:
    """The largest batch holding at most :data:`MAX_BATCH_DATASET_SHARE` of the dataset's voxels
    (never below the minimum batch)."""
    return max(MIN_BATCH, int(MAX_BATCH_DATASET_SHARE * dataset_voxels / max(math.prod(patch_size), 1)))


def grow_batch(pricer: Pricer, cand: Candidate, dataset_voxels: int | None = None) -> Candidate:
    """On a GPU, grow the batch while the memory estimate stays within the budget and the batch
    within its share of the dataset (``dataset_voxels``: every case at the target spacing)."""
    if pricer.options.device != "cuda":
        return cand
    per_sample = cand.memory_bytes / cand.batch_size
    batch = int(min(MAX_GPU_BATCH, max(MIN_BATCH, pricer.memory_budget // max(per_sample, 1))))
    if dataset_voxels is not None:
        batch = min(batch, dataset_batch_cap(dataset_voxels, cand.topology.patch_size))
    cand.batch_size = batch
    cand.memory_bytes = pricer.memory_of(cand.network_kwargs, cand.topology.patch_size, batch)
    return cand


def choose_features(pricer: Pricer, median_shape: tuple[int, ...],
                    spacing: tuple[float, ...]) -> tuple[Candidate, str]:
    """Base features 16 unless its patch would be under 40 % of the volume 8 features allow."""
    forced = pricer.options.base_features
    if forced is not None:
        return fit_patch(pricer, median_shape, spacing, forced), f"base features {forced} set by the user"
    wide = fit_patch(pricer, median_shape, spacing, 16)
    narrow = fit_patch(pricer, median_shape, spacing, 8)
    if wide.patch_voxels >= WIDE_PATCH_SHARE * narrow.patch_voxels:
        return wide, (f"base features 16: its patch {wide.topology.patch_size} keeps "
                      f"{wide.patch_voxels / narrow.patch_voxels:.0%} of the 8-feature patch volume")
    return narrow, (f"base features 8: with 16 the patch would shrink to {wide.topology.patch_size} "
                    f"({wide.patch_voxels / narrow.patch_voxels:.0%} of {narrow.topology.patch_size})")


#: (base features, patch) of the calibration steps. Both widths, because time does not scale with
#: FLOPs alone (planners/cost.py); the 16-feature step at the small patch only, which keeps the
#: calibration as cheap as a two-step one (about 2 s in bf16 on 2 Zen 5 cores). On a grid of 8- and
#: 16-feature ARUNet and UCA-Net steps from 16x48x48 to 64x128x160 the fit predicted bf16 steps within
#: 28 % and fp32 within 38 % (underestimates at the largest fp32 patches); four points, 16x96x96 at
#: 16 features too, were within 18 % / 35 % for twice the calibration time
#: (benchmarks/cost_model.py, docs/planning.md).
CALIBRATION_POINTS = ((8, (16, 48, 48)), (8, (32, 96, 96)), (16, (16, 48, 48)))
VERIFY_ROUNDS = 3
VERIFY_LOW = 0.7  # a measured plan under 70 % of the target leaves time unused: grow it


def _calibrate(pricer: Pricer) -> str:
    from autoseg.planners.cost import CpuTimeModel, calibrate

    opts = pricer.options
    if opts.cpu_gflops is not None:
        pricer.time_model = CpuTimeModel(opts.cpu_gflops * 1e9, 0.0, "throughput given by the user, FLOPs only")
        return pricer.time_model.describe()
    points = []
    for base, patch in CALIBRATION_POINTS:
        cand = pricer.candidate(plan_topology(patch, (1.0, 1.0, 1.0), opts.max_stages), base, MIN_BATCH)
        points.append((opts.network, cand.network_kwargs, pricer.in_channels, pricer.num_classes,
                       cand.topology.patch_size, MIN_BATCH))
    pricer.time_model = calibrate(points, opts.calibration_cache, opts.network, pricer.precision,
                                  refresh=opts.recalibrate)
    return pricer.time_model.describe()


def _verify_cpu(pricer: Pricer, cand: Candidate, median_shape: tuple[int, ...],
                spacing: tuple[float, ...], notes: list[str]) -> Candidate:
    """Time the chosen plan for real; refit the model's throughput to the measurement and re-fit
    (larger or smaller) until a measured plan lands within the target. Keeps the largest plan
    that measured within the target."""
    from autoseg.planners.cost import measure_step_seconds

    best: Candidate | None = None
    target = pricer.options.step_time_target_s
    for _ in range(VERIFY_ROUNDS + 1):
        measured = measure_step_seconds(pricer.options.network, cand.network_kwargs, pricer.in_channels,
                                        pricer.num_classes, cand.topology.patch_size, cand.batch_size,
                                        precision=pricer.precision)
        notes.append(f"measured {measured:.2f} s/step at patch {cand.topology.patch_size}")
        log.info("plan: %s", notes[-1])
        cand.step_time_s = measured
        if measured <= target * 1.05 and (best is None or cand.patch_voxels > best.patch_voxels):
            best = cand
        if VERIFY_LOW * target <= measured <= target * 1.05:
            break
        pricer.time_model = pricer.time_model.scaled(measured / max(pricer.predicted_seconds(cand), 1e-6),
                                                     "scaled to a measured step")
        nxt = fit_patch(pricer, median_shape, spacing, cand.base_features)
        if nxt.topology.patch_size == cand.topology.patch_size:
            break
        cand = nxt
    if best is None:
        raise PlansError(f"every measured plan was slower than the target {target} s ({'; '.join(notes[-3:])})",
                         fix="raise --step-time, plan on an idle machine, or plan for --device cuda")
    return best


def plan(fingerprint: Fingerprint | Mapping[str, Any], options: PlannerOptions) -> Plans:
    """Derive the complete plans for a fingerprinted dataset under ``options``' budget (with a
    template, its network, patch, batch and target spacing; the rest from this dataset)."""
    if isinstance(fingerprint, Fingerprint):
        fingerprint = fingerprint.to_dict()
    plans = _plan(fingerprint, options)
    return plans if options.template is None else adopt_network(plans, options.template, fingerprint)


def adopt_network(plans: Plans, template: Plans, fingerprint: Mapping[str, Any]) -> Plans:
    """``plans`` with ``template``'s network, patch size, batch size and target spacing: a pretrained
    model's weights then fit the network exactly, except an output layer for other classes. The
    normalisation, labels and recipe stay this dataset's; the estimates are those of the network this
    machine's budget would have chosen (a note says so)."""
    spacing = tuple(float(s) for s in template.target_spacing)
    note = (f"network {template.network.name}, patch {list(template.patch_size)}, batch {template.batch_size} and "
            f"target spacing {list(spacing)} mm adopted from {template.dataset_name}'s plans (--plans-from); "
            "the estimates above are of the plan this budget would have chosen")
    log.info("plan: %s", note)
    return dataclasses.replace(
        plans, target_spacing=spacing, median_shape=median_shape_at(fingerprint, spacing),
        patch_size=tuple(template.patch_size), batch_size=template.batch_size, network=template.network,
        augmentation=Augmentation.for_spacing(spacing, plans.augmentation.mirror_axes),
        estimates=dataclasses.replace(plans.estimates, notes=plans.estimates.notes + (note,)))


def localiser_plans(plans: Plans) -> Plans:
    """The dataset's localiser: ``plans`` at :data:`~autoseg.plans.LOCALISER_SPACING_FACTOR` times
    the spacing along every axis, with the same network, patch, batch, classes, normalisation and
    crop. One factor for all axes keeps the spacing's anisotropy, for which the network's strides
    and kernels were chosen; the same patch then holds eight times the volume (more context for
    finding the organs) and its step costs what the plan's estimates say. The same crop makes the
    localiser's grid and the model's cover the same box of the input, so one is a resize of the
    other (:mod:`autoseg.inference.localise`). A 2D plan (y, x) keeps each case's own slices: only
    the in-plane axes coarsen, a quarter of the voxels."""
    factor = LOCALISER_SPACING_FACTOR
    spacing = tuple(round(float(s) * factor, 4) for s in plans.target_spacing)
    median = tuple(max(1, round(n / factor)) for n in plans.median_shape)
    note = (f"localiser: target spacing {list(spacing)} mm ({factor:g} x the model's), median shape there "
            f"{list(median)}; network, patch and batch the model's")
    return plans.replace(target_spacing=spacing, median_shape=median, localiser=plans.sha256(), regions=None,
                         estimates=dataclasses.replace(plans.estimates, notes=plans.estimates.notes + (note,)))


def _plan(fingerprint: Mapping[str, Any], options: PlannerOptions) -> Plans:
    spacing = target_spacing(fingerprint)
    median_shape = median_shape_at(fingerprint, spacing)
    pricer = Pricer(fingerprint, options)
    notes = [f"target spacing {spacing} mm (z, y, x), median shape there {median_shape}"]
    mirrored, why_mirrored = mirror_axes(fingerprint, options.mirror)
    notes.append(why_mirrored)
    if options.device == "cpu":
        notes.append(_calibrate(pricer))
    cand, why = choose_features(pricer, median_shape, spacing)
    notes.append(why)
    if options.device == "cpu" and options.verify:
        cand = _verify_cpu(pricer, cand, median_shape, spacing, notes)
    dataset_voxels = math.prod(median_shape) * len(fingerprint["cases"])
    cand = grow_batch(pricer, cand, dataset_voxels)
    normalisation = normalisation_for(fingerprint, options.hu_window)
    for name, norm in zip(fingerprint["channel_names"], normalisation):
        if norm.window is None:
            continue
        how = ("as given" if options.hu_window is not None else
               "the bounds: no fitted window" if norm.window == HU_BOUNDS else
               f"the labelled voxels' 0.5-99.5 percentiles inside {list(HU_BOUNDS)}")
        notes.append(f"HU window of {name} {list(norm.window)}: {how}")
    notes.append(f"batch {cand.batch_size}: " + (("as large as the GPU memory budget allows, at most "
                                                  f"{MAX_BATCH_DATASET_SHARE:.0%} of the dataset's voxels")
                                                 if options.device == "cuda" else
                                                 "the minimum, so the CPU step time stays on target"))
    estimates = Estimates(
        device=options.device, memory_budget_bytes=pricer.memory_budget,
        memory_estimate_bytes=cand.memory_bytes, training_flops=cand.flops,
        step_time_target_s=options.step_time_target_s if options.device == "cpu" else None,
        step_time_estimate_s=pricer.predicted_seconds(cand) if pricer.time_model else None,
        step_time_measured_s=cand.step_time_s if options.verify and options.device == "cpu" else None,
        notes=tuple(notes) + options.extra_notes,
        step_time_calibrated=None if options.cpu_gflops is None or options.verify else False)
    for note in notes:
        log.info("plan: %s", note)
    return Plans(
        dataset_name=fingerprint["dataset_name"],
        channel_names=tuple(fingerprint["channel_names"]),
        labels={int(k): v for k, v in fingerprint["labels"].items()},
        is_ct=bool(fingerprint["is_ct"]),
        target_spacing=spacing,
        median_shape=median_shape,
        patch_size=cand.topology.patch_size,
        batch_size=cand.batch_size,
        normalisation=normalisation,
        network=NetworkPlan(options.network, cand.network_kwargs),
        estimates=estimates,
        resampling=Resampling(),
        augmentation=Augmentation.for_spacing(spacing, mirrored),
        recipe=dataclasses.replace(
            RECIPES[CPU_DEFAULT_RECIPE if options.device == "cpu" else GPU_DEFAULT_RECIPE],
            deep_supervision=options.deep_supervision, precision=cast(Precision, pricer.precision)),
        seed=options.seed,
        orientation=CANONICAL,
        partial_labels=tuple(PartialLabel(int(p["value"]), tuple(int(c) for c in p["classes"]), int(p["scored_as"]))
                             for p in fingerprint.get("partial_labels") or ()) or None,
    )
