"""Segmentation losses chosen by name: Dice + CE, Dice + rarity-weighted CE (constant or annealed
to plain CE over the schedule), weighted Dice + focal, Dice, 0.3 Dice + 0.7 CE.

Dice terms are per foreground class, batch-pooled (``batch_dice``) so that a patch without a
small class does not produce a 0/0 term, and never include the background.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.registry import Registry


def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice of each foreground class, pooled over the batch; shape (num_classes - 1,)."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, target.long().unsqueeze(1), 1)[:, 1:]
    dims = (0, *range(2, logits.ndim))
    intersect = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (2 * intersect + smooth) / (denom + smooth)


class DiceCE(nn.Module):
    """``w_dice * (1 - mean foreground Dice) + w_ce * cross-entropy``."""

    def __init__(self, w_dice: float = 1.0, w_ce: float = 1.0):
        super().__init__()
        self.w_dice, self.w_ce = w_dice, w_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
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

    def __init__(self, anneal: bool = False):
        super().__init__()
        self.anneal = anneal
        self.progress = 0.0  # fraction of the schedule done, in [0, 1]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = rarity_weights(target, logits.shape[1])
        if self.anneal:
            weights = 1 + (weights - 1) * (1 - min(max(self.progress, 0.0), 1.0))
        dice = soft_dice_per_class(logits, target).mean()
        return (1 - dice) + F.cross_entropy(logits.float(), target.long(), weight=weights)


class WeightedDiceFocal(nn.Module):
    """Class-imbalance loss: Dice weighted towards rare classes plus focal loss (gamma 2).

    Class weights are inverse square-root voxel frequencies in the batch, normalised to mean 1, so a
    class of thin vessels counts more than a large liver without exploding when it is absent.
    """

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_per_class(logits, target)
        counts = torch.bincount(target.flatten().long(), minlength=logits.shape[1])[1:].float()
        weights = 1.0 / torch.sqrt(counts + 1.0)
        weights = weights / weights.mean()
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
        focal = -((1 - logp_t.exp()) ** self.gamma * logp_t).mean()
        return (weights * (1 - dice)).mean() + focal


@runtime_checkable
class ScheduledLoss(Protocol):
    """A loss that changes over the schedule: the training loop sets ``progress`` (fraction done)."""

    progress: float


#: Loss builders by name (``recipe.loss``, ``--loss``).
LOSSES: Registry[Callable[[], nn.Module]] = Registry("loss", {
    "dice_ce": lambda: DiceCE(1.0, 1.0),
    "dice_wce": DiceWeightedCE,
    "dice_wce_anneal": lambda: DiceWeightedCE(anneal=True),
    "dice": lambda: DiceCE(1.0, 0.0),
    "dice03_ce07": lambda: DiceCE(0.3, 0.7),
    "weighted_dice_focal": WeightedDiceFocal,
})


def build_loss(name: str) -> nn.Module:
    """A new loss module by name; an unknown name raises with the known ones and a suggestion."""
    return LOSSES[name]()


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
