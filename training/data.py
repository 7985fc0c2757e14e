"""Training data: random patches with class-aware oversampling, augmented by batchgenerators in
background processes so the network does not wait for data.

A preprocessed case (:class:`autoseg.layout.CaseFiles`) is a float32 (C, z, y, x) image and a uint8
(z, y, x) label map, both compressed in chunks and opened memory-mapped, so a patch read
decompresses only the chunks it touches, and its properties
with ``class_locations``. A patch is handed on as one float32 (C + 1, ...) array, the label map last.
Whether rotations stay in-plane, and along which axes patches are mirrored, is the plans' decision
(:class:`autoseg.plans.Augmentation`).
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor

from autoseg.artefacts import CaseProperties
from autoseg.errors import AutosegError
from autoseg.layout import CaseFiles, case_files_in
from autoseg.plans import SAMPLERS, Augmentation, Sampler
from autoseg.preprocessing import open_array
from autoseg.processes import die_with_parent
from autoseg.sliding_window import edge_width, reflected
from autoseg.training.lesion_paste import LesionPasteTransform, median_and_robust_sd, ring_around

#: Cases whose arrays a :class:`CaseStore` keeps open at once (the most recently used). An opened
#: array is memory-mapped, and the pages a read touched stay mapped (file-backed, counted in the
#: process's resident memory) until it is closed: keeping every case open grew a fold's resident
#: memory by the compressed dataset it had read (2.0 to 2.9 GiB from 40 to 160 clinical-size cases,
#: benchmarks/growth.py), while opening a case costs about 0.4 ms.
OPEN_CASES = 16
ROTATION_DEG = 30.0
SCALE_RANGE = (0.85, 1.25)
#: Class contrast randomisation (:class:`ClassContrastTransform`): the CNR a class is given against
#: the tissue around it, drawn uniformly, of either sign. 1 is a faint lesion, 4 a plain one.
CLASS_CONTRAST_CNR = (1.0, 4.0)


@dataclass
class CaseStore:
    """Lazily opened arrays and properties of preprocessed cases."""

    data_dir: Path
    cases: list[str]

    def __post_init__(self) -> None:
        self._images: OrderedDict[str, Any] = OrderedDict()
        self._labels: OrderedDict[str, Any] = OrderedDict()
        self._checked: set[str] = set()  # cases whose label map was checked against the image
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        self._components: dict[str, dict[int, list[np.ndarray]]] = {}
        missing = [c for c in self.cases if not (self.files(c).image.is_file() and self.files(c).labels.is_file())]
        if missing:
            raise AutosegError(f"preprocessed cases missing or from an older autoseg (before version 4 the arrays "
                               f"were uncompressed .npy files): {missing[:5]}", self.data_dir,
                               "run `autoseg plan_and_preprocess` for this dataset (it redoes only what is stale)")

    def files(self, case: str) -> CaseFiles:
        return case_files_in(self.data_dir, case)

    def image(self, case: str) -> Any:
        """The case's (C, z, y, x) float32 image, opened (a slice decompresses only what it touches;
        ``[...]`` reads it whole)."""
        if case not in self._images:
            _remember(self._images, case, open_array(self.files(case).image))
        self._images.move_to_end(case)
        return self._images[case]

    def labels(self, case: str) -> Any:
        """The case's (z, y, x) uint8 label map, opened like the image."""
        if case not in self._labels:
            path = self.files(case).labels
            labels = open_array(path)
            if case not in self._checked and labels.shape != self.image(case).shape[1:]:
                raise AutosegError(f"label map of shape {labels.shape} does not match the image "
                                   f"{self.image(case).shape[1:]}", path,
                                   "run `autoseg plan_and_preprocess` for this dataset again")
            self._checked.add(case)  # once: a reopened case is the same file
            _remember(self._labels, case, labels)
        self._labels.move_to_end(case)
        return self._labels[case]

    def patch(self, case: str, centre: np.ndarray, size: tuple[int, ...], mirror_ends: bool = False) -> np.ndarray:
        """A float32 (C + 1, *size) patch around ``centre``, the label map last; outside the volume
        the image pads with 0 and the labels with background, except beyond the ends of the slice axis
        with ``mirror_ends``, where image and labels are mirrored about the end slices
        (:func:`crop_mirroring_ends`)."""
        crop = crop_mirroring_ends if mirror_ends else crop_with_padding
        out = np.empty((self.image(case).shape[0] + 1, *size), np.float32)
        out[:-1] = crop(self.image(case), centre, size)
        out[-1] = crop(self.labels(case), centre, size)
        return out

    def properties(self, case: str) -> CaseProperties:
        """The case's properties (geometry, crop, class locations), checked."""
        return CaseProperties.load(self.files(case).properties)

    def locations(self, case: str) -> dict[int, np.ndarray]:
        if case not in self._locations:
            found = self.properties(case).class_locations or {}
            self._locations[case] = {k: np.asarray(v, dtype=np.int64).reshape(-1, 3)
                                     for k, v in found.items() if len(v)}
        return self._locations[case]

    def components(self, case: str) -> dict[int, list[np.ndarray]]:
        """The stored locations of each class grouped by the 26-connected component of the class
        they lie in (the label map read whole once per case; a component too small to have a stored
        location is not drawn)."""
        if case not in self._components:
            labels = np.asarray(self.labels(case)[...])
            grouped: dict[int, list[np.ndarray]] = {}
            for cls, pts in self.locations(case).items():
                ids = cc3d.connected_components(labels == cls, connectivity=26)[tuple(pts.T)]
                grouped[cls] = [pts[ids == i] for i in np.unique(ids)]
            self._components[case] = grouped
        return self._components[case]


def _remember(opened: OrderedDict[str, Any], case: str, array: Any) -> None:
    """Keep ``array`` as ``case``'s in ``opened``, closing the least recently used beyond :data:`OPEN_CASES`."""
    opened[case] = array
    while len(opened) > OPEN_CASES:
        opened.popitem(last=False)


def initial_patch_size(patch: tuple[int, ...], in_plane_only: bool) -> tuple[int, ...]:
    """Patch read before rotation and scaling so the final crop has no empty corners.

    When rotation is in-plane only (slices much thicker than the pixels, as nnU-Net does), the z
    extent only grows for scaling.
    """
    rad = math.radians(ROTATION_DEG)
    grow = math.cos(rad) + math.sin(rad)
    factors = [1.0 if (a == 0 and in_plane_only) else grow for a in range(len(patch))]
    return tuple(int(math.ceil(p * f / SCALE_RANGE[0])) for p, f in zip(patch, factors))


def crop_with_padding(array: Any, centre: np.ndarray, size: tuple[int, ...],
                      pad_value: float = 0) -> np.ndarray:
    """Crop ``array`` (any leading axes, then the spatial ones, a numpy array or an opened stored
    array) around ``centre`` in its own dtype; out-of-volume parts are ``pad_value``. Only the part
    inside the volume is read."""
    lead = tuple(array.shape[: array.ndim - len(size)])
    spatial = array.shape[len(lead):]
    lo = [int(c) - s // 2 for c, s in zip(centre, size)]
    src = tuple(slice(max(a, 0), min(a + s, d)) for a, s, d in zip(lo, size, spatial))
    out = np.full((*lead, *size), pad_value, dtype=array.dtype)
    if any(sl.start >= sl.stop for sl in src):
        return out  # the patch lies wholly outside the volume
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, lo))
    everything = (slice(None),) * len(lead)
    out[(*everything, *dst)] = array[(*everything, *src)]
    return out


def crop_mirroring_ends(array: Any, centre: np.ndarray, size: tuple[int, ...], pad_value: float = 0) -> np.ndarray:
    """:func:`crop_with_padding`, but beyond the ends of the first spatial axis (the slice axis) the
    patch holds the volume mirrored about its end slices, as ``predict --edge-context`` extends a case
    (:func:`autoseg.sliding_window.mirror_context`); in-plane it pads with ``pad_value``. Only the slices
    the patch needs are read."""
    lead = array.ndim - len(size)
    n = int(array.shape[lead])
    start = int(centre[0]) - size[0] // 2
    rows = reflected(np.arange(start, start + size[0]), n)
    low, span = int(rows.min()), int(rows.max() - rows.min() + 1)
    block = crop_with_padding(array, np.array([low + span // 2, *centre[1:]]), (span, *size[1:]), pad_value)
    return np.take(block, rows - low, axis=lead)


class PatchLoader(SlimDataLoaderBase):
    """Batches of patches; a share ``oversample`` is centred on a voxel of a random present class.

    ``edge_slices`` > 0 (``Recipe.edge_context``): the random patches' centres are drawn so that the
    final patch (``final_depth`` slices, after augmentation's centre crop) reaches up to that many
    slices beyond either end of the slice axis, and every patch that reaches beyond an end holds the
    case mirrored there, as a prediction with edge context sees it; 0: random patches stay inside the
    volume and beyond it is 0 (nnU-Net's padding)."""

    batch_size: int  # set by SlimDataLoaderBase.__init__ (batchgenerators is untyped)

    def __init__(self, store: CaseStore, patch_size: tuple[int, ...], batch_size: int, oversample: float,
                 seed: int, sampler: Sampler = "voxels", edge_slices: int = 0, final_depth: int | None = None):
        super().__init__(store, batch_size, None)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {SAMPLERS}")
        self.store, self.patch_size, self.oversample = store, tuple(patch_size), oversample
        self.sampler, self.edge_slices = sampler, int(edge_slices)
        self.final_depth = self.patch_size[0] if final_depth is None else int(final_depth)
        self.rng = np.random.default_rng(seed)

    def set_thread_id(self, thread_id: int) -> None:
        """Called by batchgenerators first thing in each background worker: the worker dies with the
        training process, and its random sources are seeded from this loader's seed. Python's own
        ``random`` needs it too (batchgenerators' Gaussian noise draws from it, and Python re-seeds
        it from the OS in every forked child), or two runs with one seed augment differently."""
        super().set_thread_id(thread_id)
        die_with_parent()
        self.rng = np.random.default_rng([int(self.rng.integers(2**31)), thread_id])
        random.seed(int(self.rng.integers(2**63)))

    def centre(self, case: str, force_foreground: bool) -> np.ndarray:
        labels = self.store.labels(case)
        if force_foreground:
            locations = self.store.locations(case)
            if locations:
                cls = list(locations)[int(self.rng.integers(len(locations)))]
                pts = locations[cls]
                if self.sampler == "components":  # a lesion at random, then a voxel of it
                    groups = self.store.components(case)[cls]
                    pts = groups[int(self.rng.integers(len(groups)))]
                return pts[int(self.rng.integers(len(pts)))]
        shape = np.array(labels.shape)
        size = np.array(self.patch_size)
        half = size // 2
        # from the first patch inside the volume to the last one, both included (a volume smaller than
        # the patch: its middle)
        lo = np.minimum(half, shape // 2)
        hi = np.maximum(shape - size + half + 1, lo + 1)
        if self.edge_slices:  # the final patch from edge_slices before the first slice to as many after the last
            # batchgenerators' centre crop starts the final patch (size[0] - final_depth) // 2 into the read one
            offset = int(size[0]) // 2 - (int(size[0]) - self.final_depth) // 2
            first = offset - self.edge_slices
            lo[0], hi[0] = first, max(shape[0] - self.final_depth + offset + self.edge_slices + 1, first + 1)
        return np.array([self.rng.integers(a, b) for a, b in zip(lo, hi)])

    def generate_train_batch(self) -> dict[str, Any]:
        cases = self.store.cases
        picks = [cases[int(i)] for i in self.rng.integers(0, len(cases), self.batch_size)]
        n_forced = int(round(self.oversample * self.batch_size))
        batch = []
        for i, case in enumerate(picks):
            forced = i >= self.batch_size - n_forced
            batch.append(self.store.patch(case, self.centre(case, forced), self.patch_size, self.edge_slices > 0))
        stacked = np.stack(batch)
        return {"data": stacked[:, :-1], "seg": stacked[:, -1:], "keys": picks}


class ClassContrastTransform(AbstractTransform):
    """Give a labelled class a new contrast to the tissue around it, keeping its texture.

    A few training cases show a lesion class in a few appearances (hypo- or hyperattenuating, one
    contrast phase); test cases show others, and a network that learnt "tumour is darker than liver
    by 50 HU" misses a tumour that is darker by 30 or brighter. With probability ``p`` per patch and
    foreground class present in it (values 1 .. ``num_classes`` - 1; partial labels are left alone),
    the class's voxels are shifted so that their median differs from the median of a ring around them
    (one to three voxels out, no foreground class) by a CNR drawn from :data:`CLASS_CONTRAST_CNR`, of
    either sign, the ring's robust SD being the noise. Every voxel of the class takes the whole shift,
    and the voxels outside it a share that falls off as a Gaussian of one voxel's SD, so that the new
    edge is about as soft as the image's own. It runs before the noise, blur and intensity
    transforms, which then apply to the new contrast as to any other. Off by default: on family-2
    phantoms at ``p`` 0.5 it lowered tumour Dice and raised false tumours (docs/benchmarks.md).
    """

    def __init__(self, p: float, num_classes: int) -> None:
        self.p, self.num_classes = float(p), int(num_classes)

    def __call__(self, **data_dict: Any) -> dict[str, Any]:
        data, seg = data_dict["data"], data_dict["seg"]
        for b in range(data.shape[0]):
            labels = seg[b, 0]
            foreground = (labels > 0) & (labels < self.num_classes)
            for value in np.unique(labels):
                if 0 < value < self.num_classes and np.random.uniform() < self.p:
                    self._recontrast(data[b], labels == value, foreground)
        return data_dict

    @staticmethod
    def _recontrast(image: np.ndarray, mask: np.ndarray, foreground: np.ndarray) -> None:
        from scipy import ndimage

        ring = ring_around(mask) & ~foreground
        if np.count_nonzero(ring) < 8:
            return
        weight = np.where(mask, 1.0, ndimage.gaussian_filter(mask.astype(np.float32), 1.0))
        cnr = np.random.uniform(*CLASS_CONTRAST_CNR) * (1.0 if np.random.uniform() < 0.5 else -1.0)
        for channel in image:
            around, noise = median_and_robust_sd(channel[ring])
            if noise <= 0.0:
                continue
            shift = around + cnr * noise - float(np.median(channel[mask]))
            channel += (shift * weight).astype(channel.dtype)


def train_transforms(patch: tuple[int, ...], augmentation: Augmentation, class_contrast: float = 0.0,
                     num_classes: int = 0, paste: LesionPasteTransform | None = None) -> Compose:
    """The augmentation pipeline (elastic deformation off, as nnU-Net's default), with the plans'
    in-plane rotation and mirror axes; ``class_contrast`` > 0 adds :class:`ClassContrastTransform`
    for the ``num_classes`` classes (background included); ``paste`` (lesion pasting,
    :mod:`autoseg.training.lesion_paste`) runs on the final patch, after the spatial transforms and
    before the others."""
    rad = math.radians(ROTATION_DEG)
    angle_x = (-rad, rad)  # batchgenerators' angle_x rotates within the last two (in-plane) axes
    other = (0.0, 0.0) if augmentation.in_plane_only else (-rad, rad)
    ignore_z = (0,) if augmentation.in_plane_only else None
    mirror = augmentation.patch_mirror_axes(len(patch))
    return Compose([
        SpatialTransform(patch, patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=angle_x, angle_y=other, angle_z=other,
                         p_rot_per_sample=0.2, do_scale=True, scale=SCALE_RANGE, p_scale_per_sample=0.2,
                         border_mode_data="constant", border_cval_data=0, order_data=1,
                         border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False),
        *([paste] if paste is not None else []),
        *([ClassContrastTransform(class_contrast, num_classes)] if class_contrast > 0 else []),
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                       ignore_axes=ignore_z),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
        *([MirrorTransform(axes=mirror)] if mirror else []),
        NumpyToTensor(["data", "seg"], "float"),
    ])


def make_train_stream(store: CaseStore, patch: tuple[int, ...], augmentation: Augmentation,
                      batch_size: int, oversample: float, seed: int, workers: int, sampler: Sampler = "voxels",
                      class_contrast: float = 0.0, num_classes: int = 0, edge_context: float = 0.0,
                      paste: LesionPasteTransform | None = None):
    """An endless stream of augmented batches; ``workers`` > 0 runs it in background processes.
    ``augmentation``: the plans' decision (``plans.augmentation``); ``sampler``, ``class_contrast`` and
    ``edge_context`` (a share of a 3D patch's slices, :class:`PatchLoader`): the recipe's;
    ``num_classes``: the plans' classes, background included; ``paste``: the recipe's lesion pasting
    with its bank of the training cases' lesions."""
    loader = PatchLoader(store, initial_patch_size(patch, augmentation.in_plane_only), batch_size, oversample, seed,
                         sampler, edge_width(patch, edge_context), patch[0])
    transforms = train_transforms(patch, augmentation, class_contrast, num_classes, paste)
    if workers <= 0:
        return SingleThreadedAugmenter(loader, transforms)
    return MultiThreadedAugmenter(loader, transforms, workers, num_cached_per_queue=4,
                                  seeds=[seed + i for i in range(workers)], pin_memory=False)


def validation_patches(store: CaseStore, patch: tuple[int, ...], per_case: int, seed: int,
                       edge_context: float = 0.0) -> list[np.ndarray]:
    """A fixed, seeded set of validation patches: half centred on foreground, half random; with the
    recipe's ``edge_context``, reaching beyond the slice axis's ends and mirrored there as the training
    patches are."""
    edge = edge_width(patch, edge_context)
    loader = PatchLoader(store, patch, per_case, 0.5, seed, edge_slices=edge)
    out = []
    for case in store.cases:
        for i in range(per_case):
            out.append(store.patch(case, loader.centre(case, i % 2 == 0), patch, edge > 0))
    return out
