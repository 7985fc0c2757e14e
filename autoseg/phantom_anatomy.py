"""Random abdominal anatomy for the synthetic phantom, in millimetres and independent of any voxel grid.

:func:`draw_anatomy` turns a random generator into an ordered list of :class:`Layer`\\ s (tissue, HU,
shape) that the renderer paints one over the other. Sizes and HU values are those of an adult abdomen
in the portal venous phase. Coordinates: ``(z, y, x)`` mm, ``x`` to the patient's left, ``y``
posterior, ``z`` superior, the origin at the middle of the field of view.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from autoseg.phantom_shapes import (Blob, Deformed, Ellipsoid, Intersection, Offset, Shape, Slab, Tube,
                                    Union, Waves, ZPeriodic, rotation)

# Tissue ids of the rendered tissue map (``PhantomCase.tissues``).
TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "muscle": 2, "visceral_fat": 3, "lung": 4, "bowel": 5, "bowel_gas": 6,
    "stomach": 7, "bone_cortical": 8, "bone_cancellous": 9, "disc": 10, "csf": 11, "aorta": 12,
    "ivc": 13, "kidney": 14, "renal_sinus": 15, "spleen": 16, "gallbladder": 17, "liver": 18,
    "vessel": 19, "tumour": 20,
}
_ALL = (np.array([-1e4, -1e4, -1e4]), np.array([1e4, 1e4, 1e4]))
_FAR = 2000.0  # radius along z of organs that run through the whole field of view


@dataclass(frozen=True)
class Layer:
    """One tissue painted over what is below it.

    ``tubes`` makes the layer a vessel tree (``shape`` is then None); ``in_liver`` clips it to the
    liver painted before it, so that vessels and tumours never leave the liver.
    """

    name: str
    tissue: int
    hu: float
    shape: Shape | None = None
    tubes: tuple[Tube, ...] = ()
    texture: Waves | None = None  # HU variation inside the tissue
    in_liver: bool = False


@dataclass(frozen=True)
class _Body:
    """Key dimensions that place the organs: body and cavity shapes, spine position."""

    body: Shape
    cavity: Shape
    cy: float  # body centre, y
    ax: float  # cavity half-width (x)
    by: float  # cavity half-depth (y)
    spine_y: float  # vertebral body centre, y
    spine_r: tuple[float, float]  # vertebral body radii (y, x)


def draw_anatomy(rng: np.random.Generator, tumour_free: bool = False) -> tuple[Layer, ...]:
    """All layers of one random case, in painting order (later layers cover earlier ones).
    ``tumour_free``: the same patient without its tumours (they are drawn, so every later draw is
    the same, and left out)."""
    body, layers = _body_wall(rng)
    layers += _spine(rng, body)
    layers += _gut(rng, body)
    liver, centre = _liver_shape(rng, body)
    liver_hu = rng.uniform(65, 110)
    layers.append(Layer("liver", TISSUES["liver"], liver_hu, liver,
                        texture=Waves.random(rng, 4, rng.uniform(3, 6), (20, 60))))
    layers += _vessel_trees(rng, liver, centre, liver_hu)
    tumours = _tumours(rng, liver, liver_hu)
    if not tumour_free:
        layers += tumours
    layers += _organs(rng, body)
    return tuple(layers)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _body_wall(rng: np.random.Generator) -> tuple[_Body, list[Layer]]:
    a, b, cy = _u(rng, 145, 165), _u(rng, 105, 125), _u(rng, -5, 5)
    fat, muscle = _u(rng, 12, 35), _u(rng, 8, 14)
    back = cy + 0.9 * b  # the flattened back lying on the table
    outline = Intersection((Ellipsoid((0, cy, 0), (_FAR, b, a)), Slab((0, 1, 0), back, _ALL)))
    body = Deformed(outline, Waves.random(rng, 3, _u(rng, 2, 5), (80, 250)))
    cavity = Offset(body, -(fat + muscle))
    spine_r = (_u(rng, 15, 18), _u(rng, 22, 26))
    spine_y = back - fat - _u(rng, 50, 60)
    dims = _Body(body, cavity, cy, a - fat - muscle, 0.95 * b - fat - muscle, spine_y, spine_r)
    layers = [
        Layer("subcutaneous fat", TISSUES["fat"], _u(rng, -110, -90), body),
        Layer("abdominal wall", TISSUES["muscle"], _u(rng, 40, 60), Offset(body, -fat)),
        Layer("visceral fat", TISSUES["visceral_fat"], _u(rng, -100, -70), cavity),
    ]
    for side in (-1, 1):
        lung = Ellipsoid((_u(rng, 115, 135), cy + 0.3 * b, side * 0.5 * a), (60, 0.5 * b, 0.33 * a))
        layers.append(Layer("lung base", TISSUES["lung"], _u(rng, -870, -820), lung))
    return dims, layers


def _spine(rng: np.random.Generator, d: _Body) -> list[Layer]:
    ry, rx = d.spine_r
    period, disc = _u(rng, 32, 36), _u(rng, 6, 9)
    z0, cortex = _u(rng, 0, period), _u(rng, 1.5, 2.5)
    canal_y = d.spine_y + ry + 9
    column = Ellipsoid((0, d.spine_y, 0), (_FAR, ry, rx))
    body = Intersection((column, ZPeriodic(period, period - disc, z0, _ALL)))
    arch = Intersection((Union((Ellipsoid((0, canal_y, 0), (_FAR, 15, 16)),
                                Ellipsoid((0, canal_y + 20, 0), (_FAR, 16, 5)))),
                         ZPeriodic(period, 0.6 * period, z0 + period / 2, _ALL)))
    layers = []
    for side in (-1, 1):
        layers.append(Layer("paraspinal muscle", TISSUES["muscle"], _u(rng, 40, 60),
                            Ellipsoid((0, canal_y + 18, side * 32), (_FAR, 22, 28))))
        layers.append(Layer("psoas", TISSUES["muscle"], _u(rng, 40, 60),
                            Ellipsoid((0, d.spine_y + 3, side * (rx + 16)), (_FAR, 15, 14))))
    return layers + [
        Layer("disc", TISSUES["disc"], _u(rng, 70, 100), column),
        Layer("vertebral cortex", TISSUES["bone_cortical"], _u(rng, 700, 950), body),
        Layer("vertebral body", TISSUES["bone_cancellous"], _u(rng, 380, 520), Offset(body, -cortex)),
        Layer("posterior arch", TISSUES["bone_cortical"], _u(rng, 600, 850), arch),
        Layer("spinal canal", TISSUES["csf"], _u(rng, 0, 15), Ellipsoid((0, canal_y, 0), (_FAR, 8, 9))),
    ]


def _gut(rng: np.random.Generator, d: _Body) -> list[Layer]:
    """Stomach (wall, fluid, an air cap anteriorly) and bowel loops, some holding gas."""
    c = (_u(rng, 20, 45), d.cy - _u(rng, 0.2, 0.4) * d.by, _u(rng, 0.25, 0.45) * d.ax)
    stomach = Deformed(Ellipsoid(c, tuple(np.array([50, 30, 40]) * _u(rng, 0.8, 1.1)),
                                 rotation((_u(rng, -30, 30), 0, 0))), Waves.random(rng, 3, 4, (40, 120)))
    lumen = Offset(stomach, -4)
    gas = Intersection((lumen, Slab((0, 1, 0), c[1] - _u(rng, 0, 20), _ALL)))
    layers = [Layer("stomach wall", TISSUES["stomach"], _u(rng, 35, 55), stomach),
              Layer("stomach content", TISSUES["stomach"], _u(rng, 0, 25), lumen),
              Layer("stomach gas", TISSUES["bowel_gas"], -1000, gas)]
    for _ in range(int(rng.integers(6, 13))):
        r = _u(rng, 10, 22)
        c = (_u(rng, -110, 0), d.cy + _u(rng, -0.7, 0.3) * d.by, _u(rng, -0.7, 0.7) * d.ax)
        layers.append(Layer("bowel", TISSUES["bowel"], _u(rng, 20, 45),
                            Blob(c, r, Waves.random(rng, 3, 0.2, (2, 4)))))
        if rng.random() < 0.5:
            layers.append(Layer("bowel gas", TISSUES["bowel_gas"], -1000,
                                Blob(c, 0.6 * r, Waves.random(rng, 2, 0.15, (2, 4)))))
    return layers


def _liver_shape(rng: np.random.Generator, d: _Body) -> tuple[Shape, np.ndarray]:
    """Right and left lobes blended into one deformed solid kept in the cavity; and its right lobe's centre."""
    zr = _u(rng, -5, 10)
    right = Ellipsoid((zr, d.cy + _u(rng, -0.05, 0.1) * d.by, -_u(rng, 0.42, 0.5) * d.ax),
                      (_u(rng, 72, 85), _u(rng, 0.75, 0.9) * d.by, _u(rng, 0.45, 0.55) * d.ax),
                      rotation((_u(rng, -15, 15), 0, 0)))
    left = Ellipsoid((zr + _u(rng, 15, 30), d.cy - _u(rng, 0.35, 0.5) * d.by, _u(rng, 0.0, 0.15) * d.ax),
                     (_u(rng, 35, 50), _u(rng, 0.3, 0.4) * d.by, _u(rng, 0.35, 0.45) * d.ax),
                     rotation((_u(rng, -20, 10), 0, 0)))
    lobes = Deformed(Union((right, left), smooth=25.0), Waves.random(rng, 4, _u(rng, 5, 9), (60, 160)))
    return Intersection((lobes, Offset(d.cavity, -3.0))), np.asarray(right.center, dtype=float)


def _organs(rng: np.random.Generator, d: _Body) -> list[Layer]:
    """Kidneys, spleen, gallbladder, inferior vena cava and aorta, painted over the liver."""
    ry, rx = d.spine_r
    layers = []
    for side, zc in ((-1, _u(rng, -65, -40)), (1, _u(rng, -45, -25))):
        c = (zc, d.spine_y - _u(rng, 0, 10), side * _u(rng, 58, 72))
        rot = rotation((side * _u(rng, 10, 25), side * _u(rng, 0, 10), 0))
        kidney = Ellipsoid(c, (_u(rng, 45, 55), _u(rng, 20, 25), _u(rng, 25, 30)), rot)
        sinus = Ellipsoid((c[0], c[1], c[2] - side * 10), (25, 8, 9), rot)
        layers += [Layer("kidney", TISSUES["kidney"], _u(rng, 140, 180), kidney),
                   Layer("renal sinus", TISSUES["renal_sinus"], _u(rng, -60, -20), sinus)]
    spleen = Deformed(Ellipsoid((_u(rng, 10, 40), d.cy + _u(rng, 0.25, 0.45) * d.by, d.ax - 35),
                                (_u(rng, 45, 60), _u(rng, 40, 55), _u(rng, 18, 25)),
                                rotation((_u(rng, 20, 40), 0, 0))), Waves.random(rng, 3, 4, (40, 120)))
    layers.append(Layer("spleen", TISSUES["spleen"], _u(rng, 95, 125), spleen))
    if rng.random() < 0.7:
        gb = Ellipsoid((_u(rng, -55, -35), d.cy - 0.3 * d.by, -0.15 * d.ax), (30, 14, 15),
                       rotation((0, _u(rng, -20, 20), 30)))
        layers.append(Layer("gallbladder", TISSUES["gallbladder"], _u(rng, 0, 20), gb))
    for name, x, r, hu in (("ivc", -_u(rng, 20, 30), _u(rng, 9, 12), _u(rng, 100, 140)),
                           ("aorta", _u(rng, 10, 25), _u(rng, 10, 13), _u(rng, 150, 200))):
        y = d.spine_y - ry - r - _u(rng, 2, 6)
        drift = _u(rng, -8, 8)
        tube = Tube((-400.0, y, x - drift), (400.0, y, x + drift), r, r)
        layers.append(Layer(name, TISSUES[name], hu, tube))
    return layers


# --- inside the liver ----------------------------------------------------------------------------

def _inside(liver: Shape, p: np.ndarray) -> np.ndarray:
    """Liver signed distance at points ``p`` ``(n, 3)``."""
    return np.asarray(liver.sdf(p[:, 0], p[:, 1], p[:, 2]), dtype=float)


def _nudge_inside(liver: Shape, p: np.ndarray, target: np.ndarray, margin: float) -> np.ndarray:
    """Move ``p`` towards ``target`` until it is ``margin`` mm inside the liver."""
    steps = p[None] + np.linspace(0, 1, 21)[:, None] * (target - p)[None]
    ok = np.nonzero(_inside(liver, steps) < -margin)[0]
    return steps[ok[0]] if len(ok) else target


def _vessel_trees(rng: np.random.Generator, liver: Shape, centre: np.ndarray, liver_hu: float
                  ) -> list[Layer]:
    """Portal venous tree from the hilum and hepatic venous tree from the cranial, dorsal liver.

    Root positions are relative to the liver's bounding box; root directions (z, y, x) head for the
    right lobe, the left lobe and (hepatic veins) the middle of the liver.
    """
    lo, hi = liver.bounds()
    span = hi - lo
    trees = (("portal vein", (-0.2, 0.05, 0.25), ((0.3, -0.3, -1.0), (0.1, 0.7, -1.0), (0.3, -0.6, 1.0))),
             ("hepatic vein", (0.3, 0.3, 0.3), ((-0.6, 0.0, -1.0), (-0.8, -0.6, 0.0), (-0.3, -0.8, 0.8))))
    layers = []
    for name, rel, heads in trees:
        root = _nudge_inside(liver, centre + np.asarray(rel) * span, centre, 5.0)
        roots = []
        for head in heads:
            direction = np.asarray(head) / np.linalg.norm(head) + 0.3 * rng.normal(size=3)
            roots.append((root, direction / np.linalg.norm(direction), _u(rng, 3.0, 4.0)))
        tubes = grow_tree(rng, liver, roots)
        hu = max(_u(rng, 150, 220), liver_hu + 50)
        layers.append(Layer(name, TISSUES["vessel"], hu, tubes=tuple(tubes), in_liver=True))
    return layers


def grow_tree(rng: np.random.Generator, liver: Shape, roots: list[tuple[np.ndarray, np.ndarray, float]],
              r_min: float = 1.0, max_tubes: int = 1500) -> list[Tube]:
    """Grow a vessel tree by random recursive bifurcation inside ``liver``.

    Each branch runs a few mm per mm of radius with a slight wander, steering away from the liver
    surface, then splits in two; child radii follow Murray's law (``r^3 = r1^3 + r2^3``) with a random
    asymmetry, so radii shrink from the roots' ~4 mm to ``r_min``. A branch that cannot stay inside
    ends.
    """
    tubes: list[Tube] = []
    queue = deque(roots)
    while queue and len(tubes) < max_tubes:
        start, direction, radius = queue.popleft()
        path = _walk(rng, liver, start, direction, radius * _u(rng, 9, 15) + _u(rng, 4, 10), radius)
        if len(path) < 2:
            continue
        r_end = max(r_min, 0.93 * radius)
        rs = np.linspace(radius, r_end, len(path))
        tubes += [Tube(tuple(a), tuple(b), ra, rb) for a, b, ra, rb in zip(path, path[1:], rs, rs[1:])]
        end_dir = path[-1] - path[-2]
        end_dir /= np.linalg.norm(end_dir)
        share = _u(rng, 0.2, 0.5)
        perp = np.cross(end_dir, rng.normal(size=3))
        perp /= np.linalg.norm(perp) + 1e-12
        for frac, angle, sign in ((1 - share, _u(rng, 10, 30), 1.0), (share, _u(rng, 35, 70), -1.0)):
            r_child = r_end * frac ** (1 / 3)
            if r_child >= r_min:
                t = np.deg2rad(angle)
                queue.append((path[-1], np.cos(t) * end_dir + sign * np.sin(t) * perp, r_child))
    return tubes


def _walk(rng: np.random.Generator, liver: Shape, start: np.ndarray, direction: np.ndarray,
          length: float, radius: float, steps: int = 3) -> list[np.ndarray]:
    """Points of a wandering branch; it turns away from the surface and stops where it would leave."""
    path = [np.asarray(start, dtype=float)]
    d = direction / np.linalg.norm(direction)
    h = 1.0
    for _ in range(steps):
        d = d + 0.25 * rng.normal(size=3)
        d /= np.linalg.norm(d)
        p = path[-1]
        probe = np.vstack([p + d * length / steps, p + np.eye(3) * h, p - np.eye(3) * h])
        sd = _inside(liver, probe)
        if sd[0] > -radius:  # too close to the surface: turn along the surface, away from it
            normal = (sd[1:4] - sd[4:7]) / (2 * h)
            normal /= np.linalg.norm(normal) + 1e-12
            d = d - max(0.0, float(d @ normal) + 0.5) * normal
            d /= np.linalg.norm(d)
            nxt = p + d * length / steps
            if _inside(liver, nxt[None])[0] > -radius:
                break
        path.append(p + d * length / steps)
    return path


def _tumours(rng: np.random.Generator, liver: Shape, liver_hu: float) -> list[Layer]:
    """1 to 5 hypodense lumpy tumours, each centred well inside the liver."""
    lo, hi = liver.bounds()
    layers = []
    for _ in range(int(rng.integers(1, 6))):
        radius = float(4.0 * (25.0 / 4.0) ** rng.random())
        while True:
            points = lo + rng.random((512, 3)) * (hi - lo)
            ok = np.nonzero(_inside(liver, points) < -0.6 * radius)[0]
            if len(ok) or radius <= 4.0:
                break
            radius = max(4.0, radius / 2)
        if not len(ok):
            continue
        centre = tuple(points[ok[0]])
        hu = _u(rng, 20, min(60.0, liver_hu - 20))
        shape = Blob(centre, radius, Waves.random(rng, 4, _u(rng, 0.1, 0.25), (1.5, 4)))
        layers.append(Layer("tumour", TISSUES["tumour"], hu, shape,
                            texture=Waves.random(rng, 3, 5, (5, 15)), in_liver=True))
        if radius > 12:  # a darker necrotic core
            core = Blob(centre, 0.45 * radius, Waves.random(rng, 3, 0.2, (1.5, 4)))
            layers.append(Layer("necrosis", TISSUES["tumour"], hu - _u(rng, 8, 20), core, in_liver=True))
    return layers
