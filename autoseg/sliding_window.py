"""Sliding-window prediction with Gaussian importance weighting and optional mirroring.

Patches overlap by ``overlap`` of the patch size; each patch's class probabilities (the softmax, or
for region outputs :func:`autoseg.regions.class_probabilities`) are weighted by a Gaussian (sigma =
patch/8) so that the patch centres, where the network sees the most context, dominate. Several
patches go through the network per forward pass.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
import functools
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from autoseg.errors import AutosegError
from autoseg.networks.cpu_layout import for_cpu_inference, is_channels_last
from autoseg.networks.config import parse_topology
from autoseg.plans import Plans
from autoseg.precision import RUNTIMES, autocast, resolve_precision
from autoseg.regions import Region, class_probabilities


@dataclass(frozen=True)
class WindowOptions:
    """How a network slides over a case, apart from what its plans fix (patch, classes, batch)."""

    overlap: float = 0.5
    #: Average the softmax over every flip of the axes the plans' training mirrored along
    #: (``plans.augmentation.mirror_axes``; test-time augmentation).
    mirror: bool = False
    device: str = "cpu"
    #: Autocast of the forward passes (:mod:`autoseg.precision`): auto, fp32, bf16 or fp16.
    precision: str = "auto"
    #: Called between batches (e.g. ``CoreShare.adapt``: threads follow the cores others leave free).
    between_batches: Callable[[], object] | None = None
    #: Tiles this many times the trained patch along each axis (:func:`inference_tile`): a network of
    #: convolutions takes any size its strides divide, and a larger tile wastes less of its border.
    tile_scale: float = 1.0
    #: On the CPU, slide a channels-last copy of the network (:mod:`autoseg.networks.cpu_layout`):
    #: the same probabilities up to rounding, without oneDNN's layout copies.
    channels_last: bool = True
    #: What runs the network on the CPU: ``torch``, or ``openvino`` (:mod:`autoseg.networks.openvino_runtime`:
    #: the whole network compiled into fused kernels, in ``precision``); on other devices always torch.
    runtime: str = "torch"
    #: Share of the trained patch (not of a ``tile_scale`` tile) by which the case is extended, mirrored,
    #: at both ends of its first axis (the slice axis: craniocaudal in LPS plans) before sliding
    #: (:func:`mirror_context`); 0: not.
    edge_context: float = 0.0


def inference_tile(plans: Plans, shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """The tile :func:`slide` uses for a case of ``shape``: the plans' patch times ``scale`` along
    each axis, rounded up to the network's total stride, never larger than the case (rounded down to
    that stride, so no case is padded that was not before) nor smaller than the patch."""
    if scale < 1:
        raise ValueError(f"tile_scale must be at least 1, got {scale}")
    patch = tuple(int(p) for p in plans.patch_size)
    if scale == 1:
        return patch
    if not plans.network.kwargs.get("strides"):
        raise ValueError(f"plans of network {plans.network.name} name no strides: a tile other than the patch "
                         "needs them (predict with tile_scale 1)")
    tile = []
    for p, n, d in zip(patch, shape, parse_topology(plans.network.kwargs).total_stride):
        wanted = min(math.ceil(p * scale / d) * d, (n // d) * d)  # at most the case: no padding beyond it
        tile.append(max(p, wanted))
    return tuple(tile)


def runtime_of(options: WindowOptions) -> str:
    """What runs a network slid with ``options``: ``options.runtime`` on the CPU, else torch."""
    return options.runtime if options.device == "cpu" else "torch"


def inference_network(network: torch.nn.Module, options: WindowOptions, owned: bool = False) -> torch.nn.Module:
    """The network as :func:`slide` runs it: on the CPU with ``options.runtime`` ``openvino`` the
    network compiled by OpenVINO (:func:`~autoseg.networks.openvino_runtime.for_openvino`); else with
    ``options.channels_last`` on the CPU a channels-last copy
    (:func:`~autoseg.networks.cpu_layout.for_cpu_inference`), or ``network`` itself converted in place
    where the caller ``owned`` it for this call alone; else ``network``."""
    if options.runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {options.runtime!r} ({' or '.join(RUNTIMES)})")
    if options.device != "cpu":
        return network
    if runtime_of(options) == "openvino":
        from autoseg.networks.openvino_runtime import for_openvino
        from autoseg.settings import Settings

        cache = Settings.from_env().cache / "openvino" if options.tile_scale == 1 else None  # tiles per case: not kept
        return for_openvino(network, resolve_precision(options.precision, "cpu"), torch.get_num_threads(), cache)
    return for_cpu_inference(network, copy_first=not owned) if options.channels_last else network


def slide(network: torch.nn.Module, data: np.ndarray, plans: Plans, options: WindowOptions,
          timings: dict[str, float] | None = None, source: str | Path | None = None,
          where: np.ndarray | None = None, owned: bool = False, out: np.ndarray | None = None,
          scale: float = 1.0) -> np.ndarray:
    """:func:`predict_sliding_window` with the patch (times ``options.tile_scale``), classes and batch
    of ``plans``; tiles larger than the patch go through the network one at a time. With
    ``options.channels_last`` on the CPU the network slides channels-last (:func:`inference_network`;
    a network converted already slides as it is). ``out``, ``scale``: the probabilities times
    ``scale`` are added to ``out`` (:func:`predict_sliding_window`). Test-time mirroring
    (``options.mirror``) flips along the axes the plans' training mirrored along; so does the mirrored
    edge context (``options.edge_context``, :func:`edge_context_of`)."""
    mirror = plans.patch_mirror_axes if options.mirror else ()
    tile = inference_tile(plans, data.shape[1:], options.tile_scale)
    batch = plans.batch_size if tile == tuple(plans.patch_size) else 1
    network = inference_network(network, options, owned)
    return predict_sliding_window(network, data, tile, plans.num_classes, options.overlap,
                                  batch, mirror, options.device, timings, options.precision,
                                  source=source, between_batches=options.between_batches, where=where,
                                  regions=plans.regions, out=out, scale=scale,
                                  edge_slices=edge_slices_of(plans, options.edge_context),
                                  mirror_short=len(plans.patch_size) == 3 and bool(plans.recipe.edge_context))


def edge_context_of(plans: Plans, share: float) -> float:
    """The mirrored edge context a network of ``plans`` gets for the asked ``share``: none unless its
    3D patches were mirrored along the slice axis in training. Anatomy mirrored beyond the field of
    view is upside down; a network that never saw that is misled by it (a family-2 Task08 model
    trained without slice-axis mirroring lost 0.044 vessel Dice with a quarter patch of it,
    docs/inference.md), unless it was trained with edge context (``train --edge-context``), which
    shows it the mirrored ends."""
    shown = 0 in plans.patch_mirror_axes or bool(plans.recipe.edge_context)
    return share if len(plans.patch_size) == 3 and shown else 0.0


def edge_width(patch: Sequence[int], share: float) -> int:
    """The slices ``share`` of a 3D patch reaches beyond either end of the slice axis, at prediction
    (:func:`edge_slices_of`) and in training (``Recipe.edge_context``); none for a 2D patch."""
    return round(share * patch[0]) if len(patch) == 3 else 0


def edge_slices_of(plans: Plans, share: float) -> int:
    """The mirrored slices :func:`slide` adds at each end of a case for ``share`` of the trained patch
    (:func:`edge_context_of`: none for a network not trained mirrored along the slice axis)."""
    return edge_width(plans.patch_size, edge_context_of(plans, share))


def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """A Gaussian over the patch, maximum 1, minimum clipped at 1e-3 so no voxel gets zero weight;
    built as the outer product of one float32 Gaussian per axis (a large tile needs no float64 grids)."""
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / max(p * sigma_scale, 1e-6)) ** 2).astype(np.float32)
            for p in patch]
    weight = functools.reduce(np.multiply.outer, axes)
    weight /= weight.max()
    return np.asarray(np.maximum(weight, np.float32(1e-3)), dtype=np.float32)


def tile_starts(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> list[list[int]]:
    """Start indices per axis so tiles cover ``shape`` with at least ``overlap`` between neighbours."""
    starts = []
    for size, p in zip(shape, patch):
        if size <= p:
            starts.append([0])
            continue
        step = max(1, int(p * (1 - overlap)))
        n = math.ceil((size - p) / step) + 1
        actual = (size - p) / (n - 1)
        starts.append([int(round(actual * i)) for i in range(n)])
    return starts


def tile_cells(starts: Sequence[int], p: int, size: int) -> list[int]:
    """Along one axis, the boundaries of each tile's *cell*: the voxels nearer its centre than any
    other tile's (the first cell starts at 0, the last ends at ``size``), ``len(starts) + 1`` values."""
    mids = [(a + b + p) // 2 for a, b in zip(starts[:-1], starts[1:])]
    return [0, *mids, size]


def tiles_whose_cell_holds(wanted: np.ndarray, starts: list[list[int]], patch: tuple[int, ...]) -> np.ndarray:
    """For the tile grid of ``starts`` (per axis) over ``wanted``'s shape: a boolean grid, one entry
    per tile, true where a voxel of ``wanted`` lies in the tile's cell (:func:`tile_cells`)."""
    held = wanted
    for axis, (axis_starts, p) in enumerate(zip(starts, patch)):
        bounds = tile_cells(axis_starts, p, wanted.shape[axis])
        held = np.logical_or.reduceat(held, bounds[:-1], axis=axis)
    return np.asarray(held)


def mirror_context(data: np.ndarray, width: int, at_least: int = 0) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``data`` (C, *spatial) extended at both ends of its first spatial axis by ``width`` slices,
    mirrored about the end slices (U-Net's overlap-tile strategy, along the slice axis
    only); returns the spatial crop that undoes it. A CT's field of view ends inside the body along
    that axis, so the tiles at its ends see anatomy go on rather than a border; in-plane the body
    usually lies inside the field of view, and where it does not a mirrored second body edge is no
    anatomy at all. A case still shorter than ``at_least`` slices (the patch) after that is mirrored
    on, again about its ends where needed, until it is that long, as training with edge context reads
    it (:func:`autoseg.training.data.crop_mirroring_ends`), rather than padded with zeros. The slices
    are :func:`reflected`'s, as in training."""
    n = data.shape[1]
    width = max(width, 0)
    if width == 0 and n >= at_least:
        return data, tuple(slice(0, s) for s in data.shape[1:])
    short = max(0, at_least - n - 2 * width)
    before, after = width + (short + 1) // 2, width + short // 2
    extended = np.take(data, reflected(np.arange(-before, n + after), n), axis=1)
    return extended, (slice(before, before + n),) + tuple(slice(0, s) for s in data.shape[2:])


def reflected(indices: np.ndarray, n: int) -> np.ndarray:
    """``indices`` along an axis of length ``n``, those outside it mirrored about its end elements as
    numpy's ``reflect`` padding does, again and again past the far end (the end element is not
    repeated; a single element is): the one mirror of prediction's :func:`mirror_context` and of
    training's patches with edge context."""
    if n == 1:
        return np.zeros_like(indices)
    period = 2 * (n - 1)
    folded = np.mod(indices, period)
    return np.asarray(np.where(folded > n - 1, period - folded, folded))


def pad_to_patch(data: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad (C, *spatial) with zeros, centred, up to at least ``patch``; returns the spatial crop that
    undoes it (acvl-utils' padder, the one nnU-Net uses)."""
    padded, slicer = pad_nd_image(data, tuple(patch), "constant", {"constant_values": 0}, True)
    return padded, tuple(slice(int(s.start), int(s.stop)) for s in slicer[1:])


@torch.no_grad()
def predict_sliding_window(network: torch.nn.Module, data: np.ndarray, patch: tuple[int, ...],
                           num_classes: int, overlap: float = 0.5, batch_size: int = 2,
                           mirror_axes: tuple[int, ...] = (), device: str = "cpu",
                           timings: dict[str, float] | None = None, precision: str = "auto",
                           source: str | Path | None = None,
                           between_batches: Callable[[], object] | None = None,
                           where: np.ndarray | None = None,
                           regions: tuple[Region, ...] | None = None,
                           out: np.ndarray | None = None, scale: float = 1.0,
                           edge_slices: int = 0, mirror_short: bool = False) -> np.ndarray:
    """Class probabilities (K, *spatial) float32 for ``data`` (C, *spatial): the softmax of the
    network's outputs, or with ``regions`` the class probabilities of its region sigmoids.

    ``out`` (float32, ``(K, *spatial)``), if given, gets the probabilities times ``scale`` added to it
    and is returned: the folds of an ensemble add their mean into one array, with no array of each
    fold's own (each tile's share is weighted by the Gaussian weights of the whole tile grid, which
    are computed before the first tile and are the same for every network slid over the same grid).

    ``where`` (a boolean ``spatial`` mask), if given, keeps only the tiles of the usual grid whose
    *cell* (:func:`tile_cells`: the voxels nearer the tile's centre than any other's) holds one of
    its voxels. Each kept tile keeps its weight in the whole grid's Gaussian sum, so a voxel gets
    the part of its probabilities that its kept tiles carry: all of it where every tile covering it
    was kept (then exactly what the whole grid gives), a part where only some were (at the border of
    the kept region, where the kept tiles see it near their own border), nothing where none was. The
    classes then sum to that part, and the caller fills the rest (localised prediction: with its
    scout's probabilities). ``timings`` then also gets ``tiles`` and ``tiles_total``.

    Raises :class:`AutosegError` (naming ``source``, the model or its weights file, when given) as
    soon as a batch of probabilities holds NaN or Inf: damaged weights or extreme input values would
    otherwise become a plausible-looking map (arg-max of NaN is background).

    ``precision`` is the autocast of the forward passes (``autoseg.precision``; ``auto``: fp16 on
    CUDA, bf16 on CPUs with native bf16, else fp32); the softmax and the accumulation are fp32.
    ``timings``, if given, gets the seconds spent in the network's forward passes added under
    ``"forward"`` (the floor of prediction time; everything else is overhead).

    ``edge_slices`` > 0 slides over the case extended by that many mirrored slices at both ends of
    its first axis (:func:`mirror_context`); with ``mirror_short`` (a network trained with edge
    context, which has never seen zeros beyond the slice axis's ends) a case shorter than the patch
    is mirrored on up to it, with or without edge slices. It returns the probabilities of the case's
    own voxels;
    with ``out`` each call then holds one array of the extended case's probabilities as well."""
    precision = resolve_precision(precision, device)
    extended, inner = mirror_context(data.astype(np.float32, copy=False), edge_slices,
                                     patch[0] if mirror_short else 0)  # a network never shown zeros there
    padded, outer = pad_to_patch(extended, patch)
    unpad = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))
    spatial = padded.shape[1:]
    if out is not None and out.shape != (num_classes, *data.shape[1:]):
        raise ValueError(f"an output of shape {out.shape} for {num_classes} classes and data of shape {data.shape}")
    probs = out if out is not None and spatial == data.shape[1:] else np.zeros((num_classes, *spatial), np.float32)
    gauss = gaussian_importance(tuple(patch))
    gauss_t = torch.from_numpy(gauss).to(device)
    layout = torch.channels_last_3d if len(patch) == 3 and is_channels_last(network) else torch.contiguous_format
    starts = tile_starts(spatial, patch, overlap)
    grid = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in itertools.product(*starts)]
    tiles = grid
    if where is not None:
        if where.shape != data.shape[1:]:
            raise ValueError(f"the mask's shape {where.shape} is not the data's {data.shape[1:]}")
        wanted = np.zeros(spatial, dtype=bool)
        wanted[unpad] = where
        keep = tiles_whose_cell_holds(wanted, starts, patch).ravel()  # in the order of itertools.product
        tiles = [t for t, k in zip(grid, keep) if k]
        if timings is not None:
            timings["tiles"], timings["tiles_total"] = float(len(tiles)), float(len(grid))
    share = np.zeros(spatial, dtype=np.float32)  # the whole grid's summed Gaussians, then each voxel's share of one
    for t in grid:
        share[t] += gauss
    np.divide(np.float32(scale), share, out=share, where=share > 0)
    for i in tqdm(range(0, len(tiles), batch_size), desc="sliding window", unit="batch", leave=False,
                  disable=None):
        if between_batches is not None:
            between_batches()  # e.g. CoreShare.adapt: threads follow the cores other processes leave free
        chunk = tiles[i:i + batch_size]
        x = torch.from_numpy(np.stack([padded[(slice(None), *t)] for t in chunk])).to(device)
        x = x.contiguous(memory_format=layout)
        t0 = time.perf_counter()
        with autocast(device, precision):
            batch_probs = _mirrored_probabilities(network, x, mirror_axes, regions, num_classes)
        _check_finite(batch_probs, source)
        weighted = (batch_probs * gauss_t).float().cpu().contiguous().numpy()
        if timings is not None:
            timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - t0
        for t, o in zip(chunk, weighted):
            probs[(slice(None), *t)] += o * share[t]  # uncovered voxels (``where``) get nothing
    if probs is out:  # accumulated in place
        return out
    if out is not None:  # a case smaller than the patch: padded, then added
        out += probs[(slice(None), *unpad)]
        return out
    return probs[(slice(None), *unpad)]


def _check_finite(probabilities: torch.Tensor, source: str | Path | None) -> None:
    if not bool(torch.isfinite(probabilities).all()):
        raise AutosegError(
            "the network's probabilities contain NaN or Inf: its weights are damaged, or the input holds "
            "extreme values", source,
            "check the input image's intensities; if they are ordinary, retrain the fold or restore its "
            "checkpoint from a backup")


def _mirrored_probabilities(network: torch.nn.Module, x: torch.Tensor, mirror_axes: tuple[int, ...],
                            regions: tuple[Region, ...] | None, num_classes: int) -> torch.Tensor:
    """Average class probabilities over all flips of ``mirror_axes`` (spatial axis indices)."""
    out = _forward(network, x, regions, num_classes)
    combos = [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    for combo in combos:
        dims = [a + 2 for a in combo]
        out += torch.flip(_forward(network, torch.flip(x, dims), regions, num_classes), dims)
    return out / (1 + len(combos))


def _forward(network: torch.nn.Module, x: torch.Tensor, regions: tuple[Region, ...] | None,
             num_classes: int) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if regions:
        return class_probabilities(out, regions, num_classes)
    return torch.softmax(out.float(), dim=1)
