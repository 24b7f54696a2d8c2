"""Stage 2: label each detection's condition with a pluggable backend.

:class:`ConditionClassifier` does the parts every backend shares: spatial facts, the
pass-through of types without conditions (vegetation never reaches a model), probability
checks, faithful template rationales when a backend writes none of its own, and (given an
:class:`~core.stage2.evidence.Evidencer`) the count of similar labelled objects that agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from core.stage2.evidence import Evidencer
from core.stage2.rationale import template_rationale, with_verdict
from core.stage2.spatial import Fact, spatial_facts
from core.taxonomy import Taxonomy
from core.types import Detection, Finding


@dataclass(frozen=True)
class PhotoContext:
    """One photo as stage 2 sees it: pixels, all detections and their spatial facts."""

    image: Image.Image
    detections: tuple[Detection, ...]
    facts: tuple[Fact, ...]
    image_key: str


def photo_context(image: Image.Image, detections: Sequence[Detection], image_key: str | None = None) -> PhotoContext:
    """Build the context of one photo; ``image_key`` defaults to a hash of the pixels."""
    facts = spatial_facts([d.box for d in detections], image.width, image.height)
    key = image_key or hashlib.sha256(image.tobytes()).hexdigest()
    return PhotoContext(image, tuple(detections), tuple(facts), key)


class Backend(Protocol):
    """What a stage-2 backend provides. ``score`` returns, per target index, a probability per
    candidate class of that detection's type (in the taxonomy's order)."""

    name: str
    version: str

    def score(self, ctx: PhotoContext, targets: Sequence[int]) -> list[np.ndarray]: ...


class ConditionClassifier:
    """Runs a backend over one photo's detections and returns typed findings."""

    def __init__(self, backend: Backend, taxonomy: Taxonomy, evidencer: Evidencer | None = None):
        self.backend = backend
        self.taxonomy = taxonomy
        self.evidencer = evidencer

    def classify(self, image: Image.Image, detections: Sequence[Detection], image_key: str | None = None) -> list[Finding]:
        """One finding per detection, in the same order."""
        return self.classify_context(photo_context(image, detections, image_key))

    def classify_context(self, ctx: PhotoContext) -> list[Finding]:
        """One finding per detection of an already built context (its facts are computed once)."""
        return self.classify_with_evidence(ctx)[0]

    def classify_with_evidence(self, ctx: PhotoContext) -> tuple[list[Finding], dict]:
        """The findings and, by detection index, the evidence their rationales cite (what the
        faithfulness checker compares them with)."""
        image, detections = ctx.image, ctx.detections
        targets = [i for i, d in enumerate(detections) if self.taxonomy.needs_condition(d.type)]
        scored = dict(zip(targets, self.backend.score(ctx, targets))) if targets else {}
        writer = getattr(self.backend, "rationales", None)
        findings = []
        for i, d in enumerate(detections):
            candidates = [c.name for c in self.taxonomy.classes_for_type(d.type)]
            if i in scored:
                p = np.asarray(scored[i], dtype=float)
                if p.shape != (len(candidates),) or not np.isfinite(p).all():
                    raise ValueError(f"backend {self.backend.name}: expected {len(candidates)} finite scores for {d.type}, found {p}")
                p = p / p.sum()
                backend, version = self.backend.name, self.backend.version
            else:
                p = np.ones(1)
                backend, version = "passthrough", "1"
            probs = dict(zip(candidates, p.tolist()))
            best = candidates[int(np.argmax(p))]
            findings.append(Finding(d, best, probs, "", backend, version))
        texts = writer(ctx, findings) if writer else [None] * len(findings)
        evidence = self.evidencer.for_findings(ctx, findings, targets) if self.evidencer else {}
        said = {i: e.sentence(self.taxonomy) for i, e in evidence.items()}
        return [
            Finding(f.detection, f.class_name, f.probabilities,
                    with_verdict(text, f.probabilities, said.get(i, "")) if text
                    else template_rationale(f.probabilities, i, ctx.detections, ctx.facts, image.height, said.get(i, "")),
                    f.backend, f.version)
            for i, (f, text) in enumerate(zip(findings, texts))
        ], evidence
