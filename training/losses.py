"""Segmentation losses chosen by name: Dice + CE, Dice + rarity-weighted CE (constant or annealed
to plain CE over the schedule), weighted Dice + focal, Dice, 0.3 Dice + 0.7 CE.

Dice terms are per foreground class, batch-pooled (``batch_dice``) so that a patch without a
small class does not produce a 0/0 term, and never include the background.

With partial labels (a merged dataset, :mod:`autoseg.partial_labels`) every loss scores what the
label says and nothing more (:class:`PartialTargets`): the cross-entropy of a voxel is that of the
set of classes its value allows, and the soft Dice is taken per annotated region (each foreground
class, and each partial value that is certainly foreground, such as Task03's "liver or vessel"), a
region's probability being the sum over its classes and a false positive only a probability on a
class the voxel's value does not allow.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.partial_labels import LabelSpace
from autoseg.regions import Region, num_classes_of, region_targets
from autoseg.registry import Registry


def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice of each foreground class, pooled over the batch; shape (num_classes - 1,)."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, target.long().unsqueeze(1), 1)[:, 1:]
    dims = (0, *range(2, logits.ndim))
    intersect = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (2 * intersect + smooth) / (denom + smooth)


class PartialTargets:
    """Loss arithmetic for label maps holding partial values (``space``: the stored values and the
    classes each allows). Regions: each foreground class, then each certainly-foreground partial
    value, a region being the classes its value allows. A voxel is inside a region when every class
    its value allows is one of the region's (a plain liver voxel is inside "liver or vessel");
    ``hits[r, v, c]`` says a probability on class ``c`` at a voxel stored as ``v`` counts towards
    region ``r``'s prediction: a region class inside the region, or one the voxel does not allow."""

    def __init__(self, space: LabelSpace):
        self.space = space
        self.allowed = torch.from_numpy(space.allowed)
        self.log_allowed = torch.where(self.allowed, 0.0, float("-inf"))  # (V, C): added to log-probabilities
        values = list(range(1, space.num_classes)) + [v for v in space.foreground_values() if v >= space.num_classes]
        self.region_values = torch.tensor(values, dtype=torch.long)
        classes = torch.zeros((len(values), space.num_classes), dtype=torch.bool)
        for i, v in enumerate(values):
            classes[i] = self.allowed[v]
        self.region_classes = classes.float()  # (R, C)
        used = self.allowed.any(1)  # (V,)
        inside = (used.unsqueeze(0) & ~(self.allowed.unsqueeze(0) & ~classes.unsqueeze(1)).any(2))  # (R, V)
        self.inside = inside.float()
        self.hits = (classes.unsqueeze(1) & (inside.unsqueeze(2) | ~self.allowed.unsqueeze(0))).float()  # (R, V, C)
        self.count_as = torch.from_numpy(space.counted_as)  # rarity weights' class of each stored value

    def class_counts(self, target: torch.Tensor) -> torch.Tensor:
        """Voxels of each class in ``target``, each stored value counted as ``space.counted_as`` says
        (without this no voxel of a merged dataset is plain background, and every weight is 1)."""
        per_value = torch.bincount(target.flatten().long(), minlength=self.space.num_values)[:self.space.num_values]
        return torch.zeros(self.space.num_classes, dtype=torch.float32, device=target.device).index_add_(
            0, self.count_as.to(target.device), per_value.float())

    def log_prob(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each voxel's log-probability of the classes its stored value allows, (B, *spatial)."""
        logp = F.log_softmax(logits.float(), dim=1)
        bias = F.embedding(target.long(), self.log_allowed.to(logits.device)).movedim(-1, 1)  # 0 or -inf
        return torch.logsumexp(logp + bias, dim=1)

    def voxel_weights(self, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """A voxel's weight: the smallest weight of the classes its value allows."""
        per_value = torch.where(self.allowed.to(class_weights.device), class_weights.unsqueeze(0),
                                torch.full_like(class_weights, float("inf")).unsqueeze(0)).amin(1)
        return per_value[target.long()]

    def soft_dice(self, logits: torch.Tensor, target: torch.Tensor,
                  smooth: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-pooled soft Dice of each region, shape (R,), and its reference voxel counts."""
        probs = torch.softmax(logits.float(), dim=1)
        flat = target.long().reshape(-1)
        # soft[v, c]: the probability of class c summed over the voxels stored as v (pooled over the batch)
        soft = torch.zeros((self.space.num_values, probs.shape[1]), device=probs.device).index_add(
            0, flat, probs.movedim(1, -1).reshape(-1, probs.shape[1]))
        inside, hits = self.inside.to(probs.device), self.hits.to(probs.device)
        counts = inside @ torch.bincount(flat, minlength=self.space.num_values)[:self.space.num_values].float()
        tp = ((soft @ self.region_classes.to(probs.device).T).T * inside).sum(1)  # region mass inside it
        mass = (hits * soft.unsqueeze(0)).sum((1, 2))
        return (2 * tp + smooth) / (mass + counts + smooth), counts

    def mean_dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean soft Dice over the regions the batch holds (a source's patches hold only its own)."""
        dice, counts = self.soft_dice(logits, target)
        present = counts > 0
        return dice[present].mean() if bool(present.any()) else dice.mean()

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor,
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean (or class-weighted mean) cross-entropy of each voxel's allowed set."""
        nll = -self.log_prob(logits, target)
        if class_weights is None:
            return nll.mean()
        w = self.voxel_weights(target, class_weights)
        return (w * nll).sum() / w.sum()


def partial_targets(space: LabelSpace | None) -> PartialTargets | None:
    """The partial-label arithmetic of ``space``, None when it has no partial values (plain losses)."""
    return PartialTargets(space) if space is not None and space.is_partial else None


class DiceCE(nn.Module):
    """``w_dice * (1 - mean foreground Dice) + w_ce * cross-entropy``."""

    def __init__(self, w_dice: float = 1.0, w_ce: float = 1.0, space: LabelSpace | None = None):
        super().__init__()
        self.w_dice, self.w_ce = w_dice, w_ce
        self.partial = partial_targets(space)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.partial is not None:
            if self.w_dice:
                loss = loss + self.w_dice * (1 - self.partial.mean_dice(logits, target))
            if self.w_ce:
                loss = loss + self.w_ce * self.partial.cross_entropy(logits, target)
            return loss
        if self.w_dice:
            loss = loss + self.w_dice * (1 - soft_dice_per_class(logits, target).mean())
        if self.w_ce:
            loss = loss + self.w_ce * F.cross_entropy(logits.float(), target.long())
        return loss


def rarity_weights(target: torch.Tensor, num_classes: int, cap: float = 30.0) -> torch.Tensor:
    """Per-class weights ``sqrt(voxels / class voxels)`` in this batch, background 1, capped.

    The inverse square root of a class's frequency: a class at 0.5% of the voxels counts about 14x
    a background voxel. The cap keeps a class with a handful of voxels in a batch from dominating.
    """
    counts = torch.bincount(target.flatten().long(), minlength=num_classes)[:num_classes].float()
    return weights_from_counts(counts, cap)


def weights_from_counts(counts: torch.Tensor, cap: float = 30.0) -> torch.Tensor:
    """:func:`rarity_weights` from per-class voxel counts (background first)."""
    weights = torch.sqrt(counts.sum() / (counts + 1.0))
    return (weights / weights[0]).clamp(min=1.0, max=cap)


class DiceWeightedCE(nn.Module):
    """``(1 - mean foreground Dice) + cross-entropy weighted by class rarity``.

    Why: with plain CE a thin-vessel class (0.2% of the body) receives a learning signal hundreds
    of times weaker than the background, and the soft-Dice gradient vanishes while the class's
    probability is near zero, so on a short CPU budget the network predicts no vessel at all for
    hundreds of steps. Weighting the CE by rarity makes the class appear within about a hundred
    steps; the Dice term then trims the over-segmentation the weights cause.

    ``anneal``: the weights move linearly from their rarity values at the start of training to 1
    (plain Dice + CE) at its end (``progress``, set by the training loop). Class weights shift the
    decision boundary outwards: they find a rare class early and then keep over-segmenting it;
    annealing keeps the first and lets the unweighted CE place the boundary by the end.
    """

    def __init__(self, anneal: bool = False, space: LabelSpace | None = None):
        super().__init__()
        self.anneal = anneal
        self.progress = 0.0  # fraction of the schedule done, in [0, 1]
        self.partial = partial_targets(space)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = rarity_weights(target, logits.shape[1]) if self.partial is None else \
            weights_from_counts(self.partial.class_counts(target))
        if self.anneal:
            weights = 1 + (weights - 1) * (1 - min(max(self.progress, 0.0), 1.0))
        if self.partial is not None:
            return (1 - self.partial.mean_dice(logits, target)) + self.partial.cross_entropy(logits, target, weights)
        dice = soft_dice_per_class(logits, target).mean()
        return (1 - dice) + F.cross_entropy(logits.float(), target.long(), weight=weights)


class WeightedDiceFocal(nn.Module):
    """Class-imbalance loss: Dice weighted towards rare classes plus focal loss (gamma 2).

    Class weights are inverse square-root voxel frequencies in the batch, normalised to mean 1, so a
    class of thin vessels counts more than a large liver without exploding when it is absent.
    """

    def __init__(self, gamma: float = 2.0, space: LabelSpace | None = None):
        super().__init__()
        self.gamma = gamma
        self.partial = partial_targets(space)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.partial is not None:  # per region, each voxel's allowed set
            dice, counts = self.partial.soft_dice(logits, target)
            logp_t = self.partial.log_prob(logits, target)
        else:
            dice = soft_dice_per_class(logits, target)
            counts = torch.bincount(target.flatten().long(), minlength=logits.shape[1])[1:].float()
            logp = F.log_softmax(logits.float(), dim=1)
            logp_t = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
        weights = 1.0 / torch.sqrt(counts + 1.0)
        weights = weights / weights.mean()
        focal = -((1 - logp_t.exp()) ** self.gamma * logp_t).mean()
        return (weights * (1 - dice)).mean() + focal


class RegionDiceBCE(nn.Module):
    """Region outputs (:mod:`autoseg.regions`): ``w_dice * (1 - mean soft Dice of the regions'
    sigmoids) + w_bce * binary cross-entropy of each region``, nnU-Net's loss for regions.

    ``weighted``: each region's positive voxels are weighted by its rarity in the batch (the
    square-root weights of :func:`weights_from_counts`, as the softmax losses weight classes),
    and with ``anneal`` the weights move to 1 over the schedule (``progress``)."""

    def __init__(self, regions: tuple[Region, ...], w_dice: float = 1.0, w_bce: float = 1.0,
                 weighted: bool = False, anneal: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.regions = tuple(regions)
        self.num_classes = num_classes_of(self.regions)
        self.w_dice, self.w_bce, self.weighted, self.anneal, self.smooth = w_dice, w_bce, weighted, anneal, smooth
        self.progress = 0.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        on = region_targets(target, self.regions, self.num_classes)
        dims = (0, *range(2, logits.ndim))
        loss = logits.new_zeros(())
        if self.w_dice:
            probs = torch.sigmoid(logits)
            dice = (2 * (probs * on).sum(dims) + self.smooth) / (probs.sum(dims) + on.sum(dims) + self.smooth)
            loss = loss + self.w_dice * (1 - dice.mean())
        if self.w_bce:
            pos_weight = None
            if self.weighted:
                positives = on.sum(dims)
                counts = torch.stack([float(on[:, 0].numel()) - positives, positives], 1)  # (R, 2)
                weights = torch.stack([weights_from_counts(c) for c in counts])[:, 1]
                if self.anneal:
                    weights = 1 + (weights - 1) * (1 - min(max(self.progress, 0.0), 1.0))
                pos_weight = weights.view(1, -1, *([1] * (logits.ndim - 2)))
            loss = loss + self.w_bce * F.binary_cross_entropy_with_logits(logits, on, pos_weight=pos_weight)
        return loss


@runtime_checkable
class ScheduledLoss(Protocol):
    """A loss that changes over the schedule: the training loop sets ``progress`` (fraction done)."""

    progress: float


#: Loss builders by name (``recipe.loss``, ``--loss``), each given the label space when it is partial.
LOSSES: Registry[Callable[[LabelSpace | None], nn.Module]] = Registry("loss", {
    "dice_ce": lambda space: DiceCE(1.0, 1.0, space),
    "dice_wce": lambda space: DiceWeightedCE(space=space),
    "dice_wce_anneal": lambda space: DiceWeightedCE(anneal=True, space=space),
    "dice": lambda space: DiceCE(1.0, 0.0, space),
    "dice03_ce07": lambda space: DiceCE(0.3, 0.7, space),
    "weighted_dice_focal": lambda space: WeightedDiceFocal(space=space),
})


#: The losses of region outputs by the same names (``recipe.loss``): soft Dice with binary
#: cross-entropy in place of the softmax's cross-entropy.
REGION_LOSSES: Registry[Callable[[tuple[Region, ...]], nn.Module]] = Registry("loss of region outputs", {
    "dice_ce": lambda regions: RegionDiceBCE(regions),
    "dice_wce": lambda regions: RegionDiceBCE(regions, weighted=True),
    "dice_wce_anneal": lambda regions: RegionDiceBCE(regions, weighted=True, anneal=True),
    "dice": lambda regions: RegionDiceBCE(regions, w_bce=0.0),
    "dice03_ce07": lambda regions: RegionDiceBCE(regions, 0.3, 0.7),
})


def build_loss(name: str, space: LabelSpace | None = None, regions: tuple[Region, ...] | None = None) -> nn.Module:
    """A new loss module by name (scoring partial labels when ``space`` holds any, region sigmoids
    when ``regions`` are given); an unknown name raises with the known ones and a suggestion."""
    if regions:
        return REGION_LOSSES[name](tuple(regions))
    return LOSSES[name](space)


class DeepSupervision(nn.Module):
    """Applies a loss at every deep-supervision output with halving weights (highest first)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def set_progress(self, progress: float) -> None:
        """Tell a loss that changes over the schedule (``progress`` attribute) where training is."""
        if isinstance(self.loss, ScheduledLoss):  # has a ``progress`` attribute
            self.loss.progress = float(progress)

    def forward(self, outputs: list[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = [0.5**i for i in range(len(outputs))]
        if len(outputs) > 1:
            weights[-1] = 0.0  # the coarsest output is too coarse to be useful (nnU-Net drops it too)
        total = sum(weights)
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            if w:
                loss = loss + (w / total) * self.loss(out, _downsample_target(target, out.shape[2:]))
            else:  # keep the unused head in the graph (zero gradient): DistributedDataParallel needs
                loss = loss + 0.0 * out.float().sum()  # every parameter to take part in every step
        return loss


def _downsample_target(target: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if target.shape[1:] == shape:
        return target
    return F.interpolate(target.unsqueeze(1).float(), size=tuple(shape), mode="nearest").squeeze(1).long()
