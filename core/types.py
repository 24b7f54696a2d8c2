"""Typed contracts shared by every stage: boxes, ground-truth objects and detections.

All boxes are pixel ``(x1, y1, x2, y2)`` in the upright image (after EXIF rotation). Each
dataclass checks itself on construction, so a bad value fails where it is made, not three
stages later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.taxonomy import Taxonomy


class Status(StrEnum):
    """A finding's review status: the model's output awaiting a reviewer, decided by one, or removed."""

    PENDING = "pending"
    REVIEWED = "reviewed"
    DELETED = "deleted"


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel box inside an image of size ``(width, height)``."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        values = (self.x1, self.y1, self.x2, self.y2)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"Box: expected finite coordinates, found {values}")
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"Box: expected x1<=x2 and y1<=y2, found {values}")

    @classmethod
    def from_cxcywh_norm(cls, cx: float, cy: float, w: float, h: float, width: int, height: int) -> "Box":
        """From YOLO's normalised centre/size, clipped to the image."""
        x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
        y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
        return cls(*_clip((x1, y1, x2, y2), width, height))

    def to_cxcywh_norm(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (self.cx / width, self.cy / height, self.width / width, self.height / height)

    def yolo_line(self, class_id: int, width: int, height: int) -> str:
        """``"<class> cx cy w h"`` normalised to the photo: one YOLO label line, as every writer formats it."""
        return f"{class_id} " + " ".join(f"{v:.6f}" for v in self.to_cxcywh_norm(width, height))

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def cx(self) -> float:
        return (self.x1 + self.x2) / 2

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    def iou(self, other: "Box") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def intersection(self, other: "Box") -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        return max(w, 0.0) * max(h, 0.0)


def _clip(xyxy: tuple[float, ...], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = xyxy
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


@dataclass(frozen=True)
class LabeledObject:
    """A ground-truth object from a dataset: its box and its type, plus its class when known.

    ``class_name`` is ``None`` when the dataset is labelled with object types only.
    """

    box: Box
    type: str
    class_name: str | None = None

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("LabeledObject: expected a non-empty type")


@dataclass(frozen=True)
class Detection:
    """One stage-1 detection: a box, its object type, the detector's confidence (a ranking score)
    and, when the detector is calibrated, ``p_real``: the chance the box is a real object of that
    type (``core.stage1.calibration``)."""

    box: Box
    type: str
    confidence: float
    p_real: float | None = None

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("Detection: expected a non-empty type")
        if not (0.0 <= self.confidence <= 1.0):
            raise ValueError(f"Detection: expected confidence in [0, 1], found {self.confidence}")
        if self.p_real is not None and not (0.0 <= self.p_real <= 1.0):
            raise ValueError(f"Detection: expected p_real in [0, 1], found {self.p_real}")

    @classmethod
    def from_ultralytics(cls, result: Any, taxonomy: "Taxonomy") -> list["Detection"]:
        """Detections from one ultralytics ``Results`` object, in descending confidence.

        The detector's own class names must be the taxonomy's types; a detector trained for
        another taxonomy is refused rather than silently mislabelled.
        """
        from core.errors import TaxonomyError

        names = [result.names[i] for i in sorted(result.names)]
        if names != taxonomy.type_names:
            raise TaxonomyError(f"detector classes {names} do not match taxonomy types {taxonomy.type_names}")
        boxes = result.boxes
        if boxes is None or boxes.xyxy.shape[0] == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy().astype(float)
        conf = boxes.conf.cpu().numpy().astype(float)
        cls_ids = boxes.cls.cpu().numpy().astype(int)
        order = np.argsort(-conf, kind="stable")
        return [
            cls(Box(*xyxy[i].tolist()), names[cls_ids[i]], float(np.clip(conf[i], 0.0, 1.0))) for i in order
        ]


def detections_to_supervision(objects: list[Detection] | list[LabeledObject], taxonomy: "Taxonomy"):
    """Convert to ``supervision.Detections`` (class ids are the taxonomy's type ids)."""
    import supervision as sv

    if not objects:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([o.box.xyxy for o in objects], dtype=float),
        class_id=np.array([taxonomy.type_id(o.type) for o in objects], dtype=int),
        confidence=np.array([getattr(o, "confidence", 1.0) for o in objects], dtype=float),
    )


# The backend name of findings imported from a dataset's labels; stored as ``labels:<source>``.
LABELS_BACKEND = "labels"


def is_labels_version(version: str | None) -> bool:
    """Whether a stored model (or run) version names imported labels, not a model."""
    return (version or "").startswith(LABELS_BACKEND + ":")


def object_name(photo_id: int, index: int, finding_id: int) -> str:
    """An object as a reviewer finds it: its photo and its ``#k`` there (as Review shows it), and
    its id across the library (what the Library's "Object id" takes). The Library showed the id
    alone as ``#id``, which read as another object of Review's numbering."""
    return f"photo {photo_id} #{index} (id {finding_id})"


@dataclass(frozen=True)
class Finding:
    """Stage 2's verdict on one detection: its class, a probability per candidate class, and why.

    ``probabilities`` covers exactly the candidate classes of the detection's type, sums to 1,
    and ``class_name`` is its arg-max.
    """

    detection: Detection
    class_name: str
    probabilities: dict[str, float]
    rationale: str
    backend: str
    version: str

    def __post_init__(self) -> None:
        if not self.probabilities:
            raise ValueError("Finding: expected probabilities over at least one class, found none")
        if any(not (0.0 <= p <= 1.0) or not math.isfinite(p) for p in self.probabilities.values()):
            raise ValueError(f"Finding: expected probabilities in [0, 1], found {self.probabilities}")
        total = sum(self.probabilities.values())
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"Finding: expected probabilities summing to 1, found {total:.4f}")
        if self.class_name not in self.probabilities:
            raise ValueError(f"Finding: class {self.class_name!r} is not among the candidates {list(self.probabilities)}")
        if self.probabilities[self.class_name] < max(self.probabilities.values()) - 1e-9:
            raise ValueError(f"Finding: class {self.class_name!r} is not the most probable of {self.probabilities}")
        if not self.backend or not self.version:
            raise ValueError("Finding: expected a backend name and version")

    @classmethod
    def from_label(cls, obj: LabeledObject, taxonomy: "Taxonomy", source: str) -> "Finding":
        """A dataset's label as a finding to review (``slopewatch import-labels``): the label's box,
        type and class, certain (probability 1, box score 1), backend ``labels`` and version
        ``source`` (``"<dataset>/<split>"``), so corrections to it indict the dataset, not a model."""
        if obj.class_name is None:
            raise ValueError(f"Finding.from_label: expected a label with a class, found a {obj.type} labelled by type only")
        candidates = [c.name for c in taxonomy.classes_for_type(obj.type)]
        return cls(Detection(obj.box, obj.type, 1.0), obj.class_name, {c: float(c == obj.class_name) for c in candidates},
                   f"Imported label ({source}): no model has judged it.", LABELS_BACKEND, source)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.class_name]

    @property
    def margin(self) -> float:
        """Top-1 minus top-2 probability (1.0 when there is a single candidate)."""
        top = sorted(self.probabilities.values(), reverse=True)
        return top[0] - (top[1] if len(top) > 1 else 0.0)
