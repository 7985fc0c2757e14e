"""What ``autoseg predict`` writes for a case, and the one writer that writes it.

:func:`~autoseg.inference.predictor.predict_case` computes a :class:`CasePrediction` and writes
nothing; :func:`write_prediction` writes it: the label map first, then each extra output the user
asked for (``PredictOptions.outputs``), each atomically, and last the report, whose existence marks
the case complete. An extra output is an :class:`OutputFormat` in :data:`OUTPUT_FORMATS`: a writer
``(prediction, outputs) -> report fields`` and what it needs ``predict_case`` to keep (the
probabilities, the CT image). Adding a format is one function and one registry entry; its file
name goes into :class:`autoseg.layout.CaseOutputs`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autoseg.artefacts import CaseProperties, CaseReport
from autoseg.io import Geometry, atomic_path, write_image
from autoseg.layout import CaseOutputs
from autoseg.plans import HU_BOUNDS, Plans
from autoseg.registry import Registry
from autoseg.inference.dicom_seg import write_dicom_seg
from autoseg.inference.report import write_overlays


@dataclass
class CasePrediction:
    """One case predicted, nothing written yet: what :func:`write_prediction` writes."""

    name: str
    input: Path
    #: uint8 labels on the input's grid, post-processed.
    labels: np.ndarray
    geometry: Geometry
    report: CaseReport
    plans: Plans
    #: What each label of ``labels`` means (background 0 included): the model's labels, or for a
    #: linked run (``--roi-model``) the combined table (e.g. 1 liver, 2 vessel, 3 tumour). Every
    #: output names its classes from this table, never from ``plans.labels``.
    label_table: dict[int, str] = field(default_factory=dict)
    #: The extra outputs to write (names in :data:`OUTPUT_FORMATS`).
    outputs: tuple[str, ...] = ()
    #: The softmax on the preprocessed grid and that grid's properties, when an output needs them.
    probabilities: np.ndarray | None = None
    properties: CaseProperties | None = None
    #: The CT on the input's grid, when an output needs it.
    image: np.ndarray | None = None
    #: Anything else an output format's writer needs from prediction, by format name.
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputFormat:
    """An extra output of ``predict``: how to write it and what prediction must keep for it."""

    write: Callable[[CasePrediction, CaseOutputs], dict[str, Any]]
    needs_probabilities: bool = False
    needs_image: bool = False
    help: str = ""


def _write_probabilities(result: CasePrediction, outputs: CaseOutputs) -> dict[str, Any]:
    """``<case>.probabilities.npz``: the model's softmax ``(K, z, y, x)`` on the input grid (as the label
    map: cropped region resampled linearly, background 1 outside it; float16), its class names, the
    input grid's geometry and the preprocessing properties, each JSON (docs/inference.md)."""
    from autoseg.preprocessing import restore_to_original

    assert result.probabilities is not None and result.properties is not None  # needs_probabilities
    restored = restore_to_original(result.probabilities, result.properties).astype(np.float16)
    with atomic_path(outputs.probabilities) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=restored,
                                classes=np.array(json.dumps({str(k): v for k, v in result.plans.labels.items()})),
                                geometry=np.array(json.dumps(result.geometry.to_dict())),
                                properties=np.array(json.dumps(result.properties.to_dict())))
    return {}


def _write_overlays(result: CasePrediction, outputs: CaseOutputs) -> dict[str, Any]:
    assert result.image is not None  # needs_image
    # the abdominal display window, not the (possibly narrower) window the network was fed
    names = result.label_table or result.plans.labels
    return {"overlays": tuple(p.name for p in write_overlays(outputs, result.image, result.labels, result.geometry,
                                                             names, HU_BOUNDS))}


def _write_meshes(result: CasePrediction, outputs: CaseOutputs) -> dict[str, Any]:
    from autoseg.inference.meshes import write_meshes

    return {"meshes": write_meshes(result.labels, result.geometry, result.label_table or result.plans.labels, outputs)}


def _write_uncertainty(result: CasePrediction, outputs: CaseOutputs) -> dict[str, Any]:
    from autoseg.inference.uncertainty import write_uncertainty

    return write_uncertainty(result, outputs)


OUTPUT_FORMATS: Registry[OutputFormat] = Registry("output", {
    "probabilities": OutputFormat(_write_probabilities, needs_probabilities=True,
                                  help="the softmax on the input grid, float16, with its classes, geometry "
                                       "and properties (.probabilities.npz)"),
    "overlays": OutputFormat(_write_overlays, needs_image=True, help="PNG slices with the labels over the CT"),
    "dicom-seg": OutputFormat(write_dicom_seg,
                              help="the labels as a DICOM-SEG referencing the input series (.seg.dcm)"),
    "meshes": OutputFormat(_write_meshes, help="an STL surface per structure present, in patient mm (LPS)"),
    "uncertainty": OutputFormat(_write_uncertainty, needs_probabilities=True,
                                help="the normalised predictive entropy of the calibrated probabilities "
                                     "(_uncertainty.nii.gz) and each lesion's confidence"),
})


def write_prediction(result: CasePrediction, outputs: CaseOutputs, report_path: Path | None = None) -> CaseReport:
    """Write a case's outputs, each atomically: the label map, then each requested extra output, and
    last the report (at ``report_path``, default the case's), so a case whose report exists is
    complete. Returns the report as written."""
    t0 = time.perf_counter()
    write_image(outputs.labels, result.labels, result.geometry)
    fields: dict[str, Any] = {}
    for name in result.outputs:
        fields.update(OUTPUT_FORMATS[name].write(result, outputs))
    stages = dict(result.report.stage_seconds or {})
    stages["restore_and_write"] = round(stages.pop("restore", 0.0) + time.perf_counter() - t0, 2)
    report = dataclasses.replace(result.report, stage_seconds=stages, **fields)
    report.save(report_path or outputs.report)
    return report
