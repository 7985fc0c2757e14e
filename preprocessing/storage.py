"""Preprocessed cases on disk and the check that decides whether a case is up to date.

The files of a case are :class:`autoseg.layout.CaseFiles`: the image, float32 ``(C, z, y, x)``, the
C normalised channels; the label map, uint8 ``(z, y, x)`` (background 0; all zeros for a case
without labels). Both are plain ``.npy`` files, so training can ``np.load(path, mmap_mode="r")`` and
read a random patch without loading the case. The properties
(:class:`autoseg.artefacts.CaseProperties`, from
:func:`autoseg.preprocessing.preprocess.preprocess_case`) are written last, so a case whose properties
load and whose ``plans_key`` matches is complete.

Until preprocessing version 3 the label map was a float32 last channel of ``<case>.npy``: a single
CT channel then took 8 bytes a voxel on disk and in the page cache instead of 5. Version 2 cases fail
the up-to-date check (their key differs) and are written again.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autoseg.artefacts import CaseProperties
from autoseg.errors import AutosegError
from autoseg.io import atomic_path
from autoseg.layout import PreprocessedDataset, case_files_in
from autoseg.plans import Plans

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 3  # bump when a code change alters the output, so old cases are redone
#: Ends the label array's name (a case id ending in it would collide; preprocessing refuses those).
LABELS_SUFFIX = PreprocessedDataset.LABELS_SUFFIX


def labels_file(data_folder: Path, case_id: str) -> Path:
    """A case's label array in a preprocessed ``data`` folder."""
    return case_files_in(data_folder, case_id).labels


def data_dir(out_dir: Path) -> Path:
    return PreprocessedDataset(Path(out_dir)).data


def case_files(out_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    """The image array, the label array and the properties JSON of one case."""
    return PreprocessedDataset(Path(out_dir)).case(case_id).all()


def case_ids(out_dir: Path) -> list[str]:
    """The identifiers of the cases in a preprocessed folder (those whose properties JSON, written
    last, exists), sorted."""
    return PreprocessedDataset(Path(out_dir)).case_ids()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from a ``.npy`` header, or None when the file is not a readable array or is
    shorter or longer than its header declares (a truncated copy, an interrupted write by an older
    version): comparing the file size costs nothing, reading the data would cost the whole file."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return None
        shape, _, dtype = read_header(fh)
        expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or path.stat().st_size != expected:
        return None
    return tuple(shape), dtype


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """A preprocessed ``.npy`` array (memory-mapped by default), refused with the fix when it is
    missing, damaged or incomplete (a memory map of a truncated file would fail on first touch, or
    a full read raise a bare ValueError)."""
    fix = "run `autoseg plan_and_preprocess` for this dataset again (it redoes the incomplete case)"
    if not path.is_file():
        raise AutosegError("preprocessed array is missing", path, fix)
    try:
        complete = _npy_header(path) is not None
    except (OSError, ValueError):
        complete = False
    if not complete:
        raise AutosegError("preprocessed array is damaged or incomplete (its size does not match its "
                           "header)", path, fix)
    return np.load(path, mmap_mode="r" if mmap else None)


def plans_key(plans: Plans) -> str:
    """Hash of every plans field that changes preprocessing output (and of this code's version)."""
    relevant = {
        "version": PREPROCESSING_VERSION,
        "channel_names": list(plans.channel_names),
        "is_ct": plans.is_ct,
        "target_spacing": [float(s) for s in plans.target_spacing],
        "normalisation": [dataclasses.asdict(n) for n in plans.normalisation],
        "resampling": dataclasses.asdict(plans.resampling),
        "crop_to_body": plans.crop_to_body,
        "labels": {str(k): v for k, v in sorted(plans.labels.items())},
        "seed": plans.seed,  # class_locations are sampled with it
    }
    text = json.dumps(relevant, sort_keys=True, default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_up_to_date(out_dir: Path, case_id: str, key: str) -> bool:
    """True when the case's files are complete and were made with plans whose key is ``key``
    (properties that do not load, from an older or newer autoseg or hand-broken, are stale)."""
    npy, seg_npy, props_path = case_files(out_dir, case_id)
    if not (npy.is_file() and seg_npy.is_file() and props_path.is_file()):
        return False
    try:
        props = CaseProperties.load(props_path)
        image, labels = _npy_header(npy), _npy_header(seg_npy)
    except (OSError, ValueError, AutosegError):
        return False
    shape = props.shape_after_resampling
    return (props.plans_key == key and image == ((props.num_channels, *shape), np.float32)
            and labels == (shape, np.uint8))


def write_case(out_dir: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None,
               properties: CaseProperties | Mapping[str, Any]) -> None:
    """Write one case: the image and label arrays (each atomically), then the properties JSON, which
    marks the case complete; if anything fails, none of the case's files is left behind. A mapping
    is written as given (tests and tools storing a partial case); training reads only complete ones."""
    npy, seg_npy, props_path = case_files(out_dir, case_id)
    payload = properties.to_dict() if isinstance(properties, CaseProperties) else dict(properties)
    labels = np.zeros(data.shape[1:], np.uint8) if seg is None else np.asarray(seg)
    if labels.shape != data.shape[1:]:
        raise ValueError(f"{case_id}: label map shape {labels.shape} differs from the image's {data.shape[1:]}")
    if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255
                                                     or not np.array_equal(labels, np.round(labels))):
        raise ValueError(f"{case_id}: labels must be whole numbers 0-255 (stored maps are uint8)")
    props_path.unlink(missing_ok=True)  # an old JSON must not vouch for half-written new arrays
    try:
        _save_array(npy, np.ascontiguousarray(data, dtype=np.float32))
        _save_array(seg_npy, np.ascontiguousarray(labels, dtype=np.uint8))
        with atomic_path(props_path) as tmp:
            tmp.write_text(dumps_compact(payload) + "\n")
    except BaseException:
        for path in (npy, seg_npy, props_path):
            path.unlink(missing_ok=True)
        raise


def _save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically. When the disk fills up mid-file numpy raises a bare
    ``OSError("612480 requested and 539616 written")`` without an errno; it is raised again as ENOSPC
    so that :func:`~autoseg.io.atomic_path` turns it into an error naming the folder."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, array)
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({exc})") from exc


def load_case(out_dir: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """The ``(C, z, y, x)`` image, the ``(z, y, x)`` uint8 labels (both memory-mapped by default) and
    the properties of a case."""
    npy, seg_npy, props_path = case_files(out_dir, case_id)
    return load_array(npy, mmap), load_array(seg_npy, mmap), load_properties(props_path)


def load_properties(path: Path) -> CaseProperties:
    """A case's properties, checked (an error names the file, the field and the fix)."""
    return CaseProperties.load(path)


def load_labels(data_folder: Path, case_id: str) -> np.ndarray:
    """A case's uint8 label map from a preprocessed ``data`` folder, read whole."""
    path = labels_file(data_folder, case_id)
    if not path.is_file():
        raise AutosegError(f"no preprocessed label map of case {case_id}", path,
                           "run `autoseg plan_and_preprocess` for this dataset again (autoseg before "
                           "preprocessing version 3 kept the labels inside the image array)")
    return load_array(path, mmap=False)


def dumps_compact(obj: Any, indent: int = 0) -> str:
    """JSON with objects indented but lists of numbers on one line (coordinate lists stay small)."""
    pad = " " * indent
    if isinstance(obj, dict) and obj:
        items = [f'{pad}  {json.dumps(str(k))}: {dumps_compact(v, indent + 2)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, dict) for v in obj):
        items = [pad + "  " + dumps_compact(v, indent + 2) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, separators=(",", ":"))
