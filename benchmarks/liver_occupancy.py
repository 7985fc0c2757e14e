"""Where livers lie relative to the spine: occupancy maps of phantom families and real CT.

A model trained only on trunk phantoms can find a liver only where the trunk generator puts one. The
family-1 phantoms' livers it misses lie at the liver's back, beside the spine (docs/synthetic_model.md),
so this benchmark measures, for each set of cases, where its livers lie in the axial plane relative to
the spinal canal, the one landmark every set draws the same way (phantoms: the CSF tissue of their
tissue maps; real CT: TotalSegmentator's ``spinal_cord`` label), with no bone thresholding:

- per axial slice holding both liver and canal, every liver voxel's offset from the canal's centroid
  in patient coordinates (mm; LPS: +dy posterior, +dx the patient's left), read through each image's
  direction matrix so that RAS files and phantoms agree;
- a case's occupancy map: on a 5 mm grid, the share of its liver slices with liver in each cell; a
  set's map is the mean over its cases that hold liver beside the canal;
- per case: the share of the liver's volume at or behind 40 and 20 mm in front of the canal's centre
  (the vertebral body's centre lies about 25-35 mm in front of it), the 5th percentile, mean and 95th
  percentile of dy (how far forward, where on average and how far back the liver lies), and how close to the midline the liver behind -40 mm comes (5th
  percentile of ``|dx|``);
- per case, the liver's extent from right to left, front to back and foot to head (mm), for livers the
  field of view holds whole: the axes of the literature's maximum diameters (MRI of 886 adults,
  Seppelt et al., Sci Rep 2022: craniocaudal 172 +- 20, antero-posterior 158 +- 19, left-right
  197 +- 23 mm);
- against each reference set (``--reference``, e.g. the training family): the share of each case's
  liver volume in cells where the reference's occupancy is under 5 % (``rare_in_<reference>``): liver
  where a model trained on the reference has almost never seen one.

Sets are ``NAME=GENERATOR:SEED:N``: cases ``case_seed(SEED, i)`` for ``i < N`` (the cases ``autoseg
phantom --seed SEED`` writes), GENERATOR ``family1``, ``family2``, ``trunk`` (the current trunk
generator) or ``trunkV`` (trunk generator version V). ``--real`` adds TotalSegmentator's example CT and
its DICOM series where ``../shared/data/real`` holds them; they are described, never used to set a
generator constant. Their spinal cord ends at about L1-L2, so their liver slices below it are left
out, where a phantom's canal runs its whole length. A set's rare share against its own map is in-sample
(each case helped make the map) and so lower than against any other set's. Results are appended to ``benchmarks/results/liver_occupancy.json``; ``--png``
draws the maps. Not run by CI::

    .venv/bin/python benchmarks/liver_occupancy.py --set trunk=trunk:0:30 --set family1=family1:0:20 \\
        --set family2=family2:0:20 --real --reference trunk --png docs/liver_occupancy.png
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from bench_preprocess import commit_label  # noqa: E402

from autoseg.io import Geometry  # noqa: E402

DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"
DEFAULT_OUT = BENCH / "results" / "liver_occupancy.json"
#: The maps' cell (mm) and half-width (mm) around the canal.
CELL_MM, HALF_MM = 5.0, 250.0
#: A reference cell holding liver in fewer of its slices than this is "rare" there.
RARE = 0.05
#: How far in front of the canal's centre (mm) the liver counts as "behind" (two levels).
BEHIND_MM = (-40.0, -20.0)


@dataclass(frozen=True)
class CaseMasks:
    """One case: its liver, its spinal canal (or cord) and their grid."""

    name: str
    liver: np.ndarray
    canal: np.ndarray
    geometry: Geometry


# --- measuring (pure) -----------------------------------------------------------------------------

def _axial_axes(geometry: Geometry) -> np.ndarray:
    """The direction matrix (columns: the array's x, y, z axes in LPS), checked to be axial: the
    array's z axis runs head to foot (within 10 degrees)."""
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    if abs(d[2, 2]) < np.cos(np.radians(10)):
        raise ValueError(f"not an axial grid (direction {geometry.direction}): slices would not be axial")
    return d


def slice_offsets(liver: np.ndarray, canal: np.ndarray, geometry: Geometry
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axial slice holding both liver and canal: the liver voxels' ``(dy, dx)`` offsets (mm, LPS:
    +dy posterior, +dx the patient's left) from the canal's centroid in that slice."""
    d = _axial_axes(geometry)
    sx, sy, _ = geometry.spacing

    def mm(mask: np.ndarray) -> np.ndarray:  # a slice's voxels -> LPS (x, y) mm, the origin dropped
        j, i = np.nonzero(mask)  # rows y, columns x
        return d[:2, 0][None] * (i * sx)[:, None] + d[:2, 1][None] * (j * sy)[:, None]

    out = []
    for z in range(liver.shape[0]):
        if liver[z].any() and canal[z].any():
            rel = mm(liver[z]) - mm(canal[z]).mean(axis=0)
            out.append((rel[:, 1], rel[:, 0]))
    return out


def _cells(dy: np.ndarray, dx: np.ndarray, cell: float, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column of each offset's cell on the map, and whether it lies on the map."""
    n = int(round(2 * half / cell))
    r = np.floor((dy + half) / cell).astype(int)
    c = np.floor((dx + half) / cell).astype(int)
    return r, c, (r >= 0) & (r < n) & (c >= 0) & (c < n)


def occupancy_map(offsets: list[tuple[np.ndarray, np.ndarray]], cell: float = CELL_MM,
                  half: float = HALF_MM) -> np.ndarray:
    """Share of the slices in ``offsets`` with liver in each ``cell``-mm cell, ``(dy, dx)`` from
    ``-half`` to ``half`` (rows dy, columns dx); zeros when there is no slice."""
    n = int(round(2 * half / cell))
    grid = np.zeros((n, n), dtype=float)
    for dy, dx in offsets:
        r, c, keep = _cells(dy, dx, cell, half)
        hit = np.zeros((n, n), dtype=bool)
        hit[r[keep], c[keep]] = True
        grid += hit
    return grid / len(offsets) if offsets else grid


def rare_share(offsets: list[tuple[np.ndarray, np.ndarray]], reference: np.ndarray, rare: float = RARE,
               cell: float = CELL_MM, half: float = HALF_MM) -> float | None:
    """Share of the liver voxels in ``offsets`` that lie in cells where ``reference`` is under ``rare``
    (outside the map counts as rare); None without liver."""
    if not offsets:
        return None
    dy = np.concatenate([o[0] for o in offsets])
    dx = np.concatenate([o[1] for o in offsets])
    r, c, inside = _cells(dy, dx, cell, half)
    low = np.ones(dy.shape, dtype=bool)
    low[inside] = reference[r[inside], c[inside]] < rare
    return float(low.mean())


def case_figures(offsets: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """A case's summary: liver slices, the volume shares behind each :data:`BEHIND_MM` level, the 5th
    percentile, mean and 95th percentile of dy (how far forward, where on average and how far back
    the liver lies) and the 5th percentile of ``|dx|`` behind the first level (None where nothing is)."""
    if not offsets:
        return {"slices": 0}
    dy = np.concatenate([o[0] for o in offsets])
    dx = np.concatenate([o[1] for o in offsets])
    figures: dict[str, Any] = {"slices": len(offsets)}
    for level in BEHIND_MM:
        figures[f"share_behind_{-level:g}mm"] = float((dy >= level).mean())
    back = dy >= BEHIND_MM[0]
    figures["dy_p5_mm"] = float(np.percentile(dy, 5))
    figures["dy_mean_mm"] = float(dy.mean())
    figures["dy_p95_mm"] = float(np.percentile(dy, 95))
    figures["behind_abs_dx_p5_mm"] = float(np.percentile(np.abs(dx[back]), 5)) if back.any() else None
    return figures


def liver_extents(liver: np.ndarray, geometry: Geometry) -> dict[str, float | None]:
    """The liver's extent (mm) from the patient's right to left, front to back and foot to head: the
    spread of its voxel centres plus one voxel, along each patient axis (LPS, through the direction
    matrix). None where the liver touches a face of the volume (cut by the field of view) or is absent:
    those are the axes of the literature's "maximum diameters" only for a whole liver."""
    from real_ct import volume_at_edges

    names = ("lr_mm", "ap_mm", "cc_mm")
    if not liver.any() or volume_at_edges(liver):
        return dict.fromkeys(names)
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(geometry.spacing, dtype=float)  # x, y, z
    idx = np.stack(np.nonzero(liver)[::-1], axis=1).astype(float)  # (x, y, z) indices
    points = (idx * spacing) @ d.T  # LPS mm, the origin dropped
    voxel = np.abs(d) @ spacing  # one voxel's size along each patient axis
    extent = points.max(axis=0) - points.min(axis=0) + voxel
    return {name: float(e) for name, e in zip(names, extent)}


# --- the sets -------------------------------------------------------------------------------------

def _phantom_masks(generator: str, seed: int) -> CaseMasks:
    """Liver (the union of its task labels) and canal (the CSF of its tissue map) of one phantom,
    written as ``autoseg phantom`` writes it (families 1 and 2 at the demo's spacing, Task03)."""
    from autoseg.phantom import DEMO_SPACING_RANGE, generate_family_case
    from autoseg.phantom_anatomy import TISSUES
    from autoseg.phantom_family2_shapes import TISSUES2

    if generator.startswith("trunk"):
        version = generator[len("trunk"):]
        case = generate_family_case(3, seed, "LiverVesselTumour", trunk_version=int(version) if version else None)
    else:
        case = generate_family_case(int(generator[-1]), seed, "Task03", spacing_range=DEMO_SPACING_RANGE)
    csf = (TISSUES if case.family == 1 else TISSUES2)["csf"]
    return CaseMasks(f"{generator}:{seed}", case.labels > 0, case.tissues == csf, case.geometry)


SET_SPEC = re.compile(r"^(?P<name>[\w.-]+)=(?P<gen>family1|family2|trunk\d*):(?P<seed>\d+):(?P<n>\d+)$")


def parse_set(text: str) -> tuple[str, str, int, int]:
    """``NAME=GENERATOR:SEED:N`` -> (name, generator, seed, n)."""
    m = SET_SPEC.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected NAME=GENERATOR:SEED:N with GENERATOR "
                                         "family1, family2, trunk or trunkV (e.g. trunk4)")
    from autoseg.phantom_trunk import TRUNK_VERSIONS

    version = m["gen"][len("trunk"):] if m["gen"].startswith("trunk") else ""
    if version and int(version) not in TRUNK_VERSIONS:
        raise argparse.ArgumentTypeError(f"--set {text!r}: the trunk generator has versions "
                                         f"{', '.join(str(v) for v in TRUNK_VERSIONS)}, not {version}")
    return m["name"], m["gen"], int(m["seed"]), int(m["n"])


def phantom_cases(generator: str, seed: int, n: int) -> list[Callable[[], CaseMasks]]:
    from autoseg.phantom import case_seed

    return [partial(_phantom_masks, generator, case_seed(seed, i)) for i in range(n)]


def real_cases(real: Path) -> dict[str, Callable[[], CaseMasks]]:
    """The real CTs of ``real_ct.py`` whose reference is a multi-organ map naming a spinal cord
    (TotalSegmentator's example CT and DICOM series), where present."""
    from real_ct import CASES, RealCase, labels_on, missing_files

    from autoseg.io import read_sitk

    def load(case: RealCase, cord: int) -> CaseMasks:
        geometry = Geometry.of(read_sitk(real / case.image))
        labels = labels_on(real / case.reference, geometry, "reference")
        return CaseMasks(case.name, labels == case.liver_label, labels == cord, geometry)

    out: dict[str, Callable[[], CaseMasks]] = {}
    for case in CASES:
        if case.organ_names is None or missing_files(case, real):
            continue
        names = json.loads((real / case.organ_names).read_text())
        cord = next((int(k) for k, v in names.items() if v == "spinal_cord"), None)
        if cord is not None:
            out[case.name] = partial(load, case, cord)
    return out


# --- report ---------------------------------------------------------------------------------------

def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each per-case figure over the cases that have it."""
    keys = list(dict.fromkeys(k for c in cases for k in c if k not in ("case", "slices")))  # every case's, in order
    out: dict[str, Any] = {"cases": len(cases), "cases_with_liver": sum(1 for c in cases if c.get("slices"))}
    for k in keys:
        values = [c[k] for c in cases if c.get(k) is not None]
        if values:
            out[k] = {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
    return out


def draw(maps: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
    for ax, (name, grid) in zip(axes[0], maps.items()):
        # shown as a radiologist reads an axial slice: patient's right on the image's left, front at the top
        ax.imshow(grid, origin="upper", extent=(-HALF_MM, HALF_MM, HALF_MM, -HALF_MM), vmin=0, vmax=1,
                  cmap="magma")
        centres = -HALF_MM + CELL_MM * (np.arange(grid.shape[0]) + 0.5)
        ax.contour(centres, centres, grid, levels=[RARE], colors="cyan", linewidths=0.6)
        ax.plot([0], [0], "c+")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("dx mm (patient's left +)", fontsize=7)
        ax.set_ylabel("dy mm (posterior +)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"share of liver slices with liver there (canal at +; cyan: {RARE:.0%})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", dest="sets", type=parse_set, action="append", default=[], metavar="NAME=GEN:SEED:N")
    p.add_argument("--real", action="store_true", help="add the TotalSegmentator example CT and DICOM series")
    p.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    p.add_argument("--reference", action="append", default=[],
                   help="a set whose map defines 'rare' (repeatable; default: the first set)")
    p.add_argument("--png", type=Path, help="draw the sets' maps into this PNG")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    sets: dict[str, list[Callable[[], CaseMasks]]] = {name: phantom_cases(gen, seed, n)
                                                        for name, gen, seed, n in args.sets}
    if args.real:
        sets.update({name: [loader] for name, loader in real_cases(args.real_dir).items()})
    if not sets:
        p.error("give at least one --set (or --real with the real CT present)")
    references = args.reference or [next(iter(sets))]
    for reference in references:
        if reference not in sets:
            p.error(f"--reference {reference!r} is none of the sets ({', '.join(sets)})")
    commit = commit_label()
    offsets: dict[str, list[tuple[str, list]]] = {}
    extents: dict[str, dict[str, float | None]] = {}
    for name, loaders in sets.items():
        offsets[name] = []
        for load in loaders:
            case = load()
            offsets[name].append((case.name, slice_offsets(case.liver, case.canal, case.geometry)))
            extents[case.name] = liver_extents(case.liver, case.geometry)
        print(f"{name}: {len(loaders)} case(s)", flush=True)
    # a set's map averages its cases that hold liver beside the canal (a pelvis-only field of view has none)
    maps = {name: np.mean([occupancy_map(o) for _, o in cases if o] or [occupancy_map([])], axis=0)
            for name, cases in offsets.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, cases in offsets.items():
        per_case = [{"case": c, **case_figures(o), **{f"rare_in_{r}": rare_share(o, maps[r]) for r in references},
                     **extents[c]} for c, o in cases]
        rows[name] = {"summary": summarise(per_case), "per_case": per_case}
        s = rows[name]["summary"]
        print(f"{name:24s} " + "  ".join(f"{k} {v['median']:.3g} [{v['min']:.3g}, {v['max']:.3g}]"
                                          for k, v in s.items() if isinstance(v, dict)))
    if args.png:
        draw(maps, args.png)
    append_result(args.out, {"benchmark": "liver_occupancy", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "commit": commit, "command": " ".join(sys.argv), "cpu": cpu_model(),
        "cell_mm": CELL_MM, "rare": RARE, "references": references, "sets": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
