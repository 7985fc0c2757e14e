"""DICOM-SEG output (``autoseg predict --output-format dicom-seg``): the label map as a DICOM
Segmentation object that references the CT series it was predicted from.

The SEG is built with highdicom from the label map on the input grid and the source slices' headers
(read with pydicom, pixels never decoded, so JPEG 2000 series need no decoder here):

- one frame per source slice that holds a segment, each frame referencing its slice (SOP instance
  UID), with the study, the series and the frame of reference of the source;
- one segment per foreground class of the model, coded in SNOMED CT (:data:`SEGMENT_CODES`), every
  class listed even when the prediction does not contain it (such a segment has no frames: "no
  tumour found" is an answer too); an empty label map gets empty frames rather than no SEG;
- BINARY segmentation type, algorithm identification: autoseg's version, the model (the plans'
  dataset name) and the SHA-256 of the model's plans and weights (those of the report's provenance).

Geometry is checked, not assumed: every slice of the label map (as :mod:`autoseg.io` read the
series) must lie at a source slice's ImagePositionPatient with its ImageOrientationPatient, rows,
columns and pixel spacing, so the SEG's frames sit where the NIfTI's voxels sit in patient
coordinates. A series whose slices are not stacked along their normal (a gantry tilt, or a sheared
stack) is refused with the fix (:func:`check_dicom_seg_input`), before any prediction work.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

import autoseg
from autoseg.errors import AutosegError
from autoseg.io import Geometry, atomic_path, is_dicom_folder
from autoseg.layout import CaseOutputs
from autoseg.plans import Plans
from autoseg.inference.provenance import plans_sha256

if TYPE_CHECKING:
    from pydicom import Dataset

    from autoseg.inference.outputs import CasePrediction

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: a slice may sit this far (mm) from where the label map's grid puts it, plus 1% of the voxel size
POSITION_TOLERANCE_MM = 0.01

#: (property category, property type, anatomic region or None) as SNOMED CT (code, meaning), by a
#: word in the class name (the first match wins; tumour before liver: "liver tumour" is a tumour)
SEGMENT_CODES: tuple[tuple[tuple[str, ...], tuple[str, str], tuple[str, str], tuple[str, str] | None], ...] = (
    (("tumour", "tumor", "lesion", "cancer", "neoplasm", "metasta"),
     ("49755003", "Morphologically Abnormal Structure"), ("108369006", "Neoplasm"), ("10200004", "Liver")),
    (("vessel", "vein", "vascul", "artery"),
     ("91723000", "Anatomical Structure"), ("59820001", "Blood vessel"), ("10200004", "Liver")),
    (("liver",),
     ("91723000", "Anatomical Structure"), ("10200004", "Liver"), None),
)
#: a class whose name matches none of the above (another task's model)
OTHER_CODES = (("85756007", "Tissue"), ("85756007", "Tissue"), None)

_INPUT_FIX = ("pass the DICOM series folder of the CT (one folder of its slices), or leave out "
              "--output-format dicom-seg to get the NIfTI label map only")


@dataclass(frozen=True)
class SourceSeries:
    """The source slices' headers in the order of the label map's z axis."""

    folder: Path
    datasets: list["Dataset"]


def _dicom_files(folder: Path) -> list[Path]:
    """The files of the folder's one DICOM series, as ITK (and so :mod:`autoseg.io`) reads it."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if len(series) != 1:
            raise AutosegError(f"--output-format dicom-seg needs a folder of one DICOM series; {folder.name} "
                               f"holds {len(series)}", folder, _INPUT_FIX)
        return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _uid(ds: "Dataset", keyword: str, meta_keyword: str | None) -> str:
    value = str(ds.get(keyword, "") or "")
    meta = getattr(ds, "file_meta", None)
    if not value and meta_keyword and meta is not None:
        value = str(meta.get(meta_keyword, "") or "")
    return value


def read_headers(folder: Path) -> list["Dataset"]:
    """The slices' headers (no pixels), with SOP class and instance UIDs taken from the file meta
    information where an anonymiser blanked them in the data set (as in TotalSegmentator's example)."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets: list["Dataset"] = []
    for path in _dicom_files(folder):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty (as in dcmqi's example): the default repertoire
        for keyword, meta in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            value = _uid(ds, keyword, meta)
            if not value:
                raise AutosegError(f"DICOM slice {path.name} has no {keyword}: a DICOM-SEG cannot reference it",
                                   folder, "export the series with its UIDs (not blanked by an anonymiser)")
            setattr(ds, keyword, value)
        datasets.append(ds)
    # series and study UIDs blanked by an anonymiser: one derived from the slices' instance UIDs,
    # the same on every run, so that the SEG is still a consistent (if orphaned) reference
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID"):
        values = {str(ds.get(keyword, "") or "") for ds in datasets}
        if values == {""}:
            derived = generate_uid(entropy_srcs=[keyword, *instances])
            log.warning("%s: the DICOM series has no %s; the SEG references it as %s", folder, keyword, derived)
            for item in datasets:
                setattr(item, keyword, derived)
        elif len(values) > 1:
            raise AutosegError(f"DICOM slices disagree on {keyword} ({len(values)} values)", folder,
                               "put each series in a folder of its own")
    for keyword in ("FrameOfReferenceUID",):
        if len({str(ds.get(keyword, "") or "") for ds in datasets}) != 1 or not datasets[0].get(keyword):
            raise AutosegError(f"DICOM slices have no single {keyword}: the SEG cannot be placed in patient "
                               "coordinates", folder, "export the series with its frame of reference")
    return datasets


def _floats(value: Any, n: int, name: str, folder: Path) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,):
        raise AutosegError(f"DICOM slice has no valid {name}", folder, "export the series with its geometry tags")
    return out


def check_slice_stack(folder: Path, datasets: list["Dataset"]) -> None:
    """Refuse slices whose orientations differ, or whose positions are not on one line along the
    slice normal: a gantry tilt (or a sheared stack) that a regular voxel grid, and so the NIfTI
    label map, cannot describe."""
    orient = _floats(datasets[0].get("ImageOrientationPatient"), 6, "ImageOrientationPatient", folder)
    for ds in datasets[1:]:
        if not np.allclose(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", folder),
                           orient, atol=1e-4):
            raise AutosegError("DICOM slices of the series have different orientations", folder,
                               "pass a series of parallel slices")
    normal = np.cross(orient[:3], orient[3:])
    positions = np.array([_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", folder)
                          for ds in datasets])
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.abs(in_plane).max()) if len(positions) > 1 else 0.0
    spacing = _floats(datasets[0].get("PixelSpacing"), 2, "PixelSpacing", folder)
    if drift > POSITION_TOLERANCE_MM + 0.01 * float(min(spacing)):
        tilt = str(datasets[0].get("GantryDetectorTilt", "") or "")
        raise AutosegError(
            f"DICOM slices are not stacked along their normal (the positions drift {drift:.2f} mm within the "
            f"slice plane{'; GantryDetectorTilt ' + tilt if tilt not in ('', '0', '0.0') else ''}): a gantry tilt "
            "or sheared series has no regular voxel grid, so its DICOM-SEG could not match the label map",
            folder, "resample the series to an untilted grid (e.g. 3D Slicer's or dcm2niix's gantry tilt "
            "correction), predict that, or leave out --output-format dicom-seg")


def check_dicom_seg_input(path: Path) -> None:
    """Refuse, before any prediction, an input a DICOM-SEG cannot be written for: not a DICOM series
    folder (a NIfTI, NRRD or single file), a series without the UIDs to reference, or a tilted one."""
    if not is_dicom_folder(path):
        kind = "an image file" if path.is_file() else "not a DICOM series folder"
        raise AutosegError(f"--output-format dicom-seg needs a DICOM series as input, and {path.name} is {kind}: "
                           "a DICOM-SEG references the slices it segments", path, _INPUT_FIX)
    datasets = read_headers(path)
    for ds in datasets:
        if str(ds.SOPClassUID) == SEG_SOP_CLASS:
            raise AutosegError(f"{path.name} holds a DICOM Segmentation object, not an image series", path,
                               "pass the CT series the segmentation was made on")
    check_slice_stack(path, datasets)


def source_series(folder: Path, geometry: Geometry) -> SourceSeries:
    """The source slices in the label map's z order, each checked to lie where ``geometry`` puts
    that slice (position, orientation, rows, columns, pixel spacing)."""
    datasets = read_headers(folder)
    check_slice_stack(folder, datasets)
    direction = np.array(geometry.direction).reshape(3, 3)
    origin = np.array(geometry.origin)
    tol = POSITION_TOLERANCE_MM + 0.01 * float(min(geometry.spacing))
    positions = np.array([_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", folder) for ds in datasets])
    ordered = []
    for k in range(geometry.size[2]):
        expected = origin + direction[:, 2] * geometry.spacing[2] * k
        distance = np.linalg.norm(positions - expected, axis=1)
        best = int(np.argmin(distance))
        if distance[best] > tol:
            raise AutosegError(f"slice {k} of the label map lies at {np.round(expected, 2).tolist()} mm, where the "
                               f"series has no slice (nearest {distance[best]:.2f} mm away)", folder,
                               "the series' slices are not on a regular grid; " + _INPUT_FIX)
        ordered.append(datasets[best])
    if len({id(ds) for ds in ordered}) != len(datasets):
        raise AutosegError(f"the label map has {geometry.size[2]} slices and the series {len(datasets)}", folder,
                           _INPUT_FIX)
    for ds in ordered:
        orient = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", folder)
        spacing = _floats(ds.PixelSpacing, 2, "PixelSpacing", folder)  # (between rows, between columns)
        if (not np.allclose(orient[:3], direction[:, 0], atol=1e-4) or not np.allclose(orient[3:], direction[:, 1],
                                                                                       atol=1e-4)
                or (int(ds.Rows), int(ds.Columns)) != (geometry.size[1], geometry.size[0])
                or not np.allclose(spacing, (geometry.spacing[1], geometry.spacing[0]), rtol=1e-3)):
            raise AutosegError("the label map's grid does not match the DICOM slices' orientation, size or pixel "
                               "spacing", folder, _INPUT_FIX)
    return SourceSeries(folder, ordered)


def _codes(name: str) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str] | None]:
    lower = name.lower()
    for words, category, kind, region in SEGMENT_CODES:
        if any(w in lower for w in words):
            return category, kind, region
    return OTHER_CODES


def _label(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash."""
    return re.sub(r"[\\\x00-\x1f]", " ", text)[:64]


def build_dicom_seg(labels: np.ndarray, geometry: Geometry, folder: Path, plans: Plans,
                    weights_sha256: str | None = None) -> Any:
    """The ``highdicom.seg.Segmentation`` of ``labels`` (``(z, y, x)`` on ``geometry``, the grid the
    series in ``folder`` was read on) with one segment per foreground class of ``plans``; the model is
    identified by the SHA-256 of its plans and (when given) of its weights, as in the report's
    provenance (:mod:`autoseg.inference.provenance`)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if labels.shape != geometry.shape_zyx:
        raise ValueError(f"labels {labels.shape} are not on the grid {geometry.shape_zyx}")
    series = source_series(folder, geometry)
    classes = sorted(k for k in plans.labels if k != 0)
    if classes != list(range(1, len(classes) + 1)):
        raise AutosegError(f"the model's classes {classes} are not numbered 1..{len(classes)}", folder,
                           "a DICOM-SEG numbers its segments from 1 without gaps")
    top = int(labels.max(initial=0))
    if top > len(classes):
        raise ValueError(f"label {top} is not a class of the model ({classes})")
    digest = plans_sha256(plans)
    parameters = {"plans_sha256": digest, **({"weights_sha256": weights_sha256} if weights_sha256 else {})}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_label(f"autoseg {plans.dataset_name}"), family=codes.cid7162.ArtificialIntelligence,
        version=autoseg.__version__, source="autoseg", parameters=parameters)
    descriptions = []
    for number in classes:
        category, kind, region = _codes(plans.labels[number])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_label(plans.labels[number]),
            segmented_property_category=Code(category[0], "SCT", category[1]),
            segmented_property_type=Code(kind[0], "SCT", kind[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[Code(region[0], "SCT", region[1])] if region else None,
            tracking_uid=hd.UID(), tracking_id=_label(f"{plans.dataset_name} {plans.labels[number]}")))
    source = series.datasets[0]
    return hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=np.ascontiguousarray(labels, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=int(source.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="autoseg",
        manufacturer_model_name=_label(plans.dataset_name), software_versions=autoseg.__version__,
        device_serial_number=digest[:16], content_label="AUTOSEG",
        content_description=_label(f"autoseg {autoseg.__version__} {plans.dataset_name}"),
        series_description=_label(f"autoseg {plans.dataset_name}"),
        omit_empty_frames=bool(top > 0))  # an empty map keeps its (empty) frames: a SEG needs one


def write_dicom_seg(result: "CasePrediction", outputs: CaseOutputs) -> dict[str, Any]:
    """The ``OUTPUT_FORMATS`` writer: ``<case>.seg.dcm`` beside the label map, written atomically."""
    provenance = result.report.provenance
    seg = build_dicom_seg(result.labels, result.geometry, Path(result.input), result.plans,
                          provenance.weights_sha256 if provenance is not None else None)
    with atomic_path(outputs.dicom_seg) as tmp:
        seg.save_as(tmp)
    return dict(dicom_seg=outputs.dicom_seg.name)  # CaseReport.dicom_seg
