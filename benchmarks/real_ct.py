"""Liver figures of a model on the real CT in ``../shared/data/real``: Dice, volumes, and where the
false positives lie.

autoseg's models are trained on synthetic phantoms (0 background, 1 liver parenchyma, 2 vessel
inside the liver, 3 tumour); the only honest check of how they do on patients is a real CT with a
liver reference. Three cases have one (each folder's SOURCES.md says where it comes from):

- ``totalsegmentator_ct``: TotalSegmentator's example CT (3 mm, abdomen and pelvis) and its
  multi-organ map (liver 5). The other labels of that map say on which organ a false-positive liver
  voxel lies (``label_map_total.json`` names them; 0 is "unlabelled").
- ``totalsegmentator_dicom``: TotalSegmentator's 20-slice JPEG 2000 DICOM series and its map
  (liver 5, stored y-flipped: put back on the series' grid by :func:`autoseg.io.read_label_on`).
- ``dcmqi_ct3slice``: dcmqi's 3-slice DICOM series and its liver label map (liver 1).

The TotalSegmentator references are outputs of the TotalSegmentator model (its regression
references), not manual labels, and dcmqi's label map is of undocumented origin: agreement with them
is agreement with another segmentation, not with an expert. The JSON and the printed table say so.

Each case is predicted by ``autoseg predict -i <case> -o <work>/<case name> -m <model> --overwrite``
in a fresh process (the model is whatever ``predict -m`` takes: a model folder, an exported zip, or
``synthetic``), its label map is read on the input's grid and scored against the reference with
:func:`score_case`, which is pure so that tests/test_real_ct_benchmark.py can check it on arrays with
known answers. The liver of a prediction is the union of labels 1-3. A case whose files are absent is
skipped with the reason; a missing ``../shared/data/real`` scores nothing and exits 0. Each run is
appended to ``--out`` (bench_common's results file). Not run by CI::

    .venv/bin/python benchmarks/real_ct.py --model synthetic
    .venv/bin/python benchmarks/real_ct.py --model results/Task03_Liver/arunet --cases dcmqi_ct3slice --keep
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402

from autoseg.evaluation import components, hausdorff95  # noqa: E402
from autoseg.io import Geometry, read_label_on, read_sitk  # noqa: E402
from autoseg.layout import CaseOutputs  # noqa: E402
from autoseg.metrics import dice_from_counts  # noqa: E402

DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"
DEFAULT_OUT = BENCH / "results" / "real_ct.json"
DEFAULT_WORK = BENCH / "work" / "real_ct"

#: The classes of autoseg's liver models: their union is the liver that is scored.
LIVER_LABELS = (1, 2, 3)
VESSEL_LABEL, TUMOUR_LABEL = 2, 3
#: What each label's name in the model's label table should contain, to be the class scored here.
EXPECTED_NAMES = {1: "liver", 2: "vessel", 3: "tumo"}
#: How many organs the false-positive breakdown lists (the rest is summed).
TOP_ORGANS = 10
UNLABELLED = "unlabelled"
TOTALSEG_REFERENCE = ("TotalSegmentator model output (its regression reference), not a manual label: Dice "
                      "against it is agreement with another model")


@dataclass(frozen=True)
class RealCase:
    """One real CT with a liver reference; paths are relative to the real-data folder."""

    name: str
    image: str
    reference: str
    liver_label: int
    reference_source: str
    #: JSON naming every label of the reference (a multi-organ map: the false positives are placed
    #: on its organs); None when the reference holds the liver only.
    organ_names: str | None = None


CASES = (
    RealCase("totalsegmentator_ct", "totalsegmentator_example/example_ct.nii.gz",
             "totalsegmentator_example/example_seg_fast_force_split.nii.gz", 5, TOTALSEG_REFERENCE,
             "totalsegmentator_example/label_map_total.json"),
    RealCase("totalsegmentator_dicom", "totalsegmentator_example/example_ct_dicom",
             "totalsegmentator_example/example_seg_dicom.nii.gz", 5, TOTALSEG_REFERENCE,
             "totalsegmentator_example/label_map_total.json"),
    RealCase("dcmqi_ct3slice", "dcmqi_ct3slice/ct-3slice", "dcmqi_ct3slice/liver_seg.nrrd", 1,
             "dcmqi's example liver label map (origin undocumented; its SEG says 'Iowa QIN segmentation "
             "result'), not known to be a manual expert label"),
)


# --- scoring (pure) -------------------------------------------------------------------------------

def voxel_ml(spacing: tuple[float, ...]) -> float:
    """Volume of one voxel in mL from its spacing in mm."""
    return float(np.prod(spacing)) / 1000.0


def liver_of(labels: np.ndarray) -> np.ndarray:
    """The liver of a predicted label map: parenchyma, vessel and tumour together."""
    return np.isin(labels, LIVER_LABELS)


def volume_at_edges(mask: np.ndarray) -> list[str]:
    """The faces of the volume that ``mask`` touches (``"z first"``, ``"x last"``, ...): a reference
    that touches one is cut by the field of view, so the organ's far side is not scored."""
    faces = []
    for axis, name in enumerate("zyx"):
        for end, index in (("first", 0), ("last", -1)):
            if np.take(mask, index, axis=axis).any():
                faces.append(f"{name} {end}")
    return faces


def fp_by_organ(fp: np.ndarray, organ_map: np.ndarray, organ_names: dict[int, str], ml: float,
                top: int = TOP_ORGANS) -> tuple[list[dict[str, Any]], float]:
    """False-positive volume per label of a multi-organ reference, largest first (ties by label),
    the ``top`` largest listed; and the volume of the others. Label 0 is ``unlabelled``; a label the
    names do not know is ``label <id>``."""
    counts = np.bincount(organ_map[fp].ravel().astype(np.int64)) if fp.any() else np.zeros(0, np.int64)
    present = [int(k) for k in np.flatnonzero(counts)]
    present.sort(key=lambda k: (-int(counts[k]), k))
    rows = [{"label": k, "organ": UNLABELLED if k == 0 else organ_names.get(k, f"label {k}"),
             "voxels": int(counts[k]), "ml": int(counts[k]) * ml} for k in present[:top]]
    rest = sum(int(counts[k]) for k in present[top:]) * ml
    return rows, rest


def component_summary(mask: np.ndarray, ml: float) -> dict[str, Any]:
    """26-connected components of ``mask`` (as :func:`autoseg.evaluation.components` counts them):
    how many, and the volume of all but the largest."""
    labelled, count = components(mask)
    if count == 0:
        return {"components": 0, "ml_outside_largest": 0.0}
    sizes = np.bincount(labelled.ravel())[1:]
    return {"components": count, "ml_outside_largest": int(sizes.sum() - sizes.max()) * ml}


def missed_by_third(fn: np.ndarray, ref: np.ndarray, ml: float, head_last: bool | None) -> dict[str, float] | None:
    """Missed liver (mL) in the lower, middle and upper third of the reference liver's slices, foot to
    head (``head_last``: the array's slice index grows towards the head; None: not an axial grid, no
    figure). Thirds of the part the field of view holds."""
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    if head_last is None or zs.size == 0:
        return None
    per_slice = fn.sum(axis=(1, 2))
    edges = np.linspace(zs.min(), zs.max() + 1, 4).round().astype(int)
    thirds = [float(per_slice[a:b].sum() * ml) for a, b in zip(edges[:-1], edges[1:])]
    if not head_last:
        thirds.reverse()
    return dict(zip(("lower", "middle", "upper"), thirds))


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def score_case(pred_labels: np.ndarray, ref_liver: np.ndarray, spacing: tuple[float, ...],
               organ_map: np.ndarray | None = None, organ_names: dict[int, str] | None = None,
               surface: bool = True, head_last: bool | None = None) -> dict[str, Any]:
    """Liver figures of one predicted label map against a reference liver on the same grid.

    ``spacing`` is in mm in the arrays' axis order. Dice is :func:`autoseg.metrics.dice_from_counts`
    (None, not NaN, when both livers are empty); HD95 (mm, ``surface``) is
    :func:`autoseg.evaluation.hausdorff95` (None when either is empty). With ``organ_map`` (a
    multi-organ reference on the same grid, e.g. TotalSegmentator's) the false-positive liver is
    broken down by the organ label it lies on. With ``head_last`` (:func:`missed_by_third`) the missed
    liver is split into the reference liver's lower, middle and upper thirds. Vessel and tumour
    volumes are reported for information: no reference exists for them here.
    """
    pred_labels, ref_liver = np.asarray(pred_labels), np.asarray(ref_liver, bool)
    if pred_labels.shape != ref_liver.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred_labels.shape} vs {ref_liver.shape}")
    if organ_map is not None and organ_map.shape != ref_liver.shape:
        raise ValueError(f"organ map and reference differ in shape: {organ_map.shape} vs {ref_liver.shape}")
    ml = voxel_ml(spacing)
    pred = liver_of(pred_labels)
    tp = int(np.count_nonzero(pred & ref_liver))
    fp_mask = pred & ~ref_liver
    fp = int(np.count_nonzero(fp_mask))
    fn = int(np.count_nonzero(ref_liver)) - tp
    ref_ml, pred_ml = (tp + fn) * ml, (tp + fp) * ml
    dice = dice_from_counts(tp, fp, fn)
    out: dict[str, Any] = {
        "dice": None if math.isnan(dice) else dice,
        "ref_liver_ml": ref_ml, "pred_liver_ml": pred_ml,
        "rel_volume_error": _share(pred_ml - ref_ml, ref_ml),
        "tp_ml": tp * ml, "fp_ml": fp * ml, "fp_share_of_ref": _share(fp * ml, ref_ml),
        "fn_ml": fn * ml, "fn_share_of_ref": _share(fn * ml, ref_ml),
        "fn_ml_by_third": missed_by_third(ref_liver & ~pred, ref_liver, ml, head_last),
        "ref_liver_at_volume_edge": volume_at_edges(ref_liver),
    }
    if surface:
        hd = hausdorff95(pred, ref_liver, spacing)
        out["hd95_mm"] = None if math.isnan(hd) else hd
    pieces = component_summary(pred, ml)
    out["pred_components"] = pieces["components"]
    out["pred_ml_outside_largest_component"] = pieces["ml_outside_largest"]
    out["vessel_ml"] = int(np.count_nonzero(pred_labels == VESSEL_LABEL)) * ml
    out["tumour_ml"] = int(np.count_nonzero(pred_labels == TUMOUR_LABEL)) * ml
    if organ_map is not None:
        rows, rest = fp_by_organ(fp_mask, organ_map, organ_names or {}, ml)
        out["fp_by_organ"] = rows
        out["fp_by_organ_rest_ml"] = rest
    return out


def label_check(label_table: dict[str, str] | None) -> str | None:
    """A warning when the model's label table (from its case report) is not 1 liver, 2 vessel,
    3 tumour: the union of 1-3 would then not be a liver; None when it is, or is not known."""
    if label_table is None:
        return None
    names = {int(k): str(v) for k, v in label_table.items()}
    if all(word in names.get(k, "").lower() for k, word in EXPECTED_NAMES.items()):
        return None
    return (f"the model's labels are {names}, not 1 liver, 2 vessel, 3 tumour: the union of 1-3 scored here "
            f"is not a liver prediction, so these liver figures do not measure one")


# --- running a case -------------------------------------------------------------------------------

def missing_files(case: RealCase, real: Path) -> list[str]:
    """The case's image and reference paths that are absent."""
    return [str(real / rel) for rel in (case.image, case.reference) if not (real / rel).exists()]


def case_outputs(image: Path, out: Path) -> CaseOutputs:
    """What ``autoseg predict -i image -o out`` writes for the case, named as predict names it (the
    label map ``.labels`` and the report ``.report``)."""
    from autoseg.inference.predictor import case_names  # imports torch: only when a case is run

    return CaseOutputs(out, case_names([image])[0])


def predict_command(image: Path, out: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "autoseg", "predict", "-i", str(image), "-o", str(out), "-m", model,
            "--overwrite", *extra]


def run_predict(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``autoseg predict`` with its output in ``log``; its exit status and wall time (s)."""
    start = time.perf_counter()
    with log.open("w") as stream:
        status = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    return status, time.perf_counter() - start


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def labels_on(path: Path, geometry: Geometry, what: str) -> np.ndarray:
    """A label map on ``geometry`` (reordered exactly when it holds the same voxels in another axis
    order); any other grid is an error naming ``what``."""
    labels, grid = read_label_on(path, geometry)
    if not grid.same_grid(geometry):
        raise ValueError(f"{what} {path} is not on the image's grid: {grid} vs {geometry}")
    return labels


def run_case(case: RealCase, real: Path, work: Path, model: str, extra: list[str], keep: bool) -> dict[str, Any]:
    """Predict one case and score it; a dict with ``status`` scored, skipped or failed (and why)."""
    image, reference = real / case.image, real / case.reference
    row: dict[str, Any] = {"case": case.name, "image": str(image), "reference": str(reference),
                           "reference_liver_label": case.liver_label, "reference_source": case.reference_source}
    missing = missing_files(case, real)
    if missing:
        return {**row, "status": "skipped", "reason": f"absent: {', '.join(missing)}"}
    out = work / case.name
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    outputs = case_outputs(image, out)
    target = outputs.labels
    target.unlink(missing_ok=True)  # a failed run must not leave an earlier prediction to be scored
    command = predict_command(image, out, model, extra)
    log = work / f"{case.name}.predict.log"
    status, seconds = run_predict(command, log)
    row.update(predict_command=shlex.join(command), predict_wall_s=seconds, predict_log=str(log))
    if status != 0 or not target.is_file():
        why = f"exit status {status}" if status else f"{target.name} not written"
        return {**row, "status": "failed", "reason": f"autoseg predict: {why}", "log_tail": _tail(log)}
    report = json.loads(outputs.report.read_text()) if outputs.report.is_file() else {}
    row["model_label_table"] = report.get("label_table")
    row["predict_report_seconds"] = report.get("seconds")
    row["predict_stage_seconds"] = report.get("stage_seconds")
    warning = label_check(report.get("label_table"))
    if warning:
        row["label_warning"] = warning
    geometry = Geometry.of(read_sitk(image))
    try:
        pred = labels_on(target, geometry, "prediction")
        ref_map = labels_on(reference, geometry, "reference")
    except ValueError as err:
        return {**row, "status": "failed", "reason": str(err)}
    organ_map, organ_names = None, None
    if case.organ_names:
        names_path = real / case.organ_names
        if names_path.is_file():
            organ_map = ref_map
            organ_names = {int(k): str(v) for k, v in json.loads(names_path.read_text()).items()}
        else:
            row["organ_note"] = f"{names_path} absent: false positives not placed on organs"
    row["spacing_zyx_mm"] = list(geometry.spacing_zyx)
    row["shape_zyx"] = list(geometry.shape_zyx)
    slice_axis_z = float(np.asarray(geometry.direction, dtype=float).reshape(3, 3)[2, 2])  # LPS: +z is the head
    head_last = None if abs(slice_axis_z) < 0.98 else slice_axis_z > 0
    row["scores"] = score_case(pred, ref_map == case.liver_label, geometry.spacing_zyx, organ_map, organ_names,
                               head_last=head_last)
    row["status"] = "scored"
    if not keep and created:
        shutil.rmtree(out)
        log.unlink(missing_ok=True)
    return row


# --- output ---------------------------------------------------------------------------------------

def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The scored cases as a markdown table, then the skipped and failed ones with their reasons."""
    lines = ["| case | liver Dice | HD95 mm | ref mL | pred mL | vol. error | FP mL (of ref) | FN mL | "
             "components (mL outside largest) | vessel mL | tumour mL | predict s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "scored":
            continue
        s = row["scores"]
        lines.append(f"| {row['case']}{' (!)' if row.get('label_warning') else ''} | {_num(s['dice'], '.3f')} | "
                     f"{_num(s.get('hd95_mm'), '.1f')} | {s['ref_liver_ml']:.1f} | {s['pred_liver_ml']:.1f} | "
                     f"{_num(s['rel_volume_error'], '+.1%')} | {s['fp_ml']:.1f} ({_num(s['fp_share_of_ref'], '.1%')}) | "
                     f"{s['fn_ml']:.1f} | {s['pred_components']} ({s['pred_ml_outside_largest_component']:.1f}) | "
                     f"{s['vessel_ml']:.1f} | {s['tumour_ml']:.1f} | {row['predict_wall_s']:.1f} |")
    for row in rows:
        if row["status"] == "scored" and "fp_by_organ" in row["scores"]:
            s = row["scores"]
            lines += ["", f"False-positive liver of {row['case']} by reference label (top {TOP_ORGANS}):", "",
                      "| label | organ | FP mL |", "|---|---|---|"]
            lines += [f"| {r['label']} | {r['organ']} | {r['ml']:.2f} |" for r in s["fp_by_organ"]]
            if s["fp_by_organ_rest_ml"]:
                lines.append(f"| | others | {s['fp_by_organ_rest_ml']:.2f} |")
    notes = []
    for row in rows:
        if row["status"] != "scored":
            notes.append(f"- {row['case']}: {row['status']}, {row['reason']}")
            continue
        notes.append(f"- {row['case']}: reference is {row['reference_source']}")
        if row.get("label_warning"):
            notes.append(f"- {row['case']} (!): {row['label_warning']}")
        thirds = row["scores"].get("fn_ml_by_third")
        if thirds:
            notes.append(f"- {row['case']}: missed liver by third of the reference liver, foot to head: "
                         f"{thirds['lower']:.1f} / {thirds['middle']:.1f} / {thirds['upper']:.1f} mL")
        edges = row["scores"]["ref_liver_at_volume_edge"]
        if edges:
            notes.append(f"- {row['case']}: the reference liver reaches the volume's {', '.join(edges)} "
                         f"(cut by the field of view; only the part inside is scored)")
    return "\n".join([*lines, "", *notes])


def _json_safe(value: Any) -> Any:
    """NaN and infinity as null, so the results file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", required=True, help="what `autoseg predict -m` takes: a model folder, an "
                   "exported .zip, or `synthetic`")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (each run is appended)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the predictions are written")
    p.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the real-data folder")
    p.add_argument("--keep", action="store_true", help="keep the predictions and logs (default: remove "
                   "the case folders this run made)")
    p.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="only these cases")
    p.add_argument("--predict-args", default="", help="more arguments for `autoseg predict`, one string "
                   "(e.g. \"-f 0 --device cpu\")")
    args = p.parse_args(argv)
    if not args.real.is_dir():
        print(f"{args.real} is absent (the shared real-data folder): nothing scored")
        return 0
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    load = os.getloadavg()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for case in cases:
        print(f"{case.name}: ", end="", flush=True)
        row = run_case(case, args.real, args.work, args.model, shlex.split(args.predict_args), args.keep)
        print(row["status"] + (f" ({row['reason']})" if "reason" in row else "")
              + (f" in {row['predict_wall_s']:.1f} s" if "predict_wall_s" in row else ""), flush=True)
        if row["status"] == "failed" and row.get("log_tail"):
            print(row["log_tail"])
        rows.append(row)
    print()
    print(markdown_table(rows))
    if all(row["status"] == "skipped" for row in rows):
        print("\nno case was predicted: nothing written")
        return 0
    model_path = Path(args.model)
    command = [sys.executable, *(sys.argv if argv is None else [str(Path(__file__)), *argv])]
    result = {"benchmark": "real_ct", "date": started, "command": shlex.join(command),
              "model": args.model, "model_resolved": str(model_path.resolve()) if model_path.exists() else None,
              "predict_args": args.predict_args, "cpu": cpu_model(), "load_average": [load, os.getloadavg()],
              "real": str(args.real), "liver": f"union of predicted labels {list(LIVER_LABELS)}",
              "references": "the TotalSegmentator references are TotalSegmentator model outputs, not manual "
                            "labels; dcmqi's is of undocumented origin",
              "cases": rows}
    append_result(args.out, _json_safe(result))
    print(f"\nappended to {args.out}")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
