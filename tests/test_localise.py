"""Localised prediction: the scout's box, and that predicting only inside it gives what predicting
the whole case gives wherever the scout found foreground, for less work."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.inference.localise import localised_probabilities, scout_options, wanted_voxels
from autoseg.inference.model import _FoldNetworks
from autoseg.plans import Plans
from autoseg.sliding_window import WindowOptions, predict_sliding_window, slide
from tests.test_plans import make_plans

PATCH = (8, 16, 16)


class Bright(torch.nn.Module):
    """A pointwise network: class 1 where the input is above 1, else background (so it sees the
    same thing whatever tile a voxel is in). Counts the voxels it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.voxels = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.voxels += x[:, 0].numel()
        score = 8 * (x[:, :1] - 1)
        return torch.cat([torch.zeros_like(score), score, -torch.ones_like(score) * 9], 1)


@dataclass
class Folds:
    """A model of ``n`` folds of the same pointwise network (the Model protocol, real sliding window)."""

    plans: Plans
    n: int = 2
    net: Bright = field(default_factory=Bright)
    folder: Path = Path("folds")
    fixed_precision: None = None

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(range(self.n))

    def probabilities(self, data, options, timings=None, where=None):
        return sum(slide(self.net, data, self.plans, options, timings, where=where) for _ in self.folds) / self.n

    def scout(self, data, options, timings=None, keep_network=False):
        return slide(self.net, data, self.plans, options, timings)


def case(shape=(20, 48, 56), bright=((8, 12), (18, 26), (30, 36))) -> np.ndarray:
    data = np.random.default_rng(0).normal(0, 0.2, size=(1, *shape)).astype(np.float32)
    data[(0, *(slice(a, b) for a, b in bright))] = 3.0
    return data


def test_the_wanted_voxels_are_those_with_enough_foreground() -> None:
    scout = np.zeros((3, 4, 5, 6), np.float32)
    scout[0] = 1
    scout[:, 1, 2, 3] = (0.55, 0.4, 0.05)  # 0.45 foreground: not enough
    scout[:, 2, 2, 3] = (0.45, 0.05, 0.5)  # 0.55 foreground
    assert np.argwhere(wanted_voxels(scout, (1.0, 1.0, 1.0), min_ml=0)).tolist() == [[2, 2, 3]]
    assert not wanted_voxels(scout, (1.0, 1.0, 1.0), min_ml=0.002).any()  # a speck of 1 uL
    scout[:, 2, 2, 4] = scout[:, 2, 2, 3]  # now 2 uL, 26-connected
    assert np.argwhere(wanted_voxels(scout, (1.0, 1.0, 1.0), min_ml=0.002)).tolist() == [[2, 2, 3], [2, 2, 4]]


def test_masked_window_keeps_the_tiles_whose_cell_holds_the_mask_each_with_its_weight_in_the_grid() -> None:
    """A tile is kept when the voxels nearer its centre than any other tile's hold a wanted voxel; a
    voxel all of whose tiles were kept is predicted exactly as over the whole case, one only some
    of them cover gets the part of its probabilities those tiles carry in the whole grid."""
    from autoseg.sliding_window import tile_starts, tiles_whose_cell_holds

    data = case()
    net = Bright()
    whole = predict_sliding_window(net, data, PATCH, 3, overlap=0.5, batch_size=32, precision="fp32")
    starts = tile_starts(data.shape[1:], PATCH, 0.5)  # 4 x 5 x 6 tiles, steps 4, 8, 8
    where = np.zeros(data.shape[1:], bool)
    where[9, 20, 32] = True
    timings: dict[str, float] = {}
    one = predict_sliding_window(net, data, PATCH, 3, overlap=0.5, batch_size=32, precision="fp32",
                                 where=where, timings=timings)
    assert timings["tiles"] == 1 and timings["tiles_total"] == 120  # of the 8 tiles covering it, its nearest
    held = tiles_whose_cell_holds(where, starts, PATCH)
    assert held.sum() == 1 and held[1, 2, 3]  # centres 8, 24, 32: nearest to (9, 20, 32) along every axis
    carried = one.sum(0)
    assert 0.1 < carried[9, 20, 32] < 1 and not (carried > 0).all()
    covered = carried > 0
    np.testing.assert_allclose(one[:, covered] / carried[covered], whole[:, covered], atol=1e-5)  # pointwise net
    block = np.zeros(data.shape[1:], bool)
    block[4:16, 12:36, 16:40] = True  # every cell within a margin of this voxel holds the mask
    some = predict_sliding_window(net, data, PATCH, 3, overlap=0.5, batch_size=32, precision="fp32", where=block)
    np.testing.assert_allclose(some.sum(0)[9, 20, 32], 1, atol=1e-5)
    np.testing.assert_allclose(some[:, 9, 20, 32], whole[:, 9, 20, 32], atol=1e-5)
    assert (some[:, ~(some.sum(0) > 0)] == 0).all() and not (some.sum(0) > 0).all()


def test_every_voxel_lies_in_exactly_one_tiles_cell() -> None:
    from autoseg.sliding_window import tile_cells, tile_starts

    for size, p, overlap in ((100, 32, 0.5), (37, 37, 0.5), (569, 80, 0.5), (90, 24, 0.25), (50, 8, 0.0)):
        starts = tile_starts((size,), (p,), overlap)[0]
        bounds = tile_cells(starts, p, size)
        assert bounds[0] == 0 and bounds[-1] == size and all(a < b for a, b in zip(bounds, bounds[1:]))
        for i, s in enumerate(starts):  # a cell lies inside its tile, around its centre
            assert s <= bounds[i] and bounds[i + 1] <= s + p
            assert bounds[i] <= s + p // 2 <= bounds[i + 1]


def test_localised_gives_what_the_whole_case_gives_for_less_work() -> None:
    plans, data = make_plans(patch_size=PATCH, batch_size=32), case()
    options = WindowOptions(overlap=0.5, precision="fp32")
    whole_model, local_model = Folds(plans), Folds(plans)
    whole = whole_model.probabilities(data, options)
    stats: dict[str, object] = {}
    local = localised_probabilities(local_model, data, options, stats=stats)
    kept, total = stats["tiles"]
    assert 0 < kept < total / 3 and 0 < stats["share"] < 0.5
    np.testing.assert_allclose(local, whole, atol=1e-5)  # pointwise: the scout agrees outside the tiles
    assert np.array_equal(local.argmax(0) == 1, data[0] > 1)
    assert local_model.net.voxels < whole_model.net.voxels / 2  # the scout and two folds over a few tiles


def test_nothing_found_is_the_scouts_background() -> None:
    plans, options = make_plans(patch_size=PATCH, batch_size=32), WindowOptions(overlap=0.5, precision="fp32")
    empty = case(bright=((0, 0), (0, 0), (0, 0))) * 0.5  # noise far below the network's threshold
    model = Folds(plans)
    stats: dict[str, object] = {}
    probs = localised_probabilities(model, empty, options, stats=stats)
    assert stats == {"tiles": None, "share": 0.0} and (probs.argmax(0) == 0).all()
    assert model.net.voxels <= empty[0].size * 1.5  # tiles side by side: about one pass over the case


def test_the_scout_slides_without_overlap_or_mirroring() -> None:
    options = scout_options(WindowOptions(overlap=0.5, mirror=True, precision="fp32"))
    assert options.overlap == 0 and not options.mirror and options.precision == "fp32"


@pytest.mark.parametrize("localise", [True, False])
def test_predict_reports_the_box(tmp_path: Path, localise: bool) -> None:
    """The report says how many tiles the folds predicted (None when the whole case was predicted)."""
    from autoseg.inference.predictor import PredictOptions, predict_case
    from autoseg.io import Geometry, write_image

    plans = make_plans(patch_size=PATCH, batch_size=32, target_spacing=(2.5, 0.8, 0.8), crop_to_body=False,
                       labels={0: "background", 1: "bright", 2: "never"})
    hu = np.full((20, 48, 56), -100, np.int16)
    hu[8:12, 18:26, 30:36] = 200
    image = tmp_path / "ct.nii.gz"
    write_image(image, hu, Geometry((56, 48, 20), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    result = predict_case(Folds(plans), "ct", image, PredictOptions(precision="fp32", localise=localise))
    assert (result.report.localised_tiles is not None) == localise
    if localise:
        kept, total = result.report.localised_tiles
        assert 0 < kept < total and 0 < result.report.localised_share < 0.5
    assert np.array_equal(result.labels == 1, hu > 100)


class Built(_FoldNetworks):
    """The fold networks of a trained model (their sliding and averaging as prediction runs them), each
    fold's network a fresh :class:`Bright`; records which folds were built."""

    def __init__(self, plans: Plans, n: int = 2) -> None:
        self.plans, self.checkpoints, self.built = plans, {f: f"fold_{f}" for f in range(n)}, []

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        self.built.append(fold)
        return Bright()


def test_the_folds_pass_starts_with_the_scouts_network_and_averages_as_before() -> None:
    """Localised, the first fold's network slid by the scout is used again by the folds' pass (not
    loaded, built and compiled twice), once; the folds' mean added into one array equals the mean of
    the folds predicted alone."""
    plans, data = make_plans(patch_size=PATCH, batch_size=32), case()
    options = WindowOptions(overlap=0.5, precision="fp32")
    model = Built(plans, n=3)
    local = localised_probabilities(model, data, options)
    assert model.built == [0, 1, 2]
    whole = model.probabilities(data, options)
    assert model.built == [0, 1, 2, 0, 1, 2]  # the kept network served one pass only
    model.scout(data, scout_options(options))  # a look without a folds' pass after it (a localiser's)
    assert model._take_scout_network() is None  # holds no network
    np.testing.assert_allclose(whole, Folds(plans, n=3).probabilities(data, options), atol=1e-6)
    np.testing.assert_allclose(local, whole, atol=1e-5)


def test_the_found_voxels_are_grown_by_a_share_of_the_patch_along_each_axis() -> None:
    from autoseg.inference.localise import grown

    found = np.zeros((20, 40, 40), bool)
    found[10, 20, 20] = True
    box = grown(found, (8, 16, 32), share=1 / 8)  # 1, 2 and 4 voxels
    assert box.sum() == 3 * 5 * 9 and box[9:12, 18:23, 16:25].all()
    assert grown(found, (2, 2, 2), share=1 / 8).sum() == 27  # at least one voxel
