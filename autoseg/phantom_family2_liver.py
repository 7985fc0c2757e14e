"""Inside the family-2 liver: vessel trees by space colonisation and lesions of four kinds.

The liver is voxelised once on its own 2.5 mm design grid (independent of the output grid, so a
seed keeps its anatomy at every spacing); its depth map (distance to the surface) places attractor
points, keeps growing vessels inside and lets lesions sit deep enough.

Vessels (Runions et al.'s space colonisation): attractor points fill the liver; each tree node
nearest to some attractors grows a step towards their mean direction, attractors close to a node
are consumed, so branches fill the organ and split where attractors pull apart. Radii follow
Murray's law from the leaves up (``r^g = sum r_child^g``, ``g`` 2.6-3.0), scaled so the root has the
trunk's radius. Lesion kinds and their appearance by phase are in :func:`draw_lesions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from autoseg.phantom_family2_shapes import (TISSUES2, Capsule, Capsules, GaussianBumps, Item, Metaballs,
                                            Perturbed, Region, Superquadric, Without, ZonalBumps,
                                            random_tilt)

DESIGN_STEP = 2.5  # mm
Scalable = Callable[[float], Region]


def _axes(lo: np.ndarray, n: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = [np.float32(lo[i]) + np.float32(step) * np.arange(n[i], dtype=np.float32) for i in range(3)]
    return a[0][:, None, None], a[1][None, :, None], a[2][None, None, :]


def volume_ml(region: Region, step: float) -> float:
    """Volume of ``region`` sampled every ``step`` mm."""
    lo, hi = region.bounds()
    n = np.ceil((hi - lo) / step).astype(int) + 1
    inside = region.level(*_axes(lo, n, step)) < 0
    return float(np.count_nonzero(inside)) * step ** 3 / 1000.0


def design_grid(region: Region, exclude: tuple[Region, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``region`` less ``exclude`` sampled on the 2.5 mm design grid, one cell beyond its bounds: the
    centre of the first cell (mm) and which cells lie inside."""
    lo, hi = region.bounds()
    lo, hi = lo - DESIGN_STEP, hi + DESIGN_STEP
    n = np.ceil((hi - lo) / DESIGN_STEP).astype(int) + 1
    axes = _axes(lo, n, DESIGN_STEP)
    level = region.level(*axes)
    for other in exclude:
        level = np.maximum(level, -other.level(*axes))
    return lo, level < 0


@dataclass(frozen=True)
class LiverDesign:
    """The liver on a fixed 2.5 mm grid: where it is and how deep each point lies (mm)."""

    origin: np.ndarray
    inside: np.ndarray
    depth: np.ndarray

    @classmethod
    def of(cls, region: Region, exclude: tuple[Region, ...] = ()) -> "LiverDesign":
        lo, inside = design_grid(region, exclude)
        depth = ndimage.distance_transform_edt(inside).astype(np.float32) * DESIGN_STEP
        return cls(lo, inside, depth)

    @property
    def volume_ml(self) -> float:
        return float(self.inside.sum()) * DESIGN_STEP ** 3 / 1000.0

    @property
    def max_depth(self) -> float:
        return float(self.depth.max())

    def depth_at(self, points: np.ndarray) -> np.ndarray:
        """Depth (mm, 0 outside) at ``points`` ``(n, 3)``, nearest design voxel."""
        idx = np.rint((np.atleast_2d(points) - self.origin) / DESIGN_STEP).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(self.depth.shape)), axis=1)
        out = np.zeros(len(idx), dtype=np.float32)
        out[ok] = self.depth[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out

    def points(self, rng: np.random.Generator, n: int, min_depth: float) -> np.ndarray:
        """``n`` random points (mm) at least ``min_depth`` deep (at the deepest ones if none is)."""
        cand = np.argwhere(self.depth >= min(min_depth, self.max_depth))
        pick = cand[rng.integers(0, len(cand), n)]
        return self.origin + (pick + rng.uniform(-0.5, 0.5, (n, 3))) * DESIGN_STEP

    def nearest_inside(self, target: np.ndarray, min_depth: float) -> np.ndarray:
        """The point at least ``min_depth`` deep that is closest to ``target`` (mm)."""
        cand = np.argwhere(self.depth >= min(min_depth, self.max_depth))
        pos = self.origin + cand * DESIGN_STEP
        return np.asarray(pos[np.argmin(((pos - target) ** 2).sum(axis=1))], dtype=float)

    def centroid(self) -> np.ndarray:
        return np.asarray(self.origin + np.argwhere(self.inside).mean(axis=0) * DESIGN_STEP, dtype=float)


def one_piece(region: Region) -> Region:
    """``region`` without the pieces that lie apart from its largest one (26-connected on the design
    grid). A liver drawn as blended lobes and then clipped to the abdominal cavity and kept out of
    the spine, aorta and kidneys can fall apart: a lobe floating several centimetres from the rest,
    which no real liver does (and which a model then learns to look for). The cut covers each such
    piece and one design cell around it, never a cell of the largest piece (rendered finer, the
    largest piece may lose up to half a cell, 1.25 mm, where it faces a cut one)."""
    origin, inside = design_grid(region)  # the pieces only: no depth map
    labels, count = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return region
    keep = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    apart = (labels > 0) & (labels != keep)
    cut = ndimage.binary_dilation(apart, structure=np.ones((3, 3, 3), dtype=bool)) & (labels != keep)
    return Without(region, cut, origin, DESIGN_STEP)


# --- vessels -------------------------------------------------------------------------------------

def colonise(rng: np.random.Generator, liver: LiverDesign, root: np.ndarray, heads: np.ndarray,
             attractors: np.ndarray, step: float, influence: float, kill: float, max_nodes: int = 1400
             ) -> tuple[np.ndarray, np.ndarray]:
    """Grow one tree from ``root`` (first branches along the unit ``heads``); node positions and parents."""
    nodes = [np.asarray(root, float)] + [root + 2 * step * h for h in heads]
    parent = [-1] + [0] * len(heads)
    pts = attractors
    for _ in range(400):
        arr = np.asarray(nodes)
        if len(pts) == 0 or len(arr) >= max_nodes:
            break
        tree = cKDTree(arr)
        dist, idx = tree.query(pts, distance_upper_bound=influence)
        keep = dist >= kill
        pts, dist, idx = pts[keep], dist[keep], idx[keep]
        near = np.isfinite(dist)
        if not near.any():
            break
        pull = (pts[near] - arr[idx[near]]) / dist[near][:, None]
        sums = np.zeros_like(arr)
        np.add.at(sums, idx[near], pull)
        growing = np.nonzero(np.linalg.norm(sums, axis=1) > 1e-6)[0]
        direction = sums[growing] / np.linalg.norm(sums[growing], axis=1, keepdims=True)
        direction += rng.normal(0.0, 0.12, direction.shape)
        new = arr[growing] + step * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        ok = (liver.depth_at(new) >= 1.0) & (tree.query(new)[0] > 0.45 * step)
        if not ok.any():
            break
        nodes += list(new[ok][: max_nodes - len(arr)])
        parent += list(growing[ok][: max_nodes - len(arr)])
    return np.asarray(nodes), np.asarray(parent)


def murray_radii(parent: np.ndarray, root_radius: float, leaf: float, exponent: float) -> np.ndarray:
    """Radius per node: leaves ``leaf``, each parent ``(sum child r^g)^(1/g)``, scaled to ``root_radius``."""
    flow = np.zeros(len(parent))
    for i in range(len(parent) - 1, -1, -1):  # children are always added after their parent
        if flow[i] == 0.0:
            flow[i] = leaf ** exponent
        if parent[i] >= 0:
            flow[parent[i]] += flow[i]
    radii = flow ** (1.0 / exponent)
    return radii * (root_radius / radii[0])


def vessel_tree(rng: np.random.Generator, liver: LiverDesign, root: np.ndarray, heads: np.ndarray,
                root_radius: float) -> Capsules:
    """A tree of capsules grown from ``root``; twigs under 0.35 mm are left out."""
    density = rng.uniform(1800.0, 3600.0)  # mm^3 of liver per attractor
    n = int(np.clip(liver.volume_ml * 1000.0 / density, 150, 1200))
    attractors = liver.points(rng, n, 2.0)
    step = rng.uniform(3.5, 5.0)
    nodes, parent = colonise(rng, liver, root, heads, attractors, step, influence=rng.uniform(25, 45),
                             kill=rng.uniform(7, 11))
    radii = murray_radii(parent, root_radius, rng.uniform(0.5, 0.8), rng.uniform(2.6, 3.0))
    parts = tuple(Capsule(nodes[parent[i]], nodes[i], float(radii[i]), float(radii[i]))
                  for i in range(1, len(nodes)) if radii[i] >= 0.35)
    return Capsules(parts)


# --- lesions -------------------------------------------------------------------------------------

#: Lesion attenuation relative to the liver (HU), per phase (arterial, portal venous, delayed).
LESION_CONTRAST: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "hcc": ((20, 60), (-25, -5), (-30, -10)),  # arterial hyperenhancement, washout
    "hypo_met": ((-50, -25), (-70, -35), (-45, -20)),  # colorectal-like: hypoattenuating
    "hyper_met": ((25, 70), (8, 25), (-15, -3)),  # neuroendocrine-like; portal sign drawn per case
    "infiltrative": ((-10, 20), (-30, -10), (-25, -10)),  # ill-defined, heterogeneous
}
KINDS = ("hcc", "hypo_met", "hyper_met", "infiltrative")
PHASES = ("arterial", "portal", "delayed")


@dataclass(frozen=True)
class Lesion:
    """One lesion: its kind, centre (mm), volume (mL; its shape is scaled to it) and layers."""

    kind: str
    centre: np.ndarray
    volume_ml: float
    items: tuple[Item, ...]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _nodule(rng: np.random.Generator, centre: np.ndarray, irregular: float) -> Scalable:
    aspect = np.exp(rng.normal(0.0, 0.15, 3))
    radii = 10.0 * aspect / np.prod(aspect) ** (1 / 3)
    e1, e2, rot = rng.uniform(0.8, 1.15), rng.uniform(0.8, 1.15), random_tilt(rng, 90)
    bumps = ZonalBumps.random(rng, centre, 4, (2, 5), irregular * 10.0)

    def at(scale: float) -> Region:
        b = ZonalBumps(bumps.centre, bumps.axes, bumps.orders, bumps.amplitudes * scale, bumps.phases)
        return Perturbed(Superquadric(centre, radii * scale, e1, e2, rot), b)
    return at


def _infiltrative(rng: np.random.Generator, centre: np.ndarray) -> Scalable:
    k = int(rng.integers(20, 45))
    offsets = np.zeros((k, 3))
    for i in range(1, k):  # a branching random walk: now and then it restarts from an earlier ball
        base = offsets[rng.integers(0, i)] if rng.random() < 0.3 else offsets[i - 1]
        offsets[i] = base + rng.normal(0.0, 4.0, 3)
    offsets -= offsets.mean(axis=0)
    sigmas, weights = rng.uniform(2.5, 5.0, k), rng.uniform(1.3, 2.2, k)

    def at(scale: float) -> Region:
        return Metaballs(centre + offsets * scale, sigmas * scale, weights)
    return at


def _sized(make: Scalable, target_ml: float) -> Scalable:
    """``make`` rescaled so that its scale 1 holds ``target_ml`` (these shapes scale exactly)."""
    lo, hi = make(1.0).bounds()
    base = volume_ml(make(1.0), float((hi - lo).max()) / 24.0)
    f = (target_ml / max(base, 1e-6)) ** (1 / 3)
    return lambda s: make(f * s)


def _lesion_items(rng: np.random.Generator, kind: str, shape: Scalable, radius: float, phase: str,
                  liver_hu: float, portal_sign: float) -> tuple[Item, ...]:
    """Layers of one lesion: rim or capsule, solid body, necrotic core, as its kind shows in ``phase``."""
    lo, hi = LESION_CONTRAST[kind][PHASES.index(phase)]
    contrast = rng.uniform(lo, hi) * (portal_sign if (kind, phase) == ("hyper_met", "portal") else 1.0)
    body_hu = liver_hu + contrast
    box_lo, box_hi = shape(1.0).bounds()
    amp = {"hcc": 10.0, "hypo_met": 5.0, "hyper_met": 6.0, "infiltrative": 14.0}[kind]
    texture = GaussianBumps.random(rng, box_lo, box_hi, 12, (0.2 * radius + 1, 0.5 * radius + 2), amp)
    rim_hu = None
    if kind == "hcc" and phase != "arterial" and rng.random() < 0.6:
        rim_hu, rim = liver_hu + rng.uniform(10, 28), rng.uniform(1.0, 2.5)  # enhancing capsule
    elif kind == "hypo_met" and phase == "arterial" and rng.random() < 0.7:
        rim_hu, rim = liver_hu + rng.uniform(0, 30), rng.uniform(1.5, 4.0)  # peripheral rim enhancement
    tumour, items = TISSUES2["tumour"], []
    if rim_hu is not None and radius > 2.5 * rim:
        items.append(Item("tumour rim", TISSUES2["tumour_rim"], rim_hu, shape(1.0), in_liver=True))
        items.append(Item("tumour", tumour, body_hu, shape(1.0 - rim / radius), texture, in_liver=True))
    else:
        items.append(Item("tumour", tumour, body_hu, shape(1.0), texture, in_liver=True))
    if radius > 17.0 and rng.random() < 0.65:  # central necrosis of a large lesion (> ~20 mL)
        items.append(Item("necrosis", TISSUES2["tumour_necrosis"], rng.uniform(10, 35),
                          shape(rng.uniform(0.35, 0.6)), in_liver=True))
    return tuple(items)


def _volumes(rng: np.random.Generator, kind: str) -> tuple[list[float], int]:
    """Lesion volumes (mL) of a case, the first the index lesion (>= 0.5 mL); and satellite count."""
    if kind == "hcc":
        vols = [_log_uniform(rng, 1.0, 300.0)]
        vols += [_log_uniform(rng, 0.3, 20.0) for _ in range(int(rng.integers(0, 3)))]
        return vols, int(rng.integers(1, 5)) if rng.random() < 0.5 else 0
    if kind == "hypo_met":
        vols = [_log_uniform(rng, 0.5, 150.0)]
        return vols + [_log_uniform(rng, 0.08, 60.0) for _ in range(int(rng.integers(0, 10)))], 0
    if kind == "hyper_met":
        vols = [_log_uniform(rng, 0.5, 60.0)]
        return vols + [_log_uniform(rng, 0.08, 20.0) for _ in range(int(rng.integers(0, 8)))], 0
    return [_log_uniform(rng, 20.0, 400.0)], int(rng.integers(0, 4))


def _place(rng: np.random.Generator, liver: LiverDesign, radius: float, near: np.ndarray | None,
           near_radius: float) -> np.ndarray:
    if near is None:
        return liver.points(rng, 1, min(0.7 * radius, 0.8 * liver.max_depth))[0]
    for _ in range(20):  # a satellite: a few mm off the main lesion's surface
        d = rng.normal(size=3)
        p = near + d / np.linalg.norm(d) * (near_radius + radius + rng.uniform(2, 15))
        if liver.depth_at(p)[0] >= 0.5 * radius:
            return p
    return liver.points(rng, 1, radius)[0]


def draw_lesions(rng: np.random.Generator, liver: LiverDesign, phase: str, liver_hu: float) -> list[Lesion]:
    """The lesions of a tumour-bearing liver.

    A case has one disease: HCC (an index tumour of 1-300 mL, up to 2 more nodules, satellites of
    0.03-0.4 mL around the index tumour in half the cases), hypovascular metastases (1-10, 0.08-150 mL),
    hypervascular metastases (1-8, 0.08-60 mL) or an infiltrative mass (20-400 mL, metaball cluster,
    ill-defined), with probabilities 0.35, 0.35, 0.15, 0.15.
    """
    kind = str(rng.choice(KINDS, p=[0.35, 0.35, 0.15, 0.15]))
    volumes, satellites = _volumes(rng, kind)
    portal_sign = 1.0 if rng.random() < 0.5 else -1.0
    lesions: list[Lesion] = []
    plan = [(v, False) for v in volumes] + [(_log_uniform(rng, 0.03, 0.4), True) for _ in range(satellites)]
    for i, (vol, satellite) in enumerate(plan):
        radius = (3 * vol * 1000.0 / (4 * np.pi)) ** (1 / 3)
        main = lesions[0] if lesions else None
        centre = _place(rng, liver, radius, main.centre if (satellite and main) else None,
                        (3 * main.volume_ml * 1000.0 / (4 * np.pi)) ** (1 / 3) if main else 0.0)
        if kind == "infiltrative" and i == 0:
            make = _infiltrative(rng, centre)
        else:
            make = _nodule(rng, centre, rng.uniform(0.04, 0.2))
        items = _lesion_items(rng, kind, _sized(make, vol), radius, phase, liver_hu, portal_sign)
        lesions.append(Lesion(kind, centre, vol, items))
    return lesions
