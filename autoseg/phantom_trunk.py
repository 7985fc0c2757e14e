"""Phantom family 3, the trunk: synthetic CT from the thorax to the pelvis, for a model meant for real CT.

Families 1 and 2 show the upper abdomen only, every soft tissue at its textbook attenuation: a model
trained on them calls the muscles of the pelvis and the back "liver" on a real thorax-to-pelvis CT,
because it never saw them (issue 25: liver Dice 0.37 on the TotalSegmentator example CT). Family 3
draws family 2's abdomen (:mod:`autoseg.phantom_family2_anatomy`: liver, vessels, lesions, kidneys,
spleen, pancreas, stomach, colon, lungs, heart, ribs) and adds what a real field of view holds above
and below it, then randomises what scanners and patients vary, so that a network has to find the
liver by its shape and its place, not by its HU alone:

- **Anatomy**: the upper ribs, the pelvis (iliac wings, sacrum, femoral heads and shafts), the
  gluteal, iliacus and obturator muscles, the bladder, the rectum, small bowel down into the pelvis
  (a third of the loops collapsed, as dense as their wall), the muscle masses of a real abdomen
  (rectus, quadratus lumborum, a psoas that swells towards the pelvis, thick obliques in half the
  patients), the aorta and IVC ending in iliac vessels, the spine ending at the sacrum.
- **Field of view** per case: 200-450 mm long (never below the femoral heads), its top anywhere from
  the lung apices to the liver dome (60 %), or inside the liver, as in an abdomen-pelvis scan that
  starts below the dome and cuts the liver at the top slice (20 %), or a pelvis-only (10 %) or
  thorax-only (10 %) scan without the liver or with only its dome; 300-480 mm wide, off centre, so
  the body's sides may be cut.
- **Appearance**: unenhanced (25 %), late arterial (20 %), portal venous (40 %) or delayed (15 %)
  phase, each tissue's HU drawn once per case (every muscle alike) and jittered per structure; an
  unenhanced liver is anything from fatty (25 HU, darker than spleen and muscle) to normal (70 HU); in
  40 % of the cases ("scrambled", as SynthSeg randomises contrast) every soft tissue and fluid takes
  any attenuation from -10 to 200 HU and the liver any from 30 to 170, so muscle, bowel or bladder may
  equal liver and only shape and place tell them apart; family 2's point spread, kernel-shaped noise
  and cupping.
- **Spacing** per case: 2.4-4 mm in-plane, 2.5-5 mm slices (:data:`TRUNK_SPACING_RANGE`): a model
  meant to find the liver in a whole trunk plans a coarse grid, so that its patch sees the organs
  around the liver.

The labels of task ``LiverVesselTumour`` are 1 liver parenchyma, 2 hepatic and portal vessels inside
the liver, 3 tumour; the liver of the other conventions is the union of the three. HU ranges are
approximate values from general radiology knowledge (unenhanced liver ~50-70 HU and under 40 HU in
moderate steatosis, which a quarter or more of adults have; muscle 40-60, blood 30-50; contrast
phases as family 2), not fitted to any case, real or synthetic.

Version 2 added the fields of view that start inside the liver, the fatty unenhanced livers and the
larger unenhanced share: version 1's model found no liver on a real unenhanced CT whose field of view
starts below the liver's dome (issue 25, ``docs/synthetic_model.md``): it had never seen either.
Version 4 (drawn on request, :data:`TRUNK_VERSIONS`) puts the spine at the depth the literature
measures (:data:`SPINE_DEPTH_MM`): version 3 kept family 2's, about 25 mm too deep inside the body,
so its livers reached up to 56 mm behind the spinal canal, where family 1's and two real livers stop
at or in front of it (``benchmarks/liver_occupancy.py``). Version 5 (drawn on request) keeps version 4
and raises the pelvis by :data:`PELVIS_RAISE_MM` and the kidneys by :data:`KIDNEY_RAISE_MM`: versions
3 and 4 put the iliac crest a median 284-289 mm below the liver's top, where the vertebral levels the
literature measures put it about 205 mm below (``benchmarks/trunk_levels.py``): only a tenth of their
livers end within 52-65 mm of the crest. Version 5's pelvis-only fields of view (whose top is not
raised) are 120-200 mm long, all ending at its femoral heads' level.
"""
from __future__ import annotations

import numpy as np

from autoseg.errors import ConfigurationError
from autoseg.phantom import PhantomCase, SpacingRange, task_spec
from autoseg.phantom_family2 import is_tumour_free, render
from autoseg.phantom_family2_anatomy import PHASE_HU, PLAIN_HU
from autoseg.phantom_family2_anatomy import SPINE_DEPTH_MM as FAMILY2_SPINE_DEPTH_MM
from autoseg.phantom_family2_anatomy import (Anatomy2, Frame, Hu, draw_abdomen, draw_bowel, draw_chest, draw_frame,
                                             draw_ribs, draw_wall_and_spine, liver_with_lesions)
from autoseg.phantom_family2_liver import PHASES
from autoseg.phantom_family2_shapes import (LIVER_TISSUES, TISSUES2, TUMOUR_TISSUES, VESSEL_TISSUES, Capsules,
                                            HalfSpace, Intersect, Item, Region, Superquadric,
                                            axis_rotation)
from autoseg.phantom_shapes import Grid

#: Tissue ids of a trunk phantom's tissue map: family 2's and the pelvis's own.
TRUNK_TISSUES: dict[str, int] = {**TISSUES2, "bladder_wall": 35, "urine": 36}
#: Spacing ``((z, y, x) low, (z, y, x) high)`` mm of trunk phantoms (drawn per case).
TRUNK_SPACING_RANGE: SpacingRange = ((2.5, 2.4, 2.4), (5.0, 4.0, 4.0))
#: The trunk generator's versions that can be drawn, and the default one (recorded in ``phantom.json``):
#: the version the built-in ``synthetic`` recipe is trained on, until a newer one has been measured
#: to serve it better (docs/synthetic_model.md).
TRUNK_VERSIONS = (3, 4, 5)
TRUNK_VERSION = 3
#: Depth (mm) of the vertebral body's centre in front of the back muscles' posterior surface, per
#: version. Version 3 kept family 2's, which puts the spinal canal's centre 41-68 mm in front of that
#: surface, about 76 mm under the skin on average. Version 4 draws 45-65 mm (the canal 16-43 mm in front
#: of the surface), so that with the drawn back fat the skin-to-canal depth averages about 52 mm: MRI
#: measures the skin-to-posterior-epidural-space depth at 4.2-5.1 cm at L3-L5 (Lee & Kim, Korean J
#: Anesthesiol 2004, 124 adults; the liver's levels lie higher, where the depth is no larger), and the
#: canal's centre lies about 8 mm deeper. docs/synthetic_model.md ("Where the liver lies around the
#: spine") has the figures.
SPINE_DEPTH_MM: dict[int, tuple[float, float]] = {3: FAMILY2_SPINE_DEPTH_MM, 4: (45.0, 65.0), 5: (45.0, 65.0)}
#: How far (mm) each version raises the pelvis (iliac crest, bladder, hips, iliac vessels, the spine's
#: end) above versions 3 and 4, which drew the crest 180-230 mm under the liver's reference level: a
#: median of 284 mm under the liver's top, 118 mm under its inferior tip. The crest lies at L4 (CT,
#: 69 % of 108 adults, Mirjalili et al., Clin Anat 2012;25:819-826; L4 or L4-5 in 87 % of 75 on prone
#: fluoroscopy, Chakraverty et al., J Anat 2007;210:232-236); CT puts the renal hila most often at L2
#: and the IVC's passage through the diaphragm at T10 (a Chinese cohort of 100 abdominal and 100
#: thoracic CTs, Clin Anat 2016;29:165-174). With vertebral body and disc heights that estimates about
#: 205 mm (160-250) from the liver's top to the crest and about 75 mm from the right kidney's centre
#: to it. Version 5's 70 mm (with :data:`KIDNEY_RAISE_MM`) gives medians of 215 and 85 mm
#: (``benchmarks/trunk_levels.py``; docs/synthetic_model.md, "Where the liver ends").
PELVIS_RAISE_MM: dict[int, float] = {3: 0.0, 4: 0.0, 5: 70.0}
#: How far (mm) each version raises both kidneys. Versions 3 and 4 put the right kidney's upper pole a
#: median 114 mm under the liver's top and its centre 55 mm above version 5's crest, where the renal hila
#: at L2 (two levels above the crest: about 75 mm) and the dome at or above T10 (the upper pole about
#: 75 mm under it) put them higher; version 5's 30 mm gives 84 and 85 mm (``benchmarks/trunk_levels.py``).
KIDNEY_RAISE_MM: dict[int, float] = {3: 0.0, 4: 0.0, 5: 30.0}
#: The pelvic bones a version keeps the liver out of (version 5's raised pelvis can meet a low liver tip).
_LIVER_KEEPS_OUT_OF_THE_PELVIS = frozenset({5})
TRUNK_PHASES = ("unenhanced",) + PHASES
#: Unenhanced attenuation of the tissues that enhance (approximate HU ranges).
UNENHANCED_HU: dict[str, tuple[float, float]] = {
    "liver": (25, 70), "portal_vein": (30, 50), "hepatic_vein": (30, 50), "aorta": (30, 50), "ivc": (30, 50),
    "blood_pool": (30, 50), "heart_wall": (35, 55), "spleen": (38, 55), "kidney_cortex": (25, 40),
    "kidney_medulla": (25, 40), "pancreas": (30, 50), "bowel_wall": (25, 45), "stomach_wall": (25, 45),
    "muscle": (40, 60),
}
_SPINE = ("disc", "vertebra", "cancellous", "arch", "canal")
#: Fluids that a scrambled case draws like soft tissue (urine, bile, gastric and bowel contents).
SCRAMBLED_FLUIDS = ("water", "food", "gallbladder")


class _TrunkHu(Hu):
    """Each tissue's HU for one trunk case, drawn once per tissue (every muscle alike, as in a real
    scan) and jittered by a few HU per structure: its phase's range (unenhanced included), or in a
    scrambled case any value from -10 to 200 HU for every soft tissue and fluid and 30 to 170 HU for
    the liver."""

    def __init__(self, rng: np.random.Generator, phase: str, scrambled: bool) -> None:
        self.rng, self.phase, self.scrambled = rng, phase, scrambled
        self.lesion_phase = "delayed" if phase == "unenhanced" else phase  # unenhanced lesions: hypodense
        self.col = PHASES.index(self.lesion_phase)
        self.drawn: dict[str, float] = {}

    def __call__(self, name: str) -> float:
        if name not in self.drawn:
            if self.scrambled and (name in PHASE_HU or name in SCRAMBLED_FLUIDS):
                lo, hi = (30.0, 170.0) if name == "liver" else (-10.0, 200.0)
            elif self.phase == "unenhanced" and name in UNENHANCED_HU:
                lo, hi = UNENHANCED_HU[name]
            else:
                lo, hi = PHASE_HU[name][self.col] if name in PHASE_HU else PLAIN_HU[name]
            self.drawn[name] = float(self.rng.uniform(lo, hi))
        return self.drawn[name] + float(self.rng.normal(0.0, 4.0))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _p(*v: float) -> np.ndarray:
    return np.array(v, dtype=float)


def _above(region: Region, z: float) -> Region:
    """``region`` cut to ``z`` mm and above."""
    return Intersect((region, HalfSpace((-1.0, 0.0, 0.0), -z)))


def _bone(name: str, shape: Superquadric, hu: _TrunkHu) -> list[Item]:
    """A bone: cortical shell over a cancellous core."""
    return [Item(name, TRUNK_TISSUES["bone_cortical"], hu("bone_cortical"), shape),
            Item(name + " marrow", TRUNK_TISSUES["bone_cancellous"], hu("bone_cancellous"), shape.scaled(0.8))]


def _pelvis(rng: np.random.Generator, f: Frame, hu: _TrunkHu, pz: float) -> list[Item]:
    """Gluteal muscles, bladder, rectum, iliac wings, sacrum and femora below the iliac crest ``pz``."""
    T = TRUNK_TISSUES
    hy, hx = f.half
    items = []
    for side in (-1, 1):
        items.append(Item("gluteus", T["muscle"], hu("muscle"), Superquadric(
            _p(pz - _u(rng, 80, 110), f.back - _u(rng, 45, 65), side * _u(rng, 0.45, 0.6) * hx),
            _p(_u(rng, 80, 120), _u(rng, 40, 60), _u(rng, 55, 80)), 0.8, 0.9)))
        items.append(Item("iliacus", T["muscle"], hu("muscle"), Superquadric(
            _p(pz - _u(rng, 30, 50), f.spine_y - _u(rng, 5, 20), side * _u(rng, 0.35, 0.5) * hx),
            _p(_u(rng, 45, 65), _u(rng, 14, 22), _u(rng, 30, 45)), 1.0, 1.0,
            axis_rotation((1.0, 0.0, 0.0), side * _u(rng, 20, 40)))))
        items.append(Item("obturator", T["muscle"], hu("muscle"), Superquadric(
            _p(pz - _u(rng, 110, 140), f.cy + _u(rng, 0.0, 0.2) * hy, side * _u(rng, 0.3, 0.4) * hx),
            _p(_u(rng, 35, 50), _u(rng, 25, 35), _u(rng, 10, 16)))))
    bladder = Superquadric(_p(pz - _u(rng, 100, 130), f.cy - _u(rng, 0.2, 0.45) * hy, _u(rng, -10, 10)),
                           _p(_u(rng, 25, 50), _u(rng, 25, 45), _u(rng, 30, 55)))
    urine = hu("oral_contrast") if hu.phase == "delayed" and rng.random() < 0.4 else hu("water")
    items += [Item("bladder wall", T["bladder_wall"], hu("bowel_wall"), bladder),
              Item("urine", T["urine"], urine, bladder.scaled(0.88))]
    rectum_y = f.spine_y - _u(rng, 5, 20)
    line = np.stack([np.linspace(pz - 40, pz - 150, 4), np.linspace(rectum_y, f.cy - 0.05 * hy, 4),
                     rng.normal(0, 6, 4)], axis=1)
    r = _u(rng, 12, 20)
    items += [Item("rectum wall", T["bowel_wall"], hu("bowel_wall"), Capsules.chain(line, np.full(4, r))),
              Item("rectum content", T["bowel_content"], hu(str(rng.choice(("faeces", "gas", "water")))),
                   Capsules.chain(line, np.full(4, r - 3)))]
    for side in (-1, 1):
        wing = Superquadric(_p(pz - _u(rng, 30, 45), f.spine_y + _u(rng, -5, 15), side * _u(rng, 0.45, 0.6) * hx),
                            _p(_u(rng, 45, 60), _u(rng, 7, 11), _u(rng, 40, 55)), 1.0, 0.6,
                            axis_rotation((1.0, 0.0, 0.0), side * _u(rng, 20, 40)))
        head_r = _u(rng, 21, 26)
        head_c = _p(pz - _u(rng, 115, 135), f.cy + _u(rng, -0.05, 0.15) * hy, side * _u(rng, 0.42, 0.55) * hx)
        shaft_end = head_c + _p(-300, 0, side * 40)
        items += _bone("iliac wing", wing, hu) + _bone("femoral head", Superquadric(head_c, _p(*[head_r] * 3)), hu)
        items.append(Item("femur", T["bone_cortical"], hu("bone_cortical"),
                          Capsules.chain(np.stack([head_c + _p(-20, 0, side * 15), shaft_end]), np.full(2, 14.0))))
    sacrum = Superquadric(_p(pz - _u(rng, 40, 55), f.spine_y + _u(rng, 10, 25), 0), _p(_u(rng, 50, 65),
                          _u(rng, 14, 20), _u(rng, 35, 45)), 1.0, 0.8, axis_rotation((0.0, 0.0, 1.0), _u(rng, 20, 35)))
    return items + _bone("sacrum", sacrum, hu)


def _trunk_muscles(rng: np.random.Generator, f: Frame, hu: _TrunkHu, pz: float) -> list[Item]:
    """Muscle masses a real abdomen holds beyond family 2's thin wall: rectus abdominis, obliques
    thickened in some patients, quadratus lumborum, and a psoas that swells towards the pelvis."""
    T = TRUNK_TISSUES
    hy, hx = f.half
    ry, rx = f.spine_r
    items = []
    for side in (-1, 1):
        items.append(Item("rectus", T["muscle"], hu("muscle"), Superquadric(
            _p(_u(rng, -150, -50), f.cy - hy - _u(rng, 2, 6), side * _u(rng, 30, 45)),
            _p(_u(rng, 180, 240), _u(rng, 6, 11), _u(rng, 28, 40)), 0.6, 1.0)))
        if rng.random() < 0.5:  # a muscular patient: thick obliques at the flanks
            items.append(Item("obliques", T["muscle"], hu("muscle"), Superquadric(
                _p(_u(rng, -120, -40), f.cy + _u(rng, -0.2, 0.2) * hy, side * (hx + _u(rng, 0, 6))),
                _p(_u(rng, 100, 160), _u(rng, 60, 90), _u(rng, 8, 15)), 0.7, 1.0)))
        items.append(Item("quadratus", T["muscle"], hu("muscle"), Superquadric(
            _p(_u(rng, -110, -60), f.spine_y + ry + _u(rng, 5, 20), side * (rx + _u(rng, 35, 55))),
            _p(_u(rng, 60, 90), _u(rng, 10, 16), _u(rng, 16, 26)))))
        items.append(Item("psoas", T["muscle"], hu("muscle"), Superquadric(
            _p(pz + _u(rng, 0, 30), f.spine_y + _u(rng, -5, 5), side * (rx + _u(rng, 18, 28))),
            _p(_u(rng, 80, 110), _u(rng, 18, 26), _u(rng, 18, 26)))))
    return items


def _collapse_bowel(rng: np.random.Generator, items: list[Item]) -> list[Item]:
    """Some bowel loops collapsed: their content as dense as their wall (soft-tissue tubes)."""
    out, wall_hu = [], None
    for item in items:
        if item.name == "bowel wall":
            wall_hu = item.hu
        elif item.name == "bowel content" and wall_hu is not None and rng.random() < 0.35:
            item = Item(item.name, item.tissue, wall_hu + float(rng.normal(0, 5)), item.region, item.texture)
        out.append(item)
    return out


def _end_at_the_pelvis(rng: np.random.Generator, f: Frame, items: list[Item], pz: float) -> list[Item]:
    """Family 2's structures that run the whole length, ended where a pelvis begins: the aorta and
    IVC cut at their bifurcation above the iliac crest ``pz`` and continued by iliac vessels, the
    spine cut at the sacrum."""
    hy, hx = f.half
    out = []
    for item in items:
        if item.name in ("aorta", "ivc") and isinstance(item.region, Capsules):
            fork = pz + _u(rng, 5, 30)
            out.append(Item(item.name, item.tissue, item.hu, _above(item.region, fork)))
            start = item.region.parts[0].a.copy()
            start[0] = fork
            r = float(item.region.parts[0].ra) * 0.7
            for side in (-1, 1):
                end = _p(pz - 130, f.cy + _u(rng, -0.05, 0.1) * hy, side * _u(rng, 0.35, 0.45) * hx)
                out.append(Item("iliac " + item.name, item.tissue, item.hu,
                                Capsules.chain(np.stack([start, end]), np.full(2, r))))
        elif item.name in _SPINE:
            out.append(Item(item.name, item.tissue, item.hu, _above(item.region, pz - 30), item.texture))
        else:
            out.append(item)
    return out


def check_version(version: int | None) -> int:
    """``version`` (None: the default, :data:`TRUNK_VERSION`) if the trunk generator can draw it, else a
    :class:`ConfigurationError` naming the ones it can."""
    if version is None:
        return TRUNK_VERSION
    if version not in TRUNK_VERSIONS:
        raise ConfigurationError(f"trunk generator version {version} does not exist",
                                 fix=f"pass --trunk-version {', '.join(str(v) for v in TRUNK_VERSIONS[:-1])} "
                                     f"or {TRUNK_VERSIONS[-1]}")
    return version


def draw_trunk(seed: int, tumour_free: bool, version: int = TRUNK_VERSION) -> tuple[Anatomy2, float]:
    """The anatomy of trunk case ``seed`` (generator ``version``) and the z (mm) of its iliac crest.
    Versions draw the same random numbers: a case differs between them only where they differ."""
    version = check_version(version)
    rng = [np.random.default_rng([seed, 3003, k]) for k in range(6)]  # body, liver, vessels, lesions, HU, rest
    phase = str(rng[4].choice(TRUNK_PHASES, p=[0.25, 0.2, 0.4, 0.15]))
    hu = _TrunkHu(rng[4], phase, scrambled=bool(rng[4].random() < 0.4))
    f = draw_frame(rng[0], spine_depth=SPINE_DEPTH_MM[version])
    abdomen, keep_out = draw_abdomen(rng[0], f, hu, kidney_raise=KIDNEY_RAISE_MM[version])
    pz = _u(rng[5], -230, -180) + PELVIS_RAISE_MM[version]  # iliac crest, relative to the liver's region
    items = draw_wall_and_spine(rng[0], f, hu) + draw_chest(rng[0], f, hu)
    items += draw_ribs(rng[5], f, hu, z_shift=_u(rng[5], 210, 235))
    items += abdomen + draw_bowel(rng[5], f, hu, z_range=(pz - 100, -90), colon=False, loops_range=(6, 14))
    items = _collapse_bowel(rng[5], items)
    items += _trunk_muscles(rng[5], f, hu, pz)  # this order of draws from rng[5] keeps every version's cases
    pelvis = _pelvis(rng[5], f, hu, pz)
    items += pelvis
    if version in _LIVER_KEEPS_OUT_OF_THE_PELVIS:
        keep_out = keep_out + [item.region for item in pelvis if item.tissue == TRUNK_TISSUES["bone_cortical"]]
    liver_items, liver_hu, liver_ml, lesions = liver_with_lesions(rng, f, hu, keep_out, hu.lesion_phase, tumour_free)
    items = _end_at_the_pelvis(rng[5], f, items + liver_items, pz)
    return Anatomy2(tuple(items), phase, liver_hu, liver_ml, tuple(lesions), f.body), pz


def trunk_grid(seed: int, spacing: tuple[float, float, float] | None = None,
               spacing_range: SpacingRange | None = None, version: int = TRUNK_VERSION) -> Grid:
    """The field of view and voxel grid of trunk case ``seed`` (module docstring); its lowest slice no
    lower than the femoral heads' level of generator ``version``."""
    rng = np.random.default_rng([seed, 3003, 9])
    if spacing is None:
        lo, hi = (np.asarray(v, dtype=float) for v in (spacing_range or TRUNK_SPACING_RANGE))
        inplane = rng.uniform(lo[1], hi[1])
        spacing = (round(float(rng.uniform(lo[0], hi[0])), 3), round(float(inplane), 3), round(float(inplane), 3))
    extent, kind = rng.uniform(200, 450), rng.random()
    if kind < 0.6:
        top = rng.uniform(110, 320)
    elif kind < 0.8:
        top = rng.uniform(0, 90)  # below the dome: the top slice cuts through the liver
    elif kind < 0.9:
        top = rng.uniform(-200, -120)  # pelvis only
    else:
        top = rng.uniform(260, 320)  # thorax only, the liver dome at most
        extent = min(extent, top - rng.uniform(90, 160))
    extent = min(extent, top + 390 - PELVIS_RAISE_MM[check_version(version)])  # no lower than the femoral heads' level
    width = rng.uniform(300, 480)
    centre = (top - extent / 2, rng.uniform(-25, 25), rng.uniform(-25, 25))
    shape = tuple(max(1, int(round(e / s))) for e, s in zip((extent, width, width), spacing))
    origin = tuple(c - (n - 1) / 2 * s for c, n, s in zip(centre, shape, spacing))
    return Grid((shape[0], shape[1], shape[2]), spacing, (origin[0], origin[1], origin[2]))


def generate_trunk_case(seed: int, task: str = "LiverVesselTumour", spacing: tuple[float, float, float] | None = None,
                        spacing_range: SpacingRange | None = None, tumour_free: bool | None = None,
                        tumour_free_share: float = 0.3, version: int = TRUNK_VERSION) -> PhantomCase:
    """Render trunk case ``seed`` for ``task`` (``LiverVesselTumour``, ``Task03`` or ``Task08``) with
    generator ``version``."""
    task_spec(task)
    if tumour_free is None:
        tumour_free = is_tumour_free(seed, tumour_free_share)
    anatomy, _ = draw_trunk(seed, tumour_free, version)
    grid = trunk_grid(seed, spacing, spacing_range, version)
    image, tissues = render(anatomy, grid, seed)
    origin = (grid.origin[2], grid.origin[1], grid.origin[0])
    return PhantomCase(image, trunk_labels(tissues, task), grid.spacing, origin, tissues, task, seed, family=3)


def trunk_labels(tissues: np.ndarray, task: str) -> np.ndarray:
    """Labels from a trunk (or family-2) tissue map: LiverVesselTumour 1 liver 2 vessel 3 tumour;
    Task03 1 liver 2 tumour; Task08 1 vessel 2 tumour."""
    labels = np.zeros(tissues.shape, dtype=np.uint8)
    tumour = np.isin(tissues, TUMOUR_TISSUES)
    if task == "LiverVesselTumour":
        labels[np.isin(tissues, LIVER_TISSUES)] = 1
        labels[np.isin(tissues, VESSEL_TISSUES)] = 2
        labels[tumour] = 3
        return labels
    labels[np.isin(tissues, VESSEL_TISSUES if task == "Task08" else LIVER_TISSUES)] = 1
    labels[tumour] = 2
    return labels


__all__ = ["KIDNEY_RAISE_MM", "PELVIS_RAISE_MM", "SPINE_DEPTH_MM", "TRUNK_TISSUES", "TRUNK_SPACING_RANGE",
           "TRUNK_VERSION", "TRUNK_VERSIONS", "check_version", "draw_trunk", "generate_trunk_case", "trunk_grid",
           "trunk_labels"]
