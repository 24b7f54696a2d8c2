"""The end-to-end photo pipeline: load safely, detect (stage 1), derive spatial facts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from core.detector import Detector
from core.draw import draw_boxes, type_colors
from core.images import load_image
from core.spatial import Fact, band, spatial_facts
from core.types import Detection


@dataclass(frozen=True)
class PhotoResult:
    """Everything the pipeline knows about one photo."""

    photo: str
    width: int
    height: int
    detections: tuple[Detection, ...]
    facts: tuple[Fact, ...] = field(default=())

    def to_json(self) -> dict:
        return {
            "photo": self.photo,
            "width": self.width,
            "height": self.height,
            "objects": [
                {
                    "id": i,
                    "box": [round(v, 1) for v in d.box.xyxy],
                    "type": d.type,
                    "detector_confidence": round(d.confidence, 4),
                    "band": band(d.box, self.height),
                }
                for i, d in enumerate(self.detections)
            ],
            "relations": [asdict(f) for f in self.facts],
        }


class Pipeline:
    """Runs the stages over photos. Stage 2 (conditions) plugs in here when a classifier is given."""

    def __init__(self, detector: Detector):
        self.detector = detector

    def run(self, photo: str | Path | Image.Image, name: str | None = None) -> tuple[Image.Image, PhotoResult]:
        image = photo if isinstance(photo, Image.Image) else load_image(photo)
        dets = self.detector.predict(image)
        facts = spatial_facts([d.box for d in dets], image.width, image.height)
        return image, PhotoResult(name or str(photo), image.width, image.height, tuple(dets), tuple(facts))

    def overlay(self, image: Image.Image, result: PhotoResult) -> Image.Image:
        labels = [f"{d.type} {d.confidence:.2f}" for d in result.detections]
        colors = type_colors(self.detector.taxonomy.type_names)
        return draw_boxes(image, [d.box for d in result.detections], labels, [d.type for d in result.detections], colors)
