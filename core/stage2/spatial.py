"""Spatial facts about the objects of one photo, as plain data.

Stage 2 turns these into prompt text and checks its rationales against them; the dataset
analysis counts them across photos. All thresholds are fractions of the image size, so the
same facts come out of a 224 px crop and a 4000 px drone photo.

Facts are ``(subject_index, predicate, object_index)`` triples over a list of boxes:

* ``above`` / ``below`` / ``left_of`` / ``right_of``: the dominant axis of the offset between
  the two box centres (exactly one of the four per ordered pair that does not overlap);
* ``overlaps``: the boxes share at least ``overlap_min`` of the smaller box's area;
* ``adjacent_to``: not overlapping, but the gap between the boxes is under ``adjacent_gap``
  of the image diagonal (e.g. vegetation growing over a drain);
* ``at_lower_end_of``: the subject touches the object's bottom end and reaches at least as low
  (a toe drain at the foot of a slope drain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from core.types import Box

BANDS = ("top", "middle", "bottom")
PREDICATES = ("above", "below", "left_of", "right_of", "overlaps", "adjacent_to", "at_lower_end_of")
# The symmetric geometry between any two boxes, which dataset analysis counts per pair of labels.
PAIRWISE = PREDICATES[:5]


@dataclass(frozen=True)
class SpatialConfig:
    """Thresholds of the spatial facts.

    Attributes:
        overlap_min: intersection over the smaller box's area for ``overlaps``.
        adjacent_gap: largest gap, as a fraction of the image diagonal, for ``adjacent_to``.
        end_fraction: share of the object's height counted as its bottom end.
        end_tolerance: slack below the object's bottom edge, as a fraction of image height.
    """

    overlap_min: float = 0.1
    adjacent_gap: float = 0.05
    end_fraction: float = 0.25
    end_tolerance: float = 0.05

    def __post_init__(self) -> None:
        for name in ("overlap_min", "adjacent_gap", "end_fraction", "end_tolerance"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SpatialConfig.{name}: expected a fraction in [0, 1], found {value}")


@dataclass(frozen=True)
class Fact:
    """``boxes[subject] <predicate> boxes[object]``."""

    subject: int
    predicate: str
    object: int

    def __post_init__(self) -> None:
        if self.predicate not in PREDICATES:
            raise ValueError(f"Fact: expected a predicate in {PREDICATES}, found {self.predicate!r}")
        if self.subject == self.object:
            raise ValueError(f"Fact: expected two different objects, found {self.subject} twice")


def band(box: Box, height: float) -> str:
    """Which third of the image (top / middle / bottom) holds the box centre."""
    if height <= 0:
        raise ValueError(f"band: expected a positive image height, found {height}")
    return BANDS[min(int(3 * box.cy / height), 2)]


def overlaps(a: Box, b: Box, cfg: SpatialConfig = SpatialConfig()) -> bool:
    smaller = min(a.area, b.area)
    inter = a.intersection(b)
    if smaller <= 0:
        return inter > 0
    return inter / smaller >= cfg.overlap_min


def gap(a: Box, b: Box) -> float:
    """Euclidean gap between two boxes in pixels (0 when they touch or intersect)."""
    dx = max(b.x1 - a.x2, a.x1 - b.x2, 0.0)
    dy = max(b.y1 - a.y2, a.y1 - b.y2, 0.0)
    return math.hypot(dx, dy)


def direction(a: Box, b: Box) -> str:
    """Where ``a`` lies relative to ``b`` along the dominant axis of their centres' offset."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left_of" if dx < 0 else "right_of"


def primary_relation(a: Box, b: Box, cfg: SpatialConfig = SpatialConfig()) -> str:
    """One relation per ordered pair for statistics: ``overlaps`` or a direction."""
    return "overlaps" if overlaps(a, b, cfg) else direction(a, b)


def at_lower_end_of(a: Box, b: Box, height: float, cfg: SpatialConfig = SpatialConfig()) -> bool:
    """Whether ``a`` sits at the bottom end of ``b`` (a toe drain at the foot of a slope drain)."""
    tol = cfg.end_tolerance * height
    end = Box(b.x1, max(b.y1, b.y2 - cfg.end_fraction * b.height), b.x2, b.y2 + tol)
    touches = a.x1 <= end.x2 and a.x2 >= end.x1 and a.y1 <= end.y2 and a.y2 >= end.y1
    return touches and a.cy > b.cy and a.y2 >= b.y2 - tol


def spatial_facts(boxes: Sequence[Box], width: float, height: float, cfg: SpatialConfig = SpatialConfig()) -> list[Fact]:
    """All facts over every ordered pair of boxes, in a stable order."""
    diag = math.hypot(width, height)
    facts = []
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes):
            if i == j:
                continue
            if overlaps(a, b, cfg):
                facts.append(Fact(i, "overlaps", j))
            else:
                facts.append(Fact(i, direction(a, b), j))
                if gap(a, b) <= cfg.adjacent_gap * diag:
                    facts.append(Fact(i, "adjacent_to", j))
            if at_lower_end_of(a, b, height, cfg):
                facts.append(Fact(i, "at_lower_end_of", j))
    return facts
