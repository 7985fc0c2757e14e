"""Solids, textures and tissue table of the second phantom family (:mod:`autoseg.phantom_family2`).

A region is an implicit solid over physical ``(z, y, x)`` mm coordinates: ``level`` is negative
inside and roughly a distance in mm near the surface, ``bounds`` a box that holds it. Family 2
builds its anatomy from superquadrics, superellipse prisms, chains of capsules and metaballs, joined
by a log-sum-exp soft union and perturbed by zonal (Chebyshev) harmonics around a centre; the
renderer samples ``level < 0`` on a refined grid and averages (:mod:`autoseg.phantom_family2`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

Bounds = tuple[np.ndarray, np.ndarray]
_INF = np.full(3, np.inf)

#: Tissue ids of a family-2 tissue map (``PhantomCase.tissues`` of a family-2 case).
TISSUES2: dict[str, int] = {
    "air": 0, "table": 1, "fat": 2, "muscle": 3, "visceral_fat": 4, "bone_cortical": 5,
    "bone_cancellous": 6, "disc": 7, "csf": 8, "rib": 9, "cartilage": 10, "lung": 11, "heart_wall": 12,
    "blood_pool": 13, "aorta": 14, "ivc": 15, "portal_trunk": 16, "kidney_cortex": 17,
    "kidney_medulla": 18, "renal_sinus": 19, "spleen": 20, "pancreas": 21, "stomach_wall": 22,
    "gastric_content": 23, "bowel_wall": 24, "bowel_content": 25, "gas": 26, "gallbladder": 27,
    "gallstone": 28, "liver": 29, "portal_vein": 30, "hepatic_vein": 31, "tumour": 32,
    "tumour_necrosis": 33, "tumour_rim": 34,
}
VESSEL_TISSUES = (TISSUES2["portal_vein"], TISSUES2["hepatic_vein"])
TUMOUR_TISSUES = (TISSUES2["tumour"], TISSUES2["tumour_necrosis"], TISSUES2["tumour_rim"])
LIVER_TISSUES = (TISSUES2["liver"],) + VESSEL_TISSUES + TUMOUR_TISSUES


class Region(Protocol):
    """An implicit solid: ``level`` < 0 inside (about mm near the surface), ``bounds`` holds it."""

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> Bounds: ...


class Texture(Protocol):
    """A HU offset field over mm coordinates."""

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Item:
    """One tissue painted over what lies below it; ``in_liver`` keeps it to the painted liver."""

    name: str
    tissue: int
    hu: float
    region: Region
    texture: Texture | None = None
    in_liver: bool = False


def axis_rotation(axis: Sequence[float] | np.ndarray, degrees: float) -> np.ndarray:
    """Rotation about ``axis`` (``(z, y, x)``) by ``degrees`` (Rodrigues); its columns are the local axes."""
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    t = np.deg2rad(degrees)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * cross @ cross


def random_tilt(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A rotation about a random axis by up to ``max_degrees``."""
    return axis_rotation(rng.normal(size=3), float(rng.uniform(-max_degrees, max_degrees)))


def _local(z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: np.ndarray, rot: np.ndarray | None
           ) -> list[np.ndarray]:
    d = [z - np.float32(centre[0]), y - np.float32(centre[1]), x - np.float32(centre[2])]
    if rot is None:
        return d
    r = rot.astype(np.float32)
    return [r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3)]


@dataclass(frozen=True)
class Superquadric:
    """Barr's superquadric: ``radii`` along its local axes, ``e1`` the squareness along local axis 0,
    ``e2`` across it (1, 1: an ellipsoid; < 1 boxier; > 1 pinched)."""

    centre: np.ndarray
    radii: np.ndarray
    e1: float = 1.0
    e2: float = 1.0
    rot: np.ndarray | None = None

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        a, b, c = (np.abs(v) * np.float32(1.0 / r) for v, r in zip(_local(z, y, x, self.centre, self.rot),
                                                                      self.radii))
        across = (b ** np.float32(2 / self.e2) + c ** np.float32(2 / self.e2)) ** np.float32(self.e2 / self.e1)
        f = across + a ** np.float32(2 / self.e1)
        return (f ** np.float32(self.e1 / 2) - np.float32(1.0)) * np.float32(min(self.radii))

    def bounds(self) -> Bounds:
        half = np.abs(self.rot) @ self.radii if self.rot is not None else np.asarray(self.radii, float)
        return self.centre - half, self.centre + half

    def scaled(self, factor: float, about: np.ndarray | None = None) -> "Superquadric":
        """Radii times ``factor``; with ``about``, the centre too moves away from that point."""
        centre = self.centre if about is None else about + factor * (self.centre - about)
        return Superquadric(centre, self.radii * factor, self.e1, self.e2, self.rot)


@dataclass(frozen=True)
class Prism:
    """A superellipse ``|dy/ry|^n + |dx/rx|^n <= 1`` swept along z, radii growing by ``taper`` per
    100 mm of z, cut off posteriorly at ``y_max`` (a body lying on its back)."""

    centre_yx: tuple[float, float]
    radii_yx: tuple[float, float]
    n: float
    taper: float = 0.0
    y_max: float = np.inf

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        grow = np.float32(1.0) + np.float32(self.taper / 100.0) * z
        ry, rx = (np.float32(r) * grow for r in self.radii_yx)
        u = np.abs(y - np.float32(self.centre_yx[0])) / ry
        v = np.abs(x - np.float32(self.centre_yx[1])) / rx
        p = np.float32(self.n)
        out = ((u ** p + v ** p) ** np.float32(1 / p) - np.float32(1.0)) * np.minimum(ry, rx)
        return np.maximum(out, y - np.float32(self.y_max)) if np.isfinite(self.y_max) else out

    def bounds(self) -> Bounds:
        g = 1.0 + abs(self.taper) * 3.0  # |z| up to 200 mm
        ry, rx = self.radii_yx[0] * g, self.radii_yx[1] * g
        cy, cx = self.centre_yx
        return np.array([-np.inf, cy - ry, cx - rx]), np.array([np.inf, min(cy + ry, self.y_max), cx + rx])


@dataclass(frozen=True)
class Capsule:
    """A segment ``a``-``b`` swept by a sphere whose radius goes linearly from ``ra`` to ``rb``."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ab = (self.b - self.a).astype(np.float32)
        d = [z - np.float32(self.a[0]), y - np.float32(self.a[1]), x - np.float32(self.a[2])]
        t = (d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) * np.float32(1.0 / max(float(ab @ ab), 1e-9))
        t = np.clip(t, np.float32(0), np.float32(1))
        off = sum((d[i] - t * ab[i]) ** 2 for i in range(3))
        return np.sqrt(off) - (np.float32(self.ra) + t * np.float32(self.rb - self.ra))

    def bounds(self) -> Bounds:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r


@dataclass(frozen=True)
class Capsules:
    """A union of capsules (a vessel tree, a rib, a bowel loop); the renderer draws them one by one."""

    parts: tuple[Capsule, ...]

    @classmethod
    def chain(cls, points: np.ndarray, radii: np.ndarray) -> "Capsules":
        """Capsules along a polyline of ``points`` ``(n, 3)`` with a radius per point."""
        return cls(tuple(Capsule(points[i], points[i + 1], float(radii[i]), float(radii[i + 1]))
                         for i in range(len(points) - 1)))

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = self.parts[0].level(z, y, x)
        for part in self.parts[1:]:
            out = np.minimum(out, part.level(z, y, x))
        return out

    def bounds(self) -> Bounds:
        boxes = [p.bounds() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


def gaussian_sum(centres: np.ndarray, sigmas: np.ndarray, weights: np.ndarray, z: np.ndarray,
                 y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum w exp(-|p - c|^2 / 2 s^2)``, separable along the (broadcast) axes."""
    field: np.ndarray | float = 0.0
    for c, s, w in zip(centres, sigmas, weights):
        q = np.float32(-0.5 / s ** 2)
        field = field + np.float32(w) * (np.exp(q * (z - np.float32(c[0])) ** 2)
                                         * np.exp(q * (y - np.float32(c[1])) ** 2)
                                         * np.exp(q * (x - np.float32(c[2])) ** 2))
    return np.asarray(field, dtype=np.float32)


@dataclass(frozen=True)
class Metaballs:
    """Inside where ``sum w exp(-|p - c|^2 / 2 s^2) >= 1``: an irregular, merging cluster."""

    centres: np.ndarray  # (k, 3)
    sigmas: np.ndarray  # (k,)
    weights: np.ndarray  # (k,)

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        field = gaussian_sum(self.centres, self.sigmas, self.weights, z, y, x)
        return (np.float32(1.0) - field) * np.float32(np.mean(self.sigmas))

    def bounds(self) -> Bounds:
        reach = 3.5 * self.sigmas[:, None]
        return (self.centres - reach).min(axis=0), (self.centres + reach).max(axis=0)


@dataclass(frozen=True)
class ZonalBumps:
    """``sum a cos(m acos(u . v) + phase)`` over the direction ``u`` from ``centre`` (mm)."""

    centre: np.ndarray
    axes: np.ndarray  # (k, 3) unit vectors
    orders: np.ndarray  # (k,)
    amplitudes: np.ndarray  # (k,) mm
    phases: np.ndarray  # (k,)

    @classmethod
    def random(cls, rng: np.random.Generator, centre: np.ndarray, k: int, orders: tuple[int, int],
               amplitude: float) -> "ZonalBumps":
        axes = rng.normal(size=(k, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        amps = rng.uniform(0.3, 1.0, k)
        return cls(np.asarray(centre, float), axes, rng.integers(orders[0], orders[1] + 1, k).astype(float),
                   amps * amplitude / amps.sum(), rng.uniform(0, 2 * np.pi, k))

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = _local(z, y, x, self.centre, None)
        norm = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-3)
        out: np.ndarray | float = 0.0
        for v, m, a, ph in zip(self.axes, self.orders, self.amplitudes, self.phases):
            cos = (np.float32(v[0]) * d[0] + np.float32(v[1]) * d[1] + np.float32(v[2]) * d[2]) / norm
            angle = np.arccos(np.clip(cos, np.float32(-1), np.float32(1)))
            out = out + np.float32(a) * np.cos(np.float32(m) * angle + np.float32(ph))
        return np.asarray(out, dtype=np.float32)

    @property
    def reach(self) -> float:
        return float(np.abs(self.amplitudes).sum())


@dataclass(frozen=True)
class Perturbed:
    """``base`` with its surface pushed out by ``bumps`` (mm)."""

    base: Region
    bumps: ZonalBumps

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.base.level(z, y, x) - self.bumps(z, y, x)

    def bounds(self) -> Bounds:
        lo, hi = self.base.bounds()
        return lo - self.bumps.reach, hi + self.bumps.reach


@dataclass(frozen=True)
class SoftUnion:
    """A union blended over about ``k`` mm by a log-sum-exp soft minimum."""

    parts: tuple[Region, ...]
    k: float

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        levels = [p.level(z, y, x) for p in self.parts]
        low = levels[0]
        for lv in levels[1:]:
            low = np.minimum(low, lv)
        inv = np.float32(1.0 / self.k)
        total = sum(np.exp((low - lv) * inv) for lv in levels)
        return low - np.float32(self.k) * np.log(total)

    def bounds(self) -> Bounds:
        boxes = [p.bounds() for p in self.parts]
        pad = self.k * np.log(len(self.parts))
        return np.min([b[0] for b in boxes], axis=0) - pad, np.max([b[1] for b in boxes], axis=0) + pad


@dataclass(frozen=True)
class Intersect:
    """Inside every part; ``exclude`` parts are cut away."""

    parts: tuple[Region, ...]
    exclude: tuple[Region, ...] = ()

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = self.parts[0].level(z, y, x)
        for p in self.parts[1:]:
            out = np.maximum(out, p.level(z, y, x))
        for p in self.exclude:
            out = np.maximum(out, -p.level(z, y, x))
        return out

    def bounds(self) -> Bounds:
        boxes = [p.bounds() for p in self.parts]
        return np.max([b[0] for b in boxes], axis=0), np.min([b[1] for b in boxes], axis=0)


@dataclass(frozen=True, eq=False)
class Without:
    """``region`` less the cells flagged in ``cut``, a boolean grid of ``step`` mm cells whose first
    cell is centred at ``origin`` (mm); a point is cut when the cell nearest to it is flagged."""

    region: Region
    cut: np.ndarray
    origin: np.ndarray
    step: float

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = self.region.level(z, y, x)
        index, valid = [], None
        for c, o, n in zip((z, y, x), self.origin, self.cut.shape):
            i = np.rint((c - np.float32(o)) / np.float32(self.step)).astype(np.intp)
            ok = (i >= 0) & (i < n)
            valid = ok if valid is None else valid & ok
            index.append(np.clip(i, 0, n - 1))
        flagged = self.cut[index[0], index[1], index[2]] & valid
        return np.where(flagged, np.float32(self.step), out)

    def bounds(self) -> Bounds:
        return self.region.bounds()


@dataclass(frozen=True)
class HalfSpace:
    """``normal . p <= offset`` (``normal`` a unit ``(z, y, x)`` vector); unbounded."""

    normal: tuple[float, float, float]
    offset: float

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = [np.float32(v) for v in self.normal]
        return n[0] * z + n[1] * y + n[2] * x - np.float32(self.offset)

    def bounds(self) -> Bounds:
        return -_INF, _INF


@dataclass(frozen=True)
class ZBands:
    """Slabs ``thickness`` mm thick every ``period`` mm along z (vertebrae between discs)."""

    period: float
    thickness: float
    z0: float

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        local = np.mod(z - np.float32(self.z0), np.float32(self.period)) - np.float32(self.period / 2)
        return np.abs(local) - np.float32(self.thickness / 2)

    def bounds(self) -> Bounds:
        return -_INF, _INF


@dataclass(frozen=True)
class GaussianBumps:
    """A HU texture: ``sum a exp(-|p - c|^2 / 2 s^2)`` (heterogeneous parenchyma, mottled lesions)."""

    centres: np.ndarray
    sigmas: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, k: int,
               sigma: tuple[float, float], amplitude: float) -> "GaussianBumps":
        return cls(lo + rng.random((k, 3)) * (hi - lo), rng.uniform(*sigma, k),
                   rng.normal(0.0, amplitude, k))

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return gaussian_sum(self.centres, self.sigmas, self.amplitudes, z, y, x)


@dataclass(frozen=True)
class Rings:
    """Concentric HU bands around ``centre`` (the arciform enhancement of an arterial-phase spleen)."""

    centre: np.ndarray
    wavelength: float
    amplitude: float

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = _local(z, y, x, self.centre, None)
        r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        return np.float32(self.amplitude) * np.sin(r * np.float32(2 * np.pi / self.wavelength))
