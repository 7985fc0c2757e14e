"""Fast, memory-bounded resampling of images, label maps and probabilities with torch on the CPU.

Every resampling here is separable: the in-plane axes are interpolated per slice with
``torch.nn.functional.interpolate`` (bilinear / bicubic / nearest-exact), and the remaining
"z" axis by a weighted sum of at most four in-plane-resampled source slices whose weights reproduce
torch's own 1D kernels (``align_corners=False``). A separable linear kernel is exactly trilinear and a
separable cubic one is tricubic, so the same code serves the isotropic case (every axis with
``order_image``) and the anisotropic one (the low-resolution axis with ``order_z``, as nnU-Net does to
avoid ringing across thick slices). The output is produced in chunks of slices, so the temporaries are
bounded by ``chunk_bytes`` whatever the volume size.

Label maps are resampled as one-hot float32 maps, linearly interpolated and arg-maxed, chunk by chunk:
this never creates a value that was not a label and gives smoother boundaries than nearest neighbour.
The one-hot temporaries are ``num_classes`` times a chunk, so when a single output slice of them would
exceed ``ONEHOT_SLICE_FACTOR * chunk_bytes`` (about 100 classes on a 512 x 512 grid) nearest neighbour
is used instead.

Label maps keep each class's volume (``keep_volume``, the default): linear interpolation followed
by arg-max thins structures about one voxel wide (a vessel's one-hot value falls below one half
between the new voxel centres), so a phantom's hepatic vessels lost 25-45% of their volume at the
median spacing, and a network trained on them under-segments. After the arg-max, a class that lost
voxels takes back voxels in order of its margin (its interpolated value less that of the class
the voxel went to; the voxels nearest to being the class's first) until its volume in mL matches
the input's. It takes them from the background and from classes of a larger volume: a tumour
inside a liver label loses its rim to the liver in the arg-max and takes it back. Voxels only move
from larger classes to smaller ones, so there is no cycle; a class that gave voxels takes its own
back from its donors in another round (at most ``MAX_REFILL_ROUNDS``). Probabilities brought back
to the input grid are turned into labels the same way, keeping each class's volume on the grid
they were predicted on (``probabilities_to_labels``). Each round takes two passes over the volume
(the first round's first pass is the arg-max itself), only while some class is short by more than
``KEEP_VOLUME_TOLERANCE`` of its voxels and the previous round took voxels from a foreground class.

Conventions: arrays are ``(z, y, x)`` with channels first; spacings are ``(z, y, x)`` in mm; a voxel's
value sits at its centre, the grid spans the same physical extent before and after (so a shape change of
``n -> m`` scales coordinates by ``n / m``), which is what skimage's ``resize`` and torch's
``interpolate(..., align_corners=False)`` do.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.plans import Resampling

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20
ONEHOT_SLICE_FACTOR = 8  # nearest neighbour for labels when one one-hot slice needs 8x CHUNK_BYTES
KEEP_VOLUME_TOLERANCE = 0.005  # a class is refilled when it lost more than this share of its voxels
_VALUE_BINS = 1024  # histogram of interpolated class values that sets the refill threshold
_CUBIC_A = -0.75  # torch's (and OpenCV's) cubic convolution coefficient
_MODES_2D = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use ``num_threads`` intra-op threads inside the block; ``None`` keeps the caller's setting."""
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def target_shape(shape: Sequence[int], src_spacing: Sequence[float],
                 dst_spacing: Sequence[float]) -> tuple[int, ...]:
    """``round(shape * src / dst)`` per axis, at least 1."""
    return tuple(max(1, int(round(n * s / d))) for n, s, d in zip(shape, src_spacing, dst_spacing))


def separate_axis(src_spacing: Sequence[float], dst_spacing: Sequence[float],
                  threshold: float) -> int | None:
    """The low-resolution axis to resample on its own, or None when resampling is isotropic.

    The source decides first (its thick-slice axis), then the target. When two axes share the largest
    spacing there is no single low-resolution axis and all axes are treated alike.
    """
    for spacing in (np.asarray(src_spacing, float), np.asarray(dst_spacing, float)):
        if spacing.max() / spacing.min() > threshold:
            lowres = np.flatnonzero(np.isclose(spacing, spacing.max()))
            return int(lowres[0]) if len(lowres) == 1 else None
    return None


def axis_weights(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``(n_out, taps)`` of torch's 1D kernel for ``order`` 0, 1 or 3."""
    dst = np.arange(n_out, dtype=np.float64)
    scale = n_in / n_out
    if order == 0:
        idx = np.minimum(np.floor((dst + 0.5) * scale), n_in - 1).astype(np.int64)[:, None]
        return idx, np.ones_like(idx, dtype=np.float32)
    real = (dst + 0.5) * scale - 0.5
    if order == 1:
        real = np.maximum(real, 0.0)
        i0 = np.floor(real).astype(np.int64)
        w1 = real - i0
        idx = np.stack([i0, np.minimum(i0 + 1, n_in - 1)], axis=1)
        return idx, np.stack([1.0 - w1, w1], axis=1).astype(np.float32)
    if order == 3:
        i0 = np.floor(real).astype(np.int64)
        t = real - i0
        a = _CUBIC_A
        w_m1 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
        w_0 = ((a + 2) * t - (a + 3)) * t * t + 1
        w_1 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
        weights = np.stack([w_m1, w_0, w_1, 1.0 - w_m1 - w_0 - w_1], axis=1)
        idx = np.clip(i0[:, None] + np.arange(-1, 3)[None], 0, n_in - 1)
        return idx, weights.astype(np.float32)
    raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")


@dataclass(frozen=True)
class _Plan:
    """How one volume is resampled: which axis goes first (the 'z' axis) and the kernel orders."""

    axis: int
    order_inplane: int
    order_z: int
    out_shape: tuple[int, int, int]


def _apply(volume: np.ndarray, plan: _Plan, out: np.ndarray, chunk_bytes: int,
           prepare: "_Prepare", finish: "_Finish") -> None:
    """Resample ``volume`` (C, z, y, x) chunk by chunk along ``plan.axis`` into ``out``.

    ``prepare`` turns a source slab into the float (K, m, y, x) tensor that is interpolated (identity
    for images, one-hot for labels); ``finish`` writes the resampled (K, n, Y, X) chunk into ``out``.
    """
    src = np.moveaxis(volume, plan.axis + 1, 1)
    dst = np.moveaxis(out, plan.axis + out.ndim - 3, out.ndim - 3)
    n_in, n_out = src.shape[1], plan.out_shape[plan.axis]
    inplane = tuple(n for a, n in enumerate(plan.out_shape) if a != plan.axis)
    idx, weights = axis_weights(n_in, n_out, plan.order_z)
    identity_z = n_in == n_out  # every kernel reproduces its samples at unchanged size
    chunk = _chunk_slices(prepare.slice_bytes(src.shape[0], src.shape[2:], inplane),
                          n_in / n_out, chunk_bytes)
    for k0 in range(0, n_out, chunk):
        k1 = min(n_out, k0 + chunk)
        lo, hi = (k0, k1) if identity_z else (int(idx[k0:k1].min()), int(idx[k0:k1].max()) + 1)
        slab = prepare(np.ascontiguousarray(src[:, lo:hi]))
        if slab is None:  # label slab holding a single class: nothing to interpolate
            finish.constant(dst, k0, k1, int(src[0, lo, 0, 0]))
            continue
        slab = _inplane(slab, inplane, plan.order_inplane)
        if identity_z:
            finish(dst, k0, k1, slab)
            continue
        acc = None
        for t in range(idx.shape[1]):
            w = torch.from_numpy(weights[k0:k1, t]).view(1, -1, 1, 1)
            term = slab[:, torch.from_numpy(idx[k0:k1, t] - lo)] * w
            acc = term if acc is None else acc.add_(term)
        assert acc is not None  # axis_weights gives every output slice at least one tap
        finish(dst, k0, k1, acc)


def _chunk_slices(slice_bytes: tuple[int, int], ratio: float, chunk_bytes: int) -> int:
    """Output slices per chunk so that a chunk's temporaries stay within ``chunk_bytes``."""
    src, dst = slice_bytes
    per_output_slice = max(1.0, ratio) * (src + dst) + 3 * dst
    return max(1, int(chunk_bytes // per_output_slice))


def _inplane(slab: torch.Tensor, size: tuple[int, ...], order: int) -> torch.Tensor:
    """Interpolate the last two axes of a (K, m, y, x) float tensor to ``size``."""
    k, m, y, x = slab.shape
    if (y, x) == tuple(size):
        return slab
    flat = slab.reshape(1, k * m, y, x)
    out = F.interpolate(flat, size=tuple(size), mode=_MODES_2D[order],
                        **({} if order == 0 else {"align_corners": False}))
    return out.reshape(k, m, *size)


class _Prepare:
    """Image slabs: float32 tensors as they are."""

    def slice_bytes(self, c: int, src: Sequence[int], dst: Sequence[int]) -> tuple[int, int]:
        """Bytes of one source slice (as prepared and interpolated) and of one output slice."""
        return 4 * c * int(np.prod(src)), 4 * c * int(np.prod(dst))

    def __call__(self, slab: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(slab.astype(np.float32, copy=False))


class _OneHot(_Prepare):
    """Label slabs (1, m, y, x): one float32 channel per class, or None when only one class occurs."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def slice_bytes(self, c: int, src: Sequence[int], dst: Sequence[int]) -> tuple[int, int]:
        n_src, n_dst = int(np.prod(src)), int(np.prod(dst))
        return (4 * self.num_classes + 8) * n_src, 4 * self.num_classes * n_dst

    def __call__(self, slab: np.ndarray) -> torch.Tensor | None:
        if slab.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64):
            slab = slab.astype(np.int32)
        labels = torch.from_numpy(slab[0])
        if bool((labels == labels.view(-1)[0]).all()):
            return None
        onehot = torch.empty((self.num_classes, *labels.shape), dtype=torch.float32)
        for k in range(self.num_classes):
            torch.eq(labels, k, out=onehot[k])  # writes 0/1 floats without a bool temporary
        return onehot


class _Finish:
    """Write a resampled float chunk into the output array."""

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        dst[:, k0:k1] = chunk.numpy()

    def constant(self, dst: np.ndarray, k0: int, k1: int, value: int) -> None:
        raise NotImplementedError("image slabs are never constant")


class _ArgMax(_Finish):
    """Write the most likely class of a one-hot chunk."""

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        # a loop over classes: torch's argmax over the leading axis is several times slower
        best = chunk[0].clone()
        label = torch.zeros(chunk.shape[1:], dtype=torch.uint8)
        for k in range(1, chunk.shape[0]):
            better = chunk[k] > best
            label.masked_fill_(better, k)
            torch.maximum(best, chunk[k], out=best)
        dst[k0:k1] = label.numpy()

    def constant(self, dst: np.ndarray, k0: int, k1: int, value: int) -> None:
        dst[k0:k1] = value


def donor_table(targets: np.ndarray) -> np.ndarray:
    """``donors[k, l]``: whether class ``k`` may take voxels labelled ``l`` when it is short: the
    background, and foreground classes of a larger target volume (so voxels only move from larger
    classes to smaller ones, and no two classes trade back and forth)."""
    n = len(targets)
    donors = np.zeros((n, n), dtype=bool)
    donors[1:, 0] = True
    for k in range(1, n):
        donors[k, 1:] = np.asarray(targets[1:]) > targets[k]
    return donors


def _current_values(chunk: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Each voxel's interpolated value of the class it is labelled (once per chunk)."""
    return chunk.gather(0, label.unsqueeze(0)).squeeze(0)


def _margin_bins(values: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Bin of a class's margin, its interpolated ``values`` less the ``current`` class's: in
    [-1, 0] after an arg-max (above 0 only where a refill moved the voxel; the top bin)."""
    return ((values - current + 1.0) * _VALUE_BINS).long().clamp_(0, _VALUE_BINS - 1)


class _Candidates(_Finish):
    """Counts each class's voxels in ``dst`` (already written) and, per foreground class ``k``,
    histograms its margin (:func:`_margin_bins`) over its donors' voxels (``donors[k]``) where its
    value is above 0: the voxels it may take back. ``hist[k]``: ``_VALUE_BINS`` bins."""

    def __init__(self, donors: np.ndarray) -> None:
        self.donors = torch.from_numpy(donors)
        self.counts = np.zeros(len(donors), dtype=np.int64)
        self.hist = torch.zeros((len(donors), _VALUE_BINS), dtype=torch.float64)

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        n = len(self.counts)
        label = torch.from_numpy(dst[k0:k1]).long()
        self.counts += np.bincount(dst[k0:k1].ravel(), minlength=n)[:n]
        current = _current_values(chunk, label)
        for k in range(1, chunk.shape[0]):
            keep = (chunk[k] > 0) & self.donors[k][label]
            if bool(keep.any()):
                bins = _margin_bins(chunk[k][keep], current[keep])
                self.hist[k] += torch.bincount(bins, minlength=_VALUE_BINS).double()

    def constant(self, dst: np.ndarray, k0: int, k1: int, value: int) -> None:
        self.counts[value] += dst[k0:k1].size


class _ArgMaxCandidates(_Candidates):
    """The arg-max written to ``dst``, then counted and histogrammed as :class:`_Candidates`."""

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        _ArgMax()(dst, k0, k1, chunk)
        super().__call__(dst, k0, k1, chunk)

    def constant(self, dst: np.ndarray, k0: int, k1: int, value: int) -> None:
        dst[k0:k1] = value
        super().constant(dst, k0, k1, value)


class _Refill(_Finish):
    """A voxel of a donor of class ``k`` goes to ``k`` where ``k``'s margin bin reaches its threshold
    bin (``thresholds[k]``); where several classes qualify, the highest margin wins. Records
    whether any voxel was taken from a foreground class (``took_foreground``)."""

    def __init__(self, thresholds: dict[int, int], donors: np.ndarray) -> None:
        self.thresholds, self.donors = thresholds, torch.from_numpy(donors)
        self.took_foreground = False

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        label = torch.from_numpy(dst[k0:k1])
        index = label.long()
        best = torch.full(chunk.shape[1:], -1, dtype=torch.long)
        fill = torch.zeros_like(label)
        current = _current_values(chunk, index)
        for k, threshold in self.thresholds.items():
            bins = _margin_bins(chunk[k], current)
            claim = self.donors[k][index] & (chunk[k] > 0) & (bins >= threshold) & (bins > best)
            fill.masked_fill_(claim, k)
            torch.where(claim, bins, best, out=best)
        taken = fill > 0
        self.took_foreground = self.took_foreground or bool((taken & (label > 0)).any())
        label.copy_(torch.where(taken, fill, label))

    def constant(self, dst: np.ndarray, k0: int, k1: int, value: int) -> None:
        pass  # a single-class slab has no candidates


def refill_thresholds(counts: np.ndarray, hist: torch.Tensor, targets: np.ndarray,
                      tolerance: float = KEEP_VOLUME_TOLERANCE) -> dict[int, int]:
    """Per foreground class that lost voxels, the margin bin from which it takes its donors' voxels
    (``hist[k]``, :class:`_Candidates`) so that its count comes closest to ``targets``.

    Taking every voxel whose margin reaches a threshold is the arg-max with the class's value
    raised by that much: the voxels nearest to being the class's go first."""
    thresholds: dict[int, int] = {}
    for k in range(1, len(counts)):
        deficit = float(targets[k]) - float(counts[k])
        if deficit < max(1.0, tolerance * float(targets[k])):
            continue
        from_top = torch.flip(hist[k], (0,)).cumsum(0).numpy()  # voxels at or above each bin, high first
        if from_top[-1] < 1.0:
            continue  # nothing to take
        j = int(np.searchsorted(from_top, deficit))
        if j >= len(from_top):
            j = len(from_top) - 1
        elif j > 0 and abs(from_top[j - 1] - deficit) <= abs(from_top[j] - deficit):
            j -= 1  # stopping one bin higher comes closer to the volume
        thresholds[k] = _VALUE_BINS - 1 - j
    return thresholds


#: Rounds of refilling at most: a class that gave voxels to a smaller one takes its own back in
#: the next round, from its own donors (each round is two passes over the volume).
MAX_REFILL_ROUNDS = 3


def _argmax_keeping_volume(volume: np.ndarray, plan: _Plan, out: np.ndarray, chunk_bytes: int,
                           prepare: _Prepare, num_classes: int, source_counts: np.ndarray | None,
                           keep_volume: bool) -> None:
    """Arg-max of the interpolated class values into ``out``; with ``keep_volume``, classes that
    lost voxels (their counts scaled by the change of voxel size) take them back from their donors
    (:func:`donor_table`), in another round while a round took voxels from a foreground class."""
    if not keep_volume:
        _apply(volume, plan, out, chunk_bytes, prepare, _ArgMax())
        return
    if source_counts is None:
        raise ValueError("keep_volume needs the class counts of the source (source_counts)")
    targets = source_counts * (out.size / float(np.prod(volume.shape[1:])))
    donors = donor_table(targets)
    candidates: _Candidates = _ArgMaxCandidates(donors)
    for round_ in range(MAX_REFILL_ROUNDS):
        if round_:
            candidates = _Candidates(donors)
        _apply(volume, plan, out, chunk_bytes, prepare, candidates)
        thresholds = refill_thresholds(candidates.counts, candidates.hist, targets)
        if not thresholds:
            return
        log.debug("keeping class volumes, round %d: refill threshold bins %s", round_ + 1, thresholds)
        refill = _Refill(thresholds, donors)
        _apply(volume, plan, out, chunk_bytes, prepare, refill)
        if not refill.took_foreground:
            return


def _resolve(shape: Sequence[int], src_spacing: Sequence[float] | None,
             dst_spacing: Sequence[float] | None,
             dst_shape: Sequence[int] | None) -> tuple[tuple[int, int, int], tuple[float, ...] | None,
                                                       tuple[float, ...] | None]:
    """Output shape and (when known) source and target spacings."""
    if (dst_spacing is None) == (dst_shape is None):
        raise ValueError("give exactly one of dst_spacing and dst_shape")
    if len(shape) != 3:
        raise ValueError(f"expected a 3D spatial shape, got {tuple(shape)}")
    if dst_shape is not None:
        out = tuple(int(n) for n in dst_shape)
        if len(out) != 3 or min(out) < 1:
            raise ValueError(f"dst_shape must be 3 positive sizes, got {tuple(dst_shape)}")
        if src_spacing is None:
            return out, None, None
        dst = tuple(float(s) * n / m for s, n, m in zip(src_spacing, shape, out))
        return out, tuple(float(s) for s in src_spacing), dst
    if src_spacing is None:
        raise ValueError("dst_spacing needs src_spacing")
    assert dst_spacing is not None  # exactly one of dst_spacing and dst_shape (checked above)
    src = tuple(float(s) for s in src_spacing)
    dst = tuple(float(s) for s in dst_spacing)
    out_shape = target_shape(shape, src, dst)
    if len(out_shape) != 3:
        raise ValueError(f"src_spacing and dst_spacing need 3 values each, got {src} and {dst}")
    return out_shape, src, dst


def resample_image(data: np.ndarray, src_spacing: Sequence[float],
                   dst_spacing: Sequence[float] | None = None,
                   resampling: Resampling = Resampling(), *, dst_shape: Sequence[int] | None = None,
                   num_threads: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Resample an image ``(C, z, y, x)`` to ``dst_spacing`` (or ``dst_shape``); returns float32.

    In-plane axes use ``resampling.order_image``; the low-resolution axis uses ``order_z`` when source
    or target spacing is anisotropic beyond ``anisotropy_threshold``, else ``order_image`` too.
    The input is not changed.
    """
    if data.ndim != 4:
        raise ValueError(f"resample_image expects (C, z, y, x), got shape {data.shape}")
    out_shape, src, dst = _resolve(data.shape[1:], src_spacing, dst_spacing, dst_shape)
    axis = separate_axis(src, dst, resampling.anisotropy_threshold) if src and dst else None
    plan = _Plan(axis=0 if axis is None else axis, order_inplane=resampling.order_image,
                 order_z=resampling.order_image if axis is None else resampling.order_z,
                 out_shape=out_shape)
    log.debug("resample image %s -> %s, %s", data.shape[1:], out_shape, plan)
    out = np.empty((data.shape[0], *out_shape), dtype=np.float32)
    if tuple(data.shape[1:]) == out_shape:
        out[...] = data
        return out
    with torch_threads(num_threads), torch.inference_mode():
        _apply(data, plan, out, chunk_bytes, _Prepare(), _Finish())
    return out


def resample_labels(seg: np.ndarray, src_spacing: Sequence[float] | None = None,
                    dst_spacing: Sequence[float] | None = None, num_classes: int | None = None, *,
                    dst_shape: Sequence[int] | None = None, num_threads: int | None = None,
                    chunk_bytes: int = CHUNK_BYTES, keep_volume: bool = True) -> np.ndarray:
    """Resample a label map ``(z, y, x)`` to ``dst_spacing`` (or ``dst_shape``); returns uint8.

    One-hot, linear, arg-max (nearest neighbour when one-hot slices would exceed ``chunk_bytes``);
    with ``keep_volume`` each class keeps its volume in mL (see the module's docstring).
    Only labels present in the input can appear in the output.
    """
    if seg.ndim != 3:
        raise ValueError(f"resample_labels expects (z, y, x), got shape {seg.shape}")
    out_shape, _, _ = _resolve(seg.shape, src_spacing, dst_spacing, dst_shape)
    lo, hi = (int(seg.min()), int(seg.max())) if seg.size else (0, 0)
    num_classes = hi + 1 if num_classes is None else int(num_classes)
    if lo < 0 or hi >= num_classes or num_classes > 256:
        raise ValueError(f"label values {lo}..{hi} must lie in 0..{num_classes - 1} (at most 255)")
    out = np.empty(out_shape, dtype=np.uint8)
    if tuple(seg.shape) == out_shape:
        out[...] = seg
        return out
    src_b, dst_b = _OneHot(num_classes).slice_bytes(1, seg.shape[1:], out_shape[1:])
    if src_b + 4 * dst_b > ONEHOT_SLICE_FACTOR * chunk_bytes:
        log.info("resample_labels: %d classes on %s exceed the chunk budget; using nearest neighbour",
                 num_classes, out_shape)
        plan = _Plan(axis=0, order_inplane=0, order_z=0, out_shape=out_shape)
        with torch_threads(num_threads), torch.inference_mode():
            _apply(seg[None], plan, out[None], chunk_bytes, _Prepare(), _Cast())
        return out
    plan = _Plan(axis=0, order_inplane=1, order_z=1, out_shape=out_shape)
    counts = np.bincount(seg.ravel(), minlength=num_classes)[:num_classes] if keep_volume else None
    with torch_threads(num_threads), torch.inference_mode():
        _argmax_keeping_volume(seg[None], plan, out, chunk_bytes, _OneHot(num_classes), num_classes,
                               counts, keep_volume)
    return out


class _Cast(_Finish):
    """Write nearest-neighbour label values (held as float) as integers."""

    def __call__(self, dst: np.ndarray, k0: int, k1: int, chunk: torch.Tensor) -> None:
        dst[:, k0:k1] = chunk.round().numpy().astype(dst.dtype)


def resample_probabilities(probs: np.ndarray | torch.Tensor, dst_shape: Sequence[int], *,
                           num_threads: int | None = None,
                           chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Linearly resample class probabilities ``(K, z, y, x)`` to ``dst_shape``; returns float32.

    Used by inference to bring softmax outputs back to the cropped input grid before arg-max.
    A torch tensor (any device) is accepted and copied to the CPU.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().to("cpu", torch.float32).numpy()
    if probs.ndim != 4:
        raise ValueError(f"resample_probabilities expects (K, z, y, x), got shape {probs.shape}")
    out_shape, _, _ = _resolve(probs.shape[1:], None, None, dst_shape)
    out = np.empty((probs.shape[0], *out_shape), dtype=np.float32)
    if tuple(probs.shape[1:]) == out_shape:
        out[...] = probs
        return out
    plan = _Plan(axis=0, order_inplane=1, order_z=1, out_shape=out_shape)
    with torch_threads(num_threads), torch.inference_mode():
        _apply(probs, plan, out, chunk_bytes, _Prepare(), _Finish())
    return out


def probabilities_to_labels(probs: np.ndarray | torch.Tensor, dst_shape: Sequence[int], *,
                            keep_volume: bool = True, num_threads: int | None = None,
                            chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Labels ``(z, y, x)`` (uint8) on ``dst_shape`` from class probabilities ``(K, z, y, x)``:
    linear resampling and arg-max, and with ``keep_volume`` each class keeps the volume in mL that
    the arg-max gives on the probabilities' own grid. Never materialises the resampled probabilities."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().to("cpu", torch.float32).numpy()
    if probs.ndim != 4:
        raise ValueError(f"probabilities_to_labels expects (K, z, y, x), got shape {probs.shape}")
    if probs.shape[0] > 256:
        raise ValueError(f"at most 256 classes, got {probs.shape[0]}")
    out_shape, _, _ = _resolve(probs.shape[1:], None, None, dst_shape)
    num_classes = probs.shape[0]
    out = np.empty(out_shape, dtype=np.uint8)
    plan = _Plan(axis=0, order_inplane=1, order_z=1, out_shape=out_shape)
    with torch_threads(num_threads), torch.inference_mode():
        if tuple(probs.shape[1:]) == out_shape:
            _ArgMax()(out, 0, out_shape[0], torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32)))
            return out
        counts = None
        if keep_volume:
            source: np.ndarray = np.empty(probs.shape[1:], dtype=np.uint8)
            _ArgMax()(source, 0, source.shape[0], torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32)))
            counts = np.bincount(source.ravel(), minlength=num_classes)[:num_classes]
            del source
        _argmax_keeping_volume(probs, plan, out, chunk_bytes, _Prepare(), num_classes, counts, keep_volume)
    return out
