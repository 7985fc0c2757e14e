"""Synthetic abdominal CT phantoms: autoseg's built-in dataset for the demo and the tests.

A case is a random adult abdomen in the portal venous phase (body wall, spine, aorta, kidneys,
spleen, stomach and bowel, a liver with a branching portal and hepatic venous tree and 1 to 5
hypodense tumours), drawn in millimetres by :mod:`autoseg.phantom_anatomy` and rendered on a voxel
grid with partial volume, blur and noise. The seed fixes the anatomy; the grid only fixes how it is
sampled, so one seed at two spacings shows the same organs at the same size.

Example::

    >>> case = generate_case(3, "Task08", shape=(48, 128, 128))
    >>> str(case.image.dtype), case.image.shape, int(case.labels.max())
    ('int16', (48, 128, 128), 2)
    >>> write_task(Path("raw"), "Task03", num_training=4, num_test=1)  # doctest: +SKIP
    PosixPath('raw/Task03_Liver')
"""
from __future__ import annotations

import argparse
import logging
from types import ModuleType
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError, ConfigurationError, DatasetError, unknown_name
from autoseg.io import Geometry, read_json, write_image, write_json
from autoseg.layout import RawDataset
from autoseg.phantom_anatomy import TISSUES, Layer, draw_anatomy
from autoseg.phantom_shapes import Grid, Slices, occupancy, rasterise

logger = logging.getLogger(__name__)

#: Field of view ``(z, y, x)`` in mm: the upper abdomen, liver dome to kidneys.
FOV_MM: tuple[float, float, float] = (220.0, 350.0, 350.0)
#: Spacing ``((z, y, x) low, (z, y, x) high)`` of clinical portal venous CT (MSD Task03/Task08).
CLINICAL_SPACING_RANGE = ((1.5, 0.6, 0.6), (5.0, 1.0, 1.0))
#: Coarse spacing for the demo and tests: ~50 x 140 x 140 voxels a case, under a second each.
DEMO_SPACING_RANGE = ((3.5, 2.2, 2.2), (5.0, 3.0, 3.0))
#: Version of the generator, recorded in ``phantom.json``: a change regenerates written tasks.
GENERATOR_VERSION = 1

SpacingRange = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class TaskSpec:
    """How one MSD task is labelled and named."""

    folder: str
    prefix: str
    labels: dict[str, str]
    description: str


TASKS: dict[str, TaskSpec] = {
    "Task08": TaskSpec("Task08_HepaticVessel", "hepaticvessel",
                       {"0": "background", "1": "vessel", "2": "tumour"},
                       "Synthetic portal venous CT phantoms: hepatic vessels and liver tumours"),
    "Task03": TaskSpec("Task03_Liver", "liver", {"0": "background", "1": "liver", "2": "tumour"},
                       "Synthetic portal venous CT phantoms: liver and liver tumours"),
    "LiverVesselTumour": TaskSpec("Task100_LiverVesselTumour", "lvt",
                                  {"0": "background", "1": "liver", "2": "vessel", "3": "tumour"},
                                  "Synthetic CT phantoms: liver, hepatic vessels and liver tumours"),
}


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One rendered case.

    ``image`` int16 HU and ``labels`` uint8 are ``(z, y, x)``; ``spacing`` is ``(z, y, x)`` mm and
    ``origin`` the centre of voxel 0 in ``(x, y, z)`` mm as SimpleITK wants it (direction identity).
    ``tissues`` holds the tissue id of every voxel, for checks beyond the task's labels: of
    :data:`TISSUES` for family 1, of :data:`autoseg.phantom_family2_shapes.TISSUES2` for family 2.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    tissues: np.ndarray
    task: str
    seed: int
    family: int = 1

    @property
    def geometry(self) -> Geometry:
        """The SimpleITK geometry to write the case with."""
        z, y, x = self.image.shape
        return Geometry((x, y, z), self.spacing[::-1], self.origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def generate_case(seed: int, task: str = "Task08", shape: tuple[int, int, int] | None = None,
                  spacing: tuple[float, float, float] | None = None,
                  spacing_range: SpacingRange | None = None, tumour_free: bool = False) -> PhantomCase:
    """Render the phantom of ``seed`` for ``task`` ("Task08" vessels + tumour, "Task03" liver + tumour).

    The grid is centred on the abdomen. Spacing ``(z, y, x)`` mm is ``spacing`` if given; else drawn
    per case (from the seed) within ``spacing_range`` (low and high ``(z, y, x)``, in-plane square);
    else, when only ``shape`` is given, the spacing that fits :data:`FOV_MM` into ``shape``; else
    drawn within :data:`CLINICAL_SPACING_RANGE`. ``shape`` defaults to the field of view divided by the
    spacing; a given shape with a given or drawn spacing crops or pads the field of view instead.
    ``tumour_free``: the same patient with a healthy liver.
    """
    spec = task_spec(task)
    grid = choose_grid(seed, shape, spacing, spacing_range)
    layers = draw_anatomy(np.random.default_rng([seed, 0]), tumour_free)
    image, tissues = _render(layers, grid)
    noise_rng = np.random.default_rng([seed, 1])
    image = _blur_and_noise(image, float(noise_rng.uniform(10, 20)), noise_rng)
    labels = task_labels(tissues, task)
    logger.debug("phantom %s seed %d: shape %s spacing %s", spec.folder, seed, grid.shape, grid.spacing)
    origin = (grid.origin[2], grid.origin[1], grid.origin[0])
    return PhantomCase(image, labels, grid.spacing, origin, tissues, task, seed)


def choose_grid(seed: int, shape: tuple[int, int, int] | None = None,
                spacing: tuple[float, float, float] | None = None,
                spacing_range: SpacingRange | None = None,
                fov_mm: tuple[float, float, float] = FOV_MM) -> Grid:
    """The voxel grid of a case, by the rules of :func:`generate_case` (``fov_mm``: its family's field of view)."""
    sizes: tuple[int, ...] | None = None
    if shape is not None:
        sizes = tuple(int(n) for n in shape)
        if len(sizes) != 3 or min(sizes) < 1:
            raise ConfigurationError(f"phantom shape must be three positive sizes (z, y, x), got {shape}",
                                     fix="pass e.g. shape=(48, 128, 128)")
    if spacing is None:
        if spacing_range is None and sizes is not None:
            spacing_mm: tuple[float, ...] = tuple(f / n for f, n in zip(fov_mm, sizes))
        else:
            spacing_mm = _draw_spacing(seed, spacing_range or CLINICAL_SPACING_RANGE)
    else:
        spacing_mm = tuple(float(s) for s in spacing)
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ConfigurationError(f"phantom spacing must be three positive mm values (z, y, x), got {spacing_mm}",
                                 fix="pass e.g. spacing=(2.5, 0.8, 0.8)")
    if sizes is None:
        sizes = tuple(max(1, round(f / s)) for f, s in zip(fov_mm, spacing_mm))
    origin = [-(n - 1) / 2 * s for n, s in zip(sizes, spacing_mm)]
    return Grid((sizes[0], sizes[1], sizes[2]), (spacing_mm[0], spacing_mm[1], spacing_mm[2]),
                (origin[0], origin[1], origin[2]))


def _draw_spacing(seed: int, spacing_range: SpacingRange) -> tuple[float, float, float]:
    lo, hi = (np.asarray(v, dtype=float) for v in spacing_range)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(lo <= 0) or np.any(hi < lo):
        raise ConfigurationError(f"spacing_range must be ((z, y, x) low, (z, y, x) high) in mm with "
                                 f"0 < low <= high, got {spacing_range}",
                                 fix="pass e.g. ((1.5, 0.6, 0.6), (5.0, 1.0, 1.0))")
    u = np.random.default_rng([seed, 2]).random(2)
    z = lo[0] + u[0] * (hi[0] - lo[0])
    inplane = lo[1] + u[1] * (hi[1] - lo[1])  # square pixels: y and x share one draw
    inplane_x = lo[2] + u[1] * (hi[2] - lo[2])
    return (round(float(z), 4), round(float(inplane), 4), round(float(inplane_x), 4))


def task_labels(tissues: np.ndarray, task: str) -> np.ndarray:
    """The label map of ``task`` from a tissue map: Task08 1 vessel 2 tumour, Task03 1 liver 2 tumour."""
    task_spec(task)
    labels = np.zeros(tissues.shape, dtype=np.uint8)
    if task == "Task08":
        labels[tissues == TISSUES["vessel"]] = 1
    else:
        liver = np.isin(tissues, [TISSUES["liver"], TISSUES["vessel"], TISSUES["tumour"]])
        labels[liver] = 1
    labels[tissues == TISSUES["tumour"]] = 2
    return labels


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``; an unknown name raises with the known ones."""
    if task not in TASKS:
        raise unknown_name("phantom task", task, list(TASKS))
    return TASKS[task]


# --- rendering -----------------------------------------------------------------------------------

def _render(layers: Sequence[Layer], grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Paint the layers in order with anti-aliased edges; the tissue map takes the >= 50 % owner."""
    image = np.full(grid.shape, -1000.0, dtype=np.float32)
    tissues = np.zeros(grid.shape, dtype=np.uint8)
    width = min(grid.spacing)
    liver: tuple[Slices, np.ndarray] | None = None
    for layer in layers:
        if layer.in_liver:
            if liver is None:
                continue
            found = _rasterise_in(layer, grid.sub(liver[0]), width)
            if found is None:
                continue
            sub, occ = found
            np.minimum(occ, liver[1][sub], out=occ)
            sl = tuple(slice(o.start + s.start, o.start + s.stop) for o, s in zip(liver[0], sub))
        else:
            found = rasterise(layer.shape, grid, width)  # type: ignore[arg-type]
            if found is None:
                continue
            sl, occ = found
        hu: np.ndarray | float = layer.hu
        if layer.texture is not None:
            hu = np.float32(layer.hu) + layer.texture(*grid.coords(sl))  # type: ignore[arg-type]
        _paint(image, tissues, sl, occ, hu, layer.tissue)  # type: ignore[arg-type]
        if layer.tissue == TISSUES["liver"] and not layer.in_liver:
            liver = (sl, occ)  # type: ignore[assignment]
    return image, tissues


def _rasterise_in(layer: Layer, grid: Grid, width: float) -> tuple[Slices, np.ndarray] | None:
    """Rasterise a shape, or the union (max) of a tree's tubes, on ``grid`` (the liver's box)."""
    if not layer.tubes:
        return rasterise(layer.shape, grid, width)  # type: ignore[arg-type]
    occ = np.zeros(grid.shape, dtype=np.float32)
    hit = False
    for tube in layer.tubes:
        lo, hi = tube.bounds()
        sl = grid.slices(lo - width, hi + width)
        if sl is None:
            continue
        np.maximum(occ[sl], occupancy(tube.sdf(*grid.coords(sl)), width), out=occ[sl])
        hit = True
    whole = (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    return (whole, occ) if hit else None


def _paint(image: np.ndarray, tissues: np.ndarray, sl: Slices, occ: np.ndarray,
           hu: np.ndarray | float, tissue: int) -> None:
    region = image[sl]
    region += occ * ((np.float32(hu) if isinstance(hu, (int, float)) else hu) - region)
    tissues[sl][occ >= 0.5] = tissue


def _blur_and_noise(image: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Add noise, then blur by half a voxel: partial volume plus correlated noise of ``sigma_hu`` HU."""
    blur, truncate = 0.5, 4.0
    radius = int(truncate * blur + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blur) ** 2)
    weights /= weights.sum()
    gain = float(np.sqrt((weights ** 2).sum())) ** 3  # noise std left after the separable blur
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * np.float32(sigma_hu / gain)
    del noise
    out = ndimage.gaussian_filter(image, blur, truncate=truncate, mode="nearest")
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


# --- writing an MSD task folder ------------------------------------------------------------------

def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a task written with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_task(out_dir: Path, task: str = "Task08", num_training: int = 10, num_test: int = 2,
               seed: int = 0, shape: tuple[int, int, int] | None = None,
               spacing_range: SpacingRange | None = None, family: int = 1,
               tumour_free_share: float | None = None, trunk_version: int | None = None) -> Path:
    """Write an MSD task folder of phantoms under ``out_dir`` and return its path.

    The folder (``Task08_HepaticVessel`` or ``Task03_Liver``) holds ``dataset.json``, ``imagesTr``,
    ``labelsTr``, ``imagesTs`` and, an autoseg extra so the demo can score predictions, ``labelsTs``.
    Training cases are numbered from 0, test cases continue the numbering; case ``i`` uses
    :func:`case_seed(seed, i) <case_seed>`. Without ``shape`` and ``spacing_range`` the spacing is
    drawn per case within :data:`DEMO_SPACING_RANGE`; otherwise the rules of :func:`generate_case`
    apply. ``phantom.json`` records the parameters: a folder already complete with the same ones is
    left as it is (logged), any other folder it marks as ours is rewritten, stale cases removed.
    A non-empty folder without ``phantom.json`` is not ours and raises :class:`DatasetError`.

    ``family`` 2 writes the second phantom family (:mod:`autoseg.phantom_family2`) instead, with
    ``tumour_free_share`` (default 0.3) of the training and of the test cases tumour-free; the
    family is recorded, so a folder of the other family is rewritten, never mixed. ``family`` 3
    writes trunk phantoms (:mod:`autoseg.phantom_trunk`: thorax to pelvis, randomised field of view
    and appearance; tumour-free share as family 2), the only family for task ``LiverVesselTumour``.
    Family 1 has tumour-free livers only when ``tumour_free_share`` is given (the same patients as
    without it, their tumours left out). ``trunk_version`` picks the trunk generator's version
    (default :data:`autoseg.phantom_trunk.TRUNK_VERSION`; family 3 only); it is recorded, so a folder
    of another version is rewritten.
    """
    spec = task_spec(task)
    if task == "LiverVesselTumour" and family != 3:
        raise ConfigurationError("task LiverVesselTumour is written by phantom family 3 only",
                                 fix="pass --family 3 with --task LiverVesselTumour")
    if family == 3 and shape is not None:
        raise ConfigurationError("trunk phantoms (family 3) draw their field of view per case: a fixed "
                                 "shape does not apply", fix="drop shape / --shape")
    if num_training < 1 or num_test < 0:
        raise ConfigurationError(f"need num_training >= 1 and num_test >= 0, got {num_training} and "
                                 f"{num_test}", fix="ask for at least one training case")
    share = _family_share(family, tumour_free_share)
    if trunk_version is not None and family != 3:
        raise ConfigurationError(f"a trunk generator version applies to family 3 only, not family {family}",
                                 fix="drop --trunk-version, or pass --family 3")
    version = None
    if family == 3:
        version = _trunk().check_version(trunk_version)
    if shape is None and spacing_range is None:
        spacing_range = DEMO_SPACING_RANGE if family != 3 else _trunk().TRUNK_SPACING_RANGE
    root = Path(out_dir) / spec.folder
    params = {"generator_version": GENERATOR_VERSION, "task": task, "num_training": num_training,
              "num_test": num_test, "seed": seed, "shape": list(shape) if shape else None,
              "spacing_range": [list(v) for v in spacing_range] if spacing_range else None, "family": family}
    if family == 2:
        from autoseg.phantom_family2 import GENERATOR2_VERSION

        params.update(generator_version=GENERATOR2_VERSION, tumour_free_share=share)
    elif family == 3:
        params.update(generator_version=version, tumour_free_share=share)
    elif share:  # family 1 records a share only when asked for one (its earlier tasks stay current)
        params.update(tumour_free_share=share)
    names = [f"{spec.prefix}_{i:03d}.nii.gz" for i in range(num_training + num_test)]
    raw = RawDataset(root)
    files = [d / n for n in names[:num_training] for d in (raw.images_tr, raw.labels_tr)]
    files += [d / n for n in names[num_training:] for d in (raw.images_ts, raw.labels_ts)]
    marker = raw.phantom_marker
    if _is_complete(marker, params, files + [raw.metadata]):
        logger.info("%s is complete and up to date (%s): not regenerated", root, marker.name)
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise DatasetError(f"folder exists and was not written by the phantom generator (no {marker.name})",
                           root, "choose another output folder, or move this one away")
    root.mkdir(parents=True, exist_ok=True)
    write_json(marker, {**params, "complete": False})
    _remove_stale(root, spec.prefix, set(files))
    _write_cases(root, task, seed, names, num_training, shape, spacing_range, family, share, version)
    write_json(raw.metadata, _dataset_json(spec, names, num_training, family, version))
    write_json(marker, {**params, "complete": True})
    logger.info("wrote %d training and %d test phantoms to %s", num_training, num_test, root)
    return root


def _trunk() -> ModuleType:
    from autoseg import phantom_trunk

    return phantom_trunk


def _family_share(family: int, share: float | None) -> float | None:
    """The tumour-free share to use: families 2 and 3 default to 0.3, family 1 (every liver with
    tumours, as the demo and the tests have always had it) to none."""
    if family not in (1, 2, 3):
        raise ConfigurationError(f"phantom family must be 1, 2 or 3, got {family}", fix="pass --family 1, 2 or 3")
    from autoseg.phantom_family2 import DEFAULT_TUMOUR_FREE_SHARE, check_share

    if family == 1:
        return None if share is None else check_share(share)
    return check_share(DEFAULT_TUMOUR_FREE_SHARE if share is None else share)


def _is_complete(marker: Path, params: dict, files: list[Path]) -> bool:
    if not marker.is_file():
        return False
    try:
        recorded = read_json(marker)
    except (OSError, ValueError):
        return False
    if isinstance(recorded, dict):
        recorded.setdefault("family", 1)  # written before there was a second family
    return recorded == {**params, "complete": True} and all(f.is_file() for f in files)


def _remove_stale(root: Path, prefix: str, keep: set[Path]) -> None:
    """Delete our own case files that the new parameters no longer produce (fewer cases, moved split)."""
    for sub in RawDataset.SUBFOLDERS:
        folder = root / sub
        for path in sorted(folder.glob(f"{prefix}_*.nii.gz")) if folder.is_dir() else []:
            ours = path.name[len(prefix) + 1: -len(".nii.gz")].isdigit()
            if ours and path not in keep:
                logger.info("removing stale phantom %s", path)
                path.unlink()


def generate_family_case(family: int, seed: int, task: str, shape: tuple[int, int, int] | None = None,
                         spacing_range: SpacingRange | None = None, tumour_free: bool | None = None,
                         trunk_version: int | None = None) -> PhantomCase:
    """Render case ``seed`` of phantom ``family`` (1, 2 or 3, the trunk; trunk phantoms draw their own
    field of view, so ``shape`` is not theirs). ``tumour_free`` None: the family's own rule (family 1:
    tumours; families 2 and 3 draw it from the seed). ``trunk_version`` None: the trunk generator's default."""
    if family == 2:
        from autoseg import phantom_family2

        return phantom_family2.generate_case(seed, task, shape=shape, spacing_range=spacing_range,
                                             tumour_free=tumour_free)
    if family == 3:
        trunk = _trunk()
        return trunk.generate_trunk_case(seed, task, spacing_range=spacing_range, tumour_free=tumour_free,
                                         version=trunk.check_version(trunk_version))
    return generate_case(seed, task, shape=shape, spacing_range=spacing_range, tumour_free=bool(tumour_free))


def _write_cases(root: Path, task: str, seed: int, names: list[str], num_training: int,
                 shape: tuple[int, int, int] | None, spacing_range: SpacingRange | None,
                 family: int = 1, share: float | None = None, trunk_version: int | None = None) -> None:
    from tqdm import tqdm

    from autoseg import phantom_family2

    tumour_free = phantom_family2.tumour_free_indices(seed, num_training, len(names) - num_training, share or 0.0)
    for index, name in enumerate(tqdm(names, desc=f"phantoms {root.name}", unit="case", disable=None)):
        case = generate_family_case(family, case_seed(seed, index), task, shape=shape, spacing_range=spacing_range,
                                    tumour_free=index in tumour_free, trunk_version=trunk_version)
        raw = RawDataset(root)
        images, labels = (raw.images_tr, raw.labels_tr) if index < num_training else (raw.images_ts, raw.labels_ts)
        write_image(images / name, case.image, case.geometry)
        write_image(labels / name, case.labels, case.geometry)


def _dataset_json(spec: TaskSpec, names: list[str], num_training: int, family: int = 1,
                  trunk_version: int | None = None) -> dict:
    if family == 2:
        from autoseg.phantom_family2 import GENERATOR2_VERSION

        description = spec.description.replace("portal venous", "multiphase") + " (phantom family 2)"
        reference, release = "autoseg synthetic phantom family 2 (autoseg.phantom_family2)", \
            f"autoseg phantom family 2 generator v{GENERATOR2_VERSION}"
    elif family == 3:
        description = spec.description.replace("portal venous ", "") + " (trunk phantoms, family 3)"
        reference, release = "autoseg trunk phantoms (autoseg.phantom_trunk)", \
            f"autoseg trunk phantom generator v{trunk_version}"
    else:
        description, reference = spec.description, "autoseg synthetic phantom (autoseg.phantom)"
        release = f"autoseg phantom generator v{GENERATOR_VERSION}"
    return {
        "name": spec.folder.split("_", 1)[1],
        "description": description,
        "reference": reference,
        "licence": "CC0",
        "release": release,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(spec.labels),
        "numTraining": num_training,
        "numTest": len(names) - num_training,
        "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names[:num_training]],
        "test": [f"./imagesTs/{n}" for n in names[num_training:]],
    }


# --- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m autoseg.phantom`` (reusable as a sub-command parser's parent)."""
    p = argparse.ArgumentParser(prog="python -m autoseg.phantom", add_help=True,
                                description="Write an MSD-style folder of synthetic CT phantoms.")
    p.add_argument("out_dir", type=Path, help="folder to write TaskNN_Name into")
    p.add_argument("--task", default="Task08", choices=sorted(TASKS))
    p.add_argument("--num-training", type=int, default=10)
    p.add_argument("--num-test", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="fixed voxel grid; the spacing then fits the field of view into it")
    p.add_argument("--clinical", action="store_true",
                   help="clinical spacing (0.6-1.0 mm in-plane, 1.5-5 mm slices; ~512x512, slow)")
    add_family_arguments(p)
    return p


def add_family_arguments(p: argparse.ArgumentParser) -> None:
    """``--family`` and ``--tumour-free-share`` (shared with ``autoseg phantom``)."""
    p.add_argument("--family", type=int, choices=(1, 2, 3), default=1,
                   help="1: the phantoms the demo and the tests use (default); 2: an independent family "
                        "with other anatomy, contrast phases, lesion kinds and noise (autoseg.phantom_family2); "
                        "3: trunk phantoms, thorax to pelvis, randomised appearance (autoseg.phantom_trunk)")
    p.add_argument("--tumour-free-share", type=float, default=None, metavar="S",
                   help="share of tumour-free livers among the training and the test cases (default: 0.3 for "
                        "families 2 and 3, none for family 1)")
    add_trunk_version_argument(p)


def add_trunk_version_argument(p: argparse.ArgumentParser) -> None:
    """``--trunk-version`` (shared with ``autoseg phantom``; checked by :func:`write_task`, so that building
    the command line does not import the generator)."""
    p.add_argument("--trunk-version", type=int, default=None, metavar="V",
                   help="family 3 only: the trunk generator's version (default: the one the built-in model is "
                        "trained on; docs/synthetic_model.md says what each version changed)")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: write a phantom task; user errors print without a traceback (status 2)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = write_task(args.out_dir, args.task, args.num_training, args.num_test, args.seed,
                          shape=tuple(args.shape) if args.shape else None,
                          spacing_range=CLINICAL_SPACING_RANGE if args.clinical else None,
                          family=args.family, tumour_free_share=args.tumour_free_share,
                          trunk_version=args.trunk_version)
    except AutosegError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("phantom task folder: %s", root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
