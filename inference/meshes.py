"""Surface meshes of a predicted label map, for surgical planning viewers (``predict --meshes``).

One binary STL per foreground structure present in the label map, in patient millimetres in the
LPS frame that DICOM, ITK and the NIfTI reader (SimpleITK) use: a vertex is
``origin + direction @ (spacing * (x, y, z))`` for the continuous voxel index ``(x, y, z)``, the
transform of :class:`autoseg.io.Geometry`. 3D Slicer (4.11 and later) assumes LPS for mesh files and
also reads the ``SPACE=LPS`` the STL header carries, so the mesh lies on the CT it came from.

Why STL: every surgical planning viewer and 3D printing tool opens it (3D Slicer, Materialise,
MeshLab, slicers for printers), and it is what MONAI Deploy's liver-tumour app writes. It has no
colour, no units and no shared vertices (OBJ and PLY do); one file per structure, named after it,
and millimetres by convention make up for the first two, and size is kept down by decimation.

The surface: marching cubes (scikit-image, Lewiner) at 0.5 on the structure's binary mask, cropped
to its bounding box and padded by one voxel so that the surface closes where the structure touches
the edge of the scan; Taubin smoothing (trimesh; shrink-free, so the volume is kept) in millimetres
to take off the voxel staircase; then quadric decimation (trimesh over fast-simplification) to a
fraction of the faces, for big structures only. docs/inference.md gives the measured effect of each
step on the enclosed volume.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoseg.io import Geometry, atomic_path
from autoseg.layout import CaseOutputs


@dataclass(frozen=True)
class MeshOptions:
    """How a structure's surface is smoothed and decimated (defaults: docs/inference.md)."""

    #: Taubin passes (each pair one shrink and one inflate step); 0 turns smoothing off.
    smoothing_iterations: int = 20
    smoothing_lambda: float = 0.5
    #: Taubin's inflate factor; 1/lambda - 1/nu = 0.1 keeps low frequencies (the volume) unchanged.
    smoothing_nu: float = 0.53
    #: Meshes with fewer faces than this are not smoothed: a structure of a few voxels has no staircase
    #: to take off, and smoothing would only shrink it further.
    min_faces_to_smooth: int = 200
    #: Fraction of the faces decimation removes (0 keeps them all); where that would leave the surface
    #: not closed, a half and then a quarter of it.
    decimation: float = 0.75
    #: Meshes with fewer faces than this are not decimated (a small lesion keeps its shape).
    min_faces_to_decimate: int = 2000


def structure_mesh(mask: np.ndarray, geometry: Geometry, options: MeshOptions = MeshOptions()) -> Any:
    """The closed surface of a binary ``mask`` (``z, y, x``, on ``geometry``'s grid) as a
    ``trimesh.Trimesh`` in patient millimetres (LPS), faces wound outwards; ``None`` if the mask is
    empty."""
    import trimesh
    from skimage.measure import marching_cubes

    where = np.nonzero(mask)
    if not where[0].size:
        return None
    lo = np.array([int(w.min()) for w in where])
    hi = np.array([int(w.max()) + 1 for w in where])
    box = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    # one voxel of background all round, so the surface is closed even where the mask meets the scan's edge
    padded = np.pad(box.astype(np.float32), 1)
    verts_zyx, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    index_xyz = (verts_zyx + (lo - 1))[:, ::-1]
    linear = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3) @ np.diag(geometry.spacing)
    points = index_xyz @ linear.T + np.asarray(geometry.origin, dtype=np.float64)
    # marching cubes' faces, read with the axes reversed to (x, y, z), wind outwards; a direction with
    # a negative determinant (a mirrored grid) turns them inwards
    if np.linalg.det(linear) < 0:
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(vertices=points, faces=faces, process=True)
    if options.smoothing_iterations > 0 and len(mesh.faces) >= options.min_faces_to_smooth:
        trimesh.smoothing.filter_taubin(mesh, lamb=options.smoothing_lambda, nu=options.smoothing_nu,
                                        iterations=options.smoothing_iterations)
    if options.decimation > 0 and len(mesh.faces) >= options.min_faces_to_decimate:
        # quadric decimation can pinch a thin part (a vessel, a handle of the liver) into an edge that
        # more than two faces share; then a smaller reduction is tried, and else the full surface kept
        for fraction in (options.decimation, options.decimation / 2, options.decimation / 4):
            decimated = mesh.simplify_quadric_decimation(percent=fraction)
            if decimated.is_watertight or not mesh.is_watertight:
                mesh = decimated
                break
    return mesh


def safe_structure_name(name: str) -> str:
    """A class name as a piece of a file name: letters, digits, ``-`` and ``_`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip()).strip("_")
    return cleaned or "structure"


def stl_bytes(mesh: Any, structure: str) -> bytes:
    """Binary STL of ``mesh`` whose 80-byte header names the structure and the frame (``SPACE=LPS``,
    which 3D Slicer reads)."""
    from trimesh.exchange.stl import export_stl

    header = f"autoseg {structure} mm SPACE=LPS".encode("ascii", "replace")[:80].ljust(80, b" ")
    return header + export_stl(mesh)[80:]


def write_meshes(labels: np.ndarray, geometry: Geometry, table: dict[int, str], outputs: CaseOutputs,
                 options: MeshOptions = MeshOptions()) -> dict[str, str]:
    """Write one STL per foreground class of ``table`` present in ``labels``, each atomically.
    Returns ``{structure: file name}``; a class with no voxel gets no file."""
    written: dict[str, str] = {}
    used: set[str] = set()
    for label, structure in sorted(table.items()):
        if label == 0:
            continue
        mesh = structure_mesh(labels == label, geometry, options)
        if mesh is None or not len(mesh.faces):
            continue
        piece = safe_structure_name(structure)
        if piece in used:  # two names that sanitise alike keep apart
            piece = f"{piece}_{label}"
        used.add(piece)
        path = outputs.mesh(piece)
        with atomic_path(path) as tmp:
            tmp.write_bytes(stl_bytes(mesh, piece))
        written[structure] = path.name
    return written
