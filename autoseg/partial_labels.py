"""Partial labels: stored label values that say "one of these classes", for datasets that annotate
only some of a model's classes.

A merged dataset (``autoseg plan_and_preprocess -d Task03 -d Task08 --merge LiverVesselTumour``)
trains one network on liver, vessel and tumour although no source labels all three: Task03 says
nothing about vessels (its liver label covers the vessels inside the liver), Task08 nothing about the
liver outside its lesions. Each such voxel is stored under an extra label value whose
:class:`PartialLabel` lists the classes it may be (Task03's liver: liver or vessel; its background:
background or vessel; Task08's background: background or liver). Training scores a network's
probability of the allowed set (cross-entropy of the set, soft Dice of each annotated region:
:mod:`autoseg.training.losses`); evaluation scores a class only in the cases that annotate it, and a
region (Task03's liver) as the classes it allows (:meth:`LabelSpace.confusion`).

Values ``0 .. C-1`` are the classes themselves; partial values follow them. ``scored_as`` names the
class a partial value is the source's annotation of (Task03's "liver or vessel" is its liver): a class
is *unannotated* in a case whose label map holds a value that allows the class but is scored as
another (a Task08 case's "background or liver").
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PartialLabel:
    """Label ``value`` stands for any one of ``classes``; it is the annotation of ``scored_as``."""

    value: int
    classes: tuple[int, ...]
    scored_as: int


def partial_problems(partial: Sequence[PartialLabel], labels: Mapping[int, str]) -> list[str]:
    """What is wrong with ``partial`` for the classes ``labels`` (id -> name); empty when usable."""
    out = []
    num_classes = max(labels) + 1
    seen: set[int] = set()
    for p in partial:
        where = f"partial label {p.value}"
        if p.value < num_classes or p.value > 255:
            out.append(f"{where}: the value must lie above the classes (>= {num_classes}) and at most 255")
        if p.value in seen:
            out.append(f"{where} is given twice")
        seen.add(p.value)
        if len(set(p.classes)) < 2:
            out.append(f"{where}: classes {list(p.classes)} must name at least two different classes")
        unknown = [c for c in p.classes if c not in labels]
        if unknown:
            out.append(f"{where}: classes {unknown} are not labels (known: {sorted(labels)})")
        if p.scored_as not in p.classes:
            out.append(f"{where}: scored_as {p.scored_as} is not one of its classes {list(p.classes)}")
    return out


def stored_label_names(labels: Mapping[int, str], partial: Iterable[PartialLabel]) -> dict[int, str]:
    """Every value a label map may hold, named: the classes, then each partial value by the classes
    it allows ("liver or vessel")."""
    return {**labels, **{p.value: " or ".join(labels.get(c, str(c)) for c in p.classes) for p in partial}}


class LabelSpace:
    """The stored label values of a dataset and the classes each allows.

    >>> space = LabelSpace(3, [PartialLabel(3, (0, 2), 0)])
    >>> space.num_values, space.allowed.astype(int).tolist()
    (4, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    >>> sorted(space.unannotated([0, 1, 3]))
    [2]
    """

    def __init__(self, num_classes: int, partial: Iterable[PartialLabel] = ()):
        self.partial = tuple(sorted(partial, key=lambda p: p.value))
        self.num_classes = int(num_classes)
        self.num_values = max([self.num_classes, *(p.value + 1 for p in self.partial)])
        allowed = np.zeros((self.num_values, self.num_classes), dtype=bool)
        scored_as = np.full(self.num_values, -1, dtype=np.int64)
        for c in range(self.num_classes):
            allowed[c, c], scored_as[c] = True, c
        for p in self.partial:
            allowed[p.value, list(p.classes)] = True
            scored_as[p.value] = p.scored_as
        #: ``allowed[v, c]``: a voxel stored as ``v`` may be class ``c`` (a value that is neither a
        #: class nor partial allows nothing).
        self.allowed = allowed
        #: ``scored_as[v]``: the class value ``v`` annotates (-1 for an unused value).
        self.scored_as = scored_as
        #: ``counted_as[v]``: the class a voxel stored as ``v`` counts as in class statistics (rarity
        #: weights, the fingerprint's class volumes): background where it may be background (Task08's
        #: "background or liver"), else the class it annotates (Task03's "liver or vessel": liver).
        self.counted_as = np.where(allowed[:, 0], 0, np.maximum(scored_as, 0))

    @property
    def is_partial(self) -> bool:
        return bool(self.partial)

    def foreground_values(self) -> list[int]:
        """Stored values that are certainly foreground (every class they allow is not background):
        the values oversampling centres on and whose intensities fit the CT window."""
        return [v for v in range(1, self.num_values) if self.allowed[v].any() and not self.allowed[v, 0]]

    def unannotated(self, present: Iterable[int]) -> set[int]:
        """Classes a label map holding the values ``present`` says nothing about."""
        out: set[int] = set()
        for v in present:
            if 0 <= v < self.num_values:
                out.update(int(c) for c in np.flatnonzero(self.allowed[v]) if c != self.scored_as[v])
        return out

    def region(self, cls: int, present: Iterable[int]) -> tuple[list[int], list[int]]:
        """The stored values that annotate ``cls`` in a label map holding ``present`` (the class's own
        value always), and the classes those values allow: a prediction of any of them there is a hit."""
        values = sorted({cls, *(v for v in present if 0 <= v < self.num_values and self.scored_as[v] == cls)})
        classes = sorted({int(c) for v in values for c in np.flatnonzero(self.allowed[v])})
        return values, classes

    def allowed_lookup(self, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Per voxel: whether the stored value ``ref`` allows the predicted class ``pred``."""
        lut = np.zeros((256, 256), dtype=bool)
        lut[:self.num_values, :self.num_classes] = self.allowed
        return lut[np.asarray(ref, dtype=np.uint8), np.asarray(pred, dtype=np.uint8)]

    def masks(self, pred: np.ndarray, ref: np.ndarray, cls: int, present: Iterable[int],
              ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The prediction and reference masks class ``cls`` is scored on, None where ``ref`` does
        not annotate it. The reference is every voxel stored as the class's annotation (its own
        value, or a partial value scored as it); the prediction is every voxel predicted as a class
        that annotation allows, less those outside it whose stored value allows the prediction (a
        vessel predicted in Task03's "background or vessel" is no false positive). With no partial
        values these are ``pred == cls`` and ``ref == cls``. ``ok``: :meth:`allowed_lookup`, if known."""
        present = list(present)
        if cls in self.unannotated(present):
            return None
        values, hit_classes = self.region(cls, present)
        r = np.isin(ref, values)
        p = np.isin(pred, hit_classes)
        ok = self.allowed_lookup(pred, ref) if ok is None else ok
        return p & (r | ~ok), r

    def confusion(self, pred: np.ndarray, ref: np.ndarray, classes: Sequence[int],
                  present: Iterable[int] | None = None) -> dict[int, tuple[int, int, int] | None]:
        """True positives, false positives and false negatives of each class in ``classes`` on the
        masks of :meth:`masks` (None where ``ref`` does not annotate the class); with no partial
        values, the plain per-class count (:func:`autoseg.metrics.confusion`)."""
        pred, ref = np.asarray(pred, dtype=np.uint8), np.asarray(ref, dtype=np.uint8)
        present = list(present) if present is not None else _present_values(ref)
        ok = self.allowed_lookup(pred, ref)
        out: dict[int, tuple[int, int, int] | None] = {}
        for c in classes:
            found = self.masks(pred, ref, c, present, ok)
            if found is None:
                out[c] = None
                continue
            p, r = found
            tp = int(np.count_nonzero(p & r))
            out[c] = (tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)
        return out


def _present_values(labels: np.ndarray) -> list[int]:
    """The distinct values of a uint8 label map."""
    return [int(v) for v in np.flatnonzero(np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=1))]
