"""The plans contract: everything preprocessing, training and inference need to know.

``plans.json`` is the only hand-over from planning to the later stages. It is a frozen dataclass
that round-trips to JSON, carries a ``plans_version`` and is validated on load (:mod:`autoseg.schema`),
so a hand-edited file either works or fails with a message that says which field is wrong. Closed
sets (normalisation scheme, label volume, optimizer, schedule, precision) are ``Literal`` types: a
name outside one is refused on load, never taken for a default.
Spatial tuples are in numpy order ``(z, y, x)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, get_args

from autoseg.errors import PlansError
from autoseg.layout import LOCALISER_FOLDER
from autoseg.partial_labels import LabelSpace, PartialLabel, partial_problems, stored_label_names
from autoseg.regions import Region, region_problems
from autoseg.registry import Registry
from autoseg.schema import Artefact, literal_problems, optional

PLANS_VERSION = 1
NormalisationScheme = Literal["ct", "zscore"]
LabelVolume = Literal["keep", "argmax"]
Schedule = Literal["poly", "plateau"]
Optimizer = Literal["sgd", "adam"]
#: How a foreground-forced patch picks its centre in a case (``training.data.PatchLoader``): a
#: random present class, then ``voxels``: one of its stored voxels (nnU-Net's rule: a lesion is
#: picked in proportion to its size), or ``components``: one of its connected components, then a
#: voxel of it (every lesion alike, however small).
Sampler = Literal["voxels", "components"]
#: :data:`autoseg.precision.PRECISIONS` (a test keeps the two equal).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LABEL_VOLUME_MODES: tuple[str, ...] = get_args(LabelVolume)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
#: Slices more than this many times thicker than the pixels: augmentation rotates within the slice
#: plane only (a tilt would mix distant slices). The decision is the planner's, stored in the plans.
IN_PLANE_ROTATION_RATIO = 2.5


#: Appended to the network's name for the model folder of region outputs (``Plans.configuration``).
REGIONS_SUFFIX = "_regions"
#: Each axis's spacing times this is the localiser's (``plan_and_preprocess --localiser``): an eighth
#: of the voxels, so its pass over a case costs an eighth of a full-resolution one with the same
#: network and patch (inference/localise.py).
LOCALISER_SPACING_FACTOR = 2.0

#: The abdominal window of the published liver work, in Hounsfield units: CT windows are fitted
#: inside it (the planner, docs/planning.md "The HU window") and overlays are drawn in it.
HU_BOUNDS = (-160.0, 240.0)


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of one input channel.

    ``ct``: clip to ``window`` (Hounsfield units), then subtract ``mean`` and divide by ``std``
    (dataset-wide foreground statistics). ``zscore``: per-image mean and std (non-CT data).
    """

    scheme: NormalisationScheme
    window: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Resampling:
    """How images and labels are brought to the target spacing.

    When the spacing is anisotropic beyond ``anisotropy_threshold`` (ratio of largest to smallest
    spacing), the low-resolution axis is resampled separately with ``order_z`` to avoid ringing.
    """

    order_image: int = 3
    order_z: int = 0
    anisotropy_threshold: float = 3.0
    #: "keep": label maps (and predictions brought back to the input grid) keep each class's volume,
    #: so structures about a voxel wide survive resampling; "argmax": plain linear + arg-max.
    label_volume: LabelVolume = "keep"

    @property
    def keeps_label_volume(self) -> bool:
        return self.label_volume == "keep"


@dataclass(frozen=True)
class NetworkPlan:
    """A network from the registry by name, with every constructor argument spelled out."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Estimates:
    """What the planner predicted for this configuration, and the budget it had to fit."""

    device: str
    memory_budget_bytes: int
    memory_estimate_bytes: int
    training_flops: int = 0
    step_time_target_s: float | None = None
    step_time_estimate_s: float | None = None
    step_time_measured_s: float | None = None
    notes: tuple[str, ...] = ()
    #: False where the step-time estimate comes from a throughput the user gave (``--cpu-gflops``,
    #: a pinned plan) rather than from this machine's calibration or a measured step: the plan is
    #: the same on every machine, and its estimate says nothing about this one. Written only when
    #: False, so plans written before the field keep their SHA-256 (:attr:`calibrated`).
    step_time_calibrated: bool | None = optional()

    @property
    def calibrated(self) -> bool:
        """Whether the step-time estimate describes this machine (absent: it does)."""
        return self.step_time_calibrated is not False


@dataclass(frozen=True)
class Recipe:
    """The training recipe: optimiser, schedule, loss and sampling, chosen by name."""

    name: str = "sgd_poly"
    optimizer: Optimizer = "sgd"
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: Schedule = "poly"
    epochs: int = 100
    iterations_per_epoch: int = 50
    loss: str = "dice_ce"
    oversample_foreground: float = 0.67
    #: How a foreground-forced patch picks its centre (:data:`Sampler`).
    sampler: Sampler = "voxels"
    #: Probability per training patch and labelled class of a new contrast for the class
    #: (:class:`autoseg.training.data.ClassContrastTransform`); absent: never.
    class_contrast: float | None = optional()
    #: Share of a 3D patch's slices by which training patches may reach beyond either end of the slice
    #: axis, mirrored there (:class:`autoseg.training.data.PatchLoader`), so that the network learns
    #: the ends of a field of view as ``predict --edge-context`` shows them; absent: none, the padding
    #: is 0. A model trained with it predicts with that edge context unless told otherwise.
    edge_context: float | None = optional()
    #: Probability per training patch of pasting one of the training cases' lesions into it
    #: (:mod:`autoseg.training.lesion_paste`); absent: never. ``lesion_class`` is the class pasted,
    #: ``lesion_host`` the class it goes into (0: background near the other labelled classes).
    lesion_paste: float | None = optional()
    lesion_class: int | None = optional()
    lesion_host: int | None = optional()
    deep_supervision: bool = True
    plateau_patience: int = 3
    early_stop_patience: int = 0  # 0: never stop early
    time_budget_s: float | None = None  # when set, the schedule follows wall time, not epochs
    #: When set (and no time budget), the schedule is this many training steps whatever the
    #: epochs: ``--steps`` and ``--compute-budget`` (a budget that a busy machine takes longer to
    #: spend but that trains the same model).
    steps: int | None = None
    #: Autocast of the network's arithmetic (autoseg.precision): the planner writes what it timed,
    #: fp16 for CUDA plans, bf16 on CPUs with native bf16 instructions, else fp32.
    precision: Precision = "auto"


@dataclass(frozen=True)
class Augmentation:
    """Spatial augmentation geometry, decided once by the planner from the target spacing and from
    where the labelled classes lie (``mirror_axes``)."""

    #: Rotate only within the slice plane and leave z out of the simulated low resolution.
    in_plane_only: bool
    #: The LPS axes (0 z, 1 y, 2 x) training mirrors along, and test-time augmentation (``predict
    #: --tta``) averages over. Absent (plans written before the field): all three, as nnU-Net does.
    #: The planner leaves out an axis along which a class lies on one side of the body (the liver
    #: on the patient's right): mirrored, a spleen looks like a liver where the liver should be
    #: (:func:`autoseg.planners.planner.mirror_axes`).
    mirror_axes: tuple[int, ...] | None = optional()

    @classmethod
    def for_spacing(cls, spacing: Sequence[float], mirror_axes: tuple[int, ...] | None = None) -> "Augmentation":
        """In-plane only when the first axis' spacing is over ``IN_PLANE_ROTATION_RATIO`` times the
        finest other (the rule training applied before plans carried the decision). Mirroring along
        every axis is stored as the field's absence, as plans before the field say it."""
        every = mirror_axes is not None and tuple(sorted(mirror_axes)) == (0, 1, 2)
        return cls(in_plane_only=bool(float(spacing[0]) > IN_PLANE_ROTATION_RATIO * min(spacing[1:])),
                   mirror_axes=None if every else mirror_axes)

    def patch_mirror_axes(self, ndim: int) -> tuple[int, ...]:
        """The patch axes to mirror along in a ``ndim``-D patch: a 3D patch is (z, y, x), a 2D one
        (y, x)."""
        axes = (0, 1, 2) if self.mirror_axes is None else self.mirror_axes
        return tuple(a - (3 - ndim) for a in axes if a >= 3 - ndim)


#: The default of ``Plans.augmentation`` (this very object): "decide from the target spacing".
_FROM_SPACING = Augmentation(in_plane_only=False)


#: Named training recipes (``recipe.name``, ``--recipe``); see ``training.recipes.recipe_named``.
RECIPES: Registry[Recipe] = Registry("recipe", {
    # nnU-Net-style: SGD with Nesterov momentum, polynomial decay to zero.
    "sgd_poly": Recipe(name="sgd_poly", optimizer="sgd", initial_lr=1e-2, momentum=0.99,
                       weight_decay=3e-5, schedule="poly"),
    # The seed paper's recipe: Adam 1e-4, halve after 3 epochs without improvement, stop after 5.
    "adam_plateau": Recipe(name="adam_plateau", optimizer="adam", initial_lr=1e-4, weight_decay=0.0,
                           momentum=0.0, schedule="plateau", plateau_patience=3, early_stop_patience=5),
    # Adam (3e-3) with the poly schedule: learns within the few hundred steps of a CPU budget.
    "adam_poly": Recipe(name="adam_poly", optimizer="adam", initial_lr=3e-3, weight_decay=1e-5,
                        momentum=0.0, schedule="poly", loss="dice_wce_anneal"),
})
# Measured on the demo phantom task, fold 0, same plan (32x48x64, batch 2), 300 steps each, whole
# held-out cases (benchmarks/learning.py): Adam 3e-4 tumour Dice 0.00, 1e-3 0.29, 3e-3 0.34,
# 1e-2 0.24, vessels 0.00 to 0.01 throughout; Adam 3e-3 with the rarity-weighted CE (dice_wce)
# vessel 0.29, tumour 0.39. An earlier 3-minute run gave sgd_poly 0.00. CPU plans default to adam_poly.
# Its rarity weights are annealed to 1 over the schedule (dice_wce_anneal): in the race against
# nnU-Net (benchmarks/race.py, 20 min, 6 test phantoms) constant weights over-segmented tumours
# (vessel 0.524, tumour 0.568), annealed 0.482 / 0.691, plain dice_ce 0.470 / 0.657; at 300 steps
# (learning.py) annealed 0.314 / 0.498 against constant 0.259 / 0.479.
CPU_DEFAULT_RECIPE = "adam_poly"
GPU_DEFAULT_RECIPE = "sgd_poly"


@dataclass(frozen=True)
class Plans(Artefact):
    """The versioned plan for one dataset. See docs/planning.md ("plans.json") for every field."""

    KIND = "plans"
    VERSION_KEY = "plans_version"
    VERSION = PLANS_VERSION
    UNVERSIONED = None
    ERROR = PlansError
    FIX = "re-run `autoseg plan_and_preprocess`"
    MISSING_FIX = "run `autoseg plan_and_preprocess -d DATASET` first"

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    is_ct: bool
    target_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    normalisation: tuple[Normalisation, ...]
    network: NetworkPlan
    estimates: Estimates
    resampling: Resampling = field(default_factory=Resampling)
    recipe: Recipe = field(default_factory=Recipe)
    crop_to_body: bool = True
    seed: int = 12345
    plans_version: int = PLANS_VERSION
    #: Left out (in a constructor call, and in plans.json files written before the field): decided
    #: from ``target_spacing`` by :meth:`Augmentation.for_spacing`.
    augmentation: Augmentation = _FROM_SPACING
    #: "LPS": every image is turned into LPS axis order before the network sees it, and predictions
    #: back into the file's order (:mod:`autoseg.orientation`). Absent (plans written before the
    #: field): the file's own voxel order, as those models were trained.
    orientation: str | None = optional()
    #: Stored label values that stand for one of several classes (a merged dataset's partial
    #: annotations, :mod:`autoseg.partial_labels`). Absent: every stored value is its class.
    partial_labels: tuple[PartialLabel, ...] | None = optional()
    #: Region outputs (``train --regions``, :mod:`autoseg.regions`): one sigmoid per region, in
    #: decision order. Absent: one softmax over the classes.
    regions: tuple[Region, ...] | None = optional()
    #: The dataset's localiser (``plan_and_preprocess --localiser``,
    #: :func:`~autoseg.planners.planner.localiser_plans`): the same network, patch and classes at a
    #: coarser spacing, trained to find where the classes are so that ``predict --localise`` slides
    #: the full-resolution folds only there. Its value is the :meth:`sha256` of the dataset's plans it
    #: was derived from (a localiser of other plans is stale). Absent: a model.
    localiser: str | None = optional()

    def __post_init__(self) -> None:
        if self.augmentation is _FROM_SPACING:
            object.__setattr__(self, "augmentation", Augmentation.for_spacing(self.target_spacing))
        problems = self.problems()
        if problems:
            raise PlansError("invalid plans: " + "; ".join(problems),
                             fix="correct the listed fields or re-run `autoseg plan_and_preprocess`")

    def problems(self) -> list[str]:
        out = []
        if self.plans_version != PLANS_VERSION:
            out.append(f"plans_version {self.plans_version} is not {PLANS_VERSION}")
        if len(self.patch_size) != len(self.target_spacing):
            out.append(f"patch_size {self.patch_size} and target_spacing {self.target_spacing} differ in dims")
        if any(int(p) < 1 for p in self.patch_size):
            out.append(f"patch_size {self.patch_size} must be positive")
        if any(float(s) <= 0 for s in self.target_spacing):
            out.append(f"target_spacing {self.target_spacing} must be positive")
        if self.batch_size < 1:
            out.append(f"batch_size {self.batch_size} must be at least 1")
        if len(self.normalisation) != len(self.channel_names):
            out.append(f"{len(self.normalisation)} normalisation entries for {len(self.channel_names)} channels")
        for n in self.normalisation:
            if n.scheme == "ct" and (n.window is None or n.window[0] >= n.window[1] or n.std <= 0):
                out.append(f"ct normalisation needs window low < high and std > 0, got {n}")
        if 0 not in self.labels:
            out.append("labels must include 0 (background)")
        axes = self.augmentation.mirror_axes
        if axes is not None and (len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes)):
            out.append(f"augmentation.mirror_axes {list(axes)} must be distinct axes among 0, 1, 2 (z, y, x)")
        if self.orientation not in (None, "LPS"):
            out.append(f"orientation {self.orientation!r} is not 'LPS' (or absent: the files' own order)")
        out.extend(partial_problems(self.partial_labels or (), self.labels) if 0 in self.labels else [])
        if self.regions is not None and 0 in self.labels:
            out.extend(region_problems(self.regions, self.labels))
            if self.partial_labels:
                out.append("regions and partial_labels do not combine (a partially labelled voxel has no "
                           "region target); train the merged dataset without --regions")
        if self.localiser and self.regions:
            out.append("a localiser has one softmax over the classes: regions do not apply to it")
        out.extend(literal_problems(self))  # names outside their closed set (checked on load too)
        out.extend(self.recipe_problems())
        return out

    def recipe_problems(self) -> list[str]:
        """What makes the recipe unusable: a schedule that never ends (its names are Literals)."""
        r, out = self.recipe, []
        if r.epochs < 1 or r.iterations_per_epoch < 1:
            out.append(f"recipe.epochs ({r.epochs}) and recipe.iterations_per_epoch ({r.iterations_per_epoch}) "
                       "must be at least 1")
        if r.time_budget_s is not None and r.time_budget_s <= 0:
            out.append(f"recipe.time_budget_s {r.time_budget_s} must be positive (or null: no time budget)")
        if r.steps is not None and r.steps < 1:
            out.append(f"recipe.steps {r.steps} must be at least 1 (or null: epochs x iterations)")
        if r.lesion_paste is not None:
            if not 0 < r.lesion_paste <= 1:
                out.append(f"recipe.lesion_paste {r.lesion_paste} must lie in (0, 1] (or be absent: no pasting)")
            if r.lesion_class not in self.labels or r.lesion_class == 0:
                out.append(f"recipe.lesion_class {r.lesion_class} is not a foreground class of the plans' labels")
            if r.lesion_host not in self.labels or r.lesion_host == r.lesion_class:
                out.append(f"recipe.lesion_host {r.lesion_host} must be a class of the plans' labels other than "
                           "the lesion's (0: background)")
        return out

    @property
    def patch_mirror_axes(self) -> tuple[int, ...]:
        """The patch axes training mirrors along and test-time mirroring flips
        (``augmentation.mirror_axes`` on this plan's patch)."""
        return self.augmentation.patch_mirror_axes(len(self.patch_size))

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def num_outputs(self) -> int:
        """The network's output channels: one per region, else one per class."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def configuration(self) -> str:
        """The model folder's name under the dataset's results: the network, ``_regions`` added for
        region outputs (the two train side by side and find_best chooses); the localiser's own
        folder for a localiser's plans (never a candidate of find_best)."""
        if self.localiser:
            return LOCALISER_FOLDER
        return self.network.name + (REGIONS_SUFFIX if self.regions else "")

    @property
    def label_space(self) -> LabelSpace:
        """The stored label values and the classes each allows (plain classes unless partial)."""
        return LabelSpace(self.num_classes, self.partial_labels or ())

    @property
    def stored_labels(self) -> dict[int, str]:
        """Every value a label map may hold: the classes, then the partial values (named by the
        classes they allow)."""
        return stored_label_names(self.labels, self.partial_labels or ())

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def sha256(self) -> str:
        """SHA-256 of the plans as canonical JSON (provenance, and the localiser's source)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def is_localiser_of(self, plans: "Plans") -> bool:
        """True for a localiser derived from these very ``plans`` (not from plans since changed)."""
        return self.localiser == plans.sha256()

    def replace(self, **changes: Any) -> "Plans":
        return dataclasses.replace(self, **changes)
