"""The liver at the ends of a field of view, on trunk phantoms cut where abdomen-pelvis scans cut.

A development set for the edge context (``predict --edge-context``, ``train --edge-context``), made for
the two failures seen on real CT (issue 25, ``docs/synthetic_model.md``): the liver lost where the
field of view starts inside it, and, with mirrored context, a bladder cut by the field of view's
lower end doubled and called liver. Each case is a trunk phantom (the synthetic model's generator,
seeds no other benchmark uses) whose field of view starts 20-80 mm below the top of its liver (found
in the rendered labels) and ends within 15 mm of the middle of the bladder; its other choices
(spacing, width, phase, patient) are the generator's own. Nothing here comes from a real CT.

For every model and share: liver Dice (the union of the model's labels 1-3), the liver missed in the
top 30 mm of the field of view, and the false liver in its bottom 60 mm (the bladder's region) and
overall, in mL; paired intervals of each share against the model's first share and against the first
model's first share. Not run by CI::

    .venv/bin/python benchmarks/fov_ends.py --cases 10 --models seed0=benchmarks/work/cache_s43/models/synthetic.zip \\
        edge=benchmarks/work/cache_s45/models/synthetic.zip --shares 0 0.25
"""
from __future__ import annotations

import argparse
import json
import shlex
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
from edge_context import paired  # noqa: E402
from synthetic_phantoms import dice  # noqa: E402

from autoseg.io import read_label, write_image  # noqa: E402
from autoseg.metrics import mean_present  # noqa: E402

#: The first case's seed (no other benchmark draws trunk phantoms from it).
SEED = 9300
TOP_BELOW_DOME_MM = (20.0, 80.0)
ABOVE_ANY_LIVER_MM = 250.0  # the trunk generator's fields of view start at most 320 mm, its livers' tops near 100
BOTTOM_AROUND_BLADDER_MM = 15.0
TOP_BAND_MM, BOTTOM_BAND_MM = 30.0, 60.0
BELOW_BLADDER_MM = (0.0, 20.0)  # --end below-bladder: the field of view ends this far below the bladder
BELOW_BLADDER_RENDER_MM = 120.0
URINE = 36  # the trunk generator's tissue id of urine (TRUNK_TISSUES)
#: --end liver-free: the first seed tried (no other benchmark draws trunk phantoms from it), and the
#: grid tops of the generator's pelvis-only fields of view (those at most this high) and thorax-only ones
#: (at least this high; trunk_grid draws -200..-120 and 260..320 mm for them).
LIVER_FREE_SEED = 9500
PELVIS_ONLY_TOP_MM, THORAX_ONLY_TOP_MM = -120.0, 260.0
LIVER_FREE_SEEDS_TRIED = 5000  # a fifth of the generator's fields are of these kinds: never near this many


def cut_case(seed: int, end: str = "mid-bladder", trunk_version: int | None = None):
    """Trunk case ``seed`` on a field of view from inside the liver to the middle of the bladder, or with
    ``end`` ``below-bladder`` to 0-20 mm below the bladder's lowest slice (where the TotalSegmentator
    example CT ends, at the femoral heads); drawn by the trunk generator's ``trunk_version`` (None: its
    default)."""
    from autoseg.phantom import PhantomCase
    from autoseg.phantom_family2 import is_tumour_free, render
    from autoseg.phantom_shapes import Grid
    from autoseg.phantom_trunk import check_version, draw_trunk, trunk_grid, trunk_labels

    version = check_version(trunk_version)
    anatomy, _ = draw_trunk(seed, is_tumour_free(seed, 0.3), version=version)
    [urine] = [item for item in anatomy.items if item.name == "urine"]
    rng = np.random.default_rng([seed, 9301])
    bottom = float(urine.region.centre[0]) + rng.uniform(-BOTTOM_AROUND_BLADDER_MM, BOTTOM_AROUND_BLADDER_MM)
    usual = trunk_grid(seed)  # the generator's spacing, width and in-plane position
    step = usual.spacing[0]
    if end == "below-bladder":  # render from well below the bladder, then cut under its lowest slice
        bottom = float(urine.region.centre[0]) - BELOW_BLADDER_RENDER_MM
    n = max(1, int(round((ABOVE_ANY_LIVER_MM - bottom) / step)))
    grid = Grid((n, usual.shape[1], usual.shape[2]), usual.spacing, (bottom, usual.origin[1], usual.origin[2]))
    image, tissues = render(anatomy, grid, seed)  # slice i at z = bottom + i * step, up above the liver
    labels = trunk_labels(tissues, "LiverVesselTumour")
    top_index = int(np.nonzero((labels > 0).any(axis=(1, 2)))[0].max())
    if top_index >= n - 1:  # the liver reaches the grid's top: its own top is not known
        raise RuntimeError(f"trunk case {seed}: the liver reaches {ABOVE_ANY_LIVER_MM} mm; render higher")
    liver_top = bottom + top_index * step
    keep = int(np.floor((liver_top - rng.uniform(*TOP_BELOW_DOME_MM) - bottom) / step)) + 1
    first = 0
    if end == "below-bladder":
        lowest_urine = int(np.nonzero((tissues == URINE).any(axis=(1, 2)))[0].min())
        if lowest_urine == 0:
            raise RuntimeError(f"trunk case {seed}: the bladder reaches the render's bottom; render lower")
        first = max(0, lowest_urine - int(round(rng.uniform(*BELOW_BLADDER_MM) / step)))
    origin = (grid.origin[2], grid.origin[1], grid.origin[0] + first * step)
    return PhantomCase(image[first:keep], labels[first:keep], grid.spacing, origin, tissues[first:keep],
                       "LiverVesselTumour", seed, family=3)


def liver_free_cases(count: int, trunk_version: int | None = None):
    """The generator's own liver-free fields of view: trunk cases from :data:`LIVER_FREE_SEED` on whose
    field of view is pelvis-only or thorax-only (alternately, so that both kinds are there) and whose
    labels hold no liver (a thorax-only field may hold the dome: that seed is skipped). Yields
    ``(seed, case)``; the anatomy, spacing and appearance are the generator's own draws."""
    from autoseg.phantom_trunk import check_version, generate_trunk_case, trunk_grid

    version = check_version(trunk_version)
    wanted = ["pelvis", "thorax"]
    seed = LIVER_FREE_SEED
    while count > 0:
        if seed >= LIVER_FREE_SEED + LIVER_FREE_SEEDS_TRIED:
            raise RuntimeError(f"no liver-free field of view among {LIVER_FREE_SEEDS_TRIED} trunk seeds: has trunk_grid "
                               "changed its pelvis-only and thorax-only fields?")
        grid = trunk_grid(seed)
        top = grid.origin[0] + (grid.shape[0] - 1) * grid.spacing[0]
        kind = "pelvis" if top <= PELVIS_ONLY_TOP_MM else "thorax" if top >= THORAX_ONLY_TOP_MM else None
        if kind == wanted[0]:
            case = generate_trunk_case(seed, version=version)
            if not case.labels.any():
                yield seed, case
                count -= 1
                wanted.reverse()
        seed += 1


def case_figures(pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, ...]) -> dict[str, float | None]:
    """Liver Dice, liver missed in the top band and false liver in the bottom band and overall (mL);
    slice 0 is the field of view's lower end (the phantoms' z axis points to the head)."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    liver, truth = pred > 0, ref > 0
    top = max(1, int(round(TOP_BAND_MM / spacing_zyx[0])))
    bottom = max(1, int(round(BOTTOM_BAND_MM / spacing_zyx[0])))
    false = liver & ~truth
    return {"liver": dice(liver, truth),
            "missed_top_ml": float((truth[-top:] & ~liver[-top:]).sum() * voxel_ml),
            "false_bottom_ml": float(false[:bottom].sum() * voxel_ml),
            "false_ml": float(false.sum() * voxel_ml)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL",
                   help="models by a name of your choice and what `autoseg predict -m` takes")
    p.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25],
                   help="edge-context shares; each model's first is its baseline")
    p.add_argument("--end", choices=("mid-bladder", "below-bladder", "liver-free"), default="mid-bladder",
                   help="where each field of view ends: through the bladder's middle, or just below it; "
                        "liver-free: the generator's own pelvis-only and thorax-only fields of view without "
                        "any liver (only the false liver is scored)")
    p.add_argument("--trunk-version", type=int, default=None, metavar="V",
                   help="the trunk generator's version that draws the cases (default: its default)")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "fov_ends",
                   help="cases are drawn once into a folder per end and generator version, and reused")
    p.add_argument("--out", type=Path, default=BENCH / "results" / "fov_ends.json")
    args = p.parse_args(argv)
    from autoseg.phantom_trunk import check_version

    models = dict(m.split("=", 1) for m in args.models)
    version = check_version(args.trunk_version)
    cases = args.work / f"{args.end}_trunk_v{version}"  # never the cases of another end or generator
    inputs, refs = cases / "inputs", cases / "labels"
    names = [f"fov_{i:03d}" for i in range(args.cases)]
    seeds_file = cases / "seeds.json"  # the seed each case was drawn from
    missing = [n for n in names if not ((inputs / f"{n}.nii.gz").is_file() and (refs / f"{n}.nii.gz").is_file())]
    if missing:  # drawn once, kept for the next model
        drawn = (liver_free_cases(args.cases, version) if args.end == "liver-free"
                 else ((SEED + i, cut_case(SEED + i, args.end, version)) for i in range(args.cases)))
        seeds: dict[str, int] = {}
        for name, (seed, case) in zip(names, drawn):
            write_image(refs / f"{name}.nii.gz", case.labels, case.geometry)
            write_image(inputs / f"{name}.nii.gz", case.image, case.geometry)
            seeds[name] = seed
        seeds_file.write_text(json.dumps(seeds))
    elif not seeds_file.is_file() and args.end != "liver-free":  # drawn before seeds were recorded
        seeds_file.write_text(json.dumps({name: SEED + i for i, name in enumerate(names)}))
    recorded = json.loads(seeds_file.read_text()) if seeds_file.is_file() else {}
    case_seeds = {name: recorded.get(name) for name in names}  # None: drawn by an older run that kept no seeds
    spacing = {name: read_label(refs / f"{name}.nii.gz")[1].spacing[::-1] for name in names}
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    seconds: dict[str, float] = {}
    for label, model in models.items():
        for share in args.shares:
            key = f"{label} {share}"
            out = cases / "predictions" / label / f"share_{share}"
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(inputs), "-o", str(out), "-m",
                                  model, "--edge-context", str(share), "--overwrite"], capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"autoseg predict failed for {key}:\n{run.stderr[-4000:]}")
            seconds[key] = time.perf_counter() - t0
            scores[key] = {n: case_figures(read_label(out / f"{n}.nii.gz")[0], read_label(refs / f"{n}.nii.gz")[0],
                                           spacing[n]) for n in names}
    summary: dict[str, Any] = {}
    first = f"{next(iter(models))} {args.shares[0]}"
    print(f"| model, share | liver Dice, against the model's share {args.shares[0]} [95 % CI] | against {first} | "
          "liver missed in the top 30 mm, mL | false liver in the bottom 60 mm, mL (mean, max) | false liver, mL |")
    print("|---|---|---|---|---|---|")
    for label in models:
        base = scores[f"{label} {args.shares[0]}"]
        for share in args.shares:
            key = f"{label} {share}"
            rows = scores[key]
            own, against_first = paired(rows, base, names, "liver"), paired(rows, scores[first], names, "liver")
            d, ci = float(own["paired_difference"] or 0.0), own["ci95"]
            d1, ci1 = float(against_first["paired_difference"] or 0.0), against_first["ci95"]
            mean = {k: mean_present([rows[n][k] for n in names]) for k in rows[names[0]]}
            worst_bottom = max(float(rows[n]["false_bottom_ml"] or 0) for n in names)
            summary[key] = {**mean, "liver_paired_difference": d, "ci95": list(ci), "against_first": d1,
                            "against_first_ci95": list(ci1), "false_bottom_ml_max": worst_bottom,
                            "seconds": round(seconds[key], 1)}
            liver = "-" if mean["liver"] is None else f"{mean['liver']:.3f}"  # no liver anywhere: not scored
            print(f"| {key} | {liver}, {d:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] | "
                  f"{d1:+.4f} [{ci1[0]:+.4f}, {ci1[1]:+.4f}] | {mean['missed_top_ml']:.1f} | "
                  f"{mean['false_bottom_ml']:.1f}, {worst_bottom:.1f} | {mean['false_ml']:.1f} |")
    append_result(args.out, {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "models": models,
        "cases": names, "seeds": case_seeds, "end": args.end,
        "trunk_version": version, "scores": scores, "summary": summary})
    print(json.dumps({k: v["liver_paired_difference"] for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
