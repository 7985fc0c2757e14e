"""Where a prediction came from: the report's ``provenance`` (:class:`autoseg.artefacts.Provenance`).

The model is named by two SHA-256 digests: of its plans as canonical JSON (sorted keys, no spaces:
the same plans give the same digest whatever their file's formatting) and of its weights (the
SHA-256 of each fold's weights file, combined as sorted ``label:digest`` lines; an ensemble's labels
name the member). A weights file is hashed once per process and size/modification time, so a run
of many cases pays for it once. The input's DICOM SeriesInstanceUID is read from the first file of
the series (its header only).
"""
from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import SimpleITK as sitk

import autoseg
from autoseg.artefacts import Provenance
from autoseg.plans import Plans

log = logging.getLogger(__name__)

#: (path, size, mtime_ns) -> SHA-256 hex of the file
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def plans_sha256(plans: Plans) -> str:
    """SHA-256 of the plans as canonical JSON."""
    return plans.sha256()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered for as long as its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        with open(path, "rb") as fh:
            _FILE_DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _FILE_DIGESTS[key]


def _weight_digests(model: Any, prefix: str = "") -> dict[str, str]:
    """``label -> SHA-256`` of each weights file the model predicts with."""
    parts = getattr(model, "parts", None)
    if parts is not None:  # an ensemble: each member's folds, named by member
        return {k: v for part in parts for k, v in _weight_digests(part, f"{Path(part.folder).name}/").items()}
    checkpoints = getattr(model, "checkpoints", {})
    members = getattr(model, "members", None)
    digests = {}
    for fold, source in checkpoints.items():
        if members is not None and isinstance(source, str):  # an archive: the member's bytes
            digests[f"{prefix}fold_{fold}"] = hashlib.sha256(members[source]).hexdigest()
        else:
            digests[f"{prefix}fold_{fold}"] = file_sha256(Path(source))
    return digests


def weights_sha256(model: Any) -> str | None:
    """One SHA-256 over the model's weights files, or None when it has none that can be read."""
    try:
        digests = _weight_digests(model)
    except OSError as exc:
        log.warning("the model's weights could not be hashed for the report (%s)", exc)
        return None
    if not digests:
        return None
    lines = "".join(f"{label}:{digest}\n" for label, digest in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def series_instance_uid(path: Path) -> str | None:
    """The SeriesInstanceUID (0020,000E) of a DICOM series folder, None for anything else."""
    if not path.is_dir():
        return None
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        if not files:
            return None
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        if reader.HasMetaDataKey("0020|000e"):
            return reader.GetMetaData("0020|000e").strip().rstrip("\x00") or None
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        return ids[0] if ids else None
    except RuntimeError:
        return None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def provenance(model: Any, input_path: Path, command_line: Sequence[str] | None = None) -> Provenance:
    """The report's provenance for ``model`` predicting ``input_path`` now."""
    return Provenance(autoseg_version=autoseg.__version__, plans_sha256=plans_sha256(model.plans),
                      weights_sha256=weights_sha256(model), series_instance_uid=series_instance_uid(input_path),
                      command_line=tuple(command_line) if command_line is not None else None,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
