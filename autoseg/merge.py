"""Merging raw datasets that label different classes into one dataset with partial labels.

``autoseg plan_and_preprocess -d Task03 -d Task08 --merge LiverVesselTumour`` writes
``$AUTOSEG_RAW/Dataset9NN_LiverVesselTumour``: the sources' training images linked (never copied
or changed), each label map rewritten onto the merged classes, and ``dataset.json`` declaring the
partial label values (:mod:`autoseg.partial_labels`) that say what a source did not annotate.

Classes are matched by name (``cancer``, ``tumor`` and ``lesion`` are the tumour; ``vessels`` and
``hepatic vessel`` the vessel). A class a source does not label may lie in its background, and
inside its label of the class that contains it (:data:`CONTAINED_IN`): Task03's liver label covers
the vessels in the liver, so its liver voxels are stored as "liver or vessel"; Task08's background
is "background or liver". ``merge.json`` records the sources, the mapping and each label map's source file (path, size,
modification time); a second run with the same sources brings the folder up to date (a label map is
written again when its source file or the mapping changed), one with other sources is refused.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.datasets import Case, Dataset, load_dataset, resolve_dataset_path
from autoseg.errors import DatasetError
from autoseg.io import read_label, strip_image_suffix, write_image, write_json
from autoseg.layout import RawDataset
from autoseg.partial_labels import PartialLabel

log = logging.getLogger(__name__)

MERGE_VERSION = 1
#: Merged datasets are numbered from here (nnU-Net v2 style ``DatasetNNN_Name``).
FIRST_MERGED_ID = 900
#: Names that mean one class, after lower-casing and dropping everything but letters.
SYNONYMS = {"cancer": "tumour", "tumor": "tumour", "tumors": "tumour", "tumours": "tumour",
            "lesion": "tumour", "lesions": "tumour", "livertumor": "tumour", "livertumour": "tumour",
            "livercancer": "tumour", "hepatictumour": "tumour", "vessels": "vessel",
            "hepaticvessel": "vessel", "hepaticvessels": "vessel", "livervessel": "vessel",
            "livervessels": "vessel", "bg": "background"}
#: The order merged classes are numbered in where the names are known.
CANONICAL_ORDER = ("liver", "vessel", "tumour")
#: A class that, where a source does not label it, may lie inside that source's label of another
#: (a source labelling the liver but not the vessels counts the vessels inside the liver as liver).
CONTAINED_IN = {"vessel": "liver", "tumour": "liver"}


def class_key(name: str) -> str:
    """The name a class is matched by: ``Cancer`` -> ``tumour``, ``Hepatic vessels`` -> ``vessel``."""
    letters = re.sub(r"[^a-z]", "", name.lower())
    return SYNONYMS.get(letters, letters)


@dataclass(frozen=True)
class MergePlan:
    """The merged classes and, per source, what each of its label values becomes."""

    classes: dict[int, str]
    partial: tuple[PartialLabel, ...]
    value_maps: tuple[dict[int, int], ...]  # per source: its label value -> stored merged value


def plan_merge(sources: list[Dataset]) -> MergePlan:
    """Match the sources' classes by name and derive each source value's stored merged value."""
    keys: list[str] = []
    for ds in sources:
        for lab in ds.foreground_labels:
            if class_key(ds.labels[lab]) not in keys:
                keys.append(class_key(ds.labels[lab]))
    seen = {k: i for i, k in enumerate(keys)}  # first appearance orders the names not in CANONICAL_ORDER
    keys.sort(key=lambda k: (CANONICAL_ORDER.index(k) if k in CANONICAL_ORDER else len(CANONICAL_ORDER), seen[k]))
    ids = {k: i + 1 for i, k in enumerate(keys)}
    classes = {0: "background", **{i: k for k, i in ids.items()}}
    sets: dict[tuple[tuple[int, ...], int], int] = {}  # (allowed classes, scored as) -> stored value
    maps = []
    for ds in sources:
        if ds.partial:
            raise DatasetError(f"{ds.name} has partial labels itself", ds.root,
                               "merge the datasets it was merged from instead")
        own = {class_key(ds.labels[lab]) for lab in ds.foreground_labels}
        missing = [k for k in keys if k not in own]
        value_map = {0: _stored((0, *(ids[k] for k in missing)), 0, classes, sets)}
        for lab in ds.foreground_labels:
            key = class_key(ds.labels[lab])
            inside = [ids[k] for k in missing if CONTAINED_IN.get(k) == key]
            value_map[lab] = _stored((ids[key], *inside), ids[key], classes, sets)
        maps.append(value_map)
    partial = tuple(PartialLabel(v, allowed, scored)
                    for (allowed, scored), v in sorted(sets.items(), key=lambda i: i[1]))
    return MergePlan(classes, partial, tuple(maps))


def _stored(allowed: tuple[int, ...], scored_as: int, classes: dict[int, str],
            sets: dict[tuple[tuple[int, ...], int], int]) -> int:
    allowed = tuple(sorted(set(allowed)))
    if len(allowed) == 1:
        return allowed[0]
    return sets.setdefault((allowed, scored_as), len(classes) + len(sets))


def merged_folder(raw_root: Path, name: str) -> Path:
    """The merged dataset's folder: an existing ``*_<name>`` made by a merge, else the next free id."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise DatasetError(f"merged dataset name '{name}' must be letters, digits and '-' only", raw_root,
                           "give a name such as LiverVesselTumour")
    existing = sorted(p for p in raw_root.glob(f"*_{name}") if p.is_dir()) if raw_root.is_dir() else []
    if existing:
        return existing[0]
    taken = {int(m.group(1)) for p in raw_root.glob("*") if (m := re.match(r"^(?:Task|Dataset)(\d+)_", p.name))} \
        if raw_root.is_dir() else set()
    ident = next(i for i in range(FIRST_MERGED_ID, 1000) if i not in taken)
    return raw_root / f"Dataset{ident:03d}_{name}"


def merge_datasets(specs: list[str], name: str, raw_root: Path) -> Path:
    """Write (or bring up to date) the merged dataset ``name`` from ``specs``; returns its folder."""
    if len(specs) < 2:
        raise DatasetError("--merge needs at least two datasets", raw_root, "pass -d twice or more, e.g. "
                           "-d Task03 -d Task08 --merge LiverVesselTumour")
    sources = [load_dataset(resolve_dataset_path(s, raw_root)) for s in specs]
    if len({ds.root for ds in sources}) < len(sources):
        raise DatasetError("a dataset is given twice", raw_root, "name each dataset once")
    channels = {ds.channel_names for ds in sources}
    if len(channels) > 1:
        raise DatasetError(f"the datasets have different channels: {sorted(channels)}", sources[1].root,
                           "merge only datasets with the same input channels")
    msd = all(ds.format == "msd" for ds in sources)
    if not msd:
        _check_nnunet_output(sources)
    merge = plan_merge(sources)
    out = merged_folder(raw_root, name)
    marker = {"merge_version": MERGE_VERSION, "sources": [str(ds.root) for ds in sources],
              "classes": {str(k): v for k, v in merge.classes.items()},
              "value_maps": [{str(k): v for k, v in m.items()} for m in merge.value_maps]}
    previous = _check_marker(out, marker)
    raw = RawDataset(out)
    raw.images_tr.mkdir(parents=True, exist_ok=True)
    raw.labels_tr.mkdir(parents=True, exist_ok=True)
    same_mapping = all(previous.get(k) == marker[k] for k in ("merge_version", "classes", "value_maps"))
    write_json(raw.merge_marker, {**marker, "cases": previous.get("cases", {}) if same_mapping else {}})
    identifiers = _case_ids(sources)
    written: set[str] = set()
    cases: dict[str, dict[str, Any]] = {}
    for ds, value_map in zip(sources, merge.value_maps):
        for case in ds.cases:
            ident = identifiers[(ds.root, case.identifier)]
            old = (previous.get("cases", {}) if same_mapping else {}).get(ident)
            cases[ident] = _merge_case(case, ident, value_map, raw, msd, old, written)
    _remove_stale(raw, written)
    write_json(raw.metadata, _metadata(sources, merge, name, sorted(cases), {c: v["image"] for c, v in cases.items()}))
    write_json(raw.merge_marker, {**marker, "cases": cases})
    log.info("merged %s into %s: classes %s, partial labels %s", ", ".join(ds.name for ds in sources), out,
             merge.classes, [(p.value, p.classes) for p in merge.partial])
    return out


def _check_nnunet_output(sources: list[Dataset]) -> None:
    """An nnU-Net-format merge (any source in that format) links one file per channel: an MSD
    source's DICOM folders or 4D multi-channel files cannot be linked so."""
    for ds in sources:
        if ds.format != "msd":
            continue
        bad = next((c for c in ds.cases if c.images[0].is_dir() or len(ds.channel_names) > 1), None)
        if bad is not None:
            raise DatasetError(f"{ds.name} holds {'DICOM series folders' if bad.images[0].is_dir() else '4D images'}, "
                               "which an nnU-Net-format merge (another source is nnU-Net format) cannot link",
                               bad.images[0], "convert that dataset to NIfTI, one file per channel, or merge only "
                               "MSD-format datasets")


def _check_marker(out: Path, marker: dict[str, Any]) -> dict[str, Any]:
    """The marker of an earlier merge into ``out`` (empty for a new folder); refuses a folder made
    otherwise or from other sources."""
    path = RawDataset(out).merge_marker
    if not out.exists():
        return {}
    if not path.is_file():
        raise DatasetError(f"{out.name} exists and was not made by --merge", out,
                           "choose another --merge name (its files are left alone)")
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        found = {}
    if not isinstance(found, dict) or found.get("sources") != marker["sources"]:
        raise DatasetError(f"{out.name} was merged from {found.get('sources') if isinstance(found, dict) else '?'}, "
                           f"not {marker['sources']}", path,
                           "choose another --merge name, or delete that folder to merge anew")
    return found


def _case_ids(sources: list[Dataset]) -> dict[tuple[Path, str], str]:
    """Each source case's merged identifier: its own, or prefixed with its dataset where two sources
    share an identifier."""
    counts: dict[str, int] = {}
    for ds in sources:
        for case in ds.cases:
            counts[case.identifier] = counts.get(case.identifier, 0) + 1
    return {(ds.root, c.identifier): c.identifier if counts[c.identifier] == 1 else f"{ds.name}_{c.identifier}"
            for ds in sources for c in ds.cases}


def _image_name(identifier: str, channel: int, source: Path, msd: bool) -> str:
    """The link's name: MSD ``case.nii.gz`` (or a DICOM folder's ``case``), nnU-Net ``case_0000.nii.gz``."""
    suffix = _suffix(source)
    return f"{identifier}{suffix}" if msd else f"{identifier}_{channel:04d}{suffix}"


def _suffix(path: Path) -> str:
    """An image file's suffix as autoseg reads it (``.nii.gz``); none for a DICOM folder."""
    return "" if path.is_dir() else path.name[len(strip_image_suffix(path.name)):]


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _merge_case(case: Case, identifier: str, value_map: dict[int, int], raw: RawDataset, msd: bool,
                old: dict[str, Any] | None, written: set[str]) -> dict[str, Any]:
    """Link the case's image(s) (relative links, so a moved raw folder keeps them) and write its
    label map in merged values unless the one there was made from this very source file with this
    mapping (``old``: what the last merge recorded). Adds the file names to ``written``; returns the
    case's record for ``merge.json``."""
    names = []
    for channel, image in enumerate(case.images):
        link = raw.images_tr / _image_name(identifier, channel, image, msd)
        target = os.path.relpath(image.resolve(), link.parent.resolve())
        if not (link.is_symlink() and os.readlink(link) == target):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=image.is_dir())
        names.append(link.name)
        written.add(link.name)
    assert case.label is not None  # training cases always have one (datasets pairs them)
    out = raw.labels_tr / f"{identifier}.nii.gz"  # a raw label map: named as the dataset formats say
    written.add(out.name)
    stamp = _stamp(case.label)
    if old is None or old.get("label") != stamp or not out.is_file():
        label, geometry = read_label(case.label)
        unknown = [int(v) for v in np.unique(label) if int(v) not in value_map]
        if unknown:
            raise DatasetError(f"label map holds value(s) {unknown} its dataset.json does not declare", case.label,
                               "fix the label map or declare the labels in dataset.json")
        lut = np.zeros(256, dtype=np.uint8)
        for src, dst in value_map.items():
            lut[src] = dst
        write_image(out, lut[label.astype(np.int64)], geometry)
    return {"label": stamp, "image": names[0]}


def _remove_stale(raw: RawDataset, written: set[str]) -> None:
    """Links and labels this merge did not write: cases no longer in any source (a re-run after a
    source lost a case). Only links in imagesTr and files in labelsTr, both the merge's own."""
    for folder in (raw.images_tr, raw.labels_tr):
        for p in folder.iterdir():
            if p.name not in written and (p.is_symlink() or folder == raw.labels_tr):
                log.info("merge: removing %s (no source case any more)", p)
                p.unlink()


def _metadata(sources: list[Dataset], merge: MergePlan, name: str, cases: list[str],
              images: dict[str, str]) -> dict[str, Any]:
    first = sources[0]
    partial = {str(p.value): {"classes": list(p.classes), "scored_as": p.scored_as} for p in merge.partial}
    common = {"name": name, "description": "merged by autoseg from " + ", ".join(ds.name for ds in sources),
              "partial_labels": partial, "numTraining": len(cases)}
    if all(ds.format == "msd" for ds in sources):
        return {**common, "tensorImageSize": "3D",
                "modality": {str(i): c for i, c in enumerate(first.channel_names)},
                "labels": {str(k): v for k, v in merge.classes.items()},
                "training": [{"image": f"./imagesTr/{images[c]}", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}
    return {**common, "channel_names": {str(i): c for i, c in enumerate(first.channel_names)},
            "labels": {v: k for k, v in merge.classes.items()}, "file_ending": ".nii.gz"}
