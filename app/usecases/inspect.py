"""Use case: inspect a photo. Ingest the upload (content-addressed copy out of the temp dir),
run both stages once, store the findings, and render the photo as the store now sees it.

Serves the Inspect tab; the same overlay is what the Review tab shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from PIL import Image

from core.overlay import OverlayItem, render_overlay
from core.photos import WORKING_SIZE_PX, ingest, photos_dir
from core.pipeline import Pipeline
from core.types import Status
from db.rows import StoredFinding
from db.store import Store


@dataclass(frozen=True)
class Inspected:
    """One inspected upload: the stored photo's id, and whether the pipeline ran on it now
    (``False``: the same bytes were inspected before and their findings are reused)."""

    photo_id: int
    ran: bool


def inspect_photo(pipeline: Pipeline, store: Store, source, user: str, name: str, working_size: int = WORKING_SIZE_PX) -> Inspected:
    """Ingest one upload (shrunk to ``working_size`` on its long side when larger), run both
    stages (once per photo content), store the findings."""
    stored = ingest(source, photos_dir(), name=name, working_size=working_size)
    store.ensure_user(user)
    record, created = store.add_photo(stored.sha256, str(stored.path), stored.image.width, stored.image.height, name, user,
                                      original_size=stored.original_size)
    if not created and store.was_inspected(record.id):
        return Inspected(record.id, False)
    t0 = time.perf_counter()
    _, result = pipeline.run(stored.image, name, stored.sha256)
    store.add_run(record.id, list(result.findings), *run_versions(pipeline), time.perf_counter() - t0)
    return Inspected(record.id, True)


def run_versions(pipeline: Pipeline) -> tuple[str, str | None]:
    """The detector and stage-2 versions an inference run is stored with (what its corrections indict)."""
    cls_version = f"{pipeline.classifier.backend.name}:{pipeline.classifier.backend.version}" if pipeline.classifier else None
    return f"detector:{pipeline.detector.version}", cls_version


def overlay_items(store: Store, findings: list[StoredFinding], selected: int | None = None) -> list[OverlayItem]:
    """Live findings as overlay items; the model's confidence is shown while its label stands,
    and the rationale of the ``selected`` finding is written under its label."""
    items = []
    for f in findings:
        s = f.state
        if s.status is Status.DELETED:
            continue
        item = OverlayItem.from_scores(f.index, s.box, s.class_name or s.object_type, store.taxonomy.condition_key(s.class_name),
                                       f.probabilities, f.confidence, f.detector_confidence, reviewed=s.status is Status.REVIEWED,
                                       rationale=s.rationale or "" if s.finding_id == selected else "")
        unchanged = s.status is Status.PENDING and s.class_name == f.model_class and not f.from_labels
        # A reviewer's label, or an imported one, carries no model score.
        items.append(item if unchanged else replace(item, confidence=None))
    return items


def render_photo(store: Store, photo_id: int, selected: int | None = None) -> Image.Image:
    """The stored photo with the current (reviewed) state of its findings drawn on it."""
    image = Image.open(store.photo(photo_id).path).convert("RGB")
    return render_overlay(image, overlay_items(store, store.photo_findings(photo_id), selected))
