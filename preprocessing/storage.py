"""On-disk layout of preprocessed cases and the check that decides whether a case is up to date.

``<out>/data/<case>.npy``: float32 ``(C + 1, z, y, x)``, the C normalised channels followed by the
label map (as float; background 0), so training can ``np.load(path, mmap_mode="r")`` and read a random
patch of image and labels without loading the case. ``<out>/data/<case>.json``: the properties (see
:func:`autoseg.preprocessing.preprocess.preprocess_case`), written last, so a case whose JSON exists and
whose ``plans_key`` matches is complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.io import atomic_path, read_json
from autoseg.plans import Plans

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 2  # bump when a code change alters the output, so old cases are redone


def data_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "data"


def case_files(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """The array file and the properties JSON of one case."""
    folder = data_dir(out_dir)
    return folder / f"{case_id}.npy", folder / f"{case_id}.json"


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
    """True when the case's files are complete and were made with plans whose key is ``key``."""
    npy, props_path = case_files(out_dir, case_id)
    if not (npy.is_file() and props_path.is_file()):
        return False
    try:
        props = read_json(props_path)
        with open(npy, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return False
            shape, _, dtype = read_header(fh)
    except (OSError, ValueError, json.JSONDecodeError):
        return False
    expected = (props.get("num_channels", -1) + 1, *props.get("shape_after_resampling", []))
    return props.get("plans_key") == key and tuple(shape) == tuple(expected) and dtype == np.float32


def write_case(out_dir: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None,
               properties: dict[str, Any]) -> None:
    """Write one case atomically: the stacked array first, then the properties JSON."""
    npy, props_path = case_files(out_dir, case_id)
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(data.shape[0] + 1, *data.shape[1:]))
        out[:-1] = data
        out[-1] = 0 if seg is None else seg
        out.flush()
        del out
    try:
        with atomic_path(props_path) as tmp:
            tmp.write_text(dumps_compact(properties) + "\n")
    except BaseException:
        npy.unlink(missing_ok=True)
        raise


def load_case(out_dir: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The stacked ``(C + 1, z, y, x)`` array (memory-mapped by default) and the properties of a case."""
    npy, props_path = case_files(out_dir, case_id)
    return np.load(npy, mmap_mode="r" if mmap else None), read_json(props_path)


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
