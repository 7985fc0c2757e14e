"""Where every artefact lives: the one module that spells autoseg's folder and file names.

Each stage hands files on to the next; the folder objects below own their names and paths, so no
stage spells ``"plans.json"`` or ``fold_{k}`` (a test checks that no other library file does).
What goes *into* a file (its schema) is :mod:`autoseg.schema`'s business; this module only says
where it is.

::

    $AUTOSEG_RAW/<dataset>/                     RawDataset: dataset.json, imagesTr/, labelsTr/, ...
    $AUTOSEG_PREPROCESSED/<dataset>/            PreprocessedDataset
        fingerprint.json  slices.png  plans.json  splits.json
        data/<case>.b2nd  data/<case>_seg.b2nd  data/<case>.json     CaseFiles
        localiser/                              PreprocessedDataset of the localiser: plans.json,
                                                splits.json, data/ (a coarser spacing)
    $AUTOSEG_RESULTS/<dataset>/                 ResultsDataset: cv_summary.json, best.json
        <network>/  or  ensemble__<a>__<b>/     ModelFolder: plans.json, postprocessing.json,
                                                ensemble.json (an ensemble's members)
        localiser/                              ModelFolder of the dataset's localiser
            fold_K/                             FoldFolder: checkpoint_{final,latest,best}.pt,
                                                fold.json, log.jsonl, progress.png
                validation/                     ValidationFolder: summary.json,
                                                <case>.nii.gz, <case>.pred.npz
    <model>.zip                                 ExportNames: plans.json, manifest.json, fold_K.pt
    <onnx folder>/                              ExportNames: plans.json, manifest.json, fold_K.onnx
    <predict -o>/                               CaseOutputs: <case>.nii.gz, <case>.report.json,
                                                <case>.probabilities.npz, <case>_zNNN.png
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Cross-validation folds of a model (``fold_0`` .. ``fold_4``).
NUM_FOLDS = 5

# --- names shared by several folders ---------------------------------------------------------------
PLANS = "plans.json"
POSTPROCESSING = "postprocessing.json"
CALIBRATION = "calibration.json"
#: The lock file :mod:`autoseg.locks` keeps inside a folder while a process works in it.
LOCK = ".lock"
#: Label maps autoseg writes (predictions, fold validation, the viewer's jobs).
LABEL_MAP_ENDING = ".nii.gz"
#: The localiser's folder, in a dataset's preprocessed folder and in its results (never a network's name).
LOCALISER_FOLDER = "localiser"

CheckpointKind = Literal["final", "latest", "best"]
CHECKPOINT_KINDS: tuple[CheckpointKind, ...] = ("final", "latest", "best")


# --- raw datasets (the user's) ---------------------------------------------------------------------
@dataclass(frozen=True)
class RawDataset:
    """An MSD / nnU-Net raw dataset folder (read, never written, except by the phantom generator)."""

    root: Path
    METADATA = "dataset.json"
    #: Training images and labels, held-out test images and labels.
    SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")

    @property
    def metadata(self) -> Path:
        return self.root / self.METADATA

    @property
    def images_tr(self) -> Path:
        return self.root / "imagesTr"

    @property
    def labels_tr(self) -> Path:
        return self.root / "labelsTr"

    @property
    def images_ts(self) -> Path:
        return self.root / "imagesTs"

    @property
    def labels_ts(self) -> Path:
        return self.root / "labelsTs"

    @property
    def merge_marker(self) -> Path:
        """What ``plan_and_preprocess --merge`` records about a dataset it made (its sources)."""
        return self.root / "merge.json"

    @property
    def phantom_marker(self) -> Path:
        """What the phantom generator records about a dataset it made (its parameters)."""
        return self.root / "phantom.json"


# --- preprocessed ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseFiles:
    """One preprocessed case: the image array, the uint8 label array and the properties JSON, which
    is written last and so marks the case complete."""

    image: Path
    labels: Path
    properties: Path

    def all(self) -> tuple[Path, Path, Path]:
        return self.image, self.labels, self.properties


@dataclass(frozen=True)
class PreprocessedDataset:
    """``$AUTOSEG_PREPROCESSED/<dataset>``: what ``plan_and_preprocess`` writes."""

    root: Path
    LABELS_SUFFIX = "_seg"
    #: blosc2 NDArray files (a compressed, chunked array; see autoseg.preprocessing.storage).
    ARRAY_ENDING = ".b2nd"
    PROPERTIES_ENDING = ".json"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def slices_plot(self) -> Path:
        return self.root / "slices.png"

    @property
    def plans(self) -> Path:
        return self.root / PLANS

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def localiser(self) -> "PreprocessedDataset":
        """The localiser's plans, splits and cases (``plan_and_preprocess --localiser``)."""
        return PreprocessedDataset(self.root / LOCALISER_FOLDER)

    def case(self, case_id: str) -> CaseFiles:
        return case_files_in(self.data, case_id)

    def case_ids(self) -> list[str]:
        """The cases whose properties JSON (written last) exists, sorted."""
        return sorted(p.name[: -len(self.PROPERTIES_ENDING)] for p in self.data.glob(f"*{self.PROPERTIES_ENDING}")
                      if not p.name.startswith("."))


def case_files_in(data_folder: Path, case_id: str) -> CaseFiles:
    """The files of ``case_id`` in a preprocessed ``data`` folder (the training loop is handed the
    folder alone, so it needs this without the dataset)."""
    folder = Path(data_folder)
    ending = PreprocessedDataset.ARRAY_ENDING
    return CaseFiles(folder / f"{case_id}{ending}", folder / f"{case_id}{PreprocessedDataset.LABELS_SUFFIX}{ending}",
                     folder / f"{case_id}{PreprocessedDataset.PROPERTIES_ENDING}")


def legacy_case_arrays(data_folder: Path, case_id: str) -> tuple[Path, Path]:
    """The uncompressed ``.npy`` image and label arrays autoseg wrote before preprocessing version 4
    (removed when the case is written again, and recognised to name the fix)."""
    folder = Path(data_folder)
    return folder / f"{case_id}.npy", folder / f"{case_id}{PreprocessedDataset.LABELS_SUFFIX}.npy"


# --- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationFolder:
    """``fold_K/validation``: the fold's held-out cases predicted whole, and their scores."""

    root: Path
    PREDICTION_ENDING = ".pred.npz"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def label_map(self, case: str) -> Path:
        """The case's prediction on its input grid, for ``autoseg evaluate``."""
        return self.root / f"{case}{LABEL_MAP_ENDING}"

    def prediction(self, case: str) -> Path:
        """The case's prediction on the preprocessed grid (labels and uint8 probabilities)."""
        return self.root / f"{case}{self.PREDICTION_ENDING}"

    def predicted_cases(self) -> list[str]:
        return sorted(p.name[: -len(self.PREDICTION_ENDING)] for p in self.root.glob(f"*{self.PREDICTION_ENDING}"))


@dataclass(frozen=True)
class FoldFolder:
    """``<model>/fold_K``: one fold's training run."""

    root: Path
    fold: int

    def checkpoint(self, kind: CheckpointKind) -> Path:
        return self.root / f"checkpoint_{kind}.pt"

    @property
    def final(self) -> Path:
        return self.checkpoint("final")

    @property
    def latest(self) -> Path:
        return self.checkpoint("latest")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def record(self) -> Path:
        """``fold.json``: the seed and budget the fold's run started (or resumed) with."""
        return self.root / "fold.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def progress_plot(self) -> Path:
        return self.root / "progress.png"

    @property
    def validation(self) -> ValidationFolder:
        return ValidationFolder(self.root / "validation")

    def run_files(self) -> tuple[Path, ...]:
        """What a fresh run of the fold replaces (``-f K --force``); validation is rewritten anyway."""
        return (*(self.checkpoint(k) for k in CHECKPOINT_KINDS), self.log, self.record)


@dataclass(frozen=True)
class ModelFolder:
    """``$AUTOSEG_RESULTS/<dataset>/<network>`` (or an ensemble of networks): self-contained, it holds
    the plans the folds were trained with."""

    root: Path
    ENSEMBLE_PREFIX = "ensemble__"
    ENSEMBLE_MANIFEST = "ensemble.json"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def plans(self) -> Path:
        return self.root / PLANS

    @property
    def postprocessing(self) -> Path:
        return self.root / POSTPROCESSING

    @property
    def calibration(self) -> Path:
        """The temperature ``find_best`` fitted on cross-validation (``inference.uncertainty``)."""
        return self.root / CALIBRATION

    @property
    def ensemble_manifest(self) -> Path:
        return self.root / self.ENSEMBLE_MANIFEST

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_manifest.is_file()

    def fold(self, fold: int) -> FoldFolder:
        return FoldFolder(self.root / f"fold_{fold}", fold)

    def folds(self) -> list[FoldFolder]:
        return [self.fold(k) for k in range(NUM_FOLDS)]

    def finished_folds(self) -> tuple[int, ...]:
        """The folds whose final checkpoint is written."""
        return tuple(k for k in range(NUM_FOLDS) if self.fold(k).final.is_file())

    def validation_predictions(self) -> list[Path]:
        """Every fold's validation predictions on the preprocessed grid, sorted by fold and case."""
        return [f.validation.prediction(c) for f in self.folds() if f.validation.root.is_dir()
                for c in f.validation.predicted_cases()]


@dataclass(frozen=True)
class ResultsDataset:
    """``$AUTOSEG_RESULTS/<dataset>``: a model folder per network, and the cross-validation results."""

    root: Path

    @property
    def cv_summary(self) -> Path:
        return self.root / "cv_summary.json"

    @property
    def best(self) -> Path:
        """``best.json``: the network ``find_best`` chose."""
        return self.root / "best.json"

    def model(self, network: str) -> ModelFolder:
        return ModelFolder(self.root / network)

    @property
    def localiser(self) -> ModelFolder:
        """The dataset's localiser (``train --localiser``): not a model find_best chooses from."""
        return ModelFolder(self.root / LOCALISER_FOLDER)

    def ensemble(self, members: list[str]) -> ModelFolder:
        return ModelFolder(self.root / (ModelFolder.ENSEMBLE_PREFIX + "__".join(members)))

    def ensembles(self) -> list[ModelFolder]:
        return [ModelFolder(p) for p in sorted(self.root.glob(f"{ModelFolder.ENSEMBLE_PREFIX}*")) if p.is_dir()]


# --- exports ---------------------------------------------------------------------------------------
class ExportNames:
    """Member names of an exported archive (``autoseg export``) and file names of an ONNX export."""

    PLANS = PLANS
    POSTPROCESSING = POSTPROCESSING
    CALIBRATION = CALIBRATION
    MANIFEST = "manifest.json"
    WEIGHTS_ENDING = ".pt"
    ONNX_ENDING = ".onnx"
    ARCHIVE_ENDING = ".zip"

    @staticmethod
    def weights(fold: int) -> str:
        return f"fold_{fold}{ExportNames.WEIGHTS_ENDING}"

    @staticmethod
    def onnx(fold: int) -> str:
        return f"fold_{fold}{ExportNames.ONNX_ENDING}"

    @staticmethod
    def fold_file(fold: int, ending: str) -> str:
        return f"fold_{fold}{ending}"


# --- prediction outputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseOutputs:
    """What ``autoseg predict`` writes for one case into its output folder."""

    folder: Path
    case: str
    REPORT_ENDING = ".report.json"
    PROBABILITIES_ENDING = ".probabilities.npz"

    @property
    def labels(self) -> Path:
        return self.folder / f"{self.case}{LABEL_MAP_ENDING}"

    @property
    def report(self) -> Path:
        return self.folder / f"{self.case}{self.REPORT_ENDING}"

    @property
    def probabilities(self) -> Path:
        return self.folder / f"{self.case}{self.PROBABILITIES_ENDING}"

    @property
    def uncertainty(self) -> Path:
        """The per-voxel normalised predictive entropy on the input grid (``--uncertainty``)."""
        return self.folder / f"{self.case}_uncertainty{LABEL_MAP_ENDING}"

    def overlay(self, z: int) -> Path:
        return self.folder / f"{self.case}_z{z:03d}.png"

    @property
    def dicom_seg(self) -> Path:
        """``<case>.seg.dcm``: the label map as a DICOM Segmentation object (``--output-format dicom-seg``)."""
        return self.folder / f"{self.case}.seg.dcm"

    MESH_ENDING = ".stl"

    def mesh(self, structure: str) -> Path:
        """The surface mesh of one structure (``structure`` already safe as part of a file name)."""
        return self.folder / f"{self.case}_{structure}{self.MESH_ENDING}"

    def required(self) -> tuple[Path, Path]:
        """The outputs every prediction writes (label map and report): a case with both is done."""
        return self.labels, self.report


@dataclass(frozen=True)
class RunOutputs:
    """What one ``autoseg predict`` run writes beside its cases' outputs."""

    folder: Path

    @property
    def report(self) -> Path:
        """``report.json``: the cases predicted, skipped and failed."""
        return self.folder / "report.json"


# --- evaluation, the viewer's jobs, the machine cache ------------------------------------------------
@dataclass(frozen=True)
class EvaluationFiles:
    """``autoseg evaluate``'s outputs, in the predictions folder."""

    folder: Path

    @property
    def json(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def csv(self) -> Path:
        return self.folder / "metrics.csv"


@dataclass(frozen=True)
class JobFolder:
    """One upload of the web viewer (``autoseg serve``): its status, input and outputs."""

    root: Path
    #: The uploaded image keeps its format's ending under this stem.
    INPUT_STEM = "input"
    OUTPUT_CASE = "labels"

    STATUS = "status.json"
    #: Endings of the stored upload by the kind of image (DICOM series are converted to NIfTI).
    INPUT_ENDINGS = {"nifti-gz": ".nii.gz", "nifti": ".nii", "nrrd": ".nrrd", "mha": ".mha"}

    @property
    def status(self) -> Path:
        return self.root / self.STATUS

    @property
    def upload_part(self) -> Path:
        """The upload while it streams in."""
        return self.root / "upload.part"

    def input(self, kind: str) -> Path:
        """The stored upload of an image of ``kind`` (a key of :attr:`INPUT_ENDINGS`)."""
        return self.root / f"{self.INPUT_STEM}{self.INPUT_ENDINGS[kind]}"

    @property
    def outputs(self) -> CaseOutputs:
        """Where the job's prediction goes (as ``predict`` writes it)."""
        return CaseOutputs(self.root, self.OUTPUT_CASE)

    @property
    def report(self) -> Path:
        """The report the viewer serves (the prediction's report, with the viewer's fields)."""
        return self.root / "report.json"

    @classmethod
    def downloads(cls) -> tuple[str, ...]:
        """The names of a job's files a user may download: its label map and its report."""
        job = cls(Path())
        return job.outputs.labels.name, job.report.name


def server_lock(workdir: Path) -> Path:
    """The file an ``autoseg serve`` holds locked while it uses ``workdir``."""
    return workdir / LOCK


def calibration_cache(cache: Path) -> Path:
    """The per-machine CPU calibration, in :attr:`autoseg.settings.Settings.cache`."""
    return cache / "cpu_calibration.json"
