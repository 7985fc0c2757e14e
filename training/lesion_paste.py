"""Lesion pasting (``train --lesion-paste P``): the training cases' own lesions, copied into other
patches, so that a few tumour-bearing cases show their lesions in more places and more livers.

A task of a few training cases holds a few lesions, in a few places: on phantom family 2 fold 0
trains on 6 tumour-bearing cases, 1 of their 12 lesions from 0.5 mL lies in the left lobe, and a
model trained on them gives most of the test lesions it misses a tumour probability of 0.04 or less
(docs/benchmarks.md). TumorCP (Yang et al., MICCAI 2021) copied kidney tumours between patients
inside the kidney and raised tumour Dice on KiTS19; the same idea here, kept to what the labels say:

- the bank (:func:`lesion_bank`) holds every connected component of the lesion class in the fold's
  training cases (never a validation case) that fits well inside a patch, with its image box and the
  median and robust SD of the tissue around it (one to three voxels out, :func:`ring_around`);
- a lesion is pasted only into its host: the class it lies inside where the dataset labels one (the
  fingerprint's nesting: a tumour in its liver, Task03), else background within
  :data:`HOST_REACH_MM` of another labelled class (Task08 labels the hepatic vessels, which lie in
  the liver, and no liver), and only where the tissue around the new place has the median of the
  lesion's old surroundings within their SD (read on the first image channel): a lesion from a
  liver does not go into fat or a vessel-less spleen of another brightness. Every voxel of the
  lesion must land on host voxels and none on another class;
- the lesion keeps its texture and its contrast to its surroundings (its voxels minus the old
  surroundings' median plus the new one's), its edge as soft as the image's (the voxels around it
  move a Gaussian share of one voxel towards the lesion's median, host voxels only), and it may be
  mirrored along any axis; its voxels become the lesion class.

``P`` is the probability of an attempt per patch: a patch with no host voxels, or none where the
lesion fits and the tissue matches within :data:`TRIES` random places, is left as it is (on the
family-2 race's plan 15 of 40 patches took a lesion at P = 1, two in three of them centred on a
labelled class).

It runs after the spatial transforms, on the final patch, before the noise, blur and intensity
transforms, which apply to the pasted lesion as to any other. Off by default: an experiment for
issue 22's lesion recall on small tasks (docs/benchmarks.md, "Lesion pasting").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from autoseg.errors import ConfigurationError
from autoseg.evaluation import components
from autoseg.merge import class_key

#: The class taken as the lesion class when ``--lesion-class`` is not given: the one whose name means
#: tumour (:func:`autoseg.merge.class_key`: tumour, tumor, cancer, lesion, liver tumour, ...).
LESION_KEY = "tumour"
#: Where the dataset labels no class around the lesion class: how far from a voxel of another
#: labelled class (a vessel) a pasted lesion's voxels may lie, in mm.
HOST_REACH_MM = 10.0
#: A lesion enters the bank when its box (with the ring around it) is at most this share of the patch
#: along every axis, so that it can be placed somewhere in most patches.
MAX_PATCH_SHARE = 0.6
#: Smallest lesion in the bank, in voxels (a speck has no texture or contrast to carry).
MIN_VOXELS = 4
#: At most this many lesions in a bank (a seeded draw of them where a dataset has more).
MAX_LESIONS = 512
#: Random places tried per paste before the patch is left as it is.
TRIES = 8
#: Voxels of the tissue around a lesion, at least, for its median and SD to be read.
MIN_RING_VOXELS = 8


def lesion_class_of(labels: Mapping[int, str], name: str | None) -> int:
    """The label value of the lesion class: ``name`` (a class name of the dataset), else the one
    class named like a lesion (:data:`LESION_KEY`)."""
    named = {v.lower(): k for k, v in labels.items() if k != 0}
    if name is not None:
        if name.lower() not in named:
            raise ConfigurationError(f"--lesion-class {name!r} is not a class of this dataset "
                                     f"({', '.join(v for k, v in sorted(labels.items()) if k)})",
                                     fix="name one of the dataset's classes")
        return named[name.lower()]
    found = sorted({k for n, k in named.items() if class_key(n) == LESION_KEY})
    if len(found) != 1:
        raise ConfigurationError(f"--lesion-paste needs to know which class is the lesion, and "
                                 f"{'none' if not found else 'more than one'} of this dataset's classes "
                                 f"({', '.join(v for k, v in sorted(labels.items()) if k)}) is named like one",
                                 fix="name it: --lesion-class NAME")
    return found[0]


def host_class_of(nesting: Mapping[int, int] | None, lesion: int, labels: Mapping[int, str]) -> int:
    """The class the lesion class lies inside (the fingerprint's ``label_nesting``) where the model
    predicts it; 0 where there is none (the lesion goes into background near the other classes)."""
    parent = int((nesting or {}).get(lesion, 0))
    return parent if parent in labels and parent != 0 else 0


def ring_around(mask: np.ndarray) -> np.ndarray:
    """The voxels one to three voxels out from ``mask``: the tissue a structure's contrast is read
    against (here, :class:`autoseg.training.data.ClassContrastTransform` and
    ``benchmarks/lesion_sides.py``)."""
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask)


def median_and_robust_sd(values: np.ndarray) -> tuple[float, float]:
    """The median of ``values`` and their SD estimated from the median absolute deviation (scaled to
    a normal distribution's SD), which texture and a few outliers barely move."""
    from scipy.stats import median_abs_deviation

    return float(np.median(values)), float(median_abs_deviation(values, scale="normal"))


@dataclass(frozen=True)
class Lesion:
    """One lesion of the bank: its image box (C, ...) and mask, and its surroundings' median and
    robust SD per channel."""

    image: np.ndarray
    mask: np.ndarray
    around: np.ndarray
    around_sd: np.ndarray


def lesions_of(image: Any, labels: np.ndarray, lesion: int, host: int,
               max_box: Sequence[int]) -> list[Lesion]:
    """The lesions of one case (``image`` (C, ...), an array or an opened compressed one of which
    only the lesions' boxes are read; ``labels`` (...)) that fit in ``max_box`` with their ring,
    each with the median and SD of its host tissue around it."""
    from scipy import ndimage

    out = []
    labelled, _ = components(labels == lesion)
    for i, box in enumerate(ndimage.find_objects(labelled), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, dim)) for s, dim in zip(box, labels.shape))
        if any(s.stop - s.start > m for s, m in zip(grown, max_box)):
            continue
        mask = labelled[grown] == i
        if np.count_nonzero(mask) < MIN_VOXELS:
            continue
        ring = ring_around(mask) & (labels[grown] == host)
        if np.count_nonzero(ring) < MIN_RING_VOXELS:
            continue
        crop = np.asarray(image[(slice(None),) + grown], dtype=np.float32)
        stats = np.array([median_and_robust_sd(channel[ring]) for channel in crop], dtype=np.float32)
        out.append(Lesion(crop, mask, stats[:, 0], np.maximum(stats[:, 1], 1e-3)))
    return out


def lesion_bank(store: Any, lesion: int, host: int, patch: Sequence[int], seed: int) -> list[Lesion]:
    """The lesions of the cases of ``store`` (:class:`autoseg.training.data.CaseStore`) that fit in
    :data:`MAX_PATCH_SHARE` of ``patch``; at most :data:`MAX_LESIONS` (a draw seeded by ``seed``)."""
    max_box = [max(int(p * MAX_PATCH_SHARE), 1) for p in patch]
    bank = []
    for case in store.cases:
        bank.extend(lesions_of(store.image(case), np.asarray(store.labels(case)), lesion, host, max_box))
    if len(bank) > MAX_LESIONS:
        keep = np.random.default_rng(seed).choice(len(bank), MAX_LESIONS, replace=False)
        bank = [bank[int(i)] for i in sorted(keep)]
    return bank


class LesionPasteTransform(AbstractTransform):
    """With probability ``p`` per patch, one lesion of ``bank`` pasted into its host in the patch
    (module docstring). ``spacing``: the patch's voxel spacing (mm), for :data:`HOST_REACH_MM`;
    ``num_classes``: the plans' classes, background included (other values, partial labels, are
    never a host)."""

    def __init__(self, bank: Sequence[Lesion], p: float, lesion: int, host: int, spacing: Sequence[float],
                 num_classes: int) -> None:
        self.bank, self.p, self.lesion, self.host = list(bank), float(p), int(lesion), int(host)
        self.spacing, self.num_classes = tuple(float(s) for s in spacing), int(num_classes)

    def __call__(self, **data_dict: Any) -> dict[str, Any]:
        if not self.bank:
            return data_dict
        data, seg = data_dict["data"], data_dict["seg"]
        for b in range(data.shape[0]):
            if np.random.uniform() < self.p:
                pick = self.bank[np.random.randint(len(self.bank))]
                flips = tuple(a for a in range(pick.mask.ndim) if np.random.uniform() < 0.5)
                self.paste(data[b], seg[b, 0], pick, flips)
        return data_dict

    def host_mask(self, labels: np.ndarray) -> np.ndarray:
        """Where a lesion's voxels may land in a patch's ``labels``."""
        if self.host:
            return labels == self.host
        from scipy import ndimage

        others = (labels > 0) & (labels < self.num_classes) & (labels != self.lesion)
        if not others.any():
            return np.zeros(labels.shape, dtype=bool)
        reach = [max(int(round(HOST_REACH_MM / s)), 1) for s in self.spacing]
        near = ndimage.maximum_filter(others, size=[2 * r + 1 for r in reach])
        return near & (labels == 0)

    def paste(self, image: np.ndarray, labels: np.ndarray, lesion: Lesion, flips: tuple[int, ...] = ()) -> bool:
        """Paste ``lesion`` (mirrored along ``flips``) into one patch (``image`` (C, ...) and
        ``labels``, changed in place) where it fits its host; False where no place was found."""
        host = self.host_mask(labels)
        if not host.any():
            return False
        mask = np.flip(lesion.mask, flips) if flips else lesion.mask
        crop = np.flip(lesion.image, tuple(a + 1 for a in flips)) if flips else lesion.image
        size = np.array(mask.shape)
        if np.any(size > np.array(labels.shape)):
            return False
        places = np.argwhere(host)
        for _ in range(TRIES):
            start = places[np.random.randint(len(places))] - size // 2
            start = np.clip(start, 0, np.array(labels.shape) - size)
            box = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, size))
            if not host[box][mask].all():
                continue
            ring = ring_around(mask) & host[box]
            if np.count_nonzero(ring) < MIN_RING_VOXELS:
                continue
            around = np.array([np.median(channel[box][ring]) for channel in image], dtype=np.float32)
            if abs(float(around[0] - lesion.around[0])) > float(lesion.around_sd[0]):
                continue  # other tissue than the lesion's own surroundings
            self._blend(image, box, crop, mask, host[box], around - lesion.around)
            labels[box][mask] = self.lesion
            return True
        return False

    @staticmethod
    def _blend(image: np.ndarray, box: tuple[slice, ...], crop: np.ndarray, mask: np.ndarray, host: np.ndarray,
               shift: np.ndarray) -> None:
        from scipy import ndimage

        edge = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
        edge[mask | (edge < 0.01) | ~host] = 0.0  # host voxels only, and not the tails that reach the whole box
        for c, channel in enumerate(image):
            moved = crop[c] + shift[c]
            target = channel[box]
            lesion_level = float(np.median(moved[mask]))
            blended = np.where(mask, moved, target + edge * (lesion_level - target))
            channel[box] = blended.astype(channel.dtype)
