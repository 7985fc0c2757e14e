"""A second, independent family of synthetic CT phantoms, to test a model tuned on the first.

The first family (:mod:`autoseg.phantom`) is a portal venous abdomen with an ellipsoid-lobed liver,
recursively bifurcating vessels, 1-5 hypodense lumpy tumours in every case, distance-ramp partial
volume and blurred white noise. Family 2 changes every one of those choices, so that what a model
learnt about family 1 that is not liver, vessel or tumour does not carry over:

- **Contrast phase** per case: late arterial (30 %), portal venous (50 %) or delayed (20 %), and
  every enhancing tissue follows it. Hepatic veins are unenhanced to weakly enhancing in the arterial
  phase (they can be darker than the liver), the aorta and heart are bright (230-380 HU), kidneys
  show a cortex-medulla pattern and the spleen arciform bands. One liver in five is steatotic
  (15-40 HU lower).
- **Liver**: a log-sum-exp blend of superquadric right, left and caudate lobes (Riedel's lobe in
  15 %) perturbed by zonal harmonics; normal (1.3-1.9 L, 60 %), enlarged (2.1-3.0 L, 20 %) or
  cirrhotic (0.8-1.2 L: right lobe atrophy, caudate hypertrophy, nodular surface, coarse texture).
- **Vessels**: portal tree from the hilum (its extrahepatic trunk drawn outside the liver, not
  labelled) and hepatic venous tree from the IVC, grown by space colonisation with Murray's-law
  radii (:mod:`autoseg.phantom_family2_liver`). The drawn vessel/parenchyma contrast spans about
  -50 HU (hepatic veins, arterial phase) to +160 HU (portal veins in a steatotic liver).
- **Lesions**: one disease per case: HCC (arterial hyperenhancement, washout, enhancing capsule,
  satellites), hypovascular metastases (rim enhancement in the arterial phase), hypervascular
  metastases (nearly isoattenuating in the portal phase) or an infiltrative metaball mass; 0.03 to
  400 mL; central necrosis in large ones. A share of livers (default 30 %) is tumour-free: no lesion
  at all, in labels or image.
- **Surroundings**: superellipse body on a patient table, ribs and costal cartilage, heart and lung
  bases, crescent spleen, pancreas, stomach and colon with water, food, gas or positive oral
  contrast, an optional gallbladder with a stone; another field of view (:data:`FOV2_MM`).
- **Image formation**: every structure is sampled on a refined grid (up to 3 sub-slices, 2x2
  in-plane) and averaged (partial volume as slice and pixel integration), then an in-plane Gaussian
  point spread; noise is band-pass (difference of Gaussians, the ramp-filtered look of filtered back
  projection) with a soft or sharp kernel, stronger in large patients and deep in the body, plus
  cupping.

Where structures overlap, the later one owns the voxel: tumour over vessel over parenchyma (so a
vessel crossing a tumour is tumour in image and labels), and IVC and gallbladder over the liver.

HU values are approximate ranges from general radiology knowledge (multiphase liver CT: late arterial
~35-45 s, portal venous ~70 s, delayed ~3-5 min after injection), not fitted to any dataset:
liver ~55-65 HU unenhanced, ~70-90 late arterial, ~95-130 portal venous; portal vein ~150-210 and
hepatic veins ~125-195 portal venous, hepatic veins near unenhanced blood (~40-80) in the late
arterial phase; aorta 230-380 arterial; kidney cortex 170-260 corticomedullary; HCC per LI-RADS
major features (non-rim arterial hyperenhancement, washout, capsule); colorectal metastases
hypoattenuating (~35-70 HU below liver) with peripheral arterial rim; neuroendocrine metastases
hyperenhancing arterially; necrosis 10-35 HU; image noise ~7-30 HU. Nothing was tuned on any case.

Example::

    >>> case = generate_case(3, "Task08", shape=(24, 64, 64))
    >>> case.family, case.image.shape
    (2, (24, 64, 64))
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from autoseg.errors import ConfigurationError
from autoseg.phantom import PhantomCase, SpacingRange, choose_grid, task_spec
from autoseg.phantom_family2_anatomy import Anatomy2, draw_anatomy2
from autoseg.phantom_family2_shapes import (LIVER_TISSUES, TISSUES2, TUMOUR_TISSUES, VESSEL_TISSUES, Capsules,
                                            Item, Region)
from autoseg.phantom_shapes import Grid, Slices

#: Field of view ``(z, y, x)`` mm of family 2 (family 1: 220 x 350 x 350).
FOV2_MM: tuple[float, float, float] = (240.0, 400.0, 400.0)
#: Version of the family-2 generator, recorded in ``phantom.json``.
GENERATOR2_VERSION = 2
DEFAULT_TUMOUR_FREE_SHARE = 0.3
_CHUNK = 1 << 22  # refined samples evaluated at once


def generate_case(seed: int, task: str = "Task08", shape: tuple[int, int, int] | None = None,
                  spacing: tuple[float, float, float] | None = None,
                  spacing_range: SpacingRange | None = None, tumour_free: bool | None = None,
                  tumour_free_share: float = DEFAULT_TUMOUR_FREE_SHARE) -> PhantomCase:
    """Render family-2 case ``seed`` for ``task``; grid rules as :func:`autoseg.phantom.generate_case`.

    ``tumour_free`` None draws it from the seed with probability ``tumour_free_share``.
    """
    task_spec(task)
    if tumour_free is None:
        tumour_free = is_tumour_free(seed, tumour_free_share)
    grid = choose_grid(seed, shape, spacing, spacing_range, fov_mm=FOV2_MM)
    anatomy = draw_anatomy2(seed, tumour_free)
    image, tissues = render(anatomy, grid, seed)
    origin = (grid.origin[2], grid.origin[1], grid.origin[0])
    return PhantomCase(image, task_labels2(tissues, task), grid.spacing, origin, tissues, task, seed, family=2)


def check_share(share: float) -> float:
    """``share`` as a float in [0, 1], else a :class:`ConfigurationError`."""
    if not 0.0 <= float(share) <= 1.0:
        raise ConfigurationError(f"the tumour-free share must lie in [0, 1], got {share}",
                                 fix="pass e.g. --tumour-free-share 0.3")
    return float(share)


def is_tumour_free(seed: int, share: float) -> bool:
    """Whether case ``seed`` drawn on its own is tumour-free (probability ``share``)."""
    return bool(np.random.default_rng([seed, 2002, 6]).random() < check_share(share))


def tumour_free_indices(seed: int, num_training: int, num_test: int, share: float) -> set[int]:
    """Case indices of a written task that are tumour-free: ``round(share * n)`` of the training and
    of the test cases each, chosen with ``seed``, so a small test set still gets its share."""
    check_share(share)
    rng = np.random.default_rng([seed, 2002, 7])
    picked: set[int] = set()
    for start, n in ((0, num_training), (num_training, num_test)):
        k = int(math.floor(share * n + 0.5))
        picked |= {start + int(i) for i in rng.permutation(n)[:k]}
    return picked


def task_labels2(tissues: np.ndarray, task: str) -> np.ndarray:
    """Labels from a family-2 tissue map: Task08 1 vessel 2 tumour, Task03 1 liver 2 tumour."""
    task_spec(task)
    labels = np.zeros(tissues.shape, dtype=np.uint8)
    labels[np.isin(tissues, VESSEL_TISSUES if task == "Task08" else LIVER_TISSUES)] = 1
    labels[np.isin(tissues, TUMOUR_TISSUES)] = 2
    return labels


# --- rendering -----------------------------------------------------------------------------------

def subsamples(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Refined samples per voxel along ``(z, y, x)``: about one per 1.25 mm, at most 3 x 2 x 2."""
    nz = int(np.clip(round(spacing[0] / 1.25), 1, 3))
    ny, nx = (int(np.clip(round(s / 1.25), 1, 2)) for s in spacing[1:])
    return nz, ny, nx


def _box(grid: Grid, bounds: tuple[np.ndarray, np.ndarray]) -> Slices | None:
    """Voxels whose extent meets the box ``bounds`` (mm)."""
    out = []
    for n, s, o, a, b in zip(grid.shape, grid.spacing, grid.origin, *bounds):
        a, b = max(float(a), o - s * (n + 1)), min(float(b), o + s * (n + 1))
        i0, i1 = max(0, math.ceil((a - o) / s - 0.5)), min(n, math.floor((b - o) / s + 0.5) + 1)
        if i1 <= i0:
            return None
        out.append(slice(i0, i1))
    return (out[0], out[1], out[2])


def _meet(a: Slices, b: Slices) -> Slices | None:
    out = [slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b)]
    return None if any(s.stop <= s.start for s in out) else (out[0], out[1], out[2])


def _axes(grid: Grid, box: Slices, sub: tuple[int, int, int]) -> list[np.ndarray]:
    """Broadcastable float32 mm coordinates of the refined samples of ``box``."""
    out = []
    for axis, (o, s, q, k) in enumerate(zip(grid.origin, grid.spacing, box, sub)):
        j = np.arange(q.start * k, q.stop * k, dtype=np.float64)
        shape = [1, 1, 1]
        shape[axis] = -1
        out.append((o + s * ((j + 0.5) / k - 0.5)).astype(np.float32).reshape(shape))
    return out


def _rel(inner: Slices, outer: Slices, sub: tuple[int, int, int]) -> Slices:
    """Refined-sample slices of ``inner`` within a refined array over ``outer``."""
    r = [slice((i.start - o.start) * k, (i.stop - o.start) * k) for i, o, k in zip(inner, outer, sub)]
    return (r[0], r[1], r[2])


def _hits(region: Region, grid: Grid, box: Slices, sub: tuple[int, int, int]) -> np.ndarray:
    """Which refined samples of ``box`` lie inside ``region`` (capsule by capsule for a union)."""
    size = [(q.stop - q.start) * k for q, k in zip(box, sub)]
    hits = np.zeros(size, dtype=bool)
    if isinstance(region, Capsules):
        for part in region.parts:
            pbox = _box(grid, part.bounds())
            pbox = _meet(pbox, box) if pbox is not None else None
            if pbox is not None:
                hits[_rel(pbox, box, sub)] |= part.level(*_axes(grid, pbox, sub)) < 0
        return hits
    step = max(1, _CHUNK // max(1, size[1] * size[2] * sub[0]))
    for z0 in range(box[0].start, box[0].stop, step):
        part_box = (slice(z0, min(z0 + step, box[0].stop)), box[1], box[2])
        hits[_rel(part_box, box, sub)] = region.level(*_axes(grid, part_box, sub)) < 0
    return hits


def _occupancy(hits: np.ndarray, sub: tuple[int, int, int]) -> np.ndarray:
    nz, ny, nx = sub
    z, y, x = (n // k for n, k in zip(hits.shape, sub))
    counts = hits.reshape(z, nz, y, ny, x, nx).sum(axis=(1, 3, 5), dtype=np.float32)
    return counts * np.float32(1.0 / (nz * ny * nx))


def render(anatomy: Anatomy2, grid: Grid, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The int16 HU image and uint8 tissue map of ``anatomy`` on ``grid`` (noise drawn from ``seed``)."""
    sub = subsamples(grid.spacing)
    image = np.full(grid.shape, -1000.0, dtype=np.float32)
    tissues = np.zeros(grid.shape, dtype=np.uint8)
    liver: tuple[Slices, np.ndarray] | None = None
    for item in anatomy.items:
        box = _box(grid, item.region.bounds())
        if item.in_liver:
            box = _meet(box, liver[0]) if box is not None and liver is not None else None
        if box is None:
            continue
        hits = _hits(item.region, grid, box, sub)
        if item.in_liver and liver is not None:
            hits &= liver[1][_rel(box, liver[0], sub)]
        _paint(image, tissues, grid, box, _occupancy(hits, sub), item)
        if item.tissue == TISSUES2["liver"] and not item.in_liver:
            liver = (box, hits)
    return _acquire(image, anatomy, grid, np.random.default_rng([seed, 2002, 5])), tissues


def _paint(image: np.ndarray, tissues: np.ndarray, grid: Grid, box: Slices, occ: np.ndarray, item: Item) -> None:
    hu: np.ndarray | np.float32 = np.float32(item.hu)
    if item.texture is not None:
        hu = hu + item.texture(*_axes(grid, box, (1, 1, 1)))
    region = image[box]
    region += occ * (hu - region)
    tissues[box][occ >= 0.5] = item.tissue


def _acquire(image: np.ndarray, anatomy: Anatomy2, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Point spread, cupping and band-pass noise of a soft or sharp reconstruction kernel."""
    sharp = rng.random() < 0.3
    psf = rng.uniform(0.35, 0.55) if sharp else rng.uniform(0.5, 0.9)  # mm, sigma in-plane
    sigma_hu = rng.uniform(7.0, 16.0) * (anatomy.body.radii_yx[1] / 150.0) ** 1.5 * (rng.uniform(1.4, 1.8)
                                                                                    if sharp else 1.0)
    sz, sy, sx = grid.spacing
    out = ndimage.gaussian_filter(image, (0.0, psf / sy, psf / sx), mode="nearest", truncate=3.0)
    depth = -anatomy.body.level(*_axes(grid, tuple(slice(0, n) for n in grid.shape), (1, 1, 1)))  # type: ignore[arg-type]
    depth = np.clip(depth / np.float32(0.5 * min(anatomy.body.radii_yx)), 0.0, 1.0)
    out -= np.float32(rng.uniform(0.0, 15.0)) * depth ** 2  # cupping: darker in the middle of the body
    s1 = max(0.5, (0.5 if sharp else 0.9) / min(sy, sx))
    s2 = s1 * rng.uniform(2.5, 4.0)
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    zc = 0.3 if sz < 2.0 else 0.0
    noise = ndimage.gaussian_filter(white, (zc, s1, s1)) - 0.85 * ndimage.gaussian_filter(white, (zc, s2, s2))
    del white
    noise *= np.float32(sigma_hu / max(float(noise.std()), 1e-6)) * (np.float32(0.85) + np.float32(0.35) * depth)
    out += noise
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)
