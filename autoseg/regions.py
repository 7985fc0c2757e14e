"""Region-based outputs: one sigmoid per region of nested classes instead of one softmax over classes.

nnU-Net trains nested structures (BraTS' tumour sub-regions, LiTS' tumour inside the liver) as
*regions*: a Task03 network predicts "liver or tumour" and "tumour", each with its own sigmoid, so
the liver output is never asked to give up the voxels a tumour takes. ``autoseg train --regions``
trains that way (a model folder ``<network>_regions`` beside the softmax one); find_best chooses
between them by cross-validation like between networks.

**Which regions.** The fingerprint records which class lies inside which (``label_nesting``: the
class its outer surface touches most, when that is over half of it): each foreground class is a
region of itself and every class nested in it, ordered parents first. Classes nested in nothing
(Task08's vessels and tumours, which its labels keep apart) are regions of themselves.

**From sigmoids to class probabilities.** Everything after the network (ensembles, the volume-keeping
resampling, post-processing, calibration, uncertainty) works on class probabilities, so the region
logits ``z_1..z_R`` are turned into them once, in :func:`class_probabilities`. nnU-Net's decision is
"the last region in order whose sigmoid is over 0.5": label ``k`` needs region ``k`` on and every
later region off. Each class gets as score the least of the logits that must hold for it
(``min(z_k, -z_{k+1}, ..., -z_R)``; background ``min(-z_1, ..., -z_R)``) and the probabilities are
the softmax of the scores. Exactly one class has a positive score, the one nnU-Net's threshold
picks, so the arg-max is that decision, also where a region is unsure (``tests/test_regions.py``);
where all regions are sure the winner's probability is near 1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the fingerprint's workers import this module
    import torch

    from autoseg.partial_labels import LabelSpace

#: A class is nested in another when over this share of the voxels just outside it (6-neighbours)
#: belong to that class: a Task03 tumour's surroundings are mostly liver.
NESTED_SHARE = 0.5


@dataclass(frozen=True)
class Region:
    """One sigmoid output: on where the voxel is any of ``classes``; a voxel whose last region (in
    the plans' order) that is on is this one becomes ``label``."""

    label: int
    classes: tuple[int, ...]


def nesting_from_shells(shells: Mapping[int, Mapping[int, int]],
                        space: "LabelSpace | None" = None) -> dict[int, int]:
    """Class -> the class it lies inside, from each class's outer-shell voxel counts by stored label
    value (``shells[b][a]``: voxels just outside ``b`` labelled ``a``). Background is never a parent.

    With partial labels (``space``), a shell voxel counts for a parent ``P`` when its value is the
    annotation of ``P`` (Task03's "liver or vessel" is its liver), and is left out of ``P``'s share
    when its value allows ``P`` without annotating it (Task08's "background or liver": the source
    does not say), so that a merged dataset finds a tumour inside the liver from the cases that
    label both."""
    nesting = {}
    for inner, around in shells.items():
        counts = {int(a): int(n) for a, n in around.items() if int(n)}
        best, best_share = 0, 0.0
        for outer in sorted({_annotates(a, space) for a in counts} - {0, int(inner), -1}):
            inside = sum(n for a, n in counts.items() if _annotates(a, space) == outer)
            unsaid = sum(n for a, n in counts.items() if _annotates(a, space) != outer and _allows(a, outer, space))
            known = sum(counts.values()) - unsaid
            if known and inside / known > best_share:
                best, best_share = outer, inside / known
        if best and best_share > NESTED_SHARE:
            nesting[int(inner)] = best
    return _without_cycles(nesting)


def _annotates(value: int, space: "LabelSpace | None") -> int:
    """The class a stored label value is the annotation of (-1: a value the label space lacks)."""
    if space is None:
        return value
    return int(space.scored_as[value]) if 0 <= value < space.num_values else -1


def _allows(value: int, cls: int, space: "LabelSpace | None") -> bool:
    """Whether a voxel stored as ``value`` may be class ``cls``."""
    if space is None:
        return value == cls
    return 0 <= value < space.num_values and bool(space.allowed[value, cls])


def _without_cycles(nesting: dict[int, int]) -> dict[int, int]:
    """``nesting`` without the links of classes on a cycle (two classes each mostly around the other:
    neither is declared inside the other, and each becomes a region of its own)."""
    on_cycle = set()
    for start in nesting:
        seen, c = {start}, nesting[start]
        while c in nesting and c not in seen:
            seen.add(c)
            c = nesting[c]
        if c == start:
            on_cycle.add(start)
    return {inner: outer for inner, outer in nesting.items() if inner not in on_cycle}


def regions_from_nesting(labels: Mapping[int, str], nesting: Mapping[int, int]) -> tuple[Region, ...]:
    """Each foreground class as the region of itself and every class nested in it (at any depth),
    parents first (then by value). Links on a cycle (a hand-edited fingerprint) are left out."""
    foreground = sorted(int(k) for k in labels if int(k) != 0)
    nesting = _without_cycles({int(k): int(v) for k, v in nesting.items()})

    def depth(c: int) -> int:
        d = 0
        while c in nesting:
            c, d = nesting[c], d + 1
        return d

    def inside(c: int, parent: int) -> bool:
        while c in nesting:
            c = nesting[c]
            if c == parent:
                return True
        return False

    order = sorted(foreground, key=lambda c: (depth(c), c))
    return tuple(Region(c, tuple(sorted([c] + [o for o in foreground if inside(o, c)]))) for c in order)


def region_problems(regions: Sequence[Region], labels: Mapping[int, str]) -> list[str]:
    """What makes ``regions`` unusable for ``labels``; empty when usable."""
    out = []
    foreground = {int(k) for k in labels if int(k) != 0}
    seen: set[int] = set()
    for r in regions:
        if r.label in seen:
            out.append(f"region of label {r.label} is given twice")
        seen.add(r.label)
        if r.label not in foreground:
            out.append(f"region label {r.label} is not a foreground class (known: {sorted(foreground)})")
        if r.label not in r.classes:
            out.append(f"region of label {r.label}: its classes {list(r.classes)} must include the label")
        unknown = sorted(set(r.classes) - foreground)
        if unknown:
            out.append(f"region of label {r.label}: classes {unknown} are not foreground classes")
    missing = sorted(foreground - seen)
    if missing:
        out.append(f"classes {missing} have no region (every foreground class needs one)")
    for i, earlier in enumerate(regions):
        for later in regions[i + 1:]:
            a, b = set(earlier.classes), set(later.classes)
            if a & b and not b <= a:
                out.append(f"region of label {later.label} must lie inside the earlier region of label "
                           f"{earlier.label} or apart from it (parents first)")
    return out


def num_classes_of(regions: Sequence[Region]) -> int:
    """The classes region outputs decide between, background included (every foreground class has a
    region, :func:`region_problems`)."""
    return max(max(r.classes) for r in regions) + 1


def region_lookup(regions: Sequence[Region], num_classes: int) -> torch.Tensor:
    """``(num_classes, R)`` float: 1 where a class lies in a region."""
    import torch

    table = torch.zeros((num_classes, len(regions)))
    for j, r in enumerate(regions):
        table[list(r.classes), j] = 1.0
    return table


def region_targets(target: torch.Tensor, regions: Sequence[Region], num_classes: int) -> torch.Tensor:
    """``(B, R, *spatial)`` float 0/1 targets of each region from a label map ``(B, *spatial)``."""
    import torch

    lookup = region_lookup(regions, num_classes).to(target.device)
    return torch.nn.functional.embedding(target.long(), lookup).movedim(-1, 1)


def class_scores(logits: torch.Tensor, regions: Sequence[Region], num_classes: int) -> torch.Tensor:
    """Each class's score ``(B, C, *spatial)`` from region logits ``(B, R, *spatial)`` (module
    docstring): label ``k``'s the least of ``z_k`` and ``-z_j`` for every later region ``j``,
    background's the least of every ``-z_j``. Positive for exactly nnU-Net's threshold decision."""
    import torch

    z = logits.float()
    off = torch.flip(torch.cummin(torch.flip(-z, (1,)), 1).values, (1,))  # off[:, k] = min_{j>=k} -z_j
    later_off = torch.cat([off[:, 1:], torch.full_like(off[:, :1], float("inf"))], 1)
    out = z.new_full((z.shape[0], num_classes, *z.shape[2:]), float("-inf"))
    out[:, 0] = off[:, 0]
    out[:, [r.label for r in regions]] = torch.minimum(z, later_off)
    return out


def class_probabilities(logits: torch.Tensor, regions: Sequence[Region], num_classes: int) -> torch.Tensor:
    """Class probabilities ``(B, C, *spatial)``: the softmax of :func:`class_scores`."""
    import torch

    return torch.softmax(class_scores(logits, regions, num_classes), dim=1)


def decide(logits: torch.Tensor, regions: Sequence[Region] | None) -> torch.Tensor:
    """Labels ``(B, *spatial)`` from a network's raw outputs: the arg-max of the softmax, or for
    region outputs nnU-Net's threshold decision (the arg-max of :func:`class_scores`)."""
    if not regions:
        return logits.argmax(1)
    return class_scores(logits, regions, num_classes_of(regions)).argmax(1)

