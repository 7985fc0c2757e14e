"""Random anatomy and appearance of a family-2 phantom, in millimetres and independent of any grid.

:func:`draw_anatomy2` turns a seed into :class:`Anatomy2`: the ordered :class:`Item` s the renderer
paints (later over earlier), the contrast phase, the liver's attenuation and volume, the lesions.
Separate random streams draw the body, the liver, the vessels, the lesions and the HU values, so a
tumour-free version of a seed is the same patient without its lesions. Coordinates ``(z, y, x)``:
``z`` superior, ``y`` posterior, ``x`` to the patient's left.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.phantom_family2_liver import (DESIGN_STEP, PHASES, LiverDesign, Lesion, draw_lesions, one_piece,
                                           vessel_tree, volume_ml)
from autoseg.phantom_family2_shapes import (TISSUES2, Capsule, Capsules, GaussianBumps, HalfSpace, Intersect, Item,
                                            Perturbed, Prism, Region, Rings, SoftUnion, Superquadric, ZBands,
                                            ZonalBumps, axis_rotation, random_tilt)

T = TISSUES2
Range = tuple[float, float]
#: Enhancing tissues: HU range in the (late arterial, portal venous, delayed) phase (approximate).
PHASE_HU: dict[str, tuple[Range, Range, Range]] = {
    "liver": ((68, 90), (95, 130), (85, 108)),
    "portal_vein": ((100, 165), (150, 215), (115, 150)),
    "hepatic_vein": ((40, 85), (125, 195), (110, 145)),
    "aorta": ((230, 380), (135, 190), (110, 140)),
    "ivc": ((70, 115), (105, 160), (105, 135)),
    "blood_pool": ((210, 340), (140, 185), (110, 140)),
    "heart_wall": ((95, 145), (95, 130), (90, 115)),
    "spleen": ((95, 140), (105, 135), (90, 115)),
    "kidney_cortex": ((170, 260), (150, 210), (125, 170)),
    "kidney_medulla": ((65, 110), (140, 200), (130, 180)),
    "pancreas": ((100, 150), (85, 125), (75, 100)),
    "bowel_wall": ((60, 100), (55, 90), (50, 75)),
    "stomach_wall": ((60, 105), (55, 90), (50, 75)),
    "muscle": ((42, 60), (48, 66), (48, 64)),
}
#: Tissues whose attenuation does not follow the contrast phase (approximate HU ranges).
PLAIN_HU: dict[str, Range] = {
    "table": (-200, -60), "fat": (-120, -92), "visceral_fat": (-112, -80), "bone_cortical": (600, 1100),
    "bone_cancellous": (150, 300), "disc": (70, 110), "csf": (0, 15), "rib": (250, 450),
    "cartilage": (80, 160), "lung": (-880, -780), "renal_sinus": (-90, -40), "gas": (-1000, -920),
    "gallbladder": (0, 25), "gallstone": (300, 800), "water": (0, 20), "food": (20, 60),
    "oral_contrast": (150, 350), "faeces": (-250, 40),
}


@dataclass(frozen=True)
class Anatomy2:
    """One family-2 case before rendering."""

    items: tuple[Item, ...]
    phase: str
    liver_hu: float
    liver_ml: float
    lesions: tuple[Lesion, ...]
    body: Prism


class Hu:
    """Draws each tissue's HU for one case: the phase's range, or the plain one."""

    def __init__(self, rng: np.random.Generator, phase: str) -> None:
        self.rng, self.col = rng, PHASES.index(phase)

    def __call__(self, name: str) -> float:
        lo, hi = PHASE_HU[name][self.col] if name in PHASE_HU else PLAIN_HU[name]
        return float(self.rng.uniform(lo, hi))


@dataclass(frozen=True)
class Frame:
    body: Prism
    wall: Prism
    cavity: Prism
    cy: float
    half: tuple[float, float]  # cavity half depth (y) and half width (x)
    spine_y: float
    spine_r: tuple[float, float]
    back: float
    back_muscles: Superquadric  # erector spinae and the posterior elements: the liver stays out


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _p(*v: float) -> np.ndarray:
    return np.array(v, dtype=float)


#: Family 2's depth range (mm) of the vertebral body's centre in front of the back muscles' posterior surface.
SPINE_DEPTH_MM = (70.0, 90.0)


def draw_frame(rng: np.random.Generator, spine_depth: tuple[float, float] = SPINE_DEPTH_MM) -> Frame:
    """Body, wall, cavity and spine; ``spine_depth`` (mm): the range of the vertebral body centre's depth
    in front of the back muscles' posterior surface (the same draws are made whatever the range, so a
    case differs from another range's only where the spine and what is placed from it lie)."""
    rx = _u(rng, 135, 185)
    ry, cy, n, taper = rx * _u(rng, 0.62, 0.8), _u(rng, -10, 10), _u(rng, 2.2, 3.4), _u(rng, -0.06, 0.06)
    back = cy + ry * _u(rng, 0.82, 0.92)
    fat = 5 + 40 * rng.beta(2, 2.5) * rng.uniform(0.7, 1.2, 3)  # front, side, back
    muscle = _u(rng, 6, 13)
    body = Prism((cy, 0), (ry, rx), n, taper, back)
    spine_r = (_u(rng, 14, 18), _u(rng, 19, 25))
    spine_y = back - fat[2] - _u(rng, *spine_depth)
    cav_r = (ry - fat[0] - muscle, rx - fat[1] - muscle)
    cavity = Prism((cy, 0), cav_r, n, taper, back - fat[2] - _u(rng, 18, 28))
    wall = Prism((cy, 0), (ry - fat[0], rx - fat[1]), n, taper, back - fat[2])
    muscles_front = spine_y + spine_r[0] - 4
    block = Superquadric(_p(0, (muscles_front + back - fat[2]) / 2, 0),
                         _p(400, (back - fat[2] - muscles_front) / 2, spine_r[1] + _u(rng, 35, 50)), 1.0, 0.8)
    return Frame(body, wall, cavity, cy, cav_r, spine_y, spine_r, back, block)


def draw_wall_and_spine(rng: np.random.Generator, f: Frame, hu: Hu) -> list[Item]:
    t = _u(rng, 8, 16)
    items = [Item("table", T["table"], hu("table"), Superquadric(_p(0, f.back + 3 + t / 2, 0), _p(400, t / 2, 230),
                                                                  0.2, 0.2)),
             Item("subcutaneous fat", T["fat"], hu("fat"), f.body), Item("wall", T["muscle"], hu("muscle"), f.wall),
             Item("visceral fat", T["visceral_fat"], hu("visceral_fat"), f.cavity)]
    ry, rx = f.spine_r
    canal_y = f.spine_y + ry + _u(rng, 8, 11)
    items.append(Item("back muscles", T["muscle"], hu("muscle"), f.back_muscles))
    for side in (-1, 1):
        items.append(Item("psoas", T["muscle"], hu("muscle"), Superquadric(
            _p(-150, f.spine_y + 2, side * (rx + _u(rng, 12, 18))), _p(150, _u(rng, 12, 18), _u(rng, 12, 18)))))
    period, disc, cortex = _u(rng, 28, 36), _u(rng, 5, 9), _u(rng, 1.5, 2.5)
    z0 = _u(rng, 0, period)
    column = Prism((f.spine_y, 0), (ry, rx), 2.2)
    bands = ZBands(period, period - disc, z0)
    arch = Superquadric(_p(0, canal_y + 12, 0), _p(400, 22, 26), 1.0, 0.6)
    return items + [
        Item("disc", T["disc"], hu("disc"), column),
        Item("vertebra", T["bone_cortical"], hu("bone_cortical"), Intersect((column, bands))),
        Item("cancellous", T["bone_cancellous"], hu("bone_cancellous"),
             Intersect((Prism((f.spine_y, 0), (ry - cortex, rx - cortex), 2.2), bands))),
        Item("arch", T["bone_cortical"], hu("bone_cortical"),  # the spinous tip under the fat, never in it
             Intersect((arch, ZBands(period, 0.55 * period, z0 + period / 2), f.wall))),
        Item("canal", T["csf"], hu("csf"), Prism((canal_y, 0), (_u(rng, 7, 9), _u(rng, 8, 11)), 2.0)),
    ]


def draw_ribs(rng: np.random.Generator, f: Frame, hu: Hu, z_shift: float = 0.0) -> list[Item]:
    """Rib arcs in the wall, sloping down towards the front; the upper ones end in costal cartilage.
    ``z_shift`` (mm) moves the eight levels up: the upper thorax of a trunk phantom."""
    items = []
    ay, ax = f.half[0] + 4, f.half[1] + 4
    top, gap, drop = _u(rng, 105, 135) + z_shift, _u(rng, 24, 32), _u(rng, 90, 130)
    rib_hu, cart_hu = hu("rib"), hu("cartilage")
    for level in range(8):
        z_post = top - level * gap
        reach = np.pi * (0.85 - 0.06 * level)  # lower ribs end further back
        for side in (-1, 1):
            theta = np.linspace(0.12 * np.pi, reach, 12)
            pts = np.stack([z_post - drop * theta / np.pi, f.cy + ay * np.cos(theta),
                            side * ax * np.sin(theta)], axis=1)
            r = np.full(len(theta), _u(rng, 3.5, 5.5))
            bone = int(len(theta) * (0.75 if level < 5 else 1.0))
            items.append(Item("rib", T["rib"], rib_hu, Capsules.chain(pts[:bone], r[:bone])))
            if bone < len(theta):
                items.append(Item("costal cartilage", T["cartilage"], cart_hu,
                                  Capsules.chain(pts[bone - 1:], r[bone - 1:] * 0.9)))
    return items


def draw_chest(rng: np.random.Generator, f: Frame, hu: Hu) -> list[Item]:
    items = []
    for side in (-1, 1):
        lung = Superquadric(_p(_u(rng, 150, 190), f.cy + 0.2 * f.half[0], side * 0.5 * f.half[1]),
                            _p(_u(rng, 95, 130), 0.75 * f.half[0], 0.5 * f.half[1]), 0.8, 1.0)
        items.append(Item("lung", T["lung"], hu("lung"), Intersect((lung, f.cavity)),
                          GaussianBumps.random(rng, *lung.bounds(), 10, (15, 40), 25.0)))
    c = _p(_u(rng, 150, 175), f.cy - 0.35 * f.half[0], _u(rng, 15, 50))
    heart = Superquadric(c, _p(_u(rng, 55, 70), _u(rng, 45, 60), _u(rng, 55, 70)), rot=random_tilt(rng, 25))
    items.append(Item("heart", T["heart_wall"], hu("heart_wall"), heart))
    items.append(Item("blood", T["blood_pool"], hu("blood_pool"), heart.scaled(0.72)))
    return items + draw_ribs(rng, f, hu)


def _vessel_line(rng: np.random.Generator, x: float, y: float, r: float) -> Capsules:
    z = np.linspace(-260, 260, 9)
    wobble = _u(rng, 2, 8) * np.sin(z / _u(rng, 60, 120) + _u(rng, 0, 6))
    pts = np.stack([z, np.full_like(z, y) + 0.5 * wobble, x + wobble], axis=1)
    return Capsules.chain(pts, np.full(len(z), r))


def draw_abdomen(rng: np.random.Generator, f: Frame, hu: Hu, kidney_raise: float = 0.0
                 ) -> tuple[list[Item], list[Region]]:
    """Aorta, kidneys, spleen, pancreas, stomach and bowel: everything painted before the liver; and
    what the liver must leave room for (spine, aorta, kidneys). ``kidney_raise`` (mm) moves both
    kidneys up (the trunk generator's version 5), drawing the same random numbers."""
    ry, rx = f.spine_r
    ar = _u(rng, 9, 14)
    aorta = _vessel_line(rng, _u(rng, 5, 25), f.spine_y - ry - ar - 2, ar)
    items = [Item("aorta", T["aorta"], hu("aorta"), aorta)]
    keep_out: list[Region] = [Prism((f.spine_y, 0), (ry + 8, rx + 8), 2.2), f.back_muscles,
                              Capsules(tuple(Capsule(c.a, c.b, c.ra + 4, c.rb + 4) for c in aorta.parts))]
    scale = f.half[1] / 120.0
    for side, zc in ((-1, _u(rng, -75, -40)), (1, _u(rng, -60, -25))):
        c = _p(zc + kidney_raise, f.spine_y + _u(rng, -5, 10), side * _u(rng, 55, 75) * scale)
        rot = axis_rotation((0, 1, side * 0.3), _u(rng, 10, 25))
        radii, cortex = _p(_u(rng, 45, 58), _u(rng, 20, 26), _u(rng, 25, 32)), _u(rng, 6, 9)
        keep_out.append(Superquadric(c, radii + 3, 0.9, 0.9, rot))
        items += [Item("kidney", T["kidney_cortex"], hu("kidney_cortex"), Superquadric(c, radii, 0.9, 0.9, rot)),
                  Item("medulla", T["kidney_medulla"], hu("kidney_medulla"),
                       Superquadric(c, radii - cortex, 0.9, 0.9, rot)),
                  Item("renal sinus", T["renal_sinus"], hu("renal_sinus"),
                       Superquadric(c - _p(0, 0, side * 12), _p(22, 9, 10), rot=rot))]
    c = _p(_u(rng, 0, 40), f.cy + _u(rng, 0.25, 0.45) * f.half[0], f.half[1] - _u(rng, 30, 40))
    spleen = Superquadric(c, _p(_u(rng, 45, 65), _u(rng, 40, 60), _u(rng, 22, 32)), rot=random_tilt(rng, 30))
    hollow = Superquadric(c - _p(0, 0, _u(rng, 25, 35)), spleen.radii * 0.8, rot=spleen.rot)  # crescent
    texture = Rings(c - _p(0, 0, 30), _u(rng, 12, 22), _u(rng, 20, 40)) if hu.col == 0 else None
    items.append(Item("spleen", T["spleen"], hu("spleen"), Intersect((spleen,), (hollow,)), texture))
    py = f.spine_y - ry - 2 * ar - _u(rng, 10, 20)
    pts = np.stack([np.linspace(_u(rng, -55, -35), _u(rng, -10, 15), 6), np.full(6, py) + rng.normal(0, 4, 6),
                    np.linspace(-_u(rng, 30, 45), _u(rng, 70, 100) * scale, 6)], axis=1)
    items.append(Item("pancreas", T["pancreas"], hu("pancreas"),
                      Capsules.chain(pts, np.linspace(_u(rng, 13, 18), _u(rng, 8, 11), 6))))
    return items + _stomach(rng, f, hu) + draw_bowel(rng, f, hu), keep_out


def _content(rng: np.random.Generator, hu: Hu, kinds: tuple[str, ...], p: list[float]) -> tuple[str, float]:
    kind = str(rng.choice(kinds, p=p))
    return kind, hu(kind)


def _stomach(rng: np.random.Generator, f: Frame, hu: Hu) -> list[Item]:
    fundus = Superquadric(_p(_u(rng, 50, 80), f.cy + 0.05 * f.half[0], 0.45 * f.half[1]),
                          _p(_u(rng, 35, 50), _u(rng, 30, 45), _u(rng, 30, 45)))
    corpus = Superquadric(_p(_u(rng, 0, 30), f.cy - 0.35 * f.half[0], 0.28 * f.half[1]),
                          _p(_u(rng, 40, 55), _u(rng, 22, 32), _u(rng, 35, 50)), rot=random_tilt(rng, 25))
    outer, wall = SoftUnion((fundus, corpus), 8.0), _u(rng, 3, 5)
    lumen = SoftUnion((fundus.scaled(1 - wall / 35), corpus.scaled(1 - wall / 25)), 8.0)
    kind, content = _content(rng, hu, ("water", "food", "oral_contrast"), [0.4, 0.3, 0.3])
    level = HalfSpace((0, 1, 0), f.cy - _u(rng, 0.3, 0.7) * f.half[0])  # gas rises to the front
    texture = GaussianBumps.random(rng, *outer.bounds(), 8, (8, 20), 15.0) if kind == "food" else None
    return [Item("stomach wall", T["stomach_wall"], hu("stomach_wall"), outer),
            Item("stomach content", T["gastric_content"], content, lumen, texture),
            Item("stomach gas", T["gas"], hu("gas"), Intersect((lumen, level)))]


def draw_bowel(rng: np.random.Generator, f: Frame, hu: Hu, z_range: tuple[float, float] = (-140, -60),
           colon: bool = True, loops_range: tuple[int, int] = (4, 9)) -> list[Item]:
    """The colon round the hepatic and splenic flexures (``colon``), and small-bowel loops lower down
    (their starts within ``z_range`` mm, ``loops_range`` of them)."""
    hy, hx = f.half
    loops = []
    if colon:
        path = [(-110, f.cy + 0.1 * hy, -0.7 * hx), (-45, f.cy - 0.1 * hy, -0.62 * hx), (-55, f.cy - 0.6 * hy, 0),
                (-15, f.cy, 0.7 * hx), (-110, f.cy + 0.1 * hy, 0.72 * hx)]
        pts = np.array(path, dtype=float) + rng.normal(0, 8, (5, 3))
        loops.append((pts, _u(rng, 18, 28)))
    for _ in range(int(rng.integers(*loops_range))):
        walk = np.cumsum(rng.normal(0, 18, (6, 3)), axis=0) + _p(_u(rng, *z_range), f.cy + _u(rng, -0.6, 0.2) * hy,
                                                                 _u(rng, -0.5, 0.5) * hx)
        loops.append((walk, _u(rng, 9, 14)))
    items = []
    colon_kind = ("faeces", "water", "oral_contrast")
    for i, (line, r) in enumerate(loops):
        first = colon and i == 0
        _, content = _content(rng, hu, colon_kind if first else ("water", "oral_contrast", "gas"),
                              [0.6, 0.15, 0.25] if first else [0.5, 0.3, 0.2])
        outer = Capsules.chain(line, np.full(len(line), r))
        lumen = Capsules.chain(line, np.full(len(line), r - _u(rng, 2, 3.5)))
        items += [Item("bowel wall", T["bowel_wall"], hu("bowel_wall"), outer),
                  Item("bowel content", T["bowel_content"], content, lumen)]
        if first or rng.random() < 0.4:
            gas = Intersect((lumen, HalfSpace((0, 1, 0), float(line[:, 1].mean()) - 0.3 * r)))
            items.append(Item("bowel gas", T["gas"], hu("gas"), gas))
    return items


def _liver_shape(rng: np.random.Generator, f: Frame, keep_out: list[Region]
                 ) -> tuple[Region, str, list[Superquadric]]:
    """Right, left and caudate lobes (and Riedel's lobe in some) as superquadrics, blended and bumped."""
    hy, hx = f.half
    habitus = str(rng.choice(("normal", "enlarged", "cirrhotic"), p=[0.6, 0.2, 0.2]))
    zc = _u(rng, 0, 35)
    right = Superquadric(_p(zc, f.cy + _u(rng, -0.05, 0.15) * hy, -_u(rng, 0.35, 0.5) * hx),
                         _p(_u(rng, 65, 85), _u(rng, 0.6, 0.8) * hy, _u(rng, 0.4, 0.55) * hx),
                         _u(rng, 0.6, 1.1), _u(rng, 0.7, 1.1), random_tilt(rng, 15))
    left = Superquadric(_p(zc + _u(rng, 10, 35), f.cy - _u(rng, 0.3, 0.5) * hy, _u(rng, 0.0, 0.25) * hx),
                        _p(_u(rng, 30, 50), _u(rng, 0.25, 0.4) * hy, _u(rng, 0.3, 0.5) * hx),
                        _u(rng, 0.6, 1.0), _u(rng, 0.7, 1.2), random_tilt(rng, 20))
    caudate = Superquadric(_p(zc + 10, f.spine_y - f.spine_r[0] - _u(rng, 25, 35), -_u(rng, 5, 20)),
                           _p(_u(rng, 28, 40), _u(rng, 15, 22), _u(rng, 15, 22)))
    lobes = [right, left, caudate]
    if rng.random() < 0.15:  # Riedel's lobe: a tongue of the right lobe reaching down
        lobes.append(Superquadric(right.centre - _p(_u(rng, 70, 90), 0, -10), _p(_u(rng, 40, 55), 25, 28)))
    if habitus == "cirrhotic":  # right lobe atrophy, caudate and left lateral hypertrophy
        lobes = [right.scaled(0.8), left.scaled(1.1), caudate.scaled(1.35)] + lobes[3:]
    target = {"normal": _u(rng, 1300, 1900), "enlarged": _u(rng, 2100, 3000), "cirrhotic": _u(rng, 800, 1200)}
    centre = right.centre
    shape_bumps = ZonalBumps.random(rng, centre, 6, (2, 5), _u(rng, 6, 14))
    nodules = ZonalBumps.random(rng, centre, 10, (12, 20), _u(rng, 8, 14)) if habitus == "cirrhotic" else None
    inner = Prism(f.cavity.centre_yx, (hy - 3, hx - 3), f.cavity.n, f.cavity.taper)
    f_scale = 1.0
    for _ in range(3):  # scale the lobes about the right lobe's centre to the drawn volume
        parts = tuple(p.scaled(f_scale, centre) for p in lobes)
        region: Region = Perturbed(SoftUnion(parts, 10.0), shape_bumps)
        if nodules is not None:
            region = Perturbed(region, nodules)
        region = one_piece(Intersect((region, inner), tuple(keep_out)))
        vol = volume_ml(region, DESIGN_STEP)
        f_scale *= float(np.clip((target[habitus] / vol) ** (1 / 3), 0.7, 1.4))
    return region, habitus, list(parts)


def _ivc_and_gallbladder(rng: np.random.Generator, f: Frame, region: Region, hu: Hu
                         ) -> tuple[Capsules, Superquadric | None, list[Item]]:
    """The IVC behind the liver and (4 in 5) a gallbladder in its fossa, maybe with a stone: painted
    over the liver, so its interior is drawn without them."""
    ry, rx = f.spine_r
    ir = _u(rng, 10, 14)
    ivc = _vessel_line(rng, -_u(rng, 15, 30), f.spine_y - ry - ir - _u(rng, 4, 12), ir)
    items = [Item("ivc", T["ivc"], hu("ivc"), ivc)]
    if rng.random() >= 0.8:  # a cholecystectomy
        return ivc, None, items
    coarse = LiverDesign.of(region)
    lo, span = coarse.origin, np.array(coarse.inside.shape) * DESIGN_STEP
    target = _p(lo[0] + 0.2 * span[0], lo[1] + 0.25 * span[1], coarse.centroid()[2] + 0.1 * span[2])
    fossa = coarse.nearest_inside(target, 2.5)  # under the liver, in front, medial
    gb = Superquadric(fossa, _p(_u(rng, 30, 45), _u(rng, 12, 18), _u(rng, 12, 18)), 1.0, 1.0,
                      axis_rotation((0, 1, 0.3), _u(rng, 20, 50)))
    items.append(Item("gallbladder", T["gallbladder"], hu("gallbladder"), gb))
    if rng.random() < 0.15:
        stone = Superquadric(gb.centre - _p(_u(rng, 5, 15), 0, 0), _p(*[_u(rng, 4, 8)] * 3))
        items.append(Item("gallstone", T["gallstone"], hu("gallstone"), stone))
    return ivc, gb, items


def _on_line(line: Capsules, z: float) -> np.ndarray:
    """The point of a chain of capsules running along z at height ``z``."""
    for part in line.parts:
        if min(part.a[0], part.b[0]) <= z <= max(part.a[0], part.b[0]):
            t = (z - part.a[0]) / (part.b[0] - part.a[0])
            return np.asarray(part.a + t * (part.b - part.a), dtype=float)
    return np.asarray(line.parts[0].a, dtype=float)


def _vessels(rng: np.random.Generator, liver: LiverDesign, lobes: list[Superquadric], ivc: Capsules,
             portal_hu: float, hepatic_hu: float) -> list[Item]:
    """Portal trunk (outside the liver, unlabelled), portal tree from the hilum, hepatic veins from the IVC."""
    lo, span, centre = liver.origin, np.array(liver.inside.shape) * DESIGN_STEP, liver.centroid()
    root = liver.nearest_inside(_p(lo[0] + 0.3 * span[0], centre[1] + 0.1 * span[1], centre[2] + 0.2 * span[2]),
                                5.0)
    heads = np.array([(lobe.centre - root) / np.linalg.norm(lobe.centre - root) for lobe in lobes[:2]])
    confluence = root + _p(-_u(rng, 40, 60), _u(rng, -10, 10), _u(rng, 15, 35))
    trunk = Capsules.chain(np.stack([confluence, root]), np.full(2, _u(rng, 6, 8)))
    hv_root = liver.nearest_inside(_on_line(ivc, lo[0] + span[0] - _u(rng, 20, 35)), 3.0)
    hv_heads = np.array([(-0.3, -0.3, -1.0), (-0.4, -1.0, 0.1), (-0.2, -0.7, 0.8)])  # right, middle, left
    hv_heads /= np.linalg.norm(hv_heads, axis=1, keepdims=True)
    return [Item("portal trunk", T["portal_trunk"], portal_hu, trunk),
            Item("portal veins", T["portal_vein"], portal_hu,
                 vessel_tree(rng, liver, root, heads, _u(rng, 4.5, 6.5)), in_liver=True),
            Item("hepatic veins", T["hepatic_vein"], hepatic_hu,
                 vessel_tree(rng, liver, hv_root, hv_heads, _u(rng, 3.5, 5.0)), in_liver=True)]


def draw_anatomy2(seed: int, tumour_free: bool) -> Anatomy2:
    """The anatomy of family-2 case ``seed``; ``tumour_free`` leaves the lesions out, nothing else."""
    rng = [np.random.default_rng([seed, 2002, k]) for k in range(5)]  # body, liver, vessels, lesions, HU
    phase = str(rng[4].choice(PHASES, p=[0.3, 0.5, 0.2]))
    hu = Hu(rng[4], phase)
    f = draw_frame(rng[0])
    abdomen, keep_out = draw_abdomen(rng[0], f, hu)
    items = draw_wall_and_spine(rng[0], f, hu) + draw_chest(rng[0], f, hu) + abdomen
    liver_items, liver_hu, liver_ml, lesions = liver_with_lesions(rng, f, hu, keep_out, phase, tumour_free)
    return Anatomy2(tuple(items + liver_items), phase, liver_hu, liver_ml, tuple(lesions), f.body)


def liver_with_lesions(rng: list[np.random.Generator], f: Frame, hu: Hu, keep_out: list[Region],
                       lesion_phase: str, tumour_free: bool) -> tuple[list[Item], float, float, list[Lesion]]:
    """The liver, its vessels, its lesions (unless ``tumour_free``) and the IVC and gallbladder painted
    over it: the items, the liver's HU and volume (mL), the lesions. ``rng``: the body, liver,
    vessel, lesion and HU streams; ``lesion_phase`` one of :data:`PHASES` (how the lesions enhance)."""
    region, habitus, lobes = _liver_shape(rng[1], f, keep_out)
    ivc, gb, over_liver = _ivc_and_gallbladder(rng[0], f, region, hu)
    liver = LiverDesign.of(region, (ivc,) + ((gb,) if gb is not None else ()))
    steatosis = _u(rng[4], 15, 40) if rng[4].random() < 0.2 else 0.0
    liver_hu = hu("liver") - steatosis
    vessels = _vessels(rng[2], liver, lobes, ivc, hu("portal_vein"), hu("hepatic_vein"))
    lo, hi = region.bounds()
    texture = (GaussianBumps.random(rng[1], lo, hi, 60, (4, 9), _u(rng[1], 8, 14)) if habitus == "cirrhotic"
               else GaussianBumps.random(rng[1], lo, hi, 30, (10, 30), _u(rng[1], 3, 7)))
    lesions = [] if tumour_free else draw_lesions(rng[3], liver, lesion_phase, liver_hu)
    items = vessels[:1] + [Item("liver", T["liver"], liver_hu, region, texture)] + vessels[1:]
    items += [it for lesion in lesions for it in lesion.items] + over_liver
    return items, liver_hu, liver.volume_ml, lesions
