"""A contact sheet of one object type on a split: its labels (green) against the detector's boxes
(red, with their scores), on every photo where either has one.

An AP says how far labels and detections disagree, not why. For a type boxed by judgement
(vegetation: one box per shrub on some photos, one per slope on others, none on photos full of
it) the sheet shows whether the detector or the labels are at fault, i.e. the type's box policy,
before anyone tunes for its AP (``slopewatch evaluate detector --sheet PNG --sheet-type T``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image

from core.data import Sample
from core.overlay import draw_boxes
from core.types import Detection

LABEL_COLOR, DETECTION_COLOR = "#2ca02c", "#d62728"
MATCH_IOU = 0.5  # as AP50 counts a detection right


class Predicts(Protocol):
    def predict_batch(self, images: list[Path]) -> list[list[Detection]]: ...


@dataclass(frozen=True)
class SheetSummary:
    """What the sheet shows, counted (boxes of the type only; detections at the detector's threshold).

    Attributes:
        type: the object type drawn.
        photos: photos on the sheet (a label or a detection of the type).
        labelled_photos: photos with at least one label of the type.
        unlabelled_detected_photos: photos with detections of the type but no label of it; on a
            type labelled completely these are the detector's false positives, one by one.
        detections_on_unlabelled: the detections on those photos.
        labels: labels of the type; ``labels_found``: of them, those a detection covers at IoU ≥ 0.5.
        path: the PNG written ("" when no photo has the type: nothing to draw).
    """

    type: str
    photos: int
    labelled_photos: int
    unlabelled_detected_photos: int
    detections_on_unlabelled: int
    labels: int
    labels_found: int
    path: str

    def to_json(self) -> dict:
        return asdict(self)


def label_sheet(detector: Predicts, samples: Sequence[Sample], type_name: str, out: Path, tile: int = 312,
                columns: int = 6, batch: int = 16) -> SheetSummary:
    """Draw every sample with a label or a detection of ``type_name`` into one PNG at ``out`` (none
    when no sample has one)."""
    tiles: list[Image.Image] = []
    labelled = unlabelled_detected = on_unlabelled = n_labels = found = 0
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        for sample, detections in zip(chunk, detector.predict_batch([s.image_path for s in chunk])):
            labels = [o.box for o in sample.objects if o.type == type_name]
            boxes = [d for d in detections if d.type == type_name]
            if not labels and not boxes:
                continue
            n_labels += len(labels)
            found += sum(any(lab.iou(d.box) >= MATCH_IOU for d in boxes) for lab in labels)
            labelled += bool(labels)
            if boxes and not labels:
                unlabelled_detected += 1
                on_unlabelled += len(boxes)
            with Image.open(sample.image_path) as image:
                drawn = draw_boxes(image.convert("RGB"), [*labels, *(d.box for d in boxes)],
                                   ["label"] * len(labels) + [f"{d.confidence:.2f}" for d in boxes],
                                   ["label"] * len(labels) + ["detection"] * len(boxes),
                                   {"label": LABEL_COLOR, "detection": DETECTION_COLOR})
            tiles.append(drawn.resize((tile, tile)))
    if not tiles:  # said in the counts (photos 0, no path): the detector's scores already computed are kept
        return SheetSummary(type_name, 0, 0, 0, 0, 0, 0, "")
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (min(columns, len(tiles)) * (tile + 4), rows * (tile + 4)), "white")
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % columns) * (tile + 4), (k // columns) * (tile + 4)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return SheetSummary(type_name, len(tiles), labelled, unlabelled_detected, on_unlabelled, n_labels, found, str(out))
