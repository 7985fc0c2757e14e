"""Surface meshes (``predict --meshes``): closed, the label's volume, where the label lies in mm (LPS)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from autoseg.artefacts import CaseReport  # noqa: E402
from autoseg.io import Geometry  # noqa: E402
from autoseg.layout import CaseOutputs  # noqa: E402
from autoseg.inference.meshes import MeshOptions, safe_structure_name, structure_mesh, write_meshes  # noqa: E402
from autoseg.inference.outputs import OUTPUT_FORMATS, CasePrediction, write_prediction  # noqa: E402
from autoseg.inference.report import measure_case  # noqa: E402
from autoseg.plans import Estimates, NetworkPlan, Normalisation, Plans  # noqa: E402

# Anisotropic spacing, an origin away from 0 and directions that are not the identity: a feet-first
# scan with x flipped (a mirrored grid, determinant -1), and one whose rows and columns are swapped
# and whose slices run the other way (determinant +1 with a permutation).
GEOMETRIES = {
    "flipped": Geometry(size=(64, 56, 24), spacing=(0.8, 0.9, 2.5), origin=(-120.0, 35.5, 410.0),
                        direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)),
    "permuted": Geometry(size=(64, 56, 24), spacing=(0.8, 0.9, 2.5), origin=(40.0, -80.0, -300.0),
                         direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),
}


def linear_map(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.direction).reshape(3, 3) @ np.diag(geometry.spacing)


def to_mm(geometry: Geometry, zyx: np.ndarray) -> np.ndarray:
    """Physical points (LPS mm) of voxel indices given as (z, y, x) rows: SimpleITK's transform."""
    return zyx[:, ::-1] @ linear_map(geometry).T + np.asarray(geometry.origin)


def ellipsoid(geometry: Geometry, radii_mm: tuple[float, float, float]) -> np.ndarray:
    """An ellipsoid (radii along z, y, x of the grid, in mm) a little off the grid's centre."""
    shape = geometry.shape_zyx
    grids = np.indices(shape, dtype=float)
    centre = [s / 2 - 0.3 for s in shape]
    d = sum(((g - c) * sp / r) ** 2 for g, c, sp, r in zip(grids, centre, geometry.spacing_zyx, radii_mm))
    return d <= 1.0


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("options", [MeshOptions(), MeshOptions(smoothing_iterations=0, decimation=0.0)],
                         ids=["smoothed-decimated", "raw"])
def test_ellipsoid_mesh_is_closed_has_the_label_volume_and_lies_on_the_label(name: str, options: MeshOptions) -> None:
    geometry = GEOMETRIES[name]
    mask = ellipsoid(geometry, (20.0, 18.0, 16.0))
    mesh = structure_mesh(mask, geometry, options)
    assert mesh.is_watertight and mesh.is_winding_consistent
    label_ml = mask.sum() * float(np.prod(geometry.spacing))
    # faces wound outwards: a positive enclosed volume, within 2% of the label's. Marching cubes at 0.5
    # on a binary mask cuts the voxel corners (-0.3% here, a few % for structures of a few hundred
    # voxels); Taubin smoothing and decimation move it by less than 0.2% (docs/inference.md)
    assert mesh.volume > 0
    assert abs(mesh.volume / label_ml - 1) < 0.02
    # bounding box in mm: the label's voxels as boxes (centres +- half a voxel), within one voxel
    corners = np.array([[dz, dy, dx] for dz in (-.5, .5) for dy in (-.5, .5) for dx in (-.5, .5)])
    centres = np.argwhere(mask).astype(float)
    boxes = to_mm(geometry, (centres[:, None, :] + corners[None]).reshape(-1, 3))
    voxel_mm = np.abs(linear_map(geometry)).sum(axis=1)  # one voxel's extent along each of L, P, S
    assert np.all(np.abs(mesh.bounds[0] - boxes.min(0)) <= voxel_mm)
    assert np.all(np.abs(mesh.bounds[1] - boxes.max(0)) <= voxel_mm)
    # and its centre where the label's is, to a tenth of a voxel
    assert np.all(np.abs(mesh.center_mass - to_mm(geometry, centres).mean(0)) <= 0.1 * voxel_mm)


def test_decimation_keeps_volume_and_cuts_faces() -> None:
    geometry = GEOMETRIES["flipped"]
    mask = ellipsoid(geometry, (20.0, 18.0, 16.0))
    full = structure_mesh(mask, geometry, MeshOptions(decimation=0.0))
    decimated = structure_mesh(mask, geometry)
    assert len(decimated.faces) < 0.3 * len(full.faces)
    assert abs(decimated.volume / full.volume - 1) < 0.005


def make_plans(labels: dict[int, str]) -> Plans:
    return Plans(dataset_name="Task08_HepaticVessel", channel_names=("CT",), labels=labels, is_ct=True,
                 target_spacing=(2.5, 0.8, 0.8), median_shape=(60, 300, 300), patch_size=(32, 96, 96),
                 batch_size=2, normalisation=(Normalisation("ct", (-160.0, 240.0), 90.0, 40.0),),
                 network=NetworkPlan("arunet", {"n_stages": 5, "strides": [[1, 1, 1], [1, 2, 2]]}),
                 estimates=Estimates("cpu", 10**10, 10**8, 10**9, 1.5, 1.2, 1.3, ("why",)))


def test_predict_writes_one_stl_per_structure_present(tmp_path: Path) -> None:
    geometry = GEOMETRIES["flipped"]
    labels = ellipsoid(geometry, (20.0, 18.0, 16.0)).astype(np.uint8)  # 1: liver
    labels[0, 0, 0] = 3  # a one-voxel "tumour" in the scan's corner: a tiny closed mesh, no crash
    table = {0: "background", 1: "liver", 2: "hepatic vessel", 3: "liver tumour"}  # 2: absent
    report = measure_case(labels, geometry, table, 1.0, (0,))
    prediction = CasePrediction(name="ct", input=tmp_path / "ct.nii.gz", labels=labels, geometry=geometry,
                                report=report, plans=make_plans(table), label_table=table, outputs=("meshes",))
    outputs = CaseOutputs(tmp_path / "out", "ct")
    written = write_prediction(prediction, outputs)
    assert written.meshes == {"liver": "ct_liver.stl", "liver tumour": "ct_liver_tumour.stl"}
    assert sorted(p.name for p in outputs.folder.glob("*.stl")) == ["ct_liver.stl", "ct_liver_tumour.stl"]
    assert not list(outputs.folder.glob(".tmp-*"))
    assert json.loads(outputs.report.read_text())["meshes"]["liver"] == "ct_liver.stl"
    assert CaseReport.load(outputs.report).meshes == written.meshes
    # the files read back with trimesh: binary STL, the frame in the header (3D Slicer reads SPACE=LPS)
    data = outputs.mesh("liver").read_bytes()
    assert b"SPACE=LPS" in data[:80]
    liver = trimesh.load(outputs.mesh("liver"), file_type="stl")
    assert liver.is_watertight
    reference = structure_mesh(labels == 1, geometry)
    assert np.allclose(liver.bounds, reference.bounds, atol=1e-3)  # STL stores float32
    assert abs(liver.volume / reference.volume - 1) < 1e-4
    tumour = trimesh.load(outputs.mesh("liver_tumour"), file_type="stl")
    assert len(tumour.faces) > 0 and tumour.volume > 0
    # the one-voxel mesh lies on its voxel: inside the voxel's box in mm
    box = to_mm(geometry, np.array([[-.5, -.5, -.5], [.5, .5, .5]]))
    assert np.all(tumour.bounds[0] >= box.min(0) - 1e-3) and np.all(tumour.bounds[1] <= box.max(0) + 1e-3)


def test_no_foreground_writes_no_mesh(tmp_path: Path) -> None:
    geometry = GEOMETRIES["permuted"]
    labels = np.zeros(geometry.shape_zyx, np.uint8)
    outputs = CaseOutputs(tmp_path, "empty")
    assert write_meshes(labels, geometry, {0: "background", 1: "liver"}, outputs) == {}
    assert not list(tmp_path.iterdir())
    assert structure_mesh(labels == 1, geometry) is None


@pytest.mark.parametrize("voxels", [[(0, 0, 0)], [(1, 2, 3), (1, 2, 4)], [(0, 0, 0), (23, 55, 63)]])
def test_tiny_structures_give_small_closed_meshes(voxels: list[tuple[int, int, int]]) -> None:
    geometry = GEOMETRIES["permuted"]
    mask = np.zeros(geometry.shape_zyx, bool)
    for v in voxels:
        mask[v] = True
    mesh = structure_mesh(mask, geometry)
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.volume <= mask.sum() * float(np.prod(geometry.spacing))


def test_structure_names_are_safe_file_name_pieces(tmp_path: Path) -> None:
    assert safe_structure_name("hepatic vessel") == "hepatic_vessel"
    assert safe_structure_name("../../etc/passwd") == "etc_passwd"
    assert safe_structure_name("  ") == "structure"
    geometry = GEOMETRIES["flipped"]
    labels = np.zeros(geometry.shape_zyx, np.uint8)
    labels[5:8, 5:8, 5:8] = 1
    labels[12:15, 12:15, 12:15] = 2
    written = write_meshes(labels, geometry, {0: "background", 1: "a/b", 2: "a b"}, CaseOutputs(tmp_path, "ct"))
    assert written == {"a/b": "ct_a_b.stl", "a b": "ct_a_b_2.stl"}
    assert {p.name for p in tmp_path.iterdir()} == set(written.values())


def test_meshes_is_a_registered_output_and_a_predict_flag() -> None:
    from autoseg.cli import build_parser

    assert not OUTPUT_FORMATS["meshes"].needs_probabilities and not OUTPUT_FORMATS["meshes"].needs_image
    args = build_parser().parse_args(["predict", "-i", "ct.nii.gz", "-o", "out", "-m", "model", "--meshes"])
    assert args.meshes


def test_predict_flag_asks_for_the_meshes_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``predict --meshes`` puts "meshes" into the options' outputs (model and prediction stubbed)."""
    import types

    from autoseg.cli import main

    seen = {}

    def fake_predict(input, output, model, options, **kwargs):  # noqa: A002
        seen["outputs"] = options.outputs
        return types.SimpleNamespace(reports=[], skipped=[], failed=[])

    from tests.test_plans import make_plans

    plans = make_plans()  # what predict reads of the model before predicting (its default edge context)
    monkeypatch.setattr("autoseg.inference.model.open_model", lambda *a, **k: types.SimpleNamespace(plans=plans))
    monkeypatch.setattr("autoseg.inference.postprocessing.load_postprocessing", lambda *a, **k: None)
    monkeypatch.setattr("autoseg.cpu_share.configure_threads", lambda *a, **k: None)
    monkeypatch.setattr("autoseg.inference.predictor.predict", fake_predict)
    args = ["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "-m", str(tmp_path)]
    assert main([*args, "--meshes"]) == 0 and "meshes" in seen["outputs"]
    assert main(args) == 0 and "meshes" not in seen["outputs"]
