"""Geometry for the synthetic phantom: signed distance shapes in millimetres and their rasterisation.

Every shape is an implicit surface ``sdf(z, y, x) -> mm`` (negative inside, roughly a distance near
the surface) over physical coordinates, so one anatomy can be drawn on any voxel grid and keep its
size in millimetres. Rasterisation evaluates a shape only inside its bounding box and turns the
distance into an anti-aliased occupancy in ``[0, 1]``, which is how partial volume is simulated.
Coordinates follow SimpleITK's LPS convention with an identity direction: ``x`` towards the patient's
left, ``y`` posterior, ``z`` superior; arrays and tuples are in numpy order ``(z, y, x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

Vec = tuple[float, float, float]
Slices = tuple[slice, slice, slice]


class Shape(Protocol):
    """An implicit solid: signed distance in mm (negative inside) and a box that holds it."""

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space: ``origin`` is the centre of voxel 0, all in ``(z, y, x)`` mm."""

    shape: tuple[int, int, int]
    spacing: Vec
    origin: Vec

    def slices(self, lo: np.ndarray, hi: np.ndarray) -> Slices | None:
        """Index box of the voxels whose centres lie in ``[lo, hi]`` mm, or None when it is empty."""
        out = []
        for n, s, o, a, b in zip(self.shape, self.spacing, self.origin, lo, hi):
            i0 = max(0, math.ceil((a - o) / s))
            i1 = min(n, math.floor((b - o) / s) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return (out[0], out[1], out[2])

    def coords(self, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable float32 coordinate axes (mm) of the voxels in ``sl``."""
        axes = [np.float32(o) + np.float32(s) * np.arange(q.start, q.stop, dtype=np.float32)
                for o, s, q in zip(self.origin, self.spacing, sl)]
        return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    def sub(self, sl: Slices) -> "Grid":
        """The grid of the box ``sl``; its index 0 is ``sl``'s first voxel."""
        shape = tuple(q.stop - q.start for q in sl)
        origin = tuple(o + s * q.start for o, s, q in zip(self.origin, self.spacing, sl))
        return Grid(shape, self.spacing, origin)


def occupancy(sd: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside fraction: 1 deep inside, 0 outside, a linear ramp ``width`` mm wide."""
    occ = np.float32(0.5) - sd * np.float32(1.0 / width)
    return np.clip(occ, 0.0, 1.0, out=occ)


def rasterise(shape: Shape, grid: Grid, width: float) -> tuple[Slices, np.ndarray] | None:
    """Occupancy of ``shape`` inside its bounding box on ``grid``; None when it misses the grid."""
    lo, hi = shape.bounds()
    sl = grid.slices(lo - width, hi + width)
    if sl is None:
        return None
    sd = np.asarray(shape.sdf(*grid.coords(sl)), dtype=np.float32)
    box = tuple(q.stop - q.start for q in sl)
    if sd.shape != box:  # a shape that ignores an axis (a slab) returns a broadcastable array
        sd = np.broadcast_to(sd, box)
    return sl, occupancy(sd, width)


# --- primitives ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Waves:
    """A smooth random displacement field ``sum a sin(k.p + phase)`` (mm) that deforms a surface."""

    amplitude: np.ndarray  # (n,) mm
    k: np.ndarray  # (n, 3) rad/mm, (z, y, x)
    phase: np.ndarray  # (n,)

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, amplitude: float, wavelength: tuple[float, float]
               ) -> "Waves":
        """``n`` plane waves with random directions, wavelengths in mm and total amplitude ``amplitude``."""
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength, size=n)
        amp = rng.uniform(0.5, 1.0, size=n)
        amp *= amplitude / amp.sum()
        return cls(amp, dirs * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, size=n))

    @property
    def max_amplitude(self) -> float:
        return float(np.abs(self.amplitude).sum())

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        # sin(a + b) = sin a cos b + cos a sin b with a from z alone and b from (y, x): on grid axes
        # the sines are taken on a line and a plane, never on the whole box.
        total: np.ndarray | float = 0.0
        for amp, (kz, ky, kx), ph in zip(self.amplitude, self.k, self.phase):
            a = np.float32(kz) * z
            b = np.float32(ky) * y + (np.float32(kx) * x + np.float32(ph))
            amp32 = np.float32(amp)
            total = total + ((amp32 * np.sin(a)) * np.cos(b) + (amp32 * np.cos(a)) * np.sin(b))
        return np.asarray(total, dtype=np.float32)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with ``radii`` (mm) along its own axes, rotated by ``rotation`` (local to world)."""

    center: Vec
    radii: Vec
    rotation: np.ndarray | None = None  # (3, 3) in (z, y, x) order

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = (z - np.float32(self.center[0]), y - np.float32(self.center[1]),
             x - np.float32(self.center[2]))
        if self.rotation is not None:
            r = self.rotation.astype(np.float32)
            d = tuple(r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3))
        # Quilez's first-order distance to an ellipsoid: exact at the surface, smooth elsewhere.
        k0 = sum((di * np.float32(1.0 / ri)) ** 2 for di, ri in zip(d, self.radii))
        k1 = sum((di * np.float32(1.0 / (ri * ri))) ** 2 for di, ri in zip(d, self.radii))
        k0 = np.sqrt(k0)
        return k0 * (k0 - np.float32(1.0)) / (np.sqrt(k1) + np.float32(1e-6))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, dtype=float)
        if self.rotation is None:
            half = np.asarray(self.radii, dtype=float)
        else:  # the box of a rotated ellipsoid: sqrt(sum_j (R_ij r_j)^2) per world axis
            half = np.sqrt(((self.rotation * np.asarray(self.radii)) ** 2).sum(axis=1))
        return c - half, c + half


@dataclass(frozen=True)
class Tube:
    """A straight tube from ``a`` to ``b`` whose radius tapers linearly from ``ra`` to ``rb`` (mm)."""

    a: Vec
    b: Vec
    ra: float
    rb: float

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ba = np.subtract(self.b, self.a, dtype=np.float32)
        pa = (z - np.float32(self.a[0]), y - np.float32(self.a[1]), x - np.float32(self.a[2]))
        t = (pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) * np.float32(1.0 / max(ba @ ba, 1e-9))
        t = np.clip(t, 0.0, 1.0)
        dist2 = sum((pa[i] - t * ba[i]) ** 2 for i in range(3))
        return np.sqrt(dist2) - (np.float32(self.ra) + t * np.float32(self.rb - self.ra))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.ra, self.rb)
        a, b = np.asarray(self.a, dtype=float), np.asarray(self.b, dtype=float)
        return np.minimum(a, b) - r, np.maximum(a, b) + r


@dataclass(frozen=True)
class Blob:
    """A lumpy sphere: radius ``radius`` mm modulated by waves over the direction from the centre."""

    center: Vec
    radius: float
    waves: Waves  # evaluated on (p - c) / radius, amplitude relative to the radius

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        inv = np.float32(1.0 / self.radius)
        d = [(v - np.float32(c)) * inv for v, c in zip((z, y, x), self.center)]
        rho = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        return (rho - np.float32(1.0) - self.waves(*d)) * np.float32(self.radius)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = self.radius * (1.0 + self.waves.max_amplitude)
        c = np.asarray(self.center, dtype=float)
        return c - half, c + half


@dataclass(frozen=True)
class Slab:
    """The half-space ``n . p <= offset`` (``n`` a unit vector); bounds are the given box."""

    normal: Vec
    offset: float
    box: tuple[np.ndarray, np.ndarray]

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = [np.float32(v) for v in self.normal]
        return n[0] * z + n[1] * y + n[2] * x - np.float32(self.offset)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.box


@dataclass(frozen=True)
class ZPeriodic:
    """Slabs of height ``height`` repeating every ``period`` mm along z (vertebral bodies, discs)."""

    period: float
    height: float
    z0: float
    box: tuple[np.ndarray, np.ndarray]

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        local = np.mod(z - np.float32(self.z0), np.float32(self.period)) - np.float32(self.period / 2)
        return np.abs(local) - np.float32(self.height / 2)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.box


# --- combinators ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Deformed:
    """``shape`` with its surface pushed out by a displacement field (mm)."""

    shape: Shape
    waves: Waves

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.shape.sdf(z, y, x) - self.waves(z, y, x)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bounds()
        m = self.waves.max_amplitude
        return lo - m, hi + m


@dataclass(frozen=True)
class Offset:
    """``shape`` grown by ``distance`` mm (shrunk when negative): a wall's inner or outer surface."""

    shape: Shape
    distance: float

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.shape.sdf(z, y, x) - np.float32(self.distance)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bounds()
        return lo - self.distance, hi + self.distance


@dataclass(frozen=True)
class Union:
    """Union of shapes; ``smooth`` > 0 blends them over that many mm (no crease between lobes)."""

    parts: tuple[Shape, ...]
    smooth: float = 0.0

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = self.parts[0].sdf(z, y, x)
        for part in self.parts[1:]:
            out = _smooth_min(out, part.sdf(z, y, x), self.smooth)
        return out

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bounds() for p in self.parts]
        return (np.min([b[0] for b in boxes], axis=0) - self.smooth,
                np.max([b[1] for b in boxes], axis=0) + self.smooth)


@dataclass(frozen=True)
class Intersection:
    """Points inside every part; bounds are the first part's (list the smallest first)."""

    parts: tuple[Shape, ...]

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = self.parts[0].sdf(z, y, x)
        for part in self.parts[1:]:
            out = np.maximum(out, part.sdf(z, y, x))
        return out

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.parts[0].bounds()


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    if k <= 0:
        return np.minimum(a, b)
    kf = np.float32(k)
    h = np.clip(np.float32(0.5) + np.float32(0.5) * (b - a) / kf, 0.0, 1.0)
    return b + h * (a - b) - kf * h * (np.float32(1.0) - h)


def rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix in ``(z, y, x)`` order from angles (deg) about the z, y and x axes."""
    az, ay, ax = np.deg2rad(angles_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx
