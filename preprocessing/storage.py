"""Preprocessed cases on disk and the check that decides whether a case is up to date.

The files of a case are :class:`autoseg.layout.CaseFiles`: the image, float32 ``(C, z, y, x)``, the
C normalised channels; the label map, uint8 ``(z, y, x)`` (background 0; all zeros for a case
without labels). Both are blosc2 NDArray files (``.b2nd``): chunked and compressed without loss
(Zstandard level 1 after byte shuffling), so training opens them memory-mapped and reads a random
patch by decompressing only the chunks it touches. The chunks follow the plans' patch size, the
blocks inside them fit a core's L2 cache. The properties
(:class:`autoseg.artefacts.CaseProperties`, from
:func:`autoseg.preprocessing.preprocess.preprocess_case`) are written last, so a case whose properties
load and whose ``plans_key`` matches is complete.

Why this codec (``benchmarks/bench_storage.py``, docs/benchmarks.md "Storage"): on the 10
preprocessing-benchmark phantoms it stores 120 MB where the plain float32 ``.npy`` of version 3 took
636 MiB and nnU-Net's blosc2 files (Zstandard level 8) 142 MB, compresses a case in 0.1 s where
level 8 took 1.5 s, and reads a random patch in 2-3 ms. Lossy choices (float16, truncated mantissas)
halve it again but change the training data; they were measured and left out.

Until preprocessing version 4 the arrays were plain ``.npy`` files (4.7 times nnU-Net's bytes);
until version 3 the label map was a float32 last channel of the image. Older cases fail the
up-to-date check (their key differs) and are written again, their ``.npy`` files removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import blosc2
import numpy as np

from autoseg.artefacts import CaseProperties
from autoseg.errors import AutosegError
from autoseg.io import atomic_path
from autoseg.layout import PreprocessedDataset, case_files_in, legacy_case_arrays
from autoseg.plans import Plans

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 4  # bump when a code change alters the output, so old cases are redone
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


#: Compression of the stored arrays: lossless Zstandard level 1 after byte shuffling, one thread (a
#: preprocessing worker or a data-loading process is already one of several; a thread pool would
#: also not survive the data loader's fork).
_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}
_DPARAMS = {"nthreads": 1}
#: Elements in one blosc2 block (the unit decompressed at a time): 8192 float32 are 32 KiB.
BLOCK_ELEMENTS = 8192
#: Chunk of a case stored without a patch size (tools, tests): a typical CPU plan's patch.
DEFAULT_CHUNK = (32, 96, 96)


def chunk_shapes(shape: tuple[int, ...], patch_size: tuple[int, ...] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """blosc2 chunks and blocks of an array of ``shape`` (``(C, z, y, x)`` or ``(z, y, x)``): a chunk is
    one channel's patch-sized box (a random patch then touches at most eight per channel), a block
    the chunk halved along its longest axes until it holds at most ``BLOCK_ELEMENTS``."""
    spatial = shape[-3:]
    patch = patch_size if patch_size is not None and len(patch_size) == 3 else DEFAULT_CHUNK
    box = [max(1, min(int(p), s)) for p, s in zip(patch, spatial)]
    block = list(box)
    while int(np.prod(block)) > BLOCK_ELEMENTS:
        axis = int(np.argmax(block))
        block[axis] = (block[axis] + 1) // 2
    lead = (1,) * (len(shape) - 3)
    return (*lead, *box), (*lead, *block)


def _open_stored(path: Path) -> Any:
    """The blosc2 NDArray in ``path``, memory-mapped (reads decompress only the chunks they touch), or
    None when the file is not a complete blosc2 array (a truncated copy or an interrupted write by an
    older version fails to open: blosc2 reads the frame's trailer at the end of the file)."""
    try:
        array = blosc2.open(str(path), mode="r", mmap_mode="r", dparams=_DPARAMS)
    except (RuntimeError, OSError, ValueError):
        return None
    return array if isinstance(array, blosc2.NDArray) else None


def _stored_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """Shape and dtype of a stored array, or None when it does not open (:func:`_open_stored`)."""
    array = _open_stored(path)
    return None if array is None else (tuple(int(n) for n in array.shape), np.dtype(array.dtype))


def open_array(path: Path) -> Any:
    """A preprocessed array opened for reading: a blosc2 NDArray, memory-mapped, whose slices
    (``array[z0:z1, ...]``, ``array[...]`` for all of it) are numpy arrays; refused with the fix when
    it is missing, damaged, incomplete, or an uncompressed ``.npy`` of autoseg before version 4."""
    fix = "run `autoseg plan_and_preprocess` for this dataset again (it redoes the incomplete case)"
    if not path.is_file():
        legacy = [p for p in legacy_case_arrays(path.parent, path.name[: -len(PreprocessedDataset.ARRAY_ENDING)])
                  if p.is_file()]
        if legacy:
            raise AutosegError("this case was preprocessed by autoseg before preprocessing version 4 (uncompressed "
                               f"{legacy[0].name}); this autoseg reads compressed .b2nd arrays", path.parent,
                               "run `autoseg plan_and_preprocess` for this dataset again: it rewrites every case "
                               "(about a fifth of the bytes) and removes the old files")
        raise AutosegError("preprocessed array is missing", path, fix)
    array = _open_stored(path)
    if array is None:
        raise AutosegError("preprocessed array is damaged or incomplete (blosc2 cannot open it)", path, fix)
    return array


def load_array(path: Path, lazy: bool = True) -> Any:
    """A preprocessed array: opened (:func:`open_array`, decompressed as it is read) by default, or
    read whole into a numpy array."""
    array = open_array(path)
    return array if lazy else np.asarray(array[...])


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
        **({"partial_labels": [[p.value, list(p.classes), p.scored_as] for p in plans.partial_labels]}
           if plans.partial_labels else {}),
        "seed": plans.seed,  # class_locations are sampled with it
    }
    if plans.orientation is not None:  # absent from older plans: their keys, and cases, stay current
        relevant["orientation"] = plans.orientation
    text = json.dumps(relevant, sort_keys=True, default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_up_to_date(out_dir: Path, case_id: str, key: str) -> bool:
    """True when the case's files are complete and were made with plans whose key is ``key``
    (properties that do not load, from an older or newer autoseg or hand-broken, are stale)."""
    image_path, labels_path, props_path = case_files(out_dir, case_id)
    if not (image_path.is_file() and labels_path.is_file() and props_path.is_file()):
        return False
    try:
        props = CaseProperties.load(props_path)
        image, labels = _stored_header(image_path), _stored_header(labels_path)
    except (OSError, ValueError, AutosegError):
        return False
    shape = props.shape_after_resampling
    return (props.plans_key == key and image == ((props.num_channels, *shape), np.float32)
            and labels == (shape, np.uint8))


def write_case(out_dir: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None,
               properties: CaseProperties | Mapping[str, Any], patch_size: tuple[int, ...] | None = None) -> None:
    """Write one case: the image and label arrays (each atomically, chunked for ``patch_size``), then
    the properties JSON, which marks the case complete; if anything fails, none of the case's files is
    left behind. The case's ``.npy`` arrays from autoseg before version 4 are removed. A mapping is
    written as given (tests and tools storing a partial case); training reads only complete ones."""
    image_path, labels_path, props_path = case_files(out_dir, case_id)
    payload = properties.to_dict() if isinstance(properties, CaseProperties) else dict(properties)
    labels = np.zeros(data.shape[1:], np.uint8) if seg is None else np.asarray(seg)
    if labels.shape != data.shape[1:]:
        raise ValueError(f"{case_id}: label map shape {labels.shape} differs from the image's {data.shape[1:]}")
    if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255
                                                     or not np.array_equal(labels, np.round(labels))):
        raise ValueError(f"{case_id}: labels must be whole numbers 0-255 (stored maps are uint8)")
    props_path.unlink(missing_ok=True)  # an old JSON must not vouch for half-written new arrays
    try:
        _save_array(image_path, np.ascontiguousarray(data, dtype=np.float32), patch_size)
        _save_array(labels_path, np.ascontiguousarray(labels, dtype=np.uint8), patch_size)
        with atomic_path(props_path) as tmp:
            tmp.write_text(dumps_compact(payload) + "\n")
    except BaseException:
        for path in (image_path, labels_path, props_path):
            path.unlink(missing_ok=True)
        raise
    for old in legacy_case_arrays(image_path.parent, case_id):
        old.unlink(missing_ok=True)


def _save_array(path: Path, array: np.ndarray, patch_size: tuple[int, ...] | None) -> None:
    """Compress ``array`` in memory and write it to ``path`` atomically. The write is Python's own, so
    a full disk or a file-size limit is an ``OSError`` with its errno, which
    :func:`~autoseg.io.atomic_path` turns into an error naming the folder and the fix."""
    chunks, blocks = chunk_shapes(array.shape, patch_size)
    frame = blosc2.asarray(array, chunks=chunks, blocks=blocks, cparams=_CPARAMS).to_cframe()
    with atomic_path(path) as tmp:
        tmp.write_bytes(frame)


def load_case(out_dir: Path, case_id: str, lazy: bool = True) -> tuple[Any, Any, CaseProperties]:
    """The ``(C, z, y, x)`` image, the ``(z, y, x)`` uint8 labels (both opened for reading by default,
    numpy arrays read whole with ``lazy=False``) and the properties of a case."""
    image_path, labels_path, props_path = case_files(out_dir, case_id)
    return load_array(image_path, lazy), load_array(labels_path, lazy), load_properties(props_path)


def load_properties(path: Path) -> CaseProperties:
    """A case's properties, checked (an error names the file, the field and the fix)."""
    return CaseProperties.load(path)


def load_labels(data_folder: Path, case_id: str) -> np.ndarray:
    """A case's uint8 label map from a preprocessed ``data`` folder, read whole."""
    path = labels_file(data_folder, case_id)
    if not path.is_file() and not any(p.is_file() for p in legacy_case_arrays(Path(data_folder), case_id)):
        raise AutosegError(f"no preprocessed label map of case {case_id}", path,
                           "run `autoseg plan_and_preprocess` for this dataset again (autoseg before "
                           "preprocessing version 3 kept the labels inside the image array)")
    labels: np.ndarray = load_array(path, lazy=False)
    return labels


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
