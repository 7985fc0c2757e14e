"""Liver models and their ensembles, paired on the same cases: phantoms and the real CT.

Two trainings of the synthetic model's recipe land about 0.06 liver Dice apart on each real CT
(``docs/synthetic_model.md``). Averaging the probabilities of several trainings is nnU-Net's answer to
such spread (its five folds, and ``nnUNetv2_ensemble`` for models of different plans). This benchmark
measures it: each model (``NAME=MODEL``, anything ``autoseg predict -m`` takes) predicts every set with
``--save-probabilities`` in a fresh process; each combination named by ``--ensembles`` averages its
members' softmax on the input grid (where models of different plans meet), takes the arg-max and keeps
the largest foreground component (the one-organ rule every synthetic model carries; a single model is
scored the same way, from its own probabilities, so that the rows differ only in what is averaged).
Scores: liver Dice (the union of labels 1-3; reference labels ``> 0``), vessel and tumour Dice where the
reference has them, each row paired by case against ``--baseline`` (mean difference, bootstrap
interval, cases more than 0.01 better or worse).

Sets: ``NAME=IMAGES:LABELS`` folders of NIfTI cases (the cases of ``IMAGES`` that ``LABELS`` holds; ``LABELS`` in the trunk
phantoms' convention 1 liver 2 vessel 3 tumour, or with ``:task03`` 1 liver 2 tumour); ``--real`` adds
the real CT with liver references in ``../shared/data/real`` (``benchmarks/real_ct.py``'s cases; liver
only). Predictions are kept under ``--work`` and reused with ``--reuse``. Not run by CI::

    .venv/bin/python benchmarks/model_ensemble.py --models s0=benchmarks/work/cache_s43/models/synthetic.zip \\
        s1=benchmarks/work/cache_s44/models/synthetic.zip ec=benchmarks/work/cache_s45/models/synthetic.zip \\
        --sets fov=benchmarks/work/fov_ends/mid-bladder_trunk_v3/inputs:benchmarks/work/fov_ends/mid-bladder_trunk_v3/labels \\
        --real --ensembles s0+s1 s0+s1+ec --baseline s0 --pool dev=fov,below
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from bench_preprocess import commit_label  # noqa: E402
from edge_context import paired  # noqa: E402
from real_ct import CASES, DEFAULT_REAL, labels_on, missing_files  # noqa: E402
from synthetic_phantoms import dice  # noqa: E402

from autoseg.inference.postprocessing import keep_largest_foreground  # noqa: E402
from autoseg.io import Geometry, read_label, read_sitk  # noqa: E402
from autoseg.layout import CaseOutputs  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "model_ensemble.json"
REAL_SET = "real"


def ensemble_labels(probabilities: list[np.ndarray]) -> np.ndarray:
    """The arg-max of the members' mean softmax ``(K, z, y, x)``, its largest foreground component kept."""
    mean = np.mean([p.astype(np.float32) for p in probabilities], axis=0)
    return keep_largest_foreground(mean.argmax(axis=0).astype(np.uint8))


def case_scores(labels: np.ndarray, ref: np.ndarray, convention: str) -> dict[str, float | None]:
    """Liver, and where the reference labels them vessel and tumour, Dice of one case."""
    scores = {"liver": dice(labels > 0, ref > 0)}
    if convention == "lvt":
        scores.update(vessel=dice(labels == 2, ref == 2), tumour=dice(labels == 3, ref == 3))
    elif convention == "task03":
        scores["tumour"] = dice(labels == 3, ref == 2)
    return scores


def parse_set(text: str) -> tuple[str, Path, Path, str]:
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "task03"):
        raise SystemExit(f"--sets takes NAME=IMAGES:LABELS[:task03], got {text!r}")
    return name, Path(parts[0]), Path(parts[1]), parts[2] if len(parts) == 3 else "lvt"


def predict(model: str, images: Path, out: Path, reuse: bool) -> float:
    """``autoseg predict`` with probabilities into ``out``; its wall time (0 when reused). ``out`` records
    the model it holds (``model.txt``): predictions of another model are never reused."""
    stamp = out / "model.txt"
    if reuse and stamp.is_file() and any(out.glob(f"*{CaseOutputs.PROBABILITIES_ENDING}")):
        if stamp.read_text() != model:
            raise SystemExit(f"{out} holds predictions of {stamp.read_text()}, not {model}: give another --work")
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # written again only once this model's predictions are complete
    start = time.perf_counter()
    with (out.parent / f"{out.name}.predict.log").open("w") as log:
        status = subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(images), "-o", str(out),
                                 "-m", model, "--save-probabilities", "--overwrite"], stdout=log,
                                stderr=subprocess.STDOUT).returncode
    if status:
        raise SystemExit(f"autoseg predict -m {model} -i {images} failed (exit {status}): see {log.name} in {out.parent}")
    stamp.write_text(model)
    return time.perf_counter() - start


def probabilities(folder: Path, case: str) -> np.ndarray:
    return np.load(CaseOutputs(folder, case).probabilities)["probabilities"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL")
    p.add_argument("--sets", nargs="*", default=[], metavar="NAME=IMAGES:LABELS[:task03]")
    p.add_argument("--real", action="store_true", help="also the real CT in ../shared/data/real")
    p.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    p.add_argument("--ensembles", nargs="*", default=[], metavar="A+B[+C]", help="combinations to average")
    p.add_argument("--baseline", help="the row every other is paired against (default: the first model)")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "model_ensemble")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--reuse", action="store_true", help="reuse a model's predictions already in --work")
    p.add_argument("--pool", nargs="*", default=[], metavar="NAME=SET,SET",
                   help="also pair over the cases of these sets together")
    args = p.parse_args(argv)
    commit = commit_label()  # the code that runs, read before the long run (the checkout may move)
    models = dict(m.split("=", 1) for m in args.models)
    rows = [[name] for name in models] + [e.split("+") for e in args.ensembles]
    unknown = sorted({m for row in rows for m in row} - set(models))
    if unknown:
        raise SystemExit(f"--ensembles names models not in --models: {', '.join(unknown)}")
    baseline = args.baseline or next(iter(models))
    names = ["+".join(r) for r in rows]
    if baseline not in names:
        raise SystemExit(f"--baseline {baseline} is neither a model nor an ensemble")
    sets = [parse_set(s) for s in args.sets]
    known = {name for name, *_ in sets} | ({REAL_SET} if args.real else set())
    pools = {name: members.split(",") for name, _, members in (pool.partition("=") for pool in args.pool)}
    for pool, members in pools.items():
        strangers = sorted(set(members) - known)
        if strangers:
            raise SystemExit(f"--pool {pool}: {', '.join(strangers)} is not a set here ({', '.join(sorted(known))})")
    inputs: list[tuple[str, str, Path, Any]] = []  # set, case, where its images lie, how to read its reference
    for name, images, labels, convention in sets:
        for label in sorted(labels.glob("*.nii.gz")):
            case = label.name[:-len(".nii.gz")]
            if any((images / f"{case}{tail}.nii.gz").is_file() for tail in ("", "_0000")):  # a case of the set
                inputs.append((name, case, images, (label, convention)))
    if args.real:
        for case in CASES:
            if missing_files(case, args.real_dir):
                print(f"{case.name}: skipped (absent)")
                continue
            inputs.append((REAL_SET, case.name, args.real_dir / case.image, case))
    seconds: dict[str, float] = {}
    for model_name, model in models.items():
        for name, images, _, _ in sets:
            seconds[f"{model_name}/{name}"] = predict(model, images, args.work / model_name / name, args.reuse)
        for _, case_name, image, _ in (i for i in inputs if i[0] == REAL_SET):
            seconds[f"{model_name}/{case_name}"] = predict(model, image, args.work / model_name / case_name, args.reuse)
    scores: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {n: {} for n in names}
    from autoseg.inference.predictor import case_names  # imports torch

    for set_name, case_name, where, ref_info in inputs:
        if set_name == REAL_SET:
            geometry = Geometry.of(read_sitk(where))
            ref = (labels_on(args.real_dir / ref_info.reference, geometry, "reference") == ref_info.liver_label)
            convention, case_file, sub = "liver", case_names([where])[0], case_name
        else:
            label_path, convention = ref_info
            ref, _ = read_label(label_path)
            case_file, sub = case_name, set_name
        if convention != "liver" and not (ref > 0).any():
            continue  # no liver in the field of view: nothing to score
        member = {m: probabilities(args.work / m / sub, case_file) for m in models}
        for row, name in zip(rows, names):
            labels = ensemble_labels([member[m] for m in row])
            scores[name].setdefault(set_name, {})[case_name] = case_scores(labels, ref, convention)
    for pool, members in pools.items():
        for name in names:
            scores[name][pool] = {f"{m}/{c}": v for m in members for c, v in scores[name].get(m, {}).items()}
    report: dict[str, Any] = {}
    for set_name in [*dict.fromkeys(i[0] for i in inputs), *pools]:
        cases = sorted(scores[baseline].get(set_name, {}))
        keys = sorted({k for s in scores[baseline].get(set_name, {}).values() for k in s})
        print(f"\n{set_name} ({len(cases)} cases), paired against {baseline}:")
        report[set_name] = {}
        for name in names:
            per_case = scores[name].get(set_name, {})
            entry: dict[str, Any] = {"per_case": per_case}
            cells = []
            for key in keys:
                scored_cases = [c for c in cases if per_case[c].get(key) is not None]  # a pool may mix conventions
                values = [per_case[c][key] for c in scored_cases]
                entry[f"mean_{key}"] = float(np.mean(values)) if values else None
                cell = f"{key} {entry[f'mean_{key}']:.3f}" if values else f"{key} -"
                if name != baseline and values:
                    pair = paired(per_case, scores[baseline][set_name], scored_cases, key)
                    entry[f"paired_{key}"] = pair
                    cell += f" ({pair['paired_difference']:+.3f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}])"
                cells.append(cell)
            report[set_name][name] = entry
            print(f"  {name:14s} " + "  ".join(cells))
    append_result(args.out, {"benchmark": "model_ensemble",
                             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
                             "commit": commit, "command": " ".join(sys.argv), "models": models,
                             "baseline": baseline, "predict_seconds": seconds, "sets": report})
    print(f"\nresults appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
