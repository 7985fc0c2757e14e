"""Sliding-window prediction: tiles cover the volume, overlaps average exactly, mirroring is exact
for a mirror-symmetric network, and small volumes are padded and cropped back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg.sliding_window import gaussian_importance, predict_sliding_window, tile_starts


def pointwise_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1), torch.nn.Tanh(), torch.nn.Conv3d(3, 3, 1)).eval()


@pytest.mark.parametrize("shape", [(12, 30, 41), (5, 9, 7)])
def test_matches_whole_volume_forward_for_a_pointwise_network(shape) -> None:
    data = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    net = pointwise_net()
    probs = predict_sliding_window(net, data, (8, 16, 16), 3, overlap=0.5, batch_size=3, precision="fp32")
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(data)[None]), 1)[0].numpy()
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs, whole, atol=1e-5)


def test_mirroring_of_a_pointwise_network_changes_nothing() -> None:
    data = np.random.default_rng(2).normal(size=(1, 10, 20, 20)).astype(np.float32)
    net = pointwise_net()
    a = predict_sliding_window(net, data, (8, 16, 16), 3, precision="fp32")
    b = predict_sliding_window(net, data, (8, 16, 16), 3, mirror_axes=(0, 1, 2), precision="fp32")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiles_cover_every_voxel_with_the_overlap() -> None:
    starts = tile_starts((100, 37), (32, 37), 0.5)
    assert starts[1] == [0] and starts[0][0] == 0 and starts[0][-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(starts[0], starts[0][1:]))


def test_gaussian_weights_peak_in_the_centre_and_never_vanish() -> None:
    g = gaussian_importance((9, 17, 17))
    assert g.max() == g[4, 8, 8] == 1.0 and g.min() > 0


def _plans_with_patch(patch: tuple[int, int, int], strides: list[list[int]]):
    from autoseg.plans import Estimates, NetworkPlan, Normalisation, Plans

    return Plans(dataset_name="t", channel_names=("CT",), labels={0: "background", 1: "a", 2: "b"}, is_ct=True,
                 target_spacing=(2.5, 1.0, 1.0), median_shape=(40, 100, 100), patch_size=patch, batch_size=2,
                 normalisation=(Normalisation("ct", (-160.0, 240.0), 50.0, 40.0),),
                 network=NetworkPlan("arunet", {"n_stages": len(strides), "features_per_stage": [8] * len(strides),
                                                "strides": strides, "kernel_sizes": [[3, 3, 3]] * len(strides),
                                                "deep_supervision": False}),
                 estimates=Estimates("cpu", 2**30, 2**29))


def test_inference_tiles_grow_by_the_scale_in_steps_of_the_networks_stride_up_to_the_case() -> None:
    from autoseg.sliding_window import inference_tile

    plans = _plans_with_patch((24, 64, 96), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]])  # 8, 16, 16
    assert inference_tile(plans, (100, 400, 400), 1.0) == (24, 64, 96)
    assert inference_tile(plans, (100, 400, 400), 2.0) == (48, 128, 192)
    assert inference_tile(plans, (100, 400, 400), 1.3) == (32, 96, 128)  # 31.2, 83.2, 124.8 rounded up by stride
    assert inference_tile(plans, (30, 100, 150), 4.0) == (24, 96, 144)  # at most the case: no new padding
    assert inference_tile(plans, (10, 40, 40), 4.0) == (24, 64, 96)  # never below the patch (the case is padded)
    with pytest.raises(ValueError, match="at least 1"):
        inference_tile(plans, (100, 400, 400), 0.5)
    with pytest.raises(ValueError, match="no strides"):
        inference_tile(_plans_with_patch((24, 64, 96), []), (100, 400, 400), 2.0)


def test_a_larger_tile_slides_the_same_pointwise_network_to_the_same_probabilities() -> None:
    from autoseg.sliding_window import WindowOptions, slide

    data = np.random.default_rng(3).normal(size=(1, 20, 40, 40)).astype(np.float32)
    plans = _plans_with_patch((8, 16, 16), [[1, 1, 1], [2, 2, 2]])
    net = pointwise_net()
    seen: list[tuple[int, ...]] = []
    net.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    small = slide(net, data, plans, WindowOptions(precision="fp32"))
    small_tiles = sum(s[0] for s in seen)
    seen.clear()
    large = slide(net, data, plans, WindowOptions(precision="fp32", tile_scale=2.0))
    assert {s[2:] for s in seen} == {(16, 32, 32)} and all(s[0] == 1 for s in seen)  # one large tile a pass
    assert len(seen) < small_tiles / 4
    np.testing.assert_allclose(small, large, atol=1e-5)


def conv_net(seed: int) -> torch.nn.Module:
    """A network with context (3x3x3), so tiles disagree where they overlap and the weights matter."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(3, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("shape", [(12, 30, 41), (5, 9, 7)])  # the second is padded up to the patch
def test_networks_added_into_one_array_give_their_mean(shape) -> None:
    """``out``/``scale``: two networks' probabilities added into one array, each times a half, are the
    mean of the two as predicted alone, with a mask of wanted voxels too (uncovered voxels get nothing)."""
    data = np.random.default_rng(3).normal(size=(1, *shape)).astype(np.float32)
    where = np.zeros(shape, bool)
    where[:2, :3, :3] = True
    for mask in (None, where):
        alone = [predict_sliding_window(conv_net(s), data, (8, 16, 16), 3, overlap=0.5, precision="fp32", where=mask)
                 for s in (0, 1)]
        out = np.zeros((3, *shape), np.float32)
        for s in (0, 1):
            got = predict_sliding_window(conv_net(s), data, (8, 16, 16), 3, overlap=0.5, precision="fp32",
                                         where=mask, out=out, scale=0.5)
            assert got is out
        np.testing.assert_allclose(out, (alone[0] + alone[1]) / 2, atol=1e-6)
        if mask is not None and shape[2] > 16:
            assert not out[:, :, :, -8:].any()  # tiles holding no wanted voxel were never predicted
    with pytest.raises(ValueError, match="output of shape"):
        predict_sliding_window(conv_net(0), data, (8, 16, 16), 3, out=np.zeros((2, *shape), np.float32))


def z_context_net() -> torch.nn.Module:
    """Each output voxel sees its neighbours along z (zero-padded at a tile's border)."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, (3, 1, 1), padding=(1, 0, 0)), torch.nn.Tanh(),
                               torch.nn.Conv3d(3, 3, 1)).eval()


@pytest.mark.parametrize("shape", [(12, 30, 41), (5, 9, 7), (1, 20, 20)])
def test_edge_context_slides_the_case_mirrored_beyond_its_slice_ends_and_crops_it_back(shape) -> None:
    """``edge_context`` is the same as sliding over the case extended by mirrored slices and cropping
    the extension off: the end slices see their mirrored neighbours, not the tile's zero border."""
    from autoseg.sliding_window import mirror_context

    data = np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32)
    net, patch = z_context_net(), (8, 16, 16)
    width = 2
    got = predict_sliding_window(net, data, patch, 3, precision="fp32", edge_slices=width)
    mode = "reflect" if shape[0] > 1 else "edge"
    extended = np.pad(data, [(0, 0), (width, width), (0, 0), (0, 0)], mode=mode)  # type: ignore[call-overload]
    assert np.array_equal(mirror_context(data, width)[0], extended)
    want = predict_sliding_window(net, extended, patch, 3, precision="fp32")[:, width:width + shape[0]]
    assert got.shape == (3, *shape)
    np.testing.assert_allclose(got, want, atol=1e-6)
    plain = predict_sliding_window(net, data, patch, 3, precision="fp32")
    assert np.abs(got[:, 0] - plain[:, 0]).max() > 1e-3  # the first slice's context changed
    np.testing.assert_allclose(predict_sliding_window(net, data, patch, 3, precision="fp32", edge_slices=0), plain)


def test_edge_context_only_for_networks_trained_mirrored_along_the_slice_axis() -> None:
    """Mirrored context shows anatomy upside down: only a network whose training mirrored along z
    has seen that (a family-2 Task08 model that had not lost vessel Dice with it)."""
    from autoseg.plans import Augmentation
    from autoseg.sliding_window import edge_context_of
    from tests.test_plans import make_plans

    assert edge_context_of(make_plans(augmentation=Augmentation(False, (0, 1))), 0.25) == 0.25
    assert edge_context_of(make_plans(augmentation=Augmentation(False, (1,))), 0.25) == 0.0
    assert edge_context_of(make_plans(), 0.25) == 0.25  # plans before mirror_axes: all three axes
    assert edge_context_of(make_plans(patch_size=(96, 96), target_spacing=(0.8, 0.8), median_shape=(300, 300)),
                           0.25) == 0.0  # 2D: no slice axis in the patch


def test_edge_context_for_a_network_trained_with_it_whatever_its_mirroring() -> None:
    """`train --edge-context` shows a network the mirrored ends, so it gets edge context at prediction
    even where its training did not mirror along z."""
    import dataclasses

    from autoseg.plans import Augmentation
    from autoseg.sliding_window import edge_context_of, edge_slices_of
    from tests.test_plans import make_plans

    plans = make_plans(augmentation=Augmentation(False, (1,)))
    trained = plans.replace(recipe=dataclasses.replace(plans.recipe, edge_context=0.25))
    assert edge_context_of(plans, 0.5) == 0.0 and edge_context_of(trained, 0.5) == 0.5
    assert edge_slices_of(trained, 0.25) == round(0.25 * trained.patch_size[0]) > 0


def test_slide_takes_the_edge_context_as_a_share_of_the_trained_patch_into_an_ensembles_array() -> None:
    """Through :func:`slide` (every model's path), with larger tiles and added into a given array as
    ensembles do: the width is the share of the trained patch's slices, not of the tile."""
    from autoseg.sliding_window import WindowOptions, inference_tile, slide

    plans = _plans_with_patch((8, 16, 16), [[1, 1, 1], [1, 2, 2]])
    data = np.random.default_rng(5).normal(size=(1, 20, 30, 41)).astype(np.float32)
    net = z_context_net()
    options = WindowOptions(edge_context=0.25, tile_scale=2.0, channels_last=False, precision="fp32")
    out = np.zeros((3, *data.shape[1:]), np.float32)
    got = slide(net, data, plans, options, out=out, scale=0.5)
    assert got is out
    width = 2  # a quarter of the trained patch's 8 slices (the tile has 16)
    tile = inference_tile(plans, data.shape[1:], 2.0)
    assert tile[0] == 16
    extended = np.pad(data, [(0, 0), (width, width), (0, 0), (0, 0)], mode="reflect")  # type: ignore[call-overload]
    want = predict_sliding_window(net, extended, tile, 3, batch_size=1, precision="fp32")[:, width:width + 20]
    np.testing.assert_allclose(out, 0.5 * want, atol=1e-6)


def test_a_case_shorter_than_the_patch_is_mirrored_on_up_to_it_as_training_reads_it() -> None:
    """With edge context, a slab shorter than the patch (3 slices, 10 after resampling) is continued by
    mirroring, about its ends again where needed, up to the patch, exactly the slices a training patch
    with edge context holds there; never padded with zeros (which such a network has not seen)."""
    from autoseg.sliding_window import mirror_context
    from autoseg.sliding_window import reflected

    for n in (1, 2, 3, 10, 70):
        data = np.arange(1, n + 1, dtype=np.float32)[None, :, None] + np.zeros((1, 1, 2), np.float32)
        extended, crop = mirror_context(data, 16, at_least=64)
        assert extended.shape[1] == max(64, n + 32) and np.array_equal(extended[(slice(None), *crop)], data)
        start = crop[0].start
        assert np.array_equal(extended[0, :, 0], 1 + reflected(np.arange(-start, extended.shape[1] - start), n))
    plain, _ = mirror_context(np.zeros((1, 10, 2), np.float32), 0)
    assert plain.shape[1] == 10  # nothing asked: the zero padding to the patch stays as it was
    filled, crop = mirror_context(np.arange(10, dtype=np.float32)[None, :, None], 0, at_least=64)
    assert filled.shape[1] == 64 and np.array_equal(filled[0, crop[0], 0], np.arange(10))  # no edge slices: filled


def test_only_a_network_trained_with_edge_context_gets_a_short_case_mirrored_up_to_its_patch() -> None:
    """Through :func:`slide`, a 3-slice case and an 8-slice patch, with a network that sees 3 slices
    either way: a network trained with edge context gets the case mirrored on to the patch, with edge
    context 0.25 (2 slices each end) or none; a network only trained mirrored along z gets its 2 edge
    slices and then the zero padding it was trained with, and without edge context zeros only."""
    import dataclasses

    from autoseg.sliding_window import WindowOptions, slide

    plans = _plans_with_patch((8, 16, 16), [[1, 1, 1], [1, 2, 2]])
    trained = plans.replace(recipe=dataclasses.replace(plans.recipe, edge_context=0.25))
    data = np.random.default_rng(6).normal(size=(1, 3, 16, 16)).astype(np.float32)
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, (7, 1, 1), padding=(3, 0, 0)), torch.nn.Tanh(),
                              torch.nn.Conv3d(3, 3, 1)).eval()
    options = WindowOptions(edge_context=0.25, channels_last=False, precision="fp32")
    none = dataclasses.replace(options, edge_context=0.0)

    def slid(case: np.ndarray, keep: slice) -> np.ndarray:
        return predict_sliding_window(net, case, (8, 16, 16), 3, precision="fp32")[:, keep]

    mirrored = np.pad(data, [(0, 0), (3, 2), (0, 0), (0, 0)], mode="reflect")  # type: ignore[call-overload]
    np.testing.assert_allclose(slide(net, data, trained, options), slid(mirrored, slice(3, 6)), atol=1e-6)
    np.testing.assert_allclose(slide(net, data, trained, none), slid(mirrored, slice(3, 6)), atol=1e-6)
    edges = np.pad(data, [(0, 0), (2, 2), (0, 0), (0, 0)], mode="reflect")  # type: ignore[call-overload]
    np.testing.assert_allclose(slide(net, data, plans, options), slid(edges, slice(2, 5)), atol=1e-6)
    np.testing.assert_allclose(slide(net, data, plans, none), slid(data, slice(0, 3)), atol=1e-6)
    assert not np.allclose(slid(mirrored, slice(3, 6)), slid(edges, slice(2, 5)), atol=1e-3)  # the net tells them apart
