"""Preprocessing: body crop, normalisation, resampling, restore, storage and re-runs, case validation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import blosc2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoseg.datasets import Case, load_dataset
from autoseg.errors import AutosegError, ConfigurationError, DatasetError, ImageReadError
from autoseg.io import Geometry, write_image
from autoseg.plans import Estimates, NetworkPlan, Normalisation, Plans, Resampling
from autoseg.preprocessing import (case_ids, labels_on_original_grid, load_case, load_labels, plans_key,
                                   preprocess_case, preprocess_dataset, resample_image, resample_labels,
                                   resample_probabilities, restore_to_original)
from autoseg.preprocessing.storage import is_up_to_date
from autoseg.training.data import CaseStore
from autoseg.cropping import crop_bbox
from autoseg.preprocessing.normalisation import normalise
from autoseg.preprocessing.resampling import (KEEP_VOLUME_TOLERANCE, probabilities_to_labels, separate_axis,
                                              target_shape)
from autoseg.validation import validate_case

SPACING = (2.5, 0.8, 0.8)  # z, y, x
WINDOW = (-160.0, 240.0)


def make_plans(**changes) -> Plans:
    base = dict(
        dataset_name="Task08_Tiny", channel_names=("CT",), labels={0: "background", 1: "liver", 2: "tumour"},
        is_ct=True, target_spacing=(2.5, 1.6, 1.6), median_shape=(16, 24, 24), patch_size=(8, 16, 16),
        batch_size=2, normalisation=(Normalisation("ct", WINDOW, 60.0, 50.0),),
        network=NetworkPlan("arunet", {}), estimates=Estimates("cpu", 1, 1))
    base.update(changes)
    return Plans(**base)


def geometry(shape: tuple[int, ...], spacing=SPACING, origin=(-10.0, 5.0, 20.0)) -> Geometry:
    return Geometry(tuple(reversed(shape)), tuple(reversed(spacing)), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))


def phantom(shape=(16, 48, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Air around an elliptic body (40 HU), a separate 'table' strip, and a spherical liver blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    body = ((y - 22) / 14) ** 2 + ((x - 24) / 17) ** 2 < 1  # y 9..35, x 8..40
    image[body] = 40
    image[:, 44:46, 6:42] = 200  # table: bright, but not connected to the body
    mm = ((z - 8) * SPACING[0]) ** 2 + ((y - 22) * SPACING[1]) ** 2 + ((x - 24) * SPACING[2]) ** 2
    labels = np.zeros(shape, np.uint8)
    labels[mm < 9.0**2] = 1
    labels[mm < 3.0**2] = 2
    image[labels == 1] = 100
    image += rng.normal(0, 5, shape)
    return image.astype(np.int16), labels


def write_case(folder: Path, name: str, image: np.ndarray,
               labels: np.ndarray | None) -> tuple[Path, Path | None]:
    img = folder / "imagesTr" / f"{name}.nii.gz"
    write_image(img, image, geometry(image.shape))
    if labels is None:
        return img, None
    lab = folder / "labelsTr" / f"{name}.nii.gz"
    write_image(lab, labels, geometry(labels.shape))
    return img, lab


def make_task(root: Path, n: int = 2) -> Path:
    task = root / "Task08_Tiny"
    for i in range(n):
        write_case(task, f"tiny_{i}", *phantom(seed=i))
    meta = {"name": "Tiny", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "liver", "2": "tumour"}}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --- cropping ------------------------------------------------------------------------------------

def test_crop_keeps_the_body_and_drops_air_and_table() -> None:
    image, _ = phantom()
    bbox = crop_bbox(image[None].astype(np.float32), ct_channel=0)
    body = np.argwhere(image > -500)
    body = body[body[:, 1] < 40]  # the body without the table
    for axis, (lo, hi) in enumerate(bbox):
        assert lo <= body[:, axis].min() and hi > body[:, axis].max()
    assert bbox[1][1] <= 38 and bbox[2] == (7, 42)  # table (y 44..45) and air dropped, 1-voxel margin


def test_crop_non_ct_and_empty() -> None:
    data = np.zeros((2, 6, 10, 10), np.float32)
    data[1, 2:4, 3:5, 6:8] = 5.0
    assert crop_bbox(data, ct_channel=None) == ((1, 5), (2, 6), (5, 9))
    air = np.full((1, 4, 5, 6), -1000, np.float32)
    assert crop_bbox(air, ct_channel=0) == ((0, 4), (0, 5), (0, 6))


# --- normalisation -------------------------------------------------------------------------------

def test_ct_window_and_standardisation() -> None:
    data = np.array([-2000, -160, 0, 240, 3000], np.float32).reshape(1, 1, 1, 5)
    before = data.copy()
    out = normalise(data, [Normalisation("ct", WINDOW, 40.0, 100.0)])
    np.testing.assert_allclose(out.ravel(), (np.clip(before.ravel(), *WINDOW) - 40.0) / 100.0, rtol=1e-6)
    assert out.dtype == np.float32 and np.array_equal(data, before)  # input untouched


def test_zscore_over_body_mask() -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((1, 4, 20, 20), np.float32)
    data[0, :, 5:15, 5:15] = rng.normal(300, 30, (4, 10, 10))
    mask = data[0] != 0
    out = normalise(data, [Normalisation("zscore")], mask)
    assert abs(out[0][mask].mean()) < 1e-4 and abs(out[0][mask].std() - 1) < 1e-3
    assert np.all(out[0][~mask] == 0)
    with pytest.raises(ConfigurationError, match="zscor"):
        normalise(data, [Normalisation("zscor")])


# --- resampling ----------------------------------------------------------------------------------

def test_resampling_shape_volume_and_label_values() -> None:
    image, labels = phantom(shape=(20, 40, 40))
    dst = (1.6, 1.1, 1.3)
    expected = target_shape(labels.shape, SPACING, dst)
    assert expected == tuple(int(round(n * s / d)) for n, s, d in zip(labels.shape, SPACING, dst))
    out = resample_image(image[None].astype(np.float32), SPACING, dst, Resampling())
    assert out.shape == (1, *expected) and out.dtype == np.float32
    seg = resample_labels(labels, SPACING, dst, num_classes=3)
    assert seg.shape == expected and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
    for lab in (1, 2):
        before = (labels >= lab).sum() * np.prod(SPACING)
        after = (seg >= lab).sum() * np.prod(dst)
        assert after == pytest.approx(before, rel=0.05 if lab == 1 else 0.2)


def test_linear_resampling_matches_trilinear() -> None:
    data = np.random.default_rng(1).normal(size=(2, 7, 9, 11)).astype(np.float32)
    iso = Resampling(order_image=1, anisotropy_threshold=100.0)
    out = resample_image(data, (1, 1, 1), resampling=iso, dst_shape=(12, 5, 14), chunk_bytes=4096)
    ref = F.interpolate(torch.from_numpy(data)[None], size=(12, 5, 14), mode="trilinear")[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    probs = resample_probabilities(torch.from_numpy(data), (12, 5, 14))
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_anisotropic_path_resamples_z_separately() -> None:
    assert separate_axis((2.5, 0.8, 0.8), (2.5, 1.6, 1.6), 3.0) == 0  # thick source slices
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 0.3, 0.3), 3.0) == 0  # anisotropic target
    assert separate_axis((1.0, 1.0, 1.0), (2.0, 1.5, 1.5), 3.0) is None
    assert separate_axis((1.0, 4.0, 4.0), (1.0, 4.0, 4.0), 3.0) is None  # two low-res axes
    data = np.broadcast_to(np.arange(4, dtype=np.float32)[None, :, None, None], (1, 4, 3, 3)).copy()
    z_nearest = resample_image(data, (4.0, 1.0, 1.0), (2.0, 1.0, 1.0), Resampling(order_image=3, order_z=0))
    assert set(np.unique(z_nearest)) <= {0.0, 1.0, 2.0, 3.0}  # order_z 0: slices are copied, not blended
    iso = Resampling(order_image=1, order_z=0, anisotropy_threshold=10.0)
    z_linear = resample_image(data, (4.0, 1.0, 1.0), (2.0, 1.0, 1.0), iso)
    assert np.allclose(z_linear[0, :, 1, 1], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
    # a thick axis other than z is handled like z: same result as on the transposed volume
    vol = np.random.default_rng(2).normal(size=(1, 6, 7, 5)).astype(np.float32)
    along_x = resample_image(vol, (1.0, 1.0, 4.0), (0.7, 1.4, 2.0), Resampling())
    along_z = resample_image(vol.transpose(0, 3, 1, 2).copy(), (4.0, 1.0, 1.0), (2.0, 0.7, 1.4), Resampling())
    np.testing.assert_allclose(along_x, along_z.transpose(0, 2, 3, 1), atol=1e-5)


def test_label_resampling_falls_back_to_nearest_when_one_hot_is_too_big() -> None:
    _, labels = phantom(shape=(10, 24, 24))
    seg = resample_labels(labels, SPACING, (1.25, 1.2, 1.2), num_classes=3, chunk_bytes=64)
    ref = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=seg.shape, mode="nearest-exact")
    assert np.array_equal(seg, ref[0, 0].numpy().astype(np.uint8))


def vessel_tree(shape=(14, 40, 40)) -> np.ndarray:
    """Label 1: three straight vessels one voxel wide (along x, along y, diagonal in-plane) at
    different heights; label 2: a 5-voxel cube touching the first vessel."""
    labels = np.zeros(shape, np.uint8)
    labels[4, 20, 3:37] = 1
    labels[9, 3:37, 12] = 1
    for i in range(4, 36):
        labels[11, i, i] = 1
    labels[2:7, 21:26, 15:20] = 2
    return labels


@pytest.mark.parametrize("dst", [(1.1, 0.9, 0.9), (0.8, 1.3, 1.3), (1.0, 1.15, 0.85)])
def test_label_resampling_keeps_thin_structures_volume(dst) -> None:
    src = (1.0, 1.0, 1.0)
    labels = vessel_tree()
    plain = resample_labels(labels, src, dst, 3, keep_volume=False)
    kept = resample_labels(labels, src, dst, 3)
    def ml(seg, sp, k):
        return (seg == k).sum() * np.prod(sp)
    # plain linear + arg-max loses a large part of a one-voxel-wide vessel (20-50% here) ...
    assert ml(plain, dst, 1) < 0.85 * ml(labels, src, 1)
    # ... keeping the volume brings it back (within 10%: on these axis-aligned lines many voxels
    # share one interpolated value, and such a tie is taken whole or not at all)
    assert ml(kept, dst, 1) == pytest.approx(ml(labels, src, 1), rel=0.1)
    # only background voxels were reassigned: every foreground voxel of plain resampling stays
    assert np.array_equal(kept[plain > 0], plain[plain > 0])
    # refilled voxels lie on the vessels: within one source voxel of a labelled one (physically)
    from scipy.spatial import cKDTree

    voxel = np.array(labels.shape) * np.array(src) / np.array(kept.shape)  # the output's exact spacing
    centres = (np.argwhere(labels == 1) + 0.5) * np.array(src)
    added = (np.argwhere((kept == 1) & (plain != 1)) + 0.5) * voxel
    assert len(added) and cKDTree(centres).query(added)[0].max() <= np.linalg.norm(src) + 1e-6


def liver_with_tumours(seed: int = 0) -> np.ndarray:
    """A liver ellipsoid holding a few irregular tumours of 1-3 voxels across (not axis-aligned)."""
    from scipy import ndimage

    z, y, x = np.mgrid[:40, :64, :64]
    labels = np.zeros((40, 64, 64), np.uint8)
    labels[((z - 20) / 16) ** 2 + ((y - 32) / 28) ** 2 + ((x - 32) / 28) ** 2 < 1] = 1
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(labels.shape), 1.0)
    labels[ndimage.binary_opening((field > np.quantile(field, 0.985)) & (labels == 1))] = 2
    return labels


def test_a_class_inside_a_larger_one_takes_its_volume_back_from_it() -> None:
    labels = liver_with_tumours()
    src, dst = (1.0, 1.0, 1.0), (1.2, 1.1, 1.3)
    plain = resample_labels(labels, src, dst, 3, keep_volume=False)
    kept = resample_labels(labels, src, dst, 3)
    scale = labels.size / kept.size  # source voxels per output voxel (the grid keeps its extent)
    def ratio(seg, k):
        return (seg == k).sum() * scale / (labels == k).sum()
    # the tumours lie wholly inside the liver: the arg-max gives a third of them to it ...
    assert ratio(plain, 2) < 0.7
    # ... and they take it back from the liver, which keeps its own volume (from the background)
    assert ratio(kept, 2) == pytest.approx(1.0, rel=0.1)
    assert ratio(kept, 1) == pytest.approx(1.0, abs=KEEP_VOLUME_TOLERANCE + 0.002)
    # what the tumours took was liver next to them: every added tumour voxel was liver
    assert np.all(plain[(kept == 2) & (plain != 2)] == 1)
    # three nested classes: a region of the liver holding the tumours; the region gives voxels to
    # the tumours and takes its own back from the liver in the next round
    z, y, x = np.mgrid[:40, :64, :64]
    nested = labels.copy()
    nested[labels == 2] = 3
    nested[(((z - 20) / 9) ** 2 + ((y - 32) / 15) ** 2 + ((x - 30) / 14) ** 2 < 1) & (labels == 1)] = 2
    kept = resample_labels(nested, src, dst, 4)
    for k in (1, 2, 3):
        assert (kept == k).sum() * scale / (nested == k).sum() == pytest.approx(1.0, abs=0.01)


def test_keeping_volume_leaves_large_structures_as_plain_resampling() -> None:
    _, labels = phantom(shape=(20, 40, 40))
    dst = (1.6, 1.1, 1.3)
    plain = resample_labels(labels, SPACING, dst, 3, keep_volume=False)
    kept = resample_labels(labels, SPACING, dst, 3)
    assert np.mean(kept != plain) < 0.002  # a sphere is not thinned; at most a few boundary voxels


def test_probabilities_to_labels_keeps_the_predicted_volume() -> None:
    labels = vessel_tree()
    probs = np.stack([labels == k for k in range(3)]).astype(np.float32)
    dst_shape = (15, 47, 33)
    plain = probabilities_to_labels(probs, dst_shape, keep_volume=False)
    kept = probabilities_to_labels(probs, dst_shape)
    ref = resample_probabilities(probs, dst_shape).argmax(0)
    assert np.array_equal(plain, ref)  # without keeping volumes: linear resampling and arg-max
    scale = np.prod(labels.shape) / np.prod(dst_shape)
    assert (plain == 1).sum() * scale < 0.8 * (labels == 1).sum()
    assert (kept == 1).sum() * scale == pytest.approx((labels == 1).sum(), rel=0.1)
    assert np.array_equal(probabilities_to_labels(probs, labels.shape), labels)  # same grid: arg-max


# --- case preprocessing and restore --------------------------------------------------------------

def test_preprocess_case_and_restore_round_trip(tmp_path: Path) -> None:
    image, labels = phantom()
    img, lab = write_case(tmp_path, "blob", image, labels)
    plans = make_plans(target_spacing=(3.0, 1.3, 1.3), resampling=Resampling(order_image=1))
    pre = preprocess_case([img], lab, plans)
    props = pre.properties
    assert props["case_id"] == "blob" and props["original_shape"] == list(image.shape)
    assert pre.data.shape == (1, *props["shape_after_resampling"]) and pre.seg.shape == pre.data.shape[1:]
    low, high = (WINDOW[0] - 60) / 50, (WINDOW[1] - 60) / 50  # linear resampling stays in the window
    assert pre.data.min() == pytest.approx(low) and pre.data.max() <= high + 1e-5
    assert props["intensity_min"][0] < -900 and props["intensity_max"][0] > 150
    locations = np.array(props["class_locations"]["2"])
    assert len(locations) == props["class_voxels"]["2"] > 0 and np.all(pre.seg[tuple(locations.T)] == 2)
    assert preprocess_case([img], lab, plans).properties["class_locations"] == props["class_locations"]
    restored = restore_to_original(pre.seg, props)
    assert restored.shape == labels.shape
    assert dice(restored == 1, labels == 1) > 0.95 and dice(restored >= 1, labels >= 1) > 0.95
    onehot = np.stack([pre.seg == k for k in range(3)]).astype(np.float32)
    probs = restore_to_original(onehot, props)
    assert probs.shape == (3, *labels.shape)
    outside = np.ones(labels.shape, bool)
    outside[tuple(slice(a, b) for a, b in props["crop_bbox"])] = False
    assert np.all(probs[0][outside] == 1) and np.all(probs[1:, outside] == 0)
    assert dice(probs.argmax(0) >= 1, labels >= 1) > 0.95
    on_input = labels_on_original_grid(onehot, props)  # what predict and fold validation write
    assert on_input.shape == labels.shape and not on_input[outside].any()
    assert dice(on_input == 1, labels == 1) > 0.95 and dice(on_input >= 1, labels >= 1) > 0.95
    # this 71-voxel tumour inside the liver is 16-22 voxels on the coarse grid, where ties of the
    # one-hot interpolation let each step match its volume only to a few voxels: ~0.83 kept
    # through the round trip (before tumours could take voxels back from the liver: ~0.7)
    assert 0.75 < (on_input == 2).sum() / (labels == 2).sum() < 1.1
    with pytest.raises(ValueError, match="do not match the preprocessed shape"):
        labels_on_original_grid(onehot[:, :-1], props)


def test_inference_case_without_label(tmp_path: Path) -> None:
    image, _ = phantom()
    img, _ = write_case(tmp_path, "new_0000", image, None)
    pre = preprocess_case([img], None, make_plans())
    assert pre.seg is None and pre.properties["case_id"] == "new" and "class_locations" not in pre.properties


# --- storage and re-runs -------------------------------------------------------------------------

def test_storage_layout_skip_and_stale_rerun(tmp_path: Path) -> None:
    dataset = load_dataset(make_task(tmp_path / "raw"))
    out = tmp_path / "pre"
    plans = make_plans()
    assert preprocess_dataset(dataset, plans, out, num_workers=1) == ["tiny_0", "tiny_1"]
    files = sorted((out / "data").iterdir())
    assert [f.name for f in files] == ["tiny_0.b2nd", "tiny_0.json", "tiny_0_seg.b2nd",
                                       "tiny_1.b2nd", "tiny_1.json", "tiny_1_seg.b2nd"]
    assert case_ids(out) == ["tiny_0", "tiny_1"]
    arr, seg, props = load_case(out, "tiny_0")
    assert arr.dtype == np.float32 and arr.shape == (1, *props["shape_after_resampling"])
    assert seg.dtype == np.uint8 and seg.shape == tuple(props["shape_after_resampling"])
    assert set(np.unique(seg[...])) == {0, 1, 2}
    whole = preprocess_case(dataset.cases[0].images, dataset.cases[0].label, plans)
    assert np.array_equal(arr[...], whole.data) and np.array_equal(seg[...], whole.seg)  # stored without loss
    assert np.array_equal(arr[:, 1:4, 2:9, 3:5], whole.data[:, 1:4, 2:9, 3:5])  # a patch read from its chunks
    assert np.array_equal(load_labels(out / "data", "tiny_0"), whole.seg)
    assert props["plans_key"] and props["target_spacing"] == [2.5, 1.6, 1.6]
    before = [f.stat().st_mtime_ns for f in files]
    assert preprocess_dataset(dataset, plans, out, num_workers=2) == ["tiny_0", "tiny_1"]
    assert [f.stat().st_mtime_ns for f in files] == before  # up to date: nothing rewritten
    coarser = plans.replace(target_spacing=(5.0, 1.6, 1.6))
    preprocess_dataset(dataset, coarser, out, num_workers=2)  # stale: redone, in worker processes
    arr, seg, props = load_case(out, "tiny_1")
    assert props["target_spacing"] == [5.0, 1.6, 1.6] and arr.shape[1] == round(16 * 2.5 / 5.0) == seg.shape[0]
    assert all(f.stat().st_mtime_ns != b for f, b in zip(files, before))


def test_label_file_missing_or_wrong_dtype_means_stale(tmp_path: Path) -> None:
    """A case stored the pre-version-3 way (labels inside the image) or with a lost label file is
    redone, and training names the folder and the fix."""
    dataset = load_dataset(make_task(tmp_path / "raw", n=1))
    out, plans = tmp_path / "pre", make_plans()
    preprocess_dataset(dataset, plans, out, num_workers=1)
    key = plans_key(plans)
    assert is_up_to_date(out, "tiny_0", key)
    seg_file = out / "data" / "tiny_0_seg.b2nd"
    float_labels = load_labels(out / "data", "tiny_0").astype(np.float32)
    blosc2.asarray(float_labels, urlpath=str(seg_file), mode="w")
    assert not is_up_to_date(out, "tiny_0", key)
    seg_file.write_bytes(seg_file.read_bytes()[:-40])  # truncated: blosc2 cannot open it
    assert not is_up_to_date(out, "tiny_0", key)
    with pytest.raises(AutosegError, match="damaged or incomplete"):
        load_labels(out / "data", "tiny_0")
    seg_file.unlink()
    assert not is_up_to_date(out, "tiny_0", key)
    with pytest.raises(AutosegError, match="plan_and_preprocess"):
        CaseStore(out / "data", ["tiny_0"])
    with pytest.raises(AutosegError, match="tiny_0_seg.b2nd"):
        load_labels(out / "data", "tiny_0")
    preprocess_dataset(dataset, plans, out, num_workers=1)
    assert is_up_to_date(out, "tiny_0", key) and seg_file.is_file()


def test_a_folder_of_uncompressed_npy_cases_is_refused_then_rewritten(tmp_path: Path) -> None:
    """A case as autoseg before preprocessing version 4 stored it (plain .npy arrays): training and
    loading name it and the fix; preprocessing again writes .b2nd arrays and removes the .npy files."""
    dataset = load_dataset(make_task(tmp_path / "raw", n=1))
    out, plans = tmp_path / "pre", make_plans()
    preprocess_dataset(dataset, plans, out, num_workers=1)
    data = out / "data"
    image, labels, _ = load_case(out, "tiny_0", lazy=False)
    for name, array in (("tiny_0", image), ("tiny_0_seg", labels)):
        np.save(data / f"{name}.npy", array)
        (data / f"{name}.b2nd").unlink()
    assert not is_up_to_date(out, "tiny_0", plans_key(plans))
    with pytest.raises(AutosegError, match="before preprocessing version 4") as err:
        load_case(out, "tiny_0")
    assert "plan_and_preprocess" in str(err.value) and err.value.path == data
    with pytest.raises(AutosegError, match="uncompressed .npy"):
        CaseStore(data, ["tiny_0"])
    preprocess_dataset(dataset, plans, out, num_workers=1)
    assert sorted(p.name for p in data.iterdir()) == ["tiny_0.b2nd", "tiny_0.json", "tiny_0_seg.b2nd"]


@pytest.mark.parametrize("shape, patch, chunks, blocks", [
    ((1, 60, 300, 400), (24, 80, 96), (1, 24, 80, 96), (1, 12, 20, 24)),
    ((60, 300, 400), (24, 80, 96), (24, 80, 96), (12, 20, 24)),
    ((2, 10, 50, 40), (24, 80, 96), (1, 10, 50, 40), (1, 10, 25, 20)),  # a patch larger than the case
    ((1, 60, 300, 400), None, (1, 32, 96, 96), (1, 16, 12, 24)),
])
def test_chunks_follow_the_patch_and_blocks_fit_the_cache(shape, patch, chunks, blocks) -> None:
    from autoseg.preprocessing.storage import BLOCK_ELEMENTS, chunk_shapes
    assert chunk_shapes(shape, patch) == (chunks, blocks)
    assert int(np.prod(blocks)) <= BLOCK_ELEMENTS


def test_case_named_like_another_cases_label_file_is_refused(tmp_path: Path) -> None:
    task = make_task(tmp_path / "raw", n=1)
    for sub in ("imagesTr", "labelsTr"):
        src = next((task / sub).glob("tiny_0*"))
        shutil.copy(src, src.with_name(src.name.replace("tiny_0", "tiny_0_seg")))
    with pytest.raises(DatasetError, match="tiny_0_seg"):
        preprocess_dataset(load_dataset(task), make_plans(), tmp_path / "pre", num_workers=1)
    assert not (tmp_path / "pre").exists()


def test_corrupt_image_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    task = make_task(tmp_path / "raw", n=2)
    bad = task / "imagesTr" / "tiny_1.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI file")
    out = tmp_path / "pre"
    with pytest.raises(ImageReadError, match="tiny_1.nii.gz"):  # in this process
        preprocess_dataset(load_dataset(task), make_plans(), out, num_workers=1, cases=["tiny_1"])
    assert not (out / "data").exists() or not any((out / "data").iterdir())
    with pytest.raises(ImageReadError, match="tiny_1.nii.gz"):  # raised in a worker process
        preprocess_dataset(load_dataset(task), make_plans(), out, num_workers=2)
    assert sorted(p.name for p in (out / "data").iterdir()) in ([], ["tiny_0.b2nd", "tiny_0.json", "tiny_0_seg.b2nd"])


# --- validation ----------------------------------------------------------------------------------

def _case(tmp_path: Path) -> Case:
    return Case("c1", (tmp_path / "img_c1.nii.gz",), tmp_path / "lab_c1.nii.gz")


LABELS = {0: "background", 1: "liver"}


def test_validate_case_accepts_a_good_case(tmp_path: Path) -> None:
    geom = geometry((4, 5, 6))
    validate_case(_case(tmp_path), np.zeros((1, 4, 5, 6), np.float32), geom,
                  np.ones((4, 5, 6), np.int16), geom, LABELS, 1)


@pytest.mark.parametrize("problem, match", [
    ("nan", "1 non-finite voxel.*1 NaN"), ("inf", "infinite"), ("channels", "2 channel.*but 1 are expected"),
    ("shape", "img_c1.*lab_c1.*shape"), ("spacing", "img_c1.*lab_c1.*spacing"),
    ("origin", "img_c1.*lab_c1.*origin"), ("values", r"value\(s\) 3, 7 not declared"),
])
def test_validate_case_errors(tmp_path: Path, problem: str, match: str) -> None:
    image = np.zeros((1, 4, 5, 6), np.float32)
    label = np.ones((4, 5, 6), np.int16)
    geom, label_geom = geometry((4, 5, 6)), geometry((4, 5, 6))
    if problem == "nan":
        image[0, 1, 2, 3] = np.nan
    elif problem == "inf":
        image[0, 0, 0, 0] = -np.inf
    elif problem == "channels":
        image = np.zeros((2, 4, 5, 6), np.float32)
    elif problem == "shape":
        label = np.ones((4, 5, 7), np.int16)
    elif problem == "spacing":
        label_geom = geometry((4, 5, 6), spacing=(3.0, 0.8, 0.8))
    elif problem == "origin":
        label_geom = geometry((4, 5, 6), origin=(-10.0, 5.0, 22.5))
    elif problem == "values":
        label[0, 0, :2] = (3, 7)
    error = ImageReadError if problem in ("nan", "inf") else DatasetError  # one policy with image reading
    with pytest.raises(error, match=match):
        validate_case(_case(tmp_path), image, geom, label, label_geom, LABELS, 1)
