"""Lesion pasting (`train --lesion-paste`): the bank of training lesions, where a lesion may go, what
it looks like there, and the flags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import ConfigurationError
from autoseg.training.lesion_paste import (HOST_REACH_MM, LesionPasteTransform, host_class_of, lesion_bank,
                                           lesion_class_of, lesions_of)

SHAPE = (16, 40, 40)


def _liver_case(level: float, seed: int, lesion_at: tuple[int, int, int] | None = (8, 20, 20),
                lesion_contrast: float = -0.6) -> tuple[np.ndarray, np.ndarray]:
    """A (1, z, y, x) image and its labels: liver (1) at ``level`` with noise of SD 0.1 filling a
    block, background -1 around it, and a ball lesion (2) of ``lesion_contrast`` at ``lesion_at``."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:14, 5:35, 5:35] = 1
    image = np.where(labels == 1, level, -1.0) + rng.normal(0.0, 0.1, SHAPE)
    if lesion_at is not None:
        z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        ball = ((z - lesion_at[0]) / 2.5) ** 2 + ((y - lesion_at[1]) / 4.0) ** 2 + ((x - lesion_at[2]) / 4.0) ** 2 <= 1
        labels[ball] = 2
        image[ball] += lesion_contrast
    return image[None].astype(np.float32), labels


def test_the_bank_holds_each_training_lesion_that_fits_a_patch_with_its_surroundings() -> None:
    image, labels = _liver_case(1.0, 0)
    (lesion,) = lesions_of(image, labels, 2, 1, max_box=(12, 24, 24))
    assert lesion.mask.sum() == (labels == 2).sum()
    assert lesion.around[0] == pytest.approx(1.0, abs=0.03)
    assert lesion.around_sd[0] == pytest.approx(0.1, abs=0.03)
    assert lesions_of(image, labels, 2, 1, max_box=(6, 24, 24)) == []  # too tall for the patch
    assert lesions_of(image, labels, 2, 0, max_box=(12, 24, 24)) == []  # no background around it


def test_a_pasted_lesion_lands_inside_its_host_with_its_contrast_and_texture() -> None:
    source_image, source_labels = _liver_case(1.0, 0)
    (lesion,) = lesions_of(source_image, source_labels, 2, 1, max_box=(12, 24, 24))
    paste = LesionPasteTransform([lesion], 1.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    pasted = 0
    for seed in range(10):
        np.random.seed(seed)
        image, labels = _liver_case(1.05, 100 + seed, lesion_at=None)
        before_image, before_labels = image.copy(), labels.copy()
        if not paste.paste(image[:, ...], labels, lesion):
            continue
        pasted += 1
        new = labels == 2
        assert new.sum() == lesion.mask.sum()
        assert np.all(before_labels[new] == 1)  # all of it in the liver, none in the background
        assert np.array_equal(labels[~new], before_labels[~new])
        # the lesion keeps its contrast to the new surroundings: 1.05 + (0.4 - 1.0)
        assert np.median(image[0][new]) == pytest.approx(0.45, abs=0.05)
        # its texture comes with it: the new voxels are the old ones shifted by one value
        shifts = image[0][new] - source_image[0][source_labels == 2]
        assert np.ptp(shifts) < 1e-4
        # far from the lesion nothing changes
        from scipy import ndimage

        far = ~ndimage.binary_dilation(new, np.ones((3, 3, 3), bool), iterations=3)
        assert np.array_equal(image[0][far], before_image[0][far])
    assert pasted >= 8


def test_no_lesion_goes_where_the_tissue_differs_from_its_own_surroundings() -> None:
    source_image, source_labels = _liver_case(1.0, 0)
    (lesion,) = lesions_of(source_image, source_labels, 2, 1, max_box=(12, 24, 24))
    paste = LesionPasteTransform([lesion], 1.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    np.random.seed(0)
    image, labels = _liver_case(1.0, 1, lesion_at=None)  # the same place, the lesion's own brightness
    assert paste.paste(image, labels, lesion)
    np.random.seed(0)
    image, labels = _liver_case(1.5, 1, lesion_at=None)  # a liver 5 SD brighter than the lesion's own
    before = image.copy()
    assert not paste.paste(image, labels, lesion)
    assert np.array_equal(image, before) and not (labels == 2).any()
    no_liver = np.zeros(SHAPE, np.uint8)
    assert not paste.paste(image, no_liver, lesion)


def test_without_a_labelled_host_a_lesion_goes_into_background_near_the_other_classes() -> None:
    """Task08 labels vessels and tumours, not the liver: a lesion goes into background within
    HOST_REACH_MM of a vessel, never onto the vessel and never far from one."""
    source_image, source_labels = _liver_case(1.0, 0)
    source_labels[source_labels == 1] = 0  # the liver is not labelled
    source_labels[2:14, 20, 30] = 1  # a vessel beside the lesion
    (lesion,) = lesions_of(source_image, source_labels, 2, 0, max_box=(12, 24, 24))
    spacing = (2.0, 1.0, 1.0)
    paste = LesionPasteTransform([lesion], 1.0, lesion=2, host=0, spacing=spacing, num_classes=3)
    from scipy import ndimage

    pasted = 0
    for seed in range(10):
        np.random.seed(seed)
        image, labels = _liver_case(1.0, 200 + seed, lesion_at=None)
        labels[labels == 1] = 0
        labels[2:14, 10:12, 10] = 1  # a vessel
        vessel = labels == 1
        if not paste.paste(image, labels, lesion):
            continue
        pasted += 1
        new = labels == 2
        assert not (new & vessel).any()
        distance = ndimage.distance_transform_edt(~vessel, sampling=spacing)
        assert distance[new].max() <= HOST_REACH_MM * 1.5  # the filter's box reaches its corners
    assert pasted >= 5
    image, labels = _liver_case(1.0, 1, lesion_at=None)
    labels[:] = 0
    assert not paste.paste(image, labels, lesion)  # no other class: nowhere to go


def test_the_transform_pastes_with_its_probability_and_mirrors_lesions(tmp_path: Path) -> None:
    source_image, source_labels = _liver_case(1.0, 0)
    (lesion,) = lesions_of(source_image, source_labels, 2, 1, max_box=(12, 24, 24))
    paste = LesionPasteTransform([lesion], 1.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    batch = [_liver_case(1.0, 300 + i, lesion_at=None) for i in range(4)]
    data = np.stack([b[0] for b in batch])
    seg = np.stack([b[1][None] for b in batch]).astype(np.float32)
    np.random.seed(3)
    out = paste(data=data, seg=seg)
    assert sum(bool((out["seg"][b, 0] == 2).any()) for b in range(4)) >= 3
    data = np.stack([b[0] for b in batch])
    seg = np.stack([b[1][None] for b in batch]).astype(np.float32)
    off = LesionPasteTransform([lesion], 0.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    assert not (off(data=data, seg=seg)["seg"] == 2).any()
    empty = LesionPasteTransform([], 1.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    assert not (empty(data=data, seg=seg)["seg"] == 2).any()
    # mirrored along x, the lesion comes mirrored, image and mask alike: a lesion with one lobe to
    # the right and a ramp along x
    source_image, source_labels = _liver_case(1.0, 0)
    source_labels[7:10, 18:23, 24:27] = 2
    source_image[0][source_labels == 2] = 0.4
    source_image[0] += np.where(source_labels == 2, 0.02 * np.arange(SHAPE[2]), 0.0).astype(np.float32)
    (lopsided,) = lesions_of(source_image, source_labels, 2, 1, max_box=(12, 24, 30))
    paste = LesionPasteTransform([lopsided], 1.0, lesion=2, host=1, spacing=(2.0, 1.0, 1.0), num_classes=3)
    for flips in ((), (2,)):
        image, labels = _liver_case(1.0, 7, lesion_at=None)
        np.random.seed(0)
        assert paste.paste(image, labels, lopsided, flips=flips)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(labels == 2))
        mask = np.flip(lopsided.mask, flips)
        inner = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
        assert np.array_equal(labels[box] == 2, mask[inner])
        expected = np.flip(lopsided.image[0], flips)[inner][mask[inner]]
        assert np.ptp(image[0][box][mask[inner]] - expected) < 1e-4  # the same voxels, one shift


def test_the_bank_reads_the_folds_training_cases_from_the_store(tmp_path: Path) -> None:
    from autoseg.preprocessing.storage import write_case
    from autoseg.training.data import CaseStore
    from tests.test_schema import make_properties

    names = []
    for i in range(3):
        image, labels = _liver_case(1.0, i, lesion_at=(8, 15 + i, 20) if i < 2 else None)
        locs = {k: np.argwhere(labels == k).tolist() for k in (1, 2)}
        write_case(tmp_path, f"case_{i}", image, labels, make_properties(f"case_{i}", SHAPE, locs))
        names.append(f"case_{i}")
    store = CaseStore(tmp_path / "data", names)
    assert len(lesion_bank(store, 2, 1, (20, 48, 48), seed=0)) == 2
    assert len(lesion_bank(CaseStore(tmp_path / "data", names[1:]), 2, 1, (20, 48, 48), seed=0)) == 1
    assert lesion_bank(store, 2, 1, (8, 16, 16), seed=0) == []  # no lesion fits such a patch


def test_the_lesion_class_is_named_or_found_by_its_name() -> None:
    assert lesion_class_of({0: "background", 1: "vessel", 2: "tumour"}, None) == 2
    assert lesion_class_of({0: "background", 1: "liver", 2: "Tumor"}, None) == 2
    assert lesion_class_of({0: "background", 1: "liver", 2: "cancer"}, None) == 2  # MSD Task03's name
    assert lesion_class_of({0: "background", 1: "kidney", 2: "cyst"}, "cyst") == 2
    with pytest.raises(ConfigurationError, match="--lesion-class"):
        lesion_class_of({0: "background", 1: "kidney", 2: "cyst"}, None)
    with pytest.raises(ConfigurationError, match="not a class"):
        lesion_class_of({0: "background", 1: "liver", 2: "tumour"}, "spleen")
    assert host_class_of({2: 1}, 2, {0: "background", 1: "liver", 2: "tumour"}) == 1
    assert host_class_of(None, 2, {0: "background", 1: "vessel", 2: "tumour"}) == 0
    assert host_class_of({2: 3}, 2, {0: "background", 1: "vessel", 2: "tumour"}) == 0  # a parent it does not predict


def test_train_takes_lesion_paste_as_a_probability_and_a_class_name() -> None:
    from autoseg.cli import build_parser

    args = build_parser().parse_args(["train", "-d", "8", "--lesion-paste", "0.3", "--lesion-class", "tumour"])
    assert (args.lesion_paste, args.lesion_class) == (0.3, "tumour")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-d", "8", "--lesion-paste", "2"])
