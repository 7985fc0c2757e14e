"""Raw dataset discovery: Medical Segmentation Decathlon task folders and nnU-Net v2 raw folders.

``-d Task08``, ``-d 8``, ``-d Dataset008_HepaticVessel``, ``-d Task08_HepaticVessel`` and a plain
path all resolve to the same folder.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoseg.errors import DatasetError
from autoseg.io import IMAGE_SUFFIXES, strip_image_suffix
from autoseg.layout import PreprocessedDataset, RawDataset
from autoseg.partial_labels import LabelSpace, PartialLabel, partial_problems, stored_label_names

_ID_RE = re.compile(r"^(?:task|dataset)?0*(\d+)$", re.IGNORECASE)
_FOLDER_RE = re.compile(r"^(?:Task(\d{2,3})|Dataset(\d{3}))_(.+)$")


@dataclass(frozen=True)
class Case:
    """One training case: its image file(s) (one per channel, or one 4D file) and its label."""

    identifier: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A raw dataset as autoseg sees it, whatever its on-disk format."""

    name: str
    root: Path
    format: str  # "msd" or "nnunet"
    channel_names: tuple[str, ...]
    labels: dict[int, str]  # id -> name, 0 is background
    cases: tuple[Case, ...]
    #: Label values standing for one of several classes (``"partial_labels"`` in dataset.json: a
    #: merged dataset's, :mod:`autoseg.partial_labels`).
    partial: tuple[PartialLabel, ...] = ()

    @property
    def is_ct(self) -> bool:
        return all(re.match(r"^CT\b", c.strip().upper()) is not None for c in self.channel_names)

    @property
    def num_classes(self) -> int:
        """Number of output classes including background."""
        return max(self.labels) + 1

    @property
    def stored_labels(self) -> dict[int, str]:
        """Every value a label map may hold: the classes and the partial values."""
        return stored_label_names(self.labels, self.partial)

    @property
    def label_space(self) -> LabelSpace:
        """The stored label values and the classes each allows (plain classes unless partial)."""
        return LabelSpace(self.num_classes, self.partial)

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(k for k in self.labels if k != 0)

    @property
    def dataset_id(self) -> int | None:
        m = _FOLDER_RE.match(self.name)
        return int(m.group(1) or m.group(2)) if m else None


def resolve_dataset_path(spec: str | Path, raw_root: Path) -> Path:
    """Find a dataset folder from a path, a full folder name, a task name or a number."""
    text = str(spec)
    as_path = Path(text).expanduser()
    if as_path.is_dir() and RawDataset(as_path).metadata.exists():
        return as_path.resolve()
    if (raw_root / text).is_dir():
        return (raw_root / text).resolve()
    m = _ID_RE.match(text.split("_")[0])
    if m and raw_root.is_dir():
        wanted = int(m.group(1))
        found = _the_one(spec, raw_root, lambda name: _folder_id(name) == wanted)
        if found is not None:
            return found
    if raw_root.is_dir():  # the name alone: LiverVesselTumour for Dataset900_LiverVesselTumour
        found = _the_one(spec, raw_root, lambda name: (f := _FOLDER_RE.match(name)) is not None and f.group(3) == text)
        if found is not None:
            return found
    known = sorted(p.name for p in raw_root.iterdir() if p.is_dir()) if raw_root.is_dir() else []
    raise DatasetError(
        f"no dataset '{spec}' found (raw folder holds: {', '.join(known) or 'nothing'})", raw_root,
        "set AUTOSEG_RAW to the folder holding TaskNN_Name or DatasetNNN_Name folders, or pass a path")


def _the_one(spec: str | Path, raw_root: Path, matches: Callable[[str], bool]) -> Path | None:
    """The one folder of ``raw_root`` whose name ``matches`` (None: none); several are an error."""
    hits = sorted(p for p in raw_root.iterdir() if p.is_dir() and matches(p.name))
    if len(hits) > 1:
        raise DatasetError(f"dataset '{spec}' is ambiguous: {', '.join(h.name for h in hits)}",
                           raw_root, "pass the full folder name or a path")
    return hits[0].resolve() if hits else None


def _folder_id(name: str) -> int | None:
    m = _FOLDER_RE.match(name)
    return int(m.group(1) or m.group(2)) if m else None


def find_preprocessed(spec: str | Path, raw_root: Path, preprocessed_root: Path) -> PreprocessedDataset:
    """The dataset's preprocessed folder, found by the same names as the raw one (the raw folder
    need not exist any more once a dataset is preprocessed)."""
    for root in (preprocessed_root, raw_root):
        try:
            name = resolve_dataset_path(spec, root).name
        except DatasetError:
            continue
        found = PreprocessedDataset(preprocessed_root / name)
        if found.plans.is_file():
            return found
    from autoseg.errors import PlansError

    raise PlansError(f"no preprocessed dataset '{spec}'", preprocessed_root,
                     f"run `autoseg plan_and_preprocess -d {spec}` first")


def load_dataset(path: Path) -> Dataset:
    """Read ``dataset.json`` and pair images with labels; every inconsistency is a DatasetError."""
    meta_path = RawDataset(path).metadata
    if not meta_path.is_file():
        raise DatasetError(f"no {meta_path.name} in the dataset folder", path,
                           f"add an MSD or nnU-Net v2 {meta_path.name} describing channels and labels")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path.name} is not valid JSON ({exc})", meta_path,
                           "repair the file (a JSON validator shows where)") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path.name} must hold a JSON object", meta_path,
                           "see docs/datasets.md (raw folders)")
    if "modality" in meta:
        return _load_msd(path, meta, meta_path)
    if "channel_names" in meta:
        return _load_nnunet(path, meta, meta_path)
    raise DatasetError(f"{meta_path.name} has neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2)",
                       meta_path, "add the channel description, e.g. \"modality\": {\"0\": \"CT\"}")


def _channels(meta: dict[str, Any], key: str, meta_path: Path) -> tuple[str, ...]:
    raw = meta[key]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"'{key}' must map channel index to name", meta_path,
                           f"write e.g. \"{key}\": {{\"0\": \"CT\"}}")
    try:
        order = sorted(raw, key=int)
    except ValueError:
        raise DatasetError(f"'{key}' keys must be channel numbers", meta_path,
                           "use \"0\", \"1\", ... as keys") from None
    return tuple(str(raw[k]) for k in order)


def _labels(raw: Any, name_to_id: bool, meta_path: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError("'labels' is missing or empty", meta_path,
                           "list the labels, with 0 as background")
    labels: dict[int, str] = {}
    for k, v in raw.items():
        ident, name = (v, k) if name_to_id else (k, v)
        try:
            labels[int(ident)] = str(name)
        except (TypeError, ValueError):
            raise DatasetError(f"label '{k}': '{ident}' is not an integer id (region labels are not "
                               "supported)", meta_path, "give every label one integer id") from None
    if 0 not in labels:
        raise DatasetError("labels do not include 0 (background)", meta_path,
                           "add \"0\": \"background\"")
    return labels


def _visible_images(folder: Path, series_folders: bool = False) -> list[Path]:
    """Image files in ``folder`` (and DICOM series sub-folders if asked), skipping hidden files
    such as the ``._`` files macOS leaves beside every file of an MSD tarball."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (
        (p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)) or (series_folders and p.is_dir())))


def _by_id(paths: list[Path], key: Callable[[Path], str]) -> dict[str, Path]:
    """Map each file to its case id (``key``), refusing two files with one id (case.nii.gz and
    case.nrrd): one would otherwise be dropped without a word."""
    found: dict[str, Path] = {}
    for p in paths:
        other = found.setdefault(key(p), p)
        if other != p:
            raise DatasetError(f"{other.name} and {p.name} are both case '{key(p)}'", p.parent,
                               "keep one file per case (and channel): remove or rename the other")
    return found


def _pair_check(path: Path, image_ids: set[str], label_ids: set[str]) -> None:
    orphan_images = sorted(image_ids - label_ids)
    orphan_labels = sorted(label_ids - image_ids)
    if orphan_images:
        raise DatasetError(f"image(s) without a label: {', '.join(orphan_images[:5])}",
                           RawDataset(path).labels_tr, "add the missing label files or remove those images")
    if orphan_labels:
        raise DatasetError(f"label(s) without an image: {', '.join(orphan_labels[:5])}",
                           RawDataset(path).images_tr, "add the missing images or remove those labels")


def _load_msd(path: Path, meta: dict[str, Any], meta_path: Path) -> Dataset:
    channels = _channels(meta, "modality", meta_path)
    labels = _labels(meta.get("labels"), name_to_id=False, meta_path=meta_path)
    images = _by_id(_visible_images(RawDataset(path).images_tr, series_folders=True),
                    lambda p: strip_image_suffix(p.name))
    segs = _by_id(_visible_images(RawDataset(path).labels_tr), lambda p: strip_image_suffix(p.name))
    _pair_check(path, set(images), set(segs))
    cases = tuple(Case(k, (images[k],), segs[k]) for k in sorted(images))
    return _finish(path, "msd", channels, labels, cases, partial_labels_of(meta, labels, meta_path))


def _load_nnunet(path: Path, meta: dict[str, Any], meta_path: Path) -> Dataset:
    channels = _channels(meta, "channel_names", meta_path)
    labels = _labels(meta.get("labels"), name_to_id=True, meta_path=meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    by_case: dict[str, dict[int, Path]] = {}
    for stem, p in _by_id(_visible_images(RawDataset(path).images_tr), lambda p: _image_stem(p, ending)).items():
        m = re.match(r"^(.*)_(\d{4})$", stem)
        if not m:
            raise DatasetError("image name lacks the _0000 channel suffix", p,
                               "rename to CASE_0000" + ending + " (one file per channel)")
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
    segs = _by_id(_visible_images(RawDataset(path).labels_tr), lambda p: strip_image_suffix(p.name))
    _pair_check(path, set(by_case), set(segs))
    cases = []
    for ident in sorted(by_case):
        found = by_case[ident]
        if sorted(found) != list(range(len(channels))):
            raise DatasetError(f"case '{ident}' has channels {sorted(found)}, {RawDataset.METADATA} declares "
                               f"{len(channels)}", RawDataset(path).images_tr,
                               "provide one file per channel: CASE_0000, CASE_0001, ...")
        cases.append(Case(ident, tuple(found[c] for c in range(len(channels))), segs[ident]))
    return _finish(path, "nnunet", channels, labels, tuple(cases), partial_labels_of(meta, labels, meta_path))


def _image_stem(path: Path, ending: str) -> str:
    return path.name[: -len(ending)] if path.name.endswith(ending) else strip_image_suffix(path.name)


def partial_labels_of(meta: dict[str, Any], labels: dict[int, str], meta_path: Path) -> tuple[PartialLabel, ...]:
    """``"partial_labels": {"4": {"classes": [0, 2], "scored_as": 0}, ...}``, checked."""
    raw = meta.get("partial_labels")
    if raw is None:
        return ()
    example = '"partial_labels": {"4": {"classes": [0, 2], "scored_as": 0}}'
    if not isinstance(raw, dict):
        raise DatasetError("'partial_labels' must map a label value to its classes", meta_path, f"write e.g. {example}")
    out = []
    for key, spec in raw.items():
        try:
            classes = tuple(int(c) for c in spec["classes"])
            out.append(PartialLabel(int(key), classes, int(spec.get("scored_as", classes[0]))))
        except (TypeError, ValueError, KeyError, IndexError):
            raise DatasetError(f"partial label '{key}': {spec!r} is not a value with a list of classes",
                               meta_path, f"write e.g. {example}") from None
    problems = partial_problems(out, labels)
    if problems:
        raise DatasetError("; ".join(problems), meta_path,
                           "correct 'partial_labels' (docs/datasets.md, \"Partial labels\")")
    return tuple(out)


def _finish(path: Path, fmt: str, channels: tuple[str, ...], labels: dict[int, str],
            cases: tuple[Case, ...], partial: tuple[PartialLabel, ...] = ()) -> Dataset:
    if not cases:
        raise DatasetError("dataset has no training cases (imagesTr/labelsTr are empty or missing)",
                           path, "put images in imagesTr/ and labels in labelsTr/")
    return Dataset(path.name, path, fmt, channels, labels, cases, partial)


def find_dataset(spec: str | Path, raw_root: Path) -> Dataset:
    """Resolve ``spec`` (``Task08``, ``8``, a folder name or a path) and load the dataset."""
    return load_dataset(resolve_dataset_path(spec, raw_root))
