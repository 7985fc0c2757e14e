"""Growth to Task08 scale (issue 23, item 4): plan and preprocess, one training epoch and prediction on
10, 40 and 160 clinical-size phantoms, autoseg beside nnU-Net v2, with time, peak memory and disk.

Task08 has 303 training CTs of 512x512 in-plane and 24-181 slices. This writes one pool of
clinical-size Task08 phantoms (0.68-0.78 mm in-plane, 1.8-5 mm slices, as ``bench_preprocess.py``)
and, per size N, a task of the pool's first N training cases and the same held-out test cases
(written apart, so every size and every later run predicts the same ones; hard links: the cases of a smaller task are those of the larger ones, so a curve compares like
with like). Each size is raced by ``race.py --task`` with a step budget of one epoch (``--steps``,
default 50: autoseg's epoch, nnU-Net's trainer at 50 iterations an epoch too), autoseg against
nnU-Net on the race's hand-shrunk plan (nnU-Net's default plan would spend the run in its first
epoch): both tools' plan and preprocess, fold-0 training and the test cases' prediction are timed in
fresh process trees with their peak memory (the race's sampler). Beside them this measures the disk
of each tool's preprocessed folder. Expectation: time linear in N, memory flat, nothing breaking.

Results: ``benchmarks/results/growth.json`` and the picture ``docs/growth.png``. Needs
``benchmarks/setup_nnunet.sh``. Not run by CI. A size already raced is reused (``--redo`` races it
again)::

    .venv/bin/python benchmarks/growth.py --sizes 10 40 160
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import cpu_model  # noqa: E402
from bench_preprocess import FULL_SPACING  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "growth.json"
PICTURE = REPO / "docs" / "growth.png"
POOL_SEED = 3030  # patients of their own
TEST_SEED = 3031  # the held-out cases, written apart so that every size and every run predicts the same ones
CONTESTANTS = {"autoseg": "autoseg", "nnunet": "nnunet_small"}


def subset_task(pool: Path, out: Path, n: int, tests: Path | None = None) -> Path:
    """An MSD task of ``pool``'s first ``n`` training cases and all the test cases of ``tests``
    (default: the pool's), as hard links (a copy where the file system refuses one); rewritten when
    ``n`` or the pool changed."""
    tests = tests or pool
    meta = json.loads((pool / "dataset.json").read_text())
    if n > len(meta["training"]):
        raise SystemExit(f"the pool {pool} has {len(meta['training'])} training cases, not {n}")
    held_out = sorted((tests / "imagesTs").glob("*.nii.gz"))
    rename = (lambda name: name) if tests == pool else (lambda name: f"test_{name}")  # apart from the pool's names
    wanted = dict(meta, training=meta["training"][:n], numTraining=n, numTest=len(held_out),
                  test=[f"./imagesTs/{rename(p.name)}" for p in held_out])
    if (out / "dataset.json").is_file() and json.loads((out / "dataset.json").read_text()) == wanted:
        return out
    shutil.rmtree(out, ignore_errors=True)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / folder).mkdir(parents=True)
    files = [pair[k] for pair in wanted["training"] for k in ("image", "label")]
    sources = [(pool / rel, out / rel) for rel in files]
    sources += [(p, out / "imagesTs" / rename(p.name)) for p in held_out]
    sources += [(tests / "labelsTs" / p.name, out / "labelsTs" / rename(p.name)) for p in held_out]
    for src, dst in sources:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    (out / "dataset.json").write_text(json.dumps(wanted, indent=1))
    return out


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links followed once each; 0 when absent)."""
    seen, total = set(), 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        if path.is_file():
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def race_size(task: Path, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Race the size-``n`` task (or reuse its results when both rows of this budget are there for
    these very cases) and gather the figures of both tools."""
    import race_task as rt

    results = work / f"race_n{n}.json"
    race_work = work / f"race_n{n}"
    keys = {tool: f"{row}@{args.steps}steps" for tool, row in CONTESTANTS.items()}
    raced = json.loads(results.read_text()) if results.is_file() else {}
    current = raced.get("task") == rt.load_task(task).describe("") and all(k in raced.get("runs", {})
                                                                           for k in keys.values())
    if args.redo or not current:
        subprocess.run([sys.executable, str(BENCH / "race.py"), "--task", str(task), "--budgets", f"{args.steps}steps",
                        "--contestants", *CONTESTANTS.values(), "--seeds", "1", "--work", str(race_work),
                        "--results", str(results), "--no-docs"], check=True)
        raced = json.loads(results.read_text())
    plan = raced["plan_and_preprocess"]
    disk = {"autoseg": folder_bytes(race_work / "autoseg_pre"),
            "nnunet": folder_bytes(race_work / "nnunet" / "preprocessed")}
    out: dict[str, Any] = {"cases": n}
    for tool, key in keys.items():
        row = raced["runs"][key]
        out[tool] = {"plan_and_preprocess_s": plan[tool]["wall_s"], "plan_and_preprocess_gib": plan[tool]["peak_rss_gib"],
                     "train_s": row["train_wall_s"], "train_gib": row["train_peak_rss_gib"], "steps": row["steps"],
                     "steps_s": round(row["steps"] * row["median_step_s"], 1),
                     "predict_s": row["predict_wall_s"], "predict_gib": row["predict_peak_rss_gib"],
                     "preprocessed_bytes": disk[tool]}
    out["autoseg"]["fold_validation_s"] = fold_validation_seconds(race_work / "autoseg_results", f"{CONTESTANTS['autoseg']}_{args.steps}steps")
    return out


def fold_validation_seconds(results: Path, tag: str) -> float | None:
    """Seconds autoseg's end-of-fold validation of the held-out cases took (its ``summary.json``),
    the part of its training row that grows with the number of cases; None where it is not there."""
    found = sorted(results.glob(f"{tag}/*/*/fold_0/validation/summary.json"))
    return json.loads(found[0].read_text()).get("seconds") if found else None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Time, peak memory and disk against the number of cases, both tools, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["cases"] for r in rows]
    panels = [("plan + preprocess (s)", "plan_and_preprocess_s"), ("one epoch of training steps (s)", "steps_s"),
              ("predict the test cases (s)", "predict_s"), ("peak memory, any stage (GiB)", None),
              ("preprocessed folder (GB)", "preprocessed_bytes")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (title, key) in zip(axes, panels):
        for tool, style in (("autoseg", "o-"), ("nnunet", "s--")):
            if key is None:
                values = [max(r[tool][k] for k in ("plan_and_preprocess_gib", "train_gib", "predict_gib")) for r in rows]
            elif key == "preprocessed_bytes":
                values = [r[tool][key] / 1e9 for r in rows]
            else:
                values = [r[tool][key] for r in rows]
            ax.plot(n, values, style, label="nnU-Net v2" if tool == "nnunet" else tool)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training cases")
        ax.set_xticks(n)  # a linear axis: time linear in the cases is a straight line
        ax.set_xticklabels([str(x) for x in n])
        ax.set_ylim(bottom=0)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160])
    p.add_argument("--test", type=int, default=1, help="held-out clinical-size cases each size predicts")
    p.add_argument("--steps", type=int, default=50, help="training steps of each tool (one epoch)")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "growth")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--picture", type=Path, default=PICTURE)
    p.add_argument("--redo", action="store_true", help="race every size again")
    args = p.parse_args(argv)
    from autoseg.phantom import write_task

    work = args.work.resolve()
    pool = write_task(work / "pool", "Task08", num_training=max(args.sizes), num_test=0, seed=POOL_SEED,
                      spacing_range=FULL_SPACING)
    tests = write_task(work / "tests", "Task08", num_training=1, num_test=args.test, seed=TEST_SEED,
                       spacing_range=FULL_SPACING)
    rows = [race_size(subset_task(pool, work / f"n{n}" / pool.name, n, tests), n, args, work)
            for n in sorted(args.sizes)]
    report = {"benchmark": "growth", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "benchmarks/growth.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
              "cpu_count": os.cpu_count(), "steps": args.steps, "test_cases": args.test, "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(rows, args.picture)
    print(json.dumps(rows, indent=1))
    print(f"wrote {args.out} and {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
