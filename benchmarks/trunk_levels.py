"""Where the trunk generator puts the liver, the right kidney and the pelvis along the body's long axis.

A model trained only on trunk phantoms learns where, from head to foot, a liver may lie: if no
training liver comes near the iliac crest, a real liver whose tip reaches down there is missed there.
The version-4 seed-0 model lost the lower half of the TotalSegmentator example CT's liver (2026-12-08,
docs/synthetic_model.md), and this benchmark measures the generator's side, per version, over the anatomy it draws
(no field of view: the whole liver, kidney and pelvis of every case), on a 4 mm grid:

- ``dome_to_crest``: the liver's top to the iliac crest (the iliac wings' top);
- ``tip_to_crest``: the liver's lowest point to the crest;
- ``kidney_to_crest``: the right kidney's centre (its hilum's level) to the crest;
- ``dome_to_kidney_top``: the liver's top to the right kidney's upper pole;
- ``tip_to_kidney_bottom``: the liver's lowest point to the right kidney's lower pole (positive: the
  liver ends above it);
- ``liver_in_pelvic_bone_ml``: liver drawn where a pelvic bone is (the renderer paints the liver last;
  version 5 keeps its liver out of those bones, so it is 0 there by construction).

Each is compared with what the literature's vertebral levels give (:data:`LITERATURE`; supine CT at
quiet respiration; estimates, derived in docs/synthetic_model.md, "Where the liver ends"). ``--real`` adds the same distances on TotalSegmentator's example CT where ../shared holds it
(its labels ``liver``, ``kidney_right``, ``hip_left`` and ``hip_right``, read from ``label_map_total.json``): described, never used to set a constant;
its field of view cuts the liver's top, so the distances from the dome are left out there.

Results are appended to ``benchmarks/results/trunk_levels.json``. Not run by CI::

    .venv/bin/python benchmarks/trunk_levels.py --versions 3 4 5 --cases 40 --real
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from bench_preprocess import commit_label  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "trunk_levels.json"
DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"
STEP_MM = 4.0
MEASURES = ("dome_to_crest", "tip_to_crest", "kidney_to_crest", "dome_to_kidney_top", "tip_to_kidney_bottom")
#: Literature-derived (centre, low, high) mm: vertebral levels (crest at L4, renal hila at L2, the IVC's
#: diaphragmatic passage at T10 with the dome at or above it; Mirjalili et al. 2012, Chakraverty et al.
#: 2007, Clin Anat 2016;29:165) turned into millimetres with adult vertebral body and disc heights; the
#: range is a level or more either way. The liver's tip comes from its craniocaudal height (14.0 +-
#: 1.7 cm in the midclavicular line on ultrasound, Kratzer et al. 2003; maximum 172 +- 20 mm on MRI,
#: Seppelt et al. 2022): about 155 mm under the top.
LITERATURE: dict[str, tuple[float, float, float]] = {
    "dome_to_crest": (205.0, 160.0, 250.0),
    "tip_to_crest": (50.0, 10.0, 100.0),
    "kidney_to_crest": (75.0, 40.0, 110.0),
    "dome_to_kidney_top": (75.0, 40.0, 110.0),
}


def _sampled(region: Any, step: float) -> tuple[list[np.ndarray], tuple[np.ndarray, ...], np.ndarray]:
    """The axes and grids (z, y, x; mm) sampling ``region``'s bounds every ``step`` mm, and which
    samples lie inside it."""
    lo, hi = (np.clip(b, -600, 600) for b in region.bounds())
    axes = [np.arange(a, b + step, step) for a, b in zip(lo, hi)]
    grids = np.meshgrid(*axes, indexing="ij")
    return axes, grids, region.level(*grids) < 0


def z_extent(region: Any, step: float = STEP_MM) -> tuple[float, float, float] | None:
    """Lowest z, highest z and mean x (mm) of a generator region sampled every ``step`` mm (None if
    no sample falls inside)."""
    axes, (_, _, x), inside = _sampled(region, step)
    if not inside.any():
        return None
    zs = axes[0][inside.any(axis=(1, 2))]
    return float(zs.min()), float(zs.max()), float(x[inside].mean())


def overlap_ml(a: Any, b: list[Any], step: float = STEP_MM) -> float:
    """Volume (mL) of region ``a`` inside any of regions ``b``, sampled every ``step`` mm."""
    _, grids, inside = _sampled(a, step)
    other = np.zeros_like(inside)
    for region in b:
        other |= region.level(*grids) < 0
    return float((inside & other).sum() * step ** 3 / 1000)


def distances(liver: tuple[float, float], kidney: tuple[float, float], crest: float,
              dome_known: bool = True) -> dict[str, float | None]:
    """The measures from ``(low z, high z)`` of the liver and the right kidney and the crest's z."""
    out: dict[str, float | None] = {
        "dome_to_crest": liver[1] - crest, "tip_to_crest": liver[0] - crest,
        "kidney_to_crest": (kidney[0] + kidney[1]) / 2 - crest,
        "dome_to_kidney_top": liver[1] - kidney[1], "tip_to_kidney_bottom": liver[0] - kidney[0]}
    if not dome_known:
        out["dome_to_crest"] = out["dome_to_kidney_top"] = None
    return out


def phantom_case(seed: int, version: int) -> dict[str, Any]:
    """The measures of trunk case ``seed`` drawn by generator ``version``."""
    from autoseg.phantom_trunk import TRUNK_TISSUES, draw_trunk

    anatomy, _ = draw_trunk(seed, False, version)
    named: dict[str, list[Any]] = {}
    for item in anatomy.items:
        named.setdefault(item.name, []).append(item)
    [liver_item] = named["liver"]
    liver = z_extent(liver_item.region)
    kidneys = [z_extent(item.region) for item in named["kidney"]]
    wings = [z_extent(item.region) for item in named["iliac wing"]]
    if liver is None or None in kidneys or None in wings:
        raise RuntimeError(f"trunk case {seed} (version {version}): a structure has no voxel at {STEP_MM} mm")
    right = min(kidneys, key=lambda k: k[2])  # type: ignore[index]  # the patient's right: the liver's side, -x
    crest = max(w[1] for w in wings)  # type: ignore[index]
    bones = [item.region for item in anatomy.items if item.tissue == TRUNK_TISSUES["bone_cortical"]
             and item.name in ("iliac wing", "sacrum", "femoral head", "femur")]
    return {"seed": seed, **distances(liver[:2], right[:2], crest),  # type: ignore[index]
            "liver_in_pelvic_bone_ml": overlap_ml(liver_item.region, bones)}


def real_case(real: Path) -> dict[str, Any] | None:
    """The measures on TotalSegmentator's example CT (None where ../shared lacks it)."""
    import SimpleITK as sitk

    folder = real / "totalsegmentator_example"
    path = folder / "example_seg_fast_force_split.nii.gz"
    if not path.is_file():
        return None
    names = {v: int(k) for k, v in json.loads((folder / "label_map_total.json").read_text()).items()}
    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    if abs(d[2, 2]) < 0.98:
        raise ValueError(f"{path}: not an axial grid")
    # LPS z (head is +) of each slice: the array's first axis is the image's z
    z_mm = image.GetOrigin()[2] + d[2, 2] * image.GetSpacing()[2] * np.arange(labels.shape[0])

    def extent(*ids: int) -> tuple[float, float]:
        zs = z_mm[np.isin(labels, ids).any(axis=(1, 2))]
        return float(zs.min()), float(zs.max())

    liver, kidney = extent(names["liver"]), extent(names["kidney_right"])
    hips = extent(names["hip_left"], names["hip_right"])
    top_cut = bool((labels[int(np.argmax(z_mm))] == names["liver"]).any())
    return {"case": "totalsegmentator_ct", "image": str(path), "liver_reaches_field_top": top_cut,
            **distances(liver, kidney, hips[1], dome_known=not top_cut)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*MEASURES, "liver_in_pelvic_bone_ml"):
        v = np.array([r[key] for r in rows], dtype=float)
        out[key] = {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                    "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--versions", type=int, nargs="+", default=[3, 4, 5])
    p.add_argument("--cases", type=int, default=40, help="trunk seeds 0..N-1 per version")
    p.add_argument("--real", action="store_true", help="describe TotalSegmentator's example CT too")
    p.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from autoseg.phantom_trunk import check_version

    for v in args.versions:
        check_version(v)
    result: dict[str, Any] = {
        "benchmark": "trunk_levels", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit_label(), "command": " ".join([sys.executable, *sys.argv]), "cpu": cpu_model(),
        "step_mm": STEP_MM, "literature": {k: dict(zip(("centre", "low", "high"), v)) for k, v in LITERATURE.items()},
        "versions": {}}
    header = f"{'':24s}" + "".join(f"{'v' + str(v):>22s}" for v in args.versions) + f"{'literature':>20s}"
    for v in args.versions:
        rows = [phantom_case(seed, v) for seed in range(args.cases)]
        result["versions"][str(v)] = {"cases": rows, "summary": summarise(rows)}
    print(header)
    for key in (*MEASURES, "liver_in_pelvic_bone_ml"):
        cells = "".join(f"{s['median']:8.0f} [{s['p10']:4.0f},{s['p90']:4.0f}]  "
                        for s in (result["versions"][str(v)]["summary"][key] for v in args.versions))
        lit = LITERATURE.get(key)
        print(f"{key:24s}{cells}" + (f"{lit[0]:8.0f} [{lit[1]:.0f}, {lit[2]:.0f}]" if lit else ""))
    if args.real:
        real = real_case(args.real_dir)
        result["real"] = real if real is not None else f"absent: {args.real_dir / 'totalsegmentator_example'}"
        print("TotalSegmentator example CT:", real)
    append_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
