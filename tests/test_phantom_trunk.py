"""Trunk phantoms (family 3): the training data of the built-in synthetic model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg import phantom_trunk
from autoseg.errors import ConfigurationError
from autoseg.phantom import write_task
from autoseg.phantom_family2_shapes import LIVER_TISSUES, TUMOUR_TISSUES, VESSEL_TISSUES
from autoseg.phantom_family2_anatomy import draw_frame
from autoseg.phantom_trunk import (KIDNEY_RAISE_MM, PELVIS_RAISE_MM, SPINE_DEPTH_MM, TRUNK_TISSUES, draw_trunk,
                                   generate_trunk_case, trunk_grid, trunk_labels)

COARSE = (5.0, 4.0, 4.0)


def test_one_seed_is_one_case() -> None:
    a, b = generate_trunk_case(11, spacing=COARSE), generate_trunk_case(11, spacing=COARSE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.family == 3 and a.labels.dtype == np.uint8 and a.image.dtype == np.int16
    assert not np.array_equal(a.image[: 5], generate_trunk_case(12, spacing=COARSE).image[: 5])


def test_labels_of_the_three_tasks_agree() -> None:
    case = generate_trunk_case(4, spacing=COARSE)
    lvt, tissues = case.labels, case.tissues
    assert set(np.unique(lvt)) <= {0, 1, 2, 3}
    assert np.array_equal(trunk_labels(tissues, "Task03") > 0, lvt > 0)  # liver = parenchyma + vessels + tumour
    assert np.array_equal(trunk_labels(tissues, "Task08") == 1, lvt == 2)
    assert np.array_equal(trunk_labels(tissues, "Task03") == 2, lvt == 3)
    assert np.array_equal(lvt == 2, np.isin(tissues, VESSEL_TISSUES))
    assert np.array_equal(lvt > 0, np.isin(tissues, LIVER_TISSUES))
    assert np.array_equal(lvt == 3, np.isin(tissues, TUMOUR_TISSUES))


def test_the_liver_lies_on_the_patients_right_under_the_lungs() -> None:
    """Anatomy, not appearance: over cases with a liver, its centroid is at x < 0 (the patient's right),
    above the bladder and below the lungs' centroid."""
    seen = 0
    for seed in range(8):
        case = generate_trunk_case(seed, spacing=COARSE, tumour_free=True)
        liver = case.labels > 0
        if liver.sum() * np.prod(case.spacing) < 300_000:  # under 300 mL: a crop holding the dome at most
            continue
        seen += 1
        def centroid(mask: np.ndarray, case=case) -> np.ndarray:  # type: ignore[no-untyped-def]
            return np.array(case.origin[::-1]) + np.argwhere(mask).mean(axis=0) * np.array(case.spacing)

        c = centroid(liver)
        assert c[2] < 0, f"seed {seed}: the liver's centroid is on the left (x = {c[2]:.0f} mm)"
        for name, below in (("lung", False), ("urine", True)):
            mask = case.tissues == TRUNK_TISSUES[name]
            if mask.sum() > 50:
                assert (centroid(mask)[0] < c[0]) == below, f"seed {seed}: the {name} is on the wrong side in z"
    assert seen >= 4


def test_fields_of_view_vary_and_some_hold_no_liver() -> None:
    grids = [trunk_grid(seed) for seed in range(60)]
    tops = np.array([g.origin[0] + (g.shape[0] - 1) * g.spacing[0] for g in grids])
    bottoms = np.array([g.origin[0] for g in grids])
    assert tops.max() <= 321 and bottoms.min() >= -400, "never above the lung apices or below the femoral heads"
    assert (tops < -100).any(), "pelvis-only scans exist"
    assert (bottoms > 80).any(), "thorax-only scans exist"
    assert ((tops >= 0) & (tops <= 90) & (bottoms < -150)).any(), "abdomen scans starting inside the liver exist"
    widths = np.array([g.shape[2] * g.spacing[2] for g in grids])
    assert widths.min() < 320 < 460 < widths.max()
    spacings = np.array([g.spacing for g in grids])
    assert spacings[:, 0].min() < 3.0 and spacings[:, 0].max() > 4.5 and spacings[:, 1].max() > 3.5


def test_appearance_is_randomised_yet_plain_cases_keep_textbook_order() -> None:
    """Scrambled cases let muscle outshine the liver; in unscrambled contrast-enhanced ones the liver
    is brighter than muscle (portal venous phase)."""
    phases, scrambled = set(), 0
    for seed in range(20):
        anatomy, pelvis_z = draw_trunk(seed, tumour_free=True)
        phases.add(anatomy.phase)
        hu = {item.name: item.hu for item in anatomy.items}
        scrambled += hu["gluteus"] > anatomy.liver_hu
        assert -240 < pelvis_z < -170
    assert phases == {"unenhanced", "arterial", "portal", "delayed"}
    assert 2 <= scrambled <= 14


def test_write_task_family_3(tmp_path: Path) -> None:
    root = write_task(tmp_path, "LiverVesselTumour", num_training=2, num_test=1, seed=3, family=3,
                      spacing_range=((6.0, 6.0, 6.0), (6.0, 6.0, 6.0)))
    meta = json.loads((root / "dataset.json").read_text())
    assert root.name == "Task100_LiverVesselTumour"
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "vessel", "3": "tumour"}
    assert "trunk" in meta["release"] and len(list((root / "imagesTr").iterdir())) == 2
    marker = json.loads((root / "phantom.json").read_text())
    assert marker["family"] == 3 and marker["generator_version"] == 3
    again = write_task(tmp_path, "LiverVesselTumour", num_training=2, num_test=1, seed=3, family=3,
                       spacing_range=((6.0, 6.0, 6.0), (6.0, 6.0, 6.0)), trunk_version=4)
    assert json.loads((again / "phantom.json").read_text())["generator_version"] == 4
    assert json.loads((again / "dataset.json").read_text())["release"].endswith("v4")


def test_version_4_puts_the_spine_where_the_literature_measures_it() -> None:
    """Skin to spinal canal centre (the frame's back, its back fat, the canal ~25 mm behind the vertebral
    body's centre): MRI puts the skin-to-epidural depth at 3.5-5.1 cm, the canal's centre ~8 mm deeper."""
    def depth(seed: int, version: int) -> float:
        f = draw_frame(np.random.default_rng([seed, 3003, 0]), spine_depth=SPINE_DEPTH_MM[version])
        return f.back - (f.spine_y + f.spine_r[0] + 9.5)

    v3 = np.array([depth(s, 3) for s in range(200)])
    v4 = np.array([depth(s, 4) for s in range(200)])
    assert 45 <= v4.mean() <= 60 < v3.mean()
    assert np.allclose(v3 - v4, 25.0), "the same draws: only the spine moved"
    a, b = draw_trunk(5, False, version=3)[0], draw_trunk(5, False, version=4)[0]
    # the same random numbers: every structure, in the same order, with the same attenuation
    assert [(i.name, i.hu) for i in a.items] == [(i.name, i.hu) for i in b.items]
    kidney = [(i.region.centre, j.region.centre) for i, j in zip(a.items, b.items) if i.name == "kidney"]
    assert len(kidney) == 2 and all(np.allclose(k4 - k3, (0.0, 25.0, 0.0)) for k3, k4 in kidney), \
        "the kidneys, placed from the spine, move back with it"
    spleen = [(i.region, j.region) for i, j in zip(a.items, b.items) if i.name == "spleen"]
    assert len(spleen) == 1, "one spleen"


def _z_range(region, step: float = 6.0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    lo, hi = (np.clip(b, -600, 600) for b in region.bounds())
    axes = [np.arange(a, b + step, step) for a, b in zip(lo, hi)]
    inside = region.level(*np.meshgrid(*axes, indexing="ij")) < 0
    zs = axes[0][inside.any(axis=(1, 2))]
    return float(zs.min()), float(zs.max())


def test_versions_3_and_4_render_as_before_version_5() -> None:
    """Tissue maps of one case as the code before version 5 (e6d0b20) rendered them, by checksum."""
    before = {3: "56b1d7bde16830ff99a7c7ab5fa59a46b5fbc056faccf91bb5f51144e56cc3f0",
              4: "11ee902799d947ab7d69be2014eac7aec058f8e4afc56899b7a6785ec4b36bab"}
    for version, digest in before.items():
        tissues = generate_trunk_case(7, spacing=COARSE, version=version).tissues
        assert hashlib.sha256(np.ascontiguousarray(tissues).tobytes()).hexdigest() == digest, version


def test_version_5_raises_the_pelvis_to_the_literatures_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Versions 3 and 4 drew the iliac crest about 285 mm under the liver's top, where the vertebral
    levels of CT studies put it about 205 mm (160-250) under: version 5 raises the pelvis by 70 mm and
    the kidneys by 30 mm, nothing else moves, and the liver is kept out of the pelvic bones."""
    assert PELVIS_RAISE_MM[3] == PELVIS_RAISE_MM[4] == KIDNEY_RAISE_MM[3] == KIDNEY_RAISE_MM[4] == 0.0
    assert SPINE_DEPTH_MM[5] == SPINE_DEPTH_MM[4]
    gaps = {4: [], 5: []}  # type: dict[int, list[float]]
    for seed in range(4):
        (a, crest4), (b, crest5) = draw_trunk(seed, False, version=4), draw_trunk(seed, False, version=5)
        assert crest5 - crest4 == pytest.approx(PELVIS_RAISE_MM[5])
        k = [i.name for i in a.items].index("liver") - 1  # the liver's items come last, from its portal trunk
        # the same draws: every structure painted before the liver, in order, with the same attenuation
        # (inside the liver, lesions are placed in its shape, which the kidneys indent)
        assert [(i.name, i.hu) for i in a.items[:k]] == [(i.name, i.hu) for i in b.items[:k]]
        assert b.items[k].name == "portal trunk"
        for i, j in zip(a.items[:k], b.items[:k]):
            moved = np.subtract(j.region.bounds(), i.region.bounds())
            if i.name in ("spleen", "lung", "heart"):
                assert np.allclose(moved, 0.0), f"seed {seed}: the {i.name} moved"
            if i.name in ("kidney", "medulla", "renal sinus"):
                assert np.allclose(moved, [[KIDNEY_RAISE_MM[5], 0, 0]] * 2), f"seed {seed}: the {i.name}"
            if i.name in ("urine", "femoral head", "iliac wing", "sacrum", "gluteus"):
                assert np.allclose(moved, [[PELVIS_RAISE_MM[5], 0, 0]] * 2), f"seed {seed}: the {i.name}"
        for version, items in ((4, a.items), (5, b.items)):
            [liver] = [i.region for i in items if i.name == "liver"]
            wings = [_z_range(i.region) for i in items if i.name == "iliac wing"]
            gaps[version].append(_z_range(liver)[1] - max(w[1] for w in wings))
    assert np.median(gaps[4]) > 250 and 160 <= np.median(gaps[5]) <= 250, gaps
    # seed 47's liver reaches 72 mm below the raised crest and, unkept, into 20 mL of iliac bone
    def reaches_bone() -> bool:
        items = draw_trunk(47, False, version=5)[0].items
        bones = [i for i in items if i.name in ("iliac wing", "sacrum", "femoral head", "femur")
                 and i.tissue == TRUNK_TISSUES["bone_cortical"]]
        [liver] = [i.region for i in items if i.name == "liver"]
        lo, hi = liver.bounds()
        grid = np.meshgrid(*[np.arange(s, e, 4.0) for s, e in zip(lo, hi)], indexing="ij")
        in_liver = liver.level(*grid) < 0
        assert in_liver.any()
        return any((in_liver & (bone.region.level(*grid) < 0)).any() for bone in bones)

    assert not reaches_bone(), "version 5's liver reaches into a pelvic bone"
    monkeypatch.setattr(phantom_trunk, "_LIVER_KEEPS_OUT_OF_THE_PELVIS", frozenset())
    assert reaches_bone(), "seed 47 no longer tests the keep-out"


def test_version_5_fields_of_view_end_no_lower_than_its_femoral_heads() -> None:
    for seed in range(60):
        g3, g5 = trunk_grid(seed), trunk_grid(seed, version=5)
        top3, top5 = (g.origin[0] + (g.shape[0] - 1) * g.spacing[0] for g in (g3, g5))
        assert top5 == pytest.approx(top3, abs=g5.spacing[0]) and g5.spacing == g3.spacing
        assert g5.origin[0] >= -(390 - PELVIS_RAISE_MM[5]) - g5.spacing[0], "never below the femoral heads"
        assert g5.shape[0] <= g3.shape[0]
    a, b = generate_trunk_case(0, spacing=COARSE, version=3), generate_trunk_case(0, spacing=COARSE)
    assert np.array_equal(a.tissues, b.tissues), "version 3 is still the default"


def test_no_bone_outside_the_body() -> None:
    """Version 4's spine lies nearer the skin, and its vertebral arch, unclipped, would reach past the
    skin in some cases: it is clipped to the muscle wall, so no bone lies in air or on the table."""
    def pokes_out(seed: int) -> bool:
        items = {i.name: i.region for i in draw_trunk(seed, False, version=4)[0].items}
        arch = items["arch"]
        while not hasattr(arch, "centre"):  # cut at the pelvis, cut into vertebrae, clipped: the arch's shape
            arch = arch.parts[0]
        return arch.centre[1] + arch.radii[1] > items["subcutaneous fat"].y_max
    seed = 33  # the first of seeds 0-199 whose unclipped arch reaches past the skin (by 5.3 mm)
    assert pokes_out(seed)
    case = generate_trunk_case(seed, spacing=COARSE, version=4)
    bone = np.isin(case.tissues, [TRUNK_TISSUES["bone_cortical"], TRUNK_TISSUES["bone_cancellous"]])
    behind = np.roll(case.tissues, -1, axis=1)  # the next row back (LPS: +y is posterior)
    assert bone.any() and not (bone & np.isin(behind, [TRUNK_TISSUES["air"], TRUNK_TISSUES["table"]])).any()


def test_an_unknown_trunk_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="version 9 does not exist") as err:
        write_task(tmp_path, "LiverVesselTumour", family=3, trunk_version=9)
    assert "--trunk-version 3, 4 or 5" in err.value.fix
    with pytest.raises(ConfigurationError, match="family 3 only"):
        write_task(tmp_path, "Task03", family=2, trunk_version=4)
    assert not any(tmp_path.iterdir()), "nothing written for a refused request"


def test_wrong_family_combinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="family 3 only") as err:
        write_task(tmp_path, "LiverVesselTumour", family=1)
    assert "--family 3" in err.value.fix
    with pytest.raises(ConfigurationError, match="field of view per case"):
        write_task(tmp_path, "Task03", family=3, shape=(8, 8, 8))
    assert not any(tmp_path.iterdir()), "nothing written for a refused request"
