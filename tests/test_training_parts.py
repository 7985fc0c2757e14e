"""Training parts in isolation: splits, losses, patch sampling, augmentation stream, recipes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError, ConfigurationError
from autoseg.plans import Augmentation, Recipe
from autoseg.preprocessing.storage import write_case
from autoseg.training.data import (CaseStore, PatchLoader, crop_with_padding, make_train_stream,
                                   validation_patches)
from autoseg.training.losses import DeepSupervision, build_loss, soft_dice_per_class
from autoseg.training.recipes import PlateauState, poly_lr, recipe_named
from autoseg.training.splits import load_or_create_splits, make_splits
from tests.test_schema import make_properties


def write_preprocessed(out: Path, n: int = 3, shape=(16, 40, 40)) -> list[str]:
    """Cases written by preprocessing's own storage into ``out/data``: a float32 image, a uint8
    label map and class locations."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        seg = np.zeros(shape, np.uint8)
        seg[5:7, 30:32, 30:32] = 1  # a tiny class in a corner
        seg[10:14, 5:12, 5:12] = 2
        locs = {k: np.argwhere(seg == k).tolist() for k in (1, 2)}
        write_case(out, f"case_{i}", image, seg, make_properties(f"case_{i}", shape, locs))
        names.append(f"case_{i}")
    return names


def test_splits_are_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    cases = [f"c{i:02d}" for i in range(12)]
    a, b = make_splits(cases, 7), make_splits(list(reversed(cases)), 7)
    assert a == b and len(a) == 5
    assert sorted(c for s in a for c in s["val"]) == cases
    for s in a:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 12
    assert make_splits(cases, 8) != a


def test_splits_file_written_once_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    first = load_or_create_splits(path, ["a", "b", "c"], 1)
    edited = [{"train": ["a", "b"], "val": ["c"]}] * 5
    path.write_text(json.dumps(edited))
    assert load_or_create_splits(path, ["a", "b", "c"], 1) == edited != first
    path.write_text(json.dumps([{"train": ["zz"], "val": ["a"]}]))
    with pytest.raises(AutosegError, match="zz"):
        load_or_create_splits(path, ["a", "b", "c"], 1)


def test_soft_dice_ignores_background_and_is_one_for_perfect_logits() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:4, 2:4] = 1
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    dice = soft_dice_per_class(perfect, target)
    assert dice.shape == (2,) and dice[0] == pytest.approx(1.0, abs=1e-4)
    blank = torch.zeros(2, 3, 8, 8)
    blank[:, 0] = 50  # predicts background everywhere
    assert soft_dice_per_class(blank, target)[0] < 0.01


@pytest.mark.parametrize("name", ["dice_ce", "dice_wce", "dice_wce_anneal", "dice", "dice03_ce07",
                                  "weighted_dice_focal"])
def test_losses_decrease_towards_the_target(name: str) -> None:
    loss = DeepSupervision(build_loss(name))
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5, 2:5] = 1
    target[:, 6, 6, 6] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 5
    bad = torch.zeros_like(good)
    assert float(loss(good, target)) < float(loss(bad, target))
    ds = [good, good[:, :, ::2, ::2, ::2], good[:, :, ::4, ::4, ::4]]
    assert torch.isfinite(loss(ds, target))


def test_rarity_weighted_ce_strengthens_the_rare_class_signal() -> None:
    from autoseg.training.losses import rarity_weights

    target = torch.zeros(1, 20, 20, 20, dtype=torch.long)
    target[0, :2, :2, :2] = 1       # 8 voxels of 8000: rare
    target[0, 10:, 10:, 10:] = 2    # 1000 voxels: common
    w = rarity_weights(target, 3)
    assert w[0] == 1.0 and w[1] > w[2] > 1.0 and w[1] <= 30.0
    # a network that predicts background everywhere: the rare voxels' logit gradient is larger
    grads = {}
    for name in ("dice_ce", "dice_wce"):
        logits = torch.zeros(1, 3, 20, 20, 20)
        logits[:, 0] = 4.0
        logits.requires_grad_(True)
        build_loss(name)(logits, target).backward()
        grads[name] = float(-logits.grad[0, 1, :2, :2, :2].mean())
    assert grads["dice_wce"] > 5 * grads["dice_ce"] > 0


def test_annealed_weights_go_from_rarity_weighted_to_plain_dice_ce() -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 10, 10, 10, dtype=torch.long)
    target[:, :2, :2, :2] = 1
    target[:, 5:, 5:, 5:] = 2
    logits = [torch.randn(2, 3, 10, 10, 10), torch.randn(2, 3, 5, 5, 5)]
    annealed = DeepSupervision(build_loss("dice_wce_anneal"))
    for progress, same_as in ((0.0, "dice_wce"), (1.0, "dice_ce"), (7.0, "dice_ce")):
        annealed.set_progress(progress)  # the training loop calls this before every step
        expected = DeepSupervision(build_loss(same_as))(logits, target)
        assert float(annealed(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    annealed.set_progress(0.5)
    half = float(annealed(logits, target))
    ends = [float(DeepSupervision(build_loss(n))(logits, target)) for n in ("dice_ce", "dice_wce")]
    assert min(ends) < half < max(ends)
    DeepSupervision(build_loss("dice_ce")).set_progress(0.3)  # a loss without a schedule ignores it


def test_unknown_loss_and_recipe_list_known_names() -> None:
    with pytest.raises(ConfigurationError, match="dice_ce"):
        build_loss("dice_cee")
    with pytest.raises(ConfigurationError, match="Did you mean 'sgd_poly'"):
        recipe_named("sgd_pol")


def test_poly_and_plateau_schedules() -> None:
    assert poly_lr(1e-2, 0.0) == 1e-2 and poly_lr(1e-2, 1.0) == 0.0 and poly_lr(1e-2, 0.5) < 1e-2
    recipe = recipe_named("adam_plateau")
    state = PlateauState(recipe.initial_lr)
    stops = [state.update(s, recipe) for s in [0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]]
    assert state.lr == pytest.approx(recipe.initial_lr / 2) and stops[-1] and not any(stops[:-1])


def test_recipe_keeps_planned_schedule() -> None:
    base = Recipe(epochs=7, iterations_per_epoch=3, loss="dice")
    r = recipe_named("adam_plateau", base)
    assert (r.optimizer, r.epochs, r.iterations_per_epoch, r.loss) == ("adam", 7, 3, "dice")


def test_crop_with_padding_pads_outside() -> None:
    arr = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4) + 1
    out = crop_with_padding(arr, np.array([0, 0, 0]), (4, 4, 4))
    assert out.shape == (2, 4, 4, 4) and out.dtype == np.float32
    assert np.array_equal(out[:, 2:, 2:, 2:], arr[:, :2, :2, :2]) and (out[:, :2] == 0).all()
    labels = np.full((1, 4, 4, 4), 3, np.uint8)
    cut = crop_with_padding(labels, np.array([3, 3, 3]), (4, 4, 4))
    assert cut.dtype == np.uint8 and cut[0, :3, :3, :3].min() == 3 and cut[0, 3].max() == 0


def test_patch_stacks_image_and_labels_and_pads_labels_as_background(tmp_path: Path) -> None:
    cases = write_preprocessed(tmp_path)
    store = CaseStore(tmp_path / "data", cases)
    assert store.image(cases[0]).dtype == np.float32 and store.labels(cases[0]).dtype == np.uint8
    patch = store.patch(cases[0], np.array([11, 7, 7]), (8, 8, 8))  # the class-2 block, near a corner
    assert patch.shape == (2, 8, 8, 8) and patch.dtype == np.float32
    assert np.array_equal(patch[0], np.asarray(store.image(cases[0])[0, 7:15, 3:11, 3:11]))
    assert np.array_equal(patch[1], np.asarray(store.labels(cases[0])[7:15, 3:11, 3:11], np.float32))
    edge = store.patch(cases[0], np.array([0, 0, 0]), (4, 4, 4))
    assert (edge[:, :2] == 0).all() and (edge[:, :, :2] == 0).all()


def test_oversampling_puts_rare_classes_in_patches(tmp_path: Path) -> None:
    cases = write_preprocessed(tmp_path)
    store = CaseStore(tmp_path / "data", cases)
    loader = PatchLoader(store, (8, 16, 16), 10, oversample=1.0, seed=0)
    seen = {1: 0, 2: 0}
    for _ in range(5):
        seg = loader.generate_train_batch()["seg"]
        for b in range(seg.shape[0]):
            for k in seen:
                seen[k] += int((seg[b] == k).any())
    assert seen[1] >= 15 and seen[2] >= 15  # each class drawn about half the time, and always present
    random_loader = PatchLoader(store, (8, 16, 16), 10, oversample=0.0, seed=0)
    hits = sum(int((random_loader.generate_train_batch()["seg"] == 1).any(axis=(1, 2, 3, 4)).sum())
               for _ in range(5))
    assert hits < seen[1]


def test_the_components_sampler_draws_small_lesions_as_often_as_large_ones(tmp_path: Path) -> None:
    """One tumour of 1000 voxels and one of 8 (a small lesion): by voxels the small one is forced into
    about 1 patch in 126, by components into about half of them."""
    shape = (20, 40, 40)
    seg = np.zeros(shape, np.uint8)
    seg[2:12, 2:12, 2:12] = 1  # 1000 voxels
    seg[16:18, 30:32, 30:32] = 1  # 8 voxels, far from it
    locs = {1: np.argwhere(seg == 1).tolist()}
    write_case(tmp_path, "case", np.zeros((1, *shape), np.float32), seg, make_properties("case", shape, locs))
    store = CaseStore(tmp_path / "data", ["case"])
    small = {sampler: sum(int(PatchLoader(store, (4, 4, 4), 1, 1.0, seed, sampler).centre("case", True)[0] >= 16)
                          for seed in range(400)) for sampler in ("voxels", "components")}
    assert small["voxels"] <= 12 and 150 <= small["components"] <= 250
    assert [len(g) for g in store.components("case")[1]] in ([1000, 8], [8, 1000])
    with pytest.raises(ValueError, match="sampler"):
        PatchLoader(store, (4, 4, 4), 1, 1.0, 0, "lesions")  # type: ignore[arg-type]


def test_missing_preprocessed_case_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AutosegError, match="plan_and_preprocess"):
        CaseStore(tmp_path, ["nope"])


def test_augmented_stream_in_background_process(tmp_path: Path) -> None:
    cases = write_preprocessed(tmp_path)
    stream = make_train_stream(CaseStore(tmp_path / "data", cases), (8, 16, 16), Augmentation(in_plane_only=True),
                               2, 0.5, 0, 1)
    try:
        batch = next(stream)
    finally:
        stream._finish()
    assert batch["data"].shape == (2, 1, 8, 16, 16) and batch["seg"].shape == (2, 1, 8, 16, 16)
    assert set(np.unique(batch["seg"].numpy())) <= {0.0, 1.0, 2.0}


def test_the_store_keeps_only_the_recently_used_cases_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open case stays memory-mapped and the pages its reads touched count as the process's
    memory: the store keeps the OPEN_CASES most recently used cases open and reopens the others,
    with the same data."""
    import autoseg.training.data as data

    cases = write_preprocessed(tmp_path, n=5)
    monkeypatch.setattr(data, "OPEN_CASES", 2)
    store = CaseStore(tmp_path / "data", cases)
    first = store.patch(cases[0], np.array([8, 20, 20]), (8, 16, 16))
    for case in cases[1:]:
        store.patch(case, np.array([8, 20, 20]), (8, 16, 16))
        assert len(store._images) <= 2 and len(store._labels) <= 2
    assert list(store._images) == cases[-2:] and list(store._labels) == cases[-2:]
    assert np.array_equal(store.patch(cases[0], np.array([8, 20, 20]), (8, 16, 16)), first)  # opened again
    store.image(cases[-1])
    assert list(store._images) == [cases[0], cases[-1]]  # the most recently used stay


# --- train --init ----------------------------------------------------------------------------------

def test_init_copies_every_matching_tensor_and_refuses_another_network() -> None:
    """A pretrained 3-class model starts a 2-class network: all but the output layers are copied;
    a network of other widths is refused, naming the planning fix."""
    from autoseg.networks import build_network
    from autoseg.training.loop import transfer_weights
    from tests.test_networks import KERNELS_3D, STRIDES_3D, kwargs_for

    torch.manual_seed(0)
    source = build_network("arunet", kwargs_for("arunet", STRIDES_3D, KERNELS_3D), 1, 4)
    target = build_network("arunet", kwargs_for("arunet", STRIDES_3D, KERNELS_3D), 1, 3)
    weights = source.state_dict()
    share = transfer_weights(target, weights, "pretrained")
    assert 0.9 < share < 1.0
    after = target.state_dict()
    copied = [k for k in after if after[k].shape == weights[k].shape]
    assert copied and all(torch.equal(after[k], weights[k]) for k in copied)
    heads = [k for k in after if after[k].shape != weights[k].shape]
    assert heads and all("seg" in k or "out" in k or "head" in k for k in heads), heads
    wide = build_network("arunet", kwargs_for("arunet", STRIDES_3D, KERNELS_3D, base=8), 1, 3)
    with pytest.raises(ConfigurationError, match="match the model's weights") as err:
        transfer_weights(wide, weights, "pretrained")
    assert "--features 8" in str(err.value)


def _dark_lesion_patch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (1, 1, 24, 32, 32) patch of parenchyma (0, noise SD 1) with a lesion of class 2 two SDs
    darker, a vessel of class 1 and a partial label (value 3) in a corner."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, (1, 1, 24, 32, 32)).astype(np.float32)
    seg = np.zeros((1, 1, 24, 32, 32), np.float32)
    seg[0, 0, 8:16, 10:20, 10:20] = 2
    seg[0, 0, 2:4, 2:30, 3:5] = 1
    seg[0, 0, 18:24, 26:32, 26:32] = 3
    data[seg == 2] -= 2.0
    return data, seg


def test_class_contrast_gives_a_class_a_new_cnr_of_either_sign_and_keeps_its_texture() -> None:
    from scipy import ndimage

    from autoseg.training.data import CLASS_CONTRAST_CNR, ClassContrastTransform

    lesion = _dark_lesion_patch()[1][0, 0] == 2
    ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion)
    classes = np.isin(_dark_lesion_patch()[1][0, 0], (1, 2))
    far = ~ndimage.binary_dilation(classes, np.ones((3, 3, 3)), iterations=5) & (_dark_lesion_patch()[1][0, 0] == 0)
    signs = set()
    for seed in range(12):
        data, seg = _dark_lesion_patch()
        before = data.copy()
        np.random.seed(seed)
        out = ClassContrastTransform(1.0, num_classes=3)(data=data, seg=seg)["data"][0, 0]
        cnr = (np.median(out[lesion]) - np.median(out[ring])) / np.std(out[ring])
        assert CLASS_CONTRAST_CNR[0] - 0.3 <= abs(cnr) <= CLASS_CONTRAST_CNR[1] + 0.3
        signs.add(bool(cnr > 0))
        # texture kept: the lesion's voxels move together (one shift, blended only at the edge)
        core = ndimage.binary_erosion(lesion, iterations=3)
        assert np.std(out[core] - before[0, 0][core]) < 1e-4
        assert np.array_equal(out[far], before[0, 0][far])  # nothing changes away from a class
        assert np.array_equal(out[seg[0, 0] == 3], before[0, 0][seg[0, 0] == 3])  # partial labels are left
    assert signs == {True, False}
    data, seg = _dark_lesion_patch()
    before = data.copy()
    assert np.array_equal(ClassContrastTransform(0.0, num_classes=3)(data=data, seg=seg)["data"], before)


def test_train_takes_class_contrast_as_a_probability(tmp_path: Path) -> None:
    from autoseg.cli import build_parser

    args = build_parser().parse_args(["train", "-d", "8", "--class-contrast", "0.3"])
    assert args.class_contrast == 0.3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-d", "8", "--class-contrast", "1.5"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-d", "8", "--class-contrast", "often"])
    cases = write_preprocessed(tmp_path / "data_root")
    stream = make_train_stream(CaseStore(tmp_path / "data_root" / "data", cases), (8, 16, 16),
                               Augmentation(in_plane_only=True), 2, 1.0, 0, 0, class_contrast=1.0, num_classes=3)
    batch = next(stream)
    assert batch["data"].shape == (2, 1, 8, 16, 16)


def test_patches_beyond_the_slice_axis_ends_hold_the_case_mirrored_as_edge_context_shows_it(tmp_path: Path) -> None:
    """`train --edge-context`: a patch reaching beyond either end of the slice axis holds image and
    labels mirrored there, exactly as `predict --edge-context` extends a case; in-plane it pads as before."""
    from autoseg.sliding_window import mirror_context
    from autoseg.sliding_window import reflected

    for n in (1, 2, 7):
        for width in (0, 3, 9):  # wider than the case too: mirrored again
            expected = np.pad(np.arange(n), width, mode="reflect") if n > 1 else np.zeros(n + 2 * width, int)
            assert np.array_equal(reflected(np.arange(-width, n + width), n), expected)
    cases = write_preprocessed(tmp_path)
    store = CaseStore(tmp_path / "data", cases)
    image, labels = np.asarray(store.image(cases[0])[...]), np.asarray(store.labels(cases[0])[...])
    extended, _ = mirror_context(np.concatenate([image, labels[None].astype(np.float32)]), 8)
    for z in (-4, 0, 3, 8, 15, 19):  # patches of 8 slices reaching up to 8 beyond either end of 16
        for y in (2, 20, 39):
            patch = store.patch(cases[0], np.array([z, y, 20]), (8, 12, 12), mirror_ends=True)
            assert np.array_equal(patch, crop_with_padding(extended, np.array([z + 8, y, 20]), (8, 12, 12)))
    top = store.patch(cases[0], np.array([0, 12, 12]), (8, 8, 8), mirror_ends=True)
    assert np.array_equal(top[0, :4], image[0, 4:0:-1, 8:16, 8:16])  # slice -k is slice k
    plain = store.patch(cases[0], np.array([0, 12, 12]), (8, 8, 8))
    assert (plain[:, :4] == 0).all()  # without it the padding stays 0


def test_edge_context_draws_patches_up_to_its_reach_beyond_the_ends_and_no_further(tmp_path: Path) -> None:
    """Random patches reach up to edge_slices beyond the slice axis's ends (the final patch, after the
    augmentation's centre crop of a larger read); without it they stay inside the volume."""
    cases = write_preprocessed(tmp_path, n=1)  # 16 slices
    store = CaseStore(tmp_path / "data", cases)
    reach = PatchLoader(store, (12, 16, 16), 1, 0.0, 0, edge_slices=4, final_depth=8)
    starts = np.array([reach.centre(cases[0], False)[0] - 4 for _ in range(600)])
    assert starts.min() == -4 and starts.max() + 8 == 16 + 4
    # a read of 12 slices centre-cropped to 7 (batchgenerators: from (12 - 7) // 2 = 2): the final
    # patch starts 6 - 2 = 4 slices before the centre, not 7 // 2 = 3
    odd = PatchLoader(store, (12, 16, 16), 1, 0.0, 0, edge_slices=3, final_depth=7)
    starts = np.array([odd.centre(cases[0], False)[0] - 4 for _ in range(600)])
    assert starts.min() == -3 and starts.max() + 7 == 16 + 3
    inside = PatchLoader(store, (8, 16, 16), 1, 0.0, 0)
    starts = np.array([inside.centre(cases[0], False)[0] - 4 for _ in range(600)])
    assert starts.min() == 0 and starts.max() + 8 == 16


def test_train_edge_context_goes_into_the_recipe_and_into_the_stream(tmp_path: Path) -> None:
    import json

    from autoseg.cli import build_parser
    from autoseg.training.run import TrainRequest, apply_overrides
    from tests.test_plans import make_plans

    assert build_parser().parse_args(["train", "-d", "8", "--edge-context", "0.25"]).edge_context == 0.25
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-d", "8", "--edge-context", "1.5"])
    plans = make_plans()
    assert "edge_context" not in json.dumps(plans.to_dict())  # absent unless set: existing plans keep their hash
    trained = apply_overrides(plans, TrainRequest(dataset="8", edge_context=0.25))
    assert trained.recipe.edge_context == 0.25 and apply_overrides(plans, TrainRequest(dataset="8")) == plans
    assert apply_overrides(plans, TrainRequest(dataset="8", edge_context=0.0)) == plans  # 0 is the default: absent
    flat = make_plans(patch_size=(96, 96), target_spacing=(0.8, 0.8), median_shape=(300, 300))
    with pytest.raises(ConfigurationError, match="2D"):
        apply_overrides(flat, TrainRequest(dataset="8", edge_context=0.25))
    cases = write_preprocessed(tmp_path / "data_root", n=1)
    stream = make_train_stream(CaseStore(tmp_path / "data_root" / "data", cases), (8, 16, 16),
                               Augmentation(in_plane_only=True), 2, 0.0, 0, 0, edge_context=0.5)
    assert stream.data_loader.edge_slices == 4 and next(stream)["data"].shape == (2, 1, 8, 16, 16)
    # the validation patches reach beyond the ends as the training ones do, mirrored there: a patch of
    # the (random, noise-only) image then holds some slice twice, and never a slice of padding
    store = CaseStore(tmp_path / "data_root" / "data", cases)

    def repeats(p: np.ndarray) -> bool:
        return any(np.array_equal(p[0, i], p[0, j]) for i in range(8) for j in range(i + 1, 8))

    mirrored = validation_patches(store, (8, 16, 16), 40, 0, edge_context=0.5)
    assert any(repeats(p) for p in mirrored) and not any((p[0] == 0).all(axis=(1, 2)).any() for p in mirrored)
    assert not any(repeats(p) for p in validation_patches(store, (8, 16, 16), 40, 0))
