"""The end-to-end photo pipeline: load safely, detect (stage 1), label conditions (stage 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from core.data import file_sha256
from core.images import load_image
from core.overlay import OverlayItem, render_overlay
from core.stage1.detector import Detector
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.spatial import Fact, band
from core.types import Detection, Finding


@dataclass(frozen=True)
class PhotoResult:
    """Everything the pipeline knows about one photo."""

    photo: str
    width: int
    height: int
    detections: tuple[Detection, ...]
    findings: tuple[Finding, ...] = ()
    facts: tuple[Fact, ...] = field(default=())

    def to_json(self) -> dict:
        objects = []
        for i, d in enumerate(self.detections):
            obj = {
                "id": i,
                "box": [round(v, 1) for v in d.box.xyxy],
                "type": d.type,
                "detector_confidence": round(d.confidence, 4),
                "band": band(d.box, self.height),
            }
            if self.findings:
                f = self.findings[i]
                obj.update(
                    {
                        "class": f.class_name,
                        "confidence": round(f.confidence, 4),
                        "probabilities": {k: round(v, 4) for k, v in f.probabilities.items()},
                        "rationale": f.rationale,
                        "backend": f.backend,
                        "backend_version": f.version,
                    }
                )
            objects.append(obj)
        return {"photo": self.photo, "width": self.width, "height": self.height, "objects": objects,
                "relations": [asdict(f) for f in self.facts]}


class Pipeline:
    """Stage 1 then (when a classifier is given) stage 2 over one photo at a time."""

    def __init__(self, detector: Detector, classifier: ConditionClassifier | None = None):
        self.detector = detector
        self.classifier = classifier
        self.taxonomy = detector.taxonomy

    def run(self, photo: str | Path | Image.Image, name: str | None = None, key: str | None = None) -> tuple[Image.Image, PhotoResult]:
        """Both stages over one photo. ``key``: its content hash (default: the file's SHA-256 for a
        path, as datasets, the store and the evidence index key photos, so a photo is never its
        own evidence; a hash of the pixels for an image)."""
        image = photo if isinstance(photo, Image.Image) else load_image(photo)  # a bad file: ImageError, named
        if key is None and not isinstance(photo, Image.Image):
            key = file_sha256(photo)
        dets = self.detector.predict(image)
        ctx = photo_context(image, dets, key)
        findings = tuple(self.classifier.classify_context(ctx)) if self.classifier else ()
        return image, PhotoResult(name or str(photo), image.width, image.height, tuple(dets), findings, ctx.facts)

    def overlay(self, image: Image.Image, result: PhotoResult, rationales: bool = True) -> Image.Image:
        """Boxes coloured by condition (or by type before stage 2), labelled, rationale wrapped below."""
        if result.findings:
            items = [OverlayItem.from_scores(i, f.detection.box, f.class_name, self.taxonomy.get_class(f.class_name).condition_key,
                                             f.probabilities, f.confidence, f.detection.confidence,
                                             rationale=f.rationale if rationales and f.backend != "passthrough" else "")
                     for i, f in enumerate(result.findings)]
        else:
            items = [OverlayItem(i, d.box, d.type, d.type, d.confidence) for i, d in enumerate(result.detections)]
        return render_overlay(image, items)
