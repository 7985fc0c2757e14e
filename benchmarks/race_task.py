"""The race on any MSD task (``race.py --task PATH``): the task's checks, lesion-wise scores of a
prediction, and the report (each draw, the spread over seeded draws, paired differences between
contestants, every test case).

Lesions are the 26-connected components of one class, as in ``autoseg evaluate``
(:func:`autoseg.evaluation.lesion_scores` counts them): a reference lesion is found when any
predicted voxel of the class overlaps it; a predicted component that overlaps no reference voxel of
the class is a false-positive lesion. The size bins and the false-positive volume label the
components with :func:`autoseg.evaluation.components`, the same labelling.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

#: Reference lesion volume bins (mL): below 0.5, 0.5 to 3 inclusive, above 3.
SIZE_BINS = ("<0.5 mL", "0.5-3 mL", ">3 mL")
BOOTSTRAP_SAMPLES = 10000
ENDING = ".nii.gz"
LAYOUT_FIX = ("an MSD task folder holds dataset.json, imagesTr/ and labelsTr/ (training), imagesTs/ and labelsTs/ "
              "(held-out test images and their label maps, named like the images, .nii.gz)")


@dataclass(frozen=True)
class RaceTask:
    """An MSD task folder checked for the race: its foreground classes and its cases."""

    root: Path
    classes: dict[int, str]  # foreground label id -> name (from dataset.json)
    channel: str
    training: tuple[tuple[str, Path, Path], ...]  # case, image, label
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.root.name

    def describe(self, plan_args: str) -> dict[str, Any]:
        """What the race's results depend on: a change plans and trains again."""
        return {"path": str(self.root), "classes": {str(k): v for k, v in self.classes.items()},
                "training_cases": [c for c, _, _ in self.training], "test_cases": list(self.test),
                "autoseg_plan_args": plan_args}


def _refuse(folder: Path, problem: str, fix: str = LAYOUT_FIX) -> SystemExit:
    return SystemExit(f"race --task: {folder}: {problem}. Fix: {fix}")


def load_task(path: Path) -> RaceTask:
    """Check an MSD task folder for the race (training and held-out cases, one channel) and read its
    classes from dataset.json; every problem stops the race with the folder and the fix."""
    from autoseg.datasets import load_dataset
    from autoseg.errors import DatasetError
    from autoseg.evaluation import class_keys

    root = path.expanduser().resolve()
    if not root.is_dir():
        raise _refuse(root, "no such folder")
    try:
        dataset = load_dataset(root)
    except DatasetError as exc:
        raise SystemExit(f"race --task: {exc}") from None
    if dataset.partial:
        raise _refuse(root, "has partial labels (a merged dataset): the race scores plain labels, and nnU-Net "
                      "takes none", "race each source task on its own (benchmarks/merged_model.py compares a "
                      "merged model with separate ones)")
    if dataset.format != "msd":
        raise _refuse(root, "is an nnU-Net raw dataset (dataset.json has channel_names)",
                      "give the race an MSD task folder (dataset.json with 'modality' and 'labels')")
    if len(dataset.channel_names) != 1:
        raise _refuse(root, f"has {len(dataset.channel_names)} channels ({', '.join(dataset.channel_names)})",
                      "the race trains on one image channel: race a task with one modality")
    training = []
    for case in dataset.cases:
        if case.label is None or not case.images[0].name.endswith(ENDING) or not case.label.name.endswith(ENDING):
            raise _refuse(case.images[0].parent, f"case {case.identifier} is not a {ENDING} image and label",
                          f"convert the training images and labels to NIfTI ({ENDING})")
        training.append((case.identifier, case.images[0], case.label))
    test = _test_cases(root)
    overlap = sorted(set(test) & {c for c, _, _ in training})
    if overlap:
        raise _refuse(root, f"case(s) {', '.join(overlap[:5])} are both training and test cases",
                      "keep the held-out cases out of imagesTr/labelsTr")
    foreground = sorted(k for k in dataset.labels if k != 0)
    if not foreground:
        raise _refuse(root / "dataset.json", "its labels hold only the background",
                      "list the classes in dataset.json's labels, e.g. \"1\": \"tumour\"")
    names = class_keys(foreground, dataset.labels)
    return RaceTask(root, names, dataset.channel_names[0], tuple(training), tuple(test))


def _case_files(folder: Path) -> dict[str, Path]:
    """Case -> file of a test folder; hidden files (macOS ``._`` copies) are skipped."""
    from autoseg.io import is_image_file

    if not folder.is_dir():
        raise _refuse(folder, "is missing: the race tests each model on held-out cases with their labels")
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not is_image_file(p):
            continue
        if not p.name.endswith(ENDING):
            raise _refuse(folder, f"{p.name} is not {ENDING}", f"convert the test images and labels to NIfTI ({ENDING})")
        files[p.name[: -len(ENDING)]] = p
    if not files:
        raise _refuse(folder, f"holds no {ENDING} images")
    return files


def _test_cases(root: Path) -> tuple[str, ...]:
    """The held-out cases: imagesTs and labelsTs present, non-empty and paired by file name."""
    from autoseg.layout import RawDataset

    raw = RawDataset(root)
    images, labels = _case_files(raw.images_ts), _case_files(raw.labels_ts)
    for folder, missing in ((raw.labels_ts, sorted(set(images) - set(labels))),
                            (raw.images_ts, sorted(set(labels) - set(images)))):
        if missing:
            other = "label map" if folder == raw.labels_ts else "image"
            raise _refuse(folder, f"no {other} for test case(s) {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                          f"add the missing {other}s to {folder.name}/, named like the "
                          f"{'images' if other == 'label map' else 'labels'} (CASE{ENDING}), or remove those cases")
    return tuple(sorted(images))


def nnunet_raw(task: RaceTask, out: Path) -> Path:
    """The training cases linked into an nnU-Net v2 raw dataset folder ``out`` (``CASE_0000``
    images, labels, a dataset.json with the task's classes)."""
    import json
    import shutil

    if out.exists():
        shutil.rmtree(out)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for case, image, label in task.training:
        for src, dst in ((image, out / "imagesTr" / f"{case}_0000{ENDING}"), (label, out / "labelsTr" / f"{case}{ENDING}")):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    labels = {"background": 0, **{name: k for k, name in task.classes.items()}}
    meta = {"name": task.name, "channel_names": {"0": task.channel}, "labels": labels,
            "numTraining": len(task.training), "file_ending": ENDING}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


# --- lesion-wise scores ---------------------------------------------------------------------------

def decision_rules(path: Path) -> dict[str, Any]:
    """The rules of a stored post-processing decision (``postprocessing.json``) as written there, one
    key per field of :class:`autoseg.artefacts.PostprocessingRules` (None where an older decision has none)."""
    from autoseg.artefacts import PostprocessingRules

    decision = json.loads(path.read_text())
    return {f.name: decision.get(f.name) for f in fields(PostprocessingRules)}


def size_bin(volume_ml: float) -> str:
    """The bin of a reference lesion's volume."""
    return SIZE_BINS[0] if volume_ml < 0.5 else SIZE_BINS[1] if volume_ml <= 3.0 else SIZE_BINS[2]


def class_lesions(pred: np.ndarray, ref: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """One class of one case: reference lesions found, false-positive lesions and their volume,
    reference lesions by size bin ([found, total]), the reference and predicted volumes (mL)."""
    from autoseg.evaluation import bounding_box, components, lesion_scores

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    box = bounding_box(pred | ref, margin=1) or tuple(slice(0, 0) for _ in pred.shape)
    p, r = pred[box], ref[box]
    counts = lesion_scores(p, r)
    ref_cc, n_ref = components(r)
    pred_cc, n_pred = components(p)
    found = np.zeros(n_ref + 1, bool)
    found[np.unique(ref_cc[p])] = True
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1) * voxel_ml
    bins = {name: [0, 0] for name in SIZE_BINS}
    for lesion in range(1, n_ref + 1):
        cell = bins[size_bin(float(ref_sizes[lesion]))]
        cell[0] += int(found[lesion])
        cell[1] += 1
    matched = np.zeros(n_pred + 1, bool)
    matched[np.unique(pred_cc[r])] = True
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1) * voxel_ml
    false = ~matched[1:]
    return {"ref_lesions": counts["ref_lesions"], "found": counts["detected_lesions"],
            "pred_lesions": counts["pred_lesions"],
            "fp_lesions": counts["pred_lesions"] - counts["matched_pred_lesions"],
            "fp_ml": round(float(pred_sizes[1:][false].sum()), 4),
            "ref_ml": round(float(np.count_nonzero(r) * voxel_ml), 4),
            "pred_ml": round(float(np.count_nonzero(p) * voxel_ml), 4), "size_bins": bins}


def case_lesions(pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, ...],
                 classes: dict[int, str]) -> dict[str, dict[str, Any]]:
    """:func:`class_lesions` of every named class of two label maps on one grid."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    return {name: class_lesions(pred == k, ref == k, voxel_ml) for k, name in classes.items()}


def draw_summary(lesions: dict[str, dict[str, dict[str, Any]]], cls: str) -> dict[str, Any]:
    """One class over a draw's test cases: lesions found of the reference's (pooled), false-positive
    lesions per case, the cases whose reference has none of the class and how many of them the
    prediction gave some (with its volume), found of total by size bin."""
    rows = [case[cls] for case in lesions.values()]
    absent = [r for r in rows if r["ref_lesions"] == 0]
    bins = {name: [sum(r["size_bins"][name][i] for r in rows) for i in (0, 1)] for name in SIZE_BINS}
    ref_total = sum(r["ref_lesions"] for r in rows)
    found = sum(r["found"] for r in rows)
    return {"found": found, "ref_lesions": ref_total, "recall": found / ref_total if ref_total else None,
            "fp_per_case": sum(r["fp_lesions"] for r in rows) / len(rows) if rows else None,
            "cases_without": len(absent), "false_cases": sum(r["pred_ml"] > 0 for r in absent),
            "false_ml": round(sum(r["pred_ml"] for r in absent), 4), "size_bins": bins}


# --- draws and pairs ------------------------------------------------------------------------------

def paired_over_draws(a: dict[int, dict[str, dict[str, float | None]]], b: dict[int, dict[str, dict[str, float | None]]],
                      cls: str, seed: int = 0) -> dict[str, Any] | None:
    """Dice of ``a`` minus ``b`` paired by seed and test case (``seed -> case -> class -> Dice``):
    the mean over the pairs where both are defined, a 95 % percentile interval from a seeded
    bootstrap that resamples the test cases and the seeds (so it holds the test-set and the
    training-draw noise), and the pairs won and lost. None when no pair is defined."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    cases = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)))
    diff = np.full((len(cases), len(seeds)), np.nan)
    for j, s in enumerate(seeds):
        for i, c in enumerate(cases):
            x, y = a[s][c].get(cls), b[s][c].get(cls)
            if x is not None and y is not None:
                diff[i, j] = x - y
    valid = ~np.isnan(diff)
    if not valid.any():
        return None
    rng = np.random.default_rng(seed)
    n_c, n_s = len(cases), len(seeds)
    w_cases = rng.multinomial(n_c, np.full(n_c, 1 / n_c), size=BOOTSTRAP_SAMPLES).astype(float)
    w_seeds = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=BOOTSTRAP_SAMPLES).astype(float)
    num = np.einsum("bc,cs,bs->b", w_cases, np.where(valid, diff, 0.0), w_seeds)
    den = np.einsum("bc,cs,bs->b", w_cases, valid.astype(float), w_seeds)
    low, high = np.percentile(num[den > 0] / den[den > 0], [2.5, 97.5])
    d = diff[valid]
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "pairs": int(d.size),
            "cases": n_c, "seeds": seeds, "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def _groups(runs: dict[str, dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, dict[str, Any]]]]:
    """Rows by (budget, contestant), each group's draws in seed order."""
    out: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for key, row in runs.items():
        out.setdefault((row["budget"], row["base"]), []).append((key, row))
    return {g: sorted(rows, key=lambda kr: kr[1]["seed"]) for g, rows in sorted(out.items(), key=_group_order)}


def _group_order(item: tuple[tuple[str, str], Any]) -> tuple:
    """Step budgets first, by steps; then durations, shortest first; then the contestant."""
    from autoseg.cli import parse_duration

    (budget, base), _ = item
    steps = budget.removesuffix("steps").removesuffix("step")
    return ((0, int(steps)) if steps.isdigit() else (1, parse_duration(budget))), base


# --- report ---------------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _of(found: int, total: int) -> str:
    return f"{found} of {total}" if total else "–"


def draws_table(results: dict[str, Any], classes: list[str]) -> str:
    lines = ["| budget | row | seed | steps | class | Dice | lesions found (recall) | false-positive lesions per case "
             "| test cases without the class: given some, predicted mL | found " + " | found ".join(SIZE_BINS) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(SIZE_BINS)]
    for rows in _groups(results["runs"]).values():
        for key, row in rows:
            for cls in classes:
                s = draw_summary(row["lesions"], cls)
                found = f"{_of(s['found'], s['ref_lesions'])} ({_f(s['recall'], 2)})" if s["ref_lesions"] else "–"
                without = (f"{s['false_cases']} of {s['cases_without']}, {s['false_ml']:.2f} mL"
                           if s["cases_without"] else "none without it")
                bins = " | ".join(_of(*s["size_bins"][b]) for b in SIZE_BINS)
                lines.append(f"| {row['budget']} | {key.rsplit('@', 1)[0]} | {row['seed']} | {row['steps']} | {cls} | "
                             f"{_f(row['test_dice'][cls])} | {found} | {_f(s['fp_per_case'], 2)} | {without} | {bins} |")
    return "\n".join(lines)


def spread_table(results: dict[str, Any], classes: list[str]) -> str:
    """Contestants with two or more draws at a budget: each draw's figures and their spread."""
    lines = ["| budget | contestant | class | draws (seeds) | Dice per draw | Dice mean, SD | lesion recall per draw | "
             "false-positive lesions per case, per draw |", "|---|---|---|---|---|---|---|---|"]
    found = False
    for (budget, base), rows in _groups(results["runs"]).items():
        if len(rows) < 2:
            continue
        found = True
        seeds = ", ".join(str(r["seed"]) for _, r in rows)
        for cls in classes:
            dice = [r["test_dice"][cls] for _, r in rows]
            present = [d for d in dice if d is not None]
            spread = (f"{statistics.mean(present):.3f}, {statistics.stdev(present):.3f}" if len(present) > 1 else "–")
            summaries = [draw_summary(r["lesions"], cls) for _, r in rows]
            lines.append(f"| {budget} | {base} | {cls} | {len(rows)} ({seeds}) | {', '.join(map(_f, dice))} | {spread} | "
                         f"{', '.join(_f(s['recall'], 2) for s in summaries)} | "
                         f"{', '.join(_f(s['fp_per_case'], 2) for s in summaries)} |")
    return "\n".join(lines) if found else "(no contestant has two draws at a budget: give --seeds S1 S2 ...)"


def pairs_table(results: dict[str, Any], classes: list[str]) -> str:
    """Every two contestants of a budget: the paired per-case Dice difference over their common seeds."""
    by_budget: dict[str, dict[str, dict[int, dict]]] = {}
    for (budget, base), rows in _groups(results["runs"]).items():
        by_budget.setdefault(budget, {})[base] = {r["seed"]: r["test_cases"] for _, r in rows}
    lines = ["| budget | difference | class | Dice, mean [95 % interval] | won, lost of pairs | test cases x seeds |",
             "|---|---|---|---|---|---|"]
    found = False
    for budget, sides in by_budget.items():
        names = sorted(sides)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for cls in classes:
                    d = paired_over_draws(sides[a], sides[b], cls)
                    if d is None:
                        continue
                    found = True
                    lines.append(f"| {budget} | {a} minus {b} | {cls} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | "
                                 f"{d['wins']}, {d['losses']} of {d['pairs']} | {d['cases']} x {len(d['seeds'])} "
                                 f"({', '.join(map(str, d['seeds']))}) |")
    return "\n".join(lines) if found else "(one contestant, or none with a common seed: nothing to pair)"


def cases_table(results: dict[str, Any], classes: list[str]) -> str:
    """Every test case, class and row: Dice, lesions found, false-positive lesions and their mL."""
    lines = ["| case | class | reference: lesions, mL | row | Dice | lesions found | false-positive lesions | "
             "false-positive mL |", "|---|---|---|---|---|---|---|---|"]
    rows = [kr for group in _groups(results["runs"]).values() for kr in group]
    cases = sorted({c for _, r in rows for c in r["lesions"]})
    for case in cases:
        for cls in classes:
            ref = next(r["lesions"][case][cls] for _, r in rows if case in r["lesions"])
            for key, row in rows:
                if case not in row["lesions"]:
                    continue
                x = row["lesions"][case][cls]
                lines.append(f"| {case.removesuffix(ENDING)} | {cls} | {ref['ref_lesions']}, {ref['ref_ml']:.2f} | {key} | "
                             f"{_f(row['test_cases'][case][cls])} | {_of(x['found'], x['ref_lesions'])} | "
                             f"{x['fp_lesions']} | {x['fp_ml']:.2f} |")
    return "\n".join(lines)


def plan_timing(results: dict[str, Any]) -> str:
    """Both tools' plan + preprocess wall times: the race's own first run (autoseg calibrates the
    CPU in it) and, where ``--retime-plans`` ran, the medians of its rounds with nnU-Net's ratio."""
    first = results.get("plan_and_preprocess", {})
    text = "Plan + preprocess: " + (", ".join(f"{tool} {p['wall_s']:.1f} s" for tool, p in first.items()) or "?")
    text += " (the race's first run: autoseg calibrates the CPU in it unless its plan arguments give --cpu-gflops)."
    again = results.get("plan_and_preprocess_retimed")
    if again:
        given = "--cpu-gflops" in results["task"].get("autoseg_plan_args", "")  # nothing to calibrate
        names = {"autoseg": "autoseg (CPU speed given, first run)" if given else "autoseg as a first run (it calibrates the CPU)",
                 "autoseg_cached": "again" if given else "with the calibration cached", "nnunet": "nnU-Net"}
        parts = [f"{names[k]} {again[k]['wall_s']:.1f} s" for k in names if k in again]
        rounds = f"{again['repeats']} round{'s' if again['repeats'] != 1 else ''}"
        cpu = again.get("machine", {}).get("cpu", "?")
        text += f" Timed again ({rounds}, {again['time']}, {cpu}, medians): " + ", ".join(parts)
        if "nnunet" in again:
            once, cached = (again[k]["wall_s"] / again["nnunet"]["wall_s"] for k in ("autoseg", "autoseg_cached"))
            text += (f"; autoseg's time over nnU-Net's {once:.2f} and {cached:.2f}" if given else
                     f"; autoseg's time over nnU-Net's {once:.2f} as a first run, {cached:.2f} calibrated")
        text += "."
    return text


def report(results: dict[str, Any]) -> str:
    """The race on a task as markdown, from its results file."""
    task = results.get("task")
    if not task or not results.get("runs"):
        return "no rows yet: run race.py --task PATH (without --report) first"
    classes = list(task["classes"].values())
    machine = results.get("machine", {})
    head = [f"# The race on {Path(task['path']).name}", "",
            f"{task['path']}: {len(task['training_cases'])} training cases, {len(task['test_cases'])} test cases "
            f"(imagesTs/labelsTs), classes {', '.join(classes)}; {machine.get('cpu', '?')}, {machine.get('cores', '?')} "
            f"cores, autoseg {machine.get('autoseg_commit', '?')}. {plan_timing(results)} "
            "Dice is left out of a mean where a class is absent from both prediction and reference (shown as –).",
            "", "## Each draw on the test cases", "", draws_table(results, classes),
            "", "## Spread over seeded draws", "", spread_table(results, classes),
            "", "## Paired differences (paired by test case and seed; the interval resamples both)", "",
            pairs_table(results, classes), "", "## Every test case", "", cases_table(results, classes), ""]
    return "\n".join(head)
