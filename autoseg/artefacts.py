"""The JSON artefacts the stages hand on, other than the plans: typed and versioned (:mod:`autoseg.schema`).

====================== ================================ ==================================== ===================
artefact               file (:mod:`autoseg.layout`)     written by                           read by
====================== ================================ ==================================== ===================
Fingerprint            PreprocessedDataset.fingerprint  planners/fingerprint.py              the planner, pipeline
CaseProperties         CaseFiles.properties             preprocessing (storage.write_case)   training, validation
FoldSummary            ValidationFolder.summary         fold validation, ensembles           inference/crossval
CvSummary              ResultsDataset.cv_summary        inference/crossval.py                people
BestChoice             ResultsDataset.best              inference/crossval.py                ``predict -d``
PostprocessingDecision ModelFolder.postprocessing       inference/postprocessing.py          predict, export
FoldRecord             FoldFolder.record                training/run.py                      ``train --continue``
EnsembleManifest       ModelFolder.ensemble_manifest    inference/ensembles.py               EnsembleModel
Calibration            ModelFolder.calibration          inference/uncertainty.py (find_best) predict --uncertainty
CaseReport             CaseOutputs.report               predict (inference/report.py)        people, the viewer
====================== ================================ ==================================== ===================

Each type's JSON keys are the ones autoseg wrote before the types existed, plus a version key; a
file without that key loads as version 1 (except the fingerprint, which always had its version).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autoseg.orientation import Reorientation
from autoseg.partial_labels import PartialLabel
from autoseg.precision import Resolved
from autoseg.errors import EvaluationError, PlansError
from autoseg.io import Geometry
from autoseg.layout import CheckpointKind
from autoseg.metrics import mean_present
from autoseg.schema import Artefact, MaybeNan, optional, rest

REDO_PREPROCESSING = "run `autoseg plan_and_preprocess` for this dataset again (it redoes only what is stale)"


# --- fingerprint ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """Per-axis (z, y, x) statistics over the cases."""

    median: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    percentile_10: tuple[float, ...]
    percentile_90: tuple[float, ...]


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class SliceCounts:
    min: int
    median: float
    max: int
    histogram: Histogram


@dataclass(frozen=True)
class IntensityStats:
    """Statistics of sampled voxel intensities; only ``n`` (0) when there were none."""

    n: int
    mean: float | None = optional()
    std: float | None = optional()
    min: float | None = optional()
    max: float | None = optional()
    percentile_00_5: float | None = optional()
    median: float | None = optional()
    percentile_99_5: float | None = optional()
    quantiles: tuple[float, ...] | None = optional()  # percentiles 0, 1, ..., 100


@dataclass(frozen=True)
class ChannelIntensity:
    """One input channel: its name, and statistics of the ``foreground`` and of each label."""

    name: str
    classes: dict[str, IntensityStats] = rest()


@dataclass(frozen=True)
class ClassFraction:
    name: str
    voxels: int
    fraction_of_volume: float
    fraction_of_body: float
    cases_present: int


@dataclass(frozen=True)
class ClassPosition:
    """Where a class's centre of mass lies in the body's box along each LPS axis (z, y, x), over
    the ``cases`` that hold it: the median fraction of the box, and the share of those cases on
    the median's side of the box's middle."""

    cases: int
    median: tuple[float, ...]
    same_side_share: tuple[float, ...]


@dataclass(frozen=True)
class ExcludedCase:
    case: str
    slices: int
    reason: str


@dataclass(frozen=True)
class CaseSummary:
    case: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    class_voxels: dict[int, int]
    intensity_range: tuple[float, float]


@dataclass(frozen=True)
class Fingerprint(Artefact):
    """What the planner knows about a dataset (``fingerprint.json``)."""

    KIND = "fingerprint"
    VERSION_KEY = "fingerprint_version"
    UNVERSIONED = None
    ERROR = PlansError
    FIX = "run `autoseg plan_and_preprocess -d DATASET --force` to fingerprint the dataset again"

    dataset_name: str
    format: Literal["msd", "nnunet"]
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    is_ct: bool
    num_cases: int
    excluded: tuple[ExcludedCase, ...]
    axis_order: str
    spacing: Distribution
    shape: Distribution
    shape_after_crop: Distribution
    slices: SliceCounts
    intensity: dict[int, ChannelIntensity]
    class_fractions: dict[int, ClassFraction]
    warnings: tuple[str, ...]
    cases: tuple[CaseSummary, ...]
    #: Hash of the raw files and options it was made from (set by the pipeline; None: unknown).
    inputs_key: str | None = optional()
    #: The dataset's partial label values (a merged dataset's, :mod:`autoseg.partial_labels`).
    partial_labels: tuple[PartialLabel, ...] | None = optional()
    #: Class -> the class it lies inside (:mod:`autoseg.regions`); absent in fingerprints written
    #: before the field and for datasets with partial labels.
    label_nesting: dict[int, int] | None = optional()
    #: Class -> where it lies in the body (the planner's mirror axes, ``mirror_axes``); absent in
    #: fingerprints written before the field.
    class_positions: dict[int, ClassPosition] | None = optional()


# --- preprocessed cases --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseProperties(Artefact):
    """A preprocessed case's properties: where its crop sits on the input grid (to put a prediction
    back there) and, with labels, voxel counts and sampled ``class_locations`` for oversampling.

    ``properties[key]`` is the value as the JSON file holds it (lists, string keys), for callers
    written against the dict it used to be."""

    KIND = "case properties"
    VERSION_KEY = "properties_version"
    FIX = REDO_PREPROCESSING

    case_id: str
    image_files: tuple[str, ...]
    label_file: str | None
    original_geometry: Geometry
    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    crop_bbox: tuple[tuple[int, int], ...]
    shape_after_crop: tuple[int, ...]
    intensity_min: tuple[float, ...]
    intensity_max: tuple[float, ...]
    shape_after_resampling: tuple[int, ...]
    target_spacing: tuple[float, ...]
    num_channels: int
    has_label: bool
    class_voxels: dict[int, int] | None = optional()
    #: Up to 10,000 sampled (z, y, x) voxels of each foreground label.
    class_locations: dict[int, tuple[tuple[int, int, int], ...]] | None = optional()
    #: :func:`autoseg.preprocessing.storage.plans_key` of the plans it was made with (set when stored).
    plans_key: str | None = optional()
    #: How the input's voxel order was turned into LPS order before cropping (plans with an
    #: orientation); ``crop_bbox`` and the shapes after it are in that order. Absent: the file's order.
    reorientation: Reorientation | None = optional()


# --- cross-validation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldSummary(Artefact):
    """A fold's validation: per-case Dice of each foreground class (null: absent from reference and
    prediction), each class's mean over the cases and the mean of those (background never counted)."""

    KIND = "fold validation summary"
    VERSION_KEY = "summary_version"
    ERROR = EvaluationError
    FIX = "delete it and retrain the fold with --force"

    checkpoint: CheckpointKind
    cases: dict[str, dict[str, float | None]]
    mean_dice: dict[str, float | None]
    mean_foreground_dice: float | None
    space: str = "preprocessed grid (target spacing, body crop)"
    seconds: float | None = optional()
    #: What ran the network (``torch`` or ``openvino``: ``train --validation-runtime``).
    runtime: str | None = optional()
    #: The member networks, for an ensemble of networks.
    ensemble: tuple[str, ...] | None = optional()

    @classmethod
    def from_cases(cls, per_case: dict[str, dict[str, float | None]], names: dict[int, str],
                   checkpoint: CheckpointKind = "final", **extra: object) -> FoldSummary:
        """The summary of ``per_case`` scores (:func:`autoseg.metrics.case_dice`) of the classes ``names``."""
        mean = {name: mean_present([per_case[c][name] for c in per_case]) for name in names.values()}
        if isinstance(extra.get("ensemble"), list):
            extra["ensemble"] = tuple(extra["ensemble"])  # type: ignore[arg-type]
        return cls(checkpoint=checkpoint, cases=per_case, mean_dice=mean,
                   mean_foreground_dice=mean_present(list(mean.values())), **extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NetworkResult:
    """One network's (or ensemble's) pooled cross-validation Dice: per class over the validation
    cases in which the class is scored (``dice_cases``; a case where it is absent from reference and
    prediction is left out), the mean, median and 95 % bootstrap interval of the mean
    (:func:`autoseg.metrics.bootstrap_interval`). Files written before the medians load without them."""

    recipe: str | None
    folds: tuple[int, ...]
    num_cases: int
    mean_dice: dict[str, float | None]
    mean_foreground_dice: float | None
    fold_mean_foreground_dice: dict[int, float | None]
    median_dice: dict[str, float | None] | None = optional()
    dice_ci95: dict[str, tuple[float, float] | None] | None = optional()
    dice_cases: dict[str, int] | None = optional()


@dataclass(frozen=True)
class CvSummary(Artefact):
    """``autoseg summarize``: the cross-validation table of a dataset's networks."""

    KIND = "cross-validation summary"
    VERSION_KEY = "cv_summary_version"
    ERROR = EvaluationError
    FIX = "run `autoseg summarize` again"

    dataset: str
    num_folds: int
    networks: dict[str, NetworkResult]


@dataclass(frozen=True)
class Candidate:
    mean_foreground_dice: float | None
    folds: tuple[int, ...]
    recipe: str | None
    eligible: bool


@dataclass(frozen=True)
class BestChoice(Artefact):
    """``autoseg find_best``'s choice, which ``autoseg predict -d`` uses."""

    KIND = "best-model choice"
    VERSION_KEY = "best_version"
    ERROR = EvaluationError
    FIX = "run `autoseg find_best` again, or delete the file"

    network: str
    #: find_best's evidence; a hand-written file naming only the network is honoured.
    mean_foreground_dice: float | None = None
    folds: tuple[int, ...] = ()
    recipe: str | None = None
    all_folds_validated: bool = False
    candidates: dict[str, Candidate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.network:
            raise EvaluationError("'network' is empty: it must name a network folder")


# --- a fold's run and an ensemble's members ----------------------------------------------------------
@dataclass(frozen=True)
class FoldSchedule:
    """A fold's budget: epochs of iterations, or training steps, or seconds of training."""

    epochs: int
    iterations_per_epoch: int
    time_budget_s: float | None = None
    steps: int | None = None


@dataclass(frozen=True)
class FoldRecord(Artefact):
    """``fold_K/fold.json``: the seed and budget a fold's run started (or last resumed) with, so that
    ``train --continue`` needs no flags."""

    KIND = "fold record"
    VERSION_KEY = "record_version"
    FIX = "delete it; the fold then resumes with the budget of its checkpoint"

    fold: int
    seed: int
    schedule: FoldSchedule
    step_time_estimate_s: float | None = None
    threads_at_start: int | None = None
    started: str | None = None
    resumed: str | None = optional()


@dataclass(frozen=True)
class EnsembleManifest(Artefact):
    """``ensemble.json``: the networks of an ensemble folder (``autoseg find_best``)."""

    KIND = "ensemble manifest"
    VERSION_KEY = "ensemble_version"
    ERROR = EvaluationError
    FIX = "run `autoseg find_best` again"

    members: tuple[str, ...]
    rule: str = "mean of the members' fold-averaged softmax"

    def __post_init__(self) -> None:
        if len(self.members) < 2 or len(set(self.members)) != len(self.members):
            raise EvaluationError(f"'members' must name two or more different networks, got {list(self.members)}")


# --- post-processing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostprocessingRules:
    """What prediction applies: keep only the largest foreground component; keep only the largest
    component of these labels; drop the components of a label under a volume (mL)."""

    keep_largest_component: tuple[int, ...] = ()
    min_component_ml: dict[int, float] = field(default_factory=dict)
    #: Keep only the largest component of all foreground classes together (one organ per patient,
    #: its vessels and lesions inside it); applied before the per-class rules.
    keep_largest_foreground: bool = False
    #: Drop the components of a label whose highest probability stays under a value (an unsure
    #: false lesion), on the network's grid before the labels go back to the input's; first of all.
    min_component_confidence: dict[int, float] = field(default_factory=dict)
    #: Drop the components of a label that touch no voxel of these classes (its parent, a tumour's
    #: liver, and the classes nested in that parent): a lesion outside its organ; applied last.
    inside_parent: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassEvidence:
    """Mean cross-validation Dice of one class before and with each candidate (NaN: no case has it)."""

    label: int
    dice_before: MaybeNan
    candidates: dict[str, MaybeNan]
    choice: str
    dice_after: MaybeNan
    enabled: bool
    #: Per confidence candidate, the summed change of the other classes' mean Dice it causes (its
    #: dropped voxels take their next most probable class); the choice weighs it with the class's
    #: own Dice. Absent in decisions written before the field.
    other_classes_change: dict[str, MaybeNan] | None = optional()
    #: For the all-foreground rule: each class's change of mean Dice with it (by class name); the
    #: rule is chosen only where the mean rises and no class falls. Absent before the field.
    class_change: dict[str, MaybeNan] | None = optional()
    #: Per candidate that loses any, how many reference components of at least
    #: ``GUARDED_OBJECT_ML`` (a 10 mm lesion) the class's CV predictions touched before it and do not
    #: after it (for the all-foreground rule, summed over the classes): such a candidate is never
    #: chosen. Absent where none loses one, and in decisions written before the field.
    objects_lost: dict[str, int] | None = optional()


@dataclass(frozen=True)
class PostprocessingDecision(Artefact):
    """The post-processing decided from cross-validation, stored with the model."""

    KIND = "post-processing decision"
    VERSION_KEY = "postprocessing_version"
    FIX = "run `autoseg find_best` again (it decides the post-processing), or delete the file"

    keep_largest_component: tuple[int, ...]
    min_component_ml: dict[int, float]
    evidence: dict[str, ClassEvidence]
    cases: int
    grid_spacing_zyx: tuple[float, ...]
    rule: str
    #: Written by autoseg 2026-12 and later; an older decision never had it (False).
    keep_largest_foreground: bool = False
    #: Written since 2026-12-05; an older decision never had it (empty).
    min_component_confidence: dict[int, float] = field(default_factory=dict)
    #: Written since 2026-12-06; an older decision never had it (empty).
    inside_parent: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        empty = [k for k, v in self.inside_parent.items() if not v]
        if empty:  # no parent class: every component would count as outside it and be dropped
            raise EvaluationError(f"'inside_parent' of classes {empty} names no parent class")

    @property
    def rules(self) -> PostprocessingRules:
        return PostprocessingRules(self.keep_largest_component, self.min_component_ml, self.keep_largest_foreground,
                                   self.min_component_confidence, self.inside_parent)


# --- case report ---------------------------------------------------------------------------------------
ResolvedPrecision = Resolved


@dataclass(frozen=True)
class Lesion:
    """One connected tumour component (:func:`autoseg.inference.report.lesion_table`)."""

    volume_ml: float
    voxels: int
    #: Bounding-box extent (z, y, x) in mm.
    extent_mm: tuple[float, ...]
    #: Centre of mass as a voxel index (z, y, x) of the label map.
    centroid_zyx: tuple[float, ...] | None = optional()
    #: Centre of mass in patient coordinates (x, y, z) in mm: SimpleITK's physical space, DICOM's LPS
    #: (x to the patient's left, y to posterior, z to head).
    centroid_mm: tuple[float, ...] | None = optional()
    #: Longest in-plane distance within the lesion on any axial slice, in mm (RECIST-like).
    axial_diameter_mm: float | None = optional()


@dataclass(frozen=True)
class TumourTable:
    """Every lesion counted; the largest listed (``listed`` says which)."""

    count: int
    lesions: tuple[Lesion, ...]
    listed: str
    #: Lesions smaller than ``min_listed_ml`` are counted in ``count`` but not listed.
    min_listed_ml: float | None = optional()
    below_minimum: int | None = optional()


@dataclass(frozen=True)
class Provenance:
    """What produced a report: autoseg, the model (SHA-256 of its plans and weights), the input, when."""

    autoseg_version: str
    #: SHA-256 of the plans as canonical JSON (sorted keys, no spaces).
    plans_sha256: str
    #: SHA-256 over the SHA-256 of each fold's weights file (``fold:digest`` lines, sorted).
    weights_sha256: str | None = optional()
    series_instance_uid: str | None = optional()
    command_line: tuple[str, ...] | None = optional()
    #: ISO 8601, UTC.
    date: str | None = optional()


@dataclass(frozen=True)
class RoiReport:
    """What a cascade's region-of-interest model found (:func:`autoseg.inference.predictor.roi_box`)."""

    model: str
    margin_mm: float
    foreground_ml: float
    dropped_ml: float
    bbox: tuple[tuple[int, int], ...] | None
    seconds: float
    #: The ROI model's plans and weights (as :class:`Provenance` names the main model's).
    plans_sha256: str | None = optional()
    weights_sha256: str | None = optional()


@dataclass(frozen=True)
class CaseReport(Artefact):
    """``<case>.report.json``: volumes per class, tumour count and sizes, and how the case was predicted.

    :func:`autoseg.inference.report.measure_case` fills the measurements; prediction adds the rest."""

    KIND = "case report"
    VERSION_KEY = "report_version"
    FIX = "predict the case again (`autoseg predict ... --overwrite`)"

    volumes_ml: dict[str, float]
    voxel_volume_ml: float
    shape_zyx: tuple[int, ...]
    spacing_zyx: tuple[float, ...]
    folds: tuple[int, ...]
    seconds: float
    tumours: TumourTable | None = optional()
    vessel_volume_ml: float | None = optional()
    input: str | None = optional()
    precision: ResolvedPrecision | None = optional()
    #: What ran the networks: ``torch``, ``openvino`` (``predict --runtime openvino`` on the CPU) or
    #: ``onnxruntime`` (an ONNX export).
    runtime: str | None = optional()
    #: The mirrored context the networks slid with, a share of the patch (``predict --edge-context``);
    #: absent when none.
    edge_context: float | None = optional()
    #: Seconds of each stage (preprocess, sliding_window, network_forward, restore_and_write).
    stage_seconds: dict[str, float] | None = optional()
    #: The preprocessed grid the sliding window ran over.
    region_shape: tuple[int, ...] | None = optional()
    #: Localised prediction (:mod:`autoseg.inference.localise`): the tiles of the folds' grid they
    #: predicted and all its tiles (None: the whole grid, or none because the scout found nothing),
    #: and the share of the grid's voxels of which those tiles carry more than half the probability.
    localised_tiles: tuple[int, int] | None = optional()
    localised_share: float | None = optional()
    #: What found the region: the dataset's localiser (its folder) or ``scout`` (the model's first
    #: network without overlap).
    localised_by: str | None = optional()
    postprocessing: PostprocessingRules | None = optional()
    roi: RoiReport | None = optional()
    #: What each label of the case's label map means (background included): the model's labels, or
    #: a linked run's combined table (1 liver, 2 vessel, 3 tumour).
    label_table: dict[int, str] | None = optional()
    overlays: tuple[str, ...] | None = optional()
    #: The DICOM Segmentation object's file name (``--output-format dicom-seg``).
    dicom_seg: str | None = optional()
    #: The uncertainty map and per-lesion confidence (``predict --uncertainty``).
    uncertainty: UncertaintyReport | None = optional()
    #: The surface mesh file of each structure present (``predict --meshes``), by class name.
    meshes: dict[str, str] | None = optional()
    #: Liver volume in mL (the liver class and the tumour classes inside it) and tumour volume / liver
    #: volume, when the model's labels include a liver.
    liver_volume_ml: float | None = optional()
    tumour_burden: float | None = optional()
    #: What makes this case's labels less trustworthy than the model's validation says, for people
    #: (e.g. an image with far less extent than the network's patch: too little context).
    warnings: tuple[str, ...] | None = optional()
    provenance: Provenance | None = optional()


# --- calibration and uncertainty -----------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration(Artefact):
    """``calibration.json``: the temperature fitted on the model's cross-validation predictions
    (:mod:`autoseg.inference.uncertainty`), with the calibration error before and after."""

    KIND = "calibration"
    VERSION_KEY = "calibration_version"
    UNVERSIONED = None
    ERROR = EvaluationError
    FIX = "run `autoseg find_best` again (it fits the calibration), or delete the file (temperature 1)"

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    cases: int
    voxels: int
    bins: int
    seed: int
    rule: str

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise EvaluationError(f"temperature must be > 0, got {self.temperature}")
        if self.bins < 1:
            raise EvaluationError(f"bins must be >= 1, got {self.bins}")


@dataclass(frozen=True)
class LesionConfidence:
    """One lesion (largest first, as the tumour table): its size and mean calibrated max-probability."""

    label: int
    voxels: int
    volume_ml: float
    confidence: float


@dataclass(frozen=True)
class UncertaintyReport:
    """The report's ``uncertainty``: the map's file, the temperature used and the lesions' confidence."""

    file: str
    temperature: float
    calibrated: bool
    measure: str
    mean_foreground_entropy: float | None
    lesions: tuple[LesionConfidence, ...]
