"""Use case: a label-review pass. A dataset's labels are stored as pending findings on their
photos, so reviewers fix them in the Review workspace as they fix a model's output: draw the
vegetation nobody boxed, delete or move a wrong box, relabel a condition, mark the photo done.

Why: on ``drainage-objects`` 13 of 32 valid photos carry vegetation the detector finds and nobody
labelled (README, "The labels, inspected"), so part of the detector's gap is in the labels. A
done photo then teaches both nightly fine-tunes with its reviewed boxes, which win over the
dataset's own labels of the same photo (same content hash). Corrections to an imported label
are of kind ``label`` (``core.attribution``): they indict the dataset, not a model.

Only a ``train`` split is imported: the nightly job evaluates on the dataset's other splits, and a
photo reviewed here would then be in its training data and its frozen evaluation both (it
refuses to run on such a leak); an evaluation set fixed by the people it judges needs a second
reviewer anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from app.usecases.inspect import run_versions
from core.data import Sample, load_dataset
from core.errors import ImageError, SlopewatchError
from core.photos import ingest, photos_dir
from core.pipeline import Pipeline
from core.stage2.classifier import photo_context
from core.types import LABELS_BACKEND, Box, Detection, Finding, LabeledObject
from db.checks import InvalidEdit, check_box
from db.store import Store

IMPORTABLE_SPLIT = "train"
# A detection overlapping a label this much is that label's object (the usual IoU 0.5 match).
SUGGEST_IOU = 0.5


@dataclass
class LabelImport:
    """What one import did: photos stored with their labels now, skipped (stored before: their
    findings, reviewed or not, are left alone), failed (name, reason)."""

    imported: int = 0
    skipped: int = 0
    objects: int = 0
    suggested: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def label_findings(sample: Sample, size: tuple[int, int], taxonomy, source: str) -> list[Finding]:
    """The sample's labels as findings on the stored image of ``size`` (the label file's pixels
    scaled to it: a photo over the working size is stored shrunk). A stored image whose shape is
    not the labelled one (EXIF-rotated) cannot carry its boxes: refused, named."""
    sx, sy = size[0] / sample.width, size[1] / sample.height
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise ImageError(f"{sample.image_path.name}: expected the stored photo to keep the labelled shape {sample.width}x{sample.height}, "
                         f"found {size[0]}x{size[1]} (rotated by its EXIF orientation?): its boxes cannot be placed")
    found = []
    for obj in sample.objects:
        b = obj.box
        box = Box(min(b.x1 * sx, size[0]), min(b.y1 * sy, size[1]), min(b.x2 * sx, size[0]), min(b.y2 * sy, size[1]))
        found.append(Finding.from_label(LabeledObject(box, obj.type, obj.class_name), taxonomy, source))
    return found


def unlabelled(detections: Sequence[Detection], labels: Sequence[Finding], iou: float = SUGGEST_IOU) -> list[Detection]:
    """The detections no label covers: IoU below ``iou`` with every label's box, whatever its type
    (a box labelled as another type is a disagreement on one object, not a second object)."""
    return [d for d in detections if all(d.box.iou(label.detection.box) < iou for label in labels)]


def suggestions(pipeline: Pipeline, image, key: str, labels: Sequence[Finding]) -> list[Finding]:
    """Stage 2's findings on the detections no label covers, judged among the labels: the photo's
    objects are numbered as stored (labels first, then these), so a rationale's "overlapping toe
    drain #3" names the object the reviewer sees as #3."""
    extra = unlabelled(pipeline.detector.predict(image), labels)
    if not extra or pipeline.classifier is None:
        return []
    ctx = photo_context(image, [label.detection for label in labels] + extra, key)
    return list(pipeline.classifier.classify_context(ctx))[len(labels):]


def import_labels(store: Store, data_yaml: Path, user: str, progress: Callable | None = None,
                  pipeline: Pipeline | None = None) -> LabelImport:
    """Store every photo of the dataset's train split with its labels as pending findings;
    resumable (a photo stored before, by content hash, is skipped). ``progress`` wraps the
    iterable (tqdm). With ``pipeline``, each detection no label covers is stored too, as the
    model's pending finding in a run of its own: what the labels missed, for the reviewer to
    accept (the detector was right) or delete (a false positive), attributed to the models."""
    dataset = load_dataset(data_yaml, store.taxonomy)
    if dataset.label_space != "classes":
        raise SlopewatchError(f"{data_yaml}: expected labels naming the taxonomy's classes (e.g. drainage-conditions), found a dataset "
                              f"labelled by type only ({dataset.names}): a reviewer would have no condition to check")
    if IMPORTABLE_SPLIT not in dataset.splits:
        raise SlopewatchError(f"{data_yaml}: expected a {IMPORTABLE_SPLIT!r} split to review, found {dataset.splits} (an evaluation "
                              "split is never imported: the nightly job judges models on it)")
    source = f"{Path(data_yaml).resolve().parent.name}/{IMPORTABLE_SPLIT}"
    version = f"{LABELS_BACKEND}:{source}"
    report, started = LabelImport(), time.perf_counter()
    samples = dataset.samples(IMPORTABLE_SPLIT)
    store.ensure_user(user)
    for sample in progress(samples, unit="photo", desc="import labels") if progress else samples:
        name = sample.image_path.name
        try:
            stored = ingest(sample.image_path, photos_dir(), name=name)
            findings = label_findings(sample, stored.image.size, store.taxonomy, source)
            for k, f in enumerate(findings):  # before the photo is stored: a refused label must not leave it empty
                try:
                    check_box(f.detection.box, *stored.image.size)
                except InvalidEdit as exc:
                    raise ImageError(f"{name}: label {k} ({f.detection.type}): {exc}") from None
        except ImageError as exc:
            report.failed.append((name, str(exc).removeprefix(f"{name}: ")))
            continue
        record, created = store.add_photo(stored.sha256, str(stored.path), stored.image.width, stored.image.height, name, user,
                                          original_size=stored.original_size)
        if not created and store.was_inspected(record.id):
            report.skipped += 1
            continue
        extra, seconds = [], 0.0
        if pipeline is not None:  # before anything is stored: a failure here leaves the photo to a rerun
            t0 = time.perf_counter()
            extra = suggestions(pipeline, stored.image, stored.sha256, findings)
            seconds = time.perf_counter() - t0
        store.add_run(record.id, findings, version, version, 0.0)
        if pipeline is not None:  # even empty: a box drawn later is then the detector's miss, not only the labels'
            store.add_run(record.id, extra, *run_versions(pipeline), seconds)
        report.imported += 1
        report.objects += len(findings)
        report.suggested += len(extra)
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class ImportLabelsConfig:
    """Settings of ``slopewatch import-labels``.

    Attributes:
        data_yaml: a YOLO dataset labelled with the taxonomy's classes; its train split is imported.
        db: the review database (default: the one in the data dir).
        user: who the photos are recorded as uploaded by.
        suggest: also run both models and add each detection no label covers (IoU < 0.5 with every
            label) as a pending model finding: objects the labels missed, to accept or delete.
    """

    data_yaml: Path
    db: Path | None = None
    user: str = "labels"
    suggest: bool = False

    def __post_init__(self) -> None:
        if not str(self.user).strip():
            raise ValueError("user: expected a name, found nothing")


def run_import_labels(cfg: ImportLabelsConfig) -> dict:
    import sys

    from tqdm.auto import tqdm

    store = Store(cfg.db)
    pipeline = None
    if cfg.suggest:
        from app.models import registry_host
        from core.stage2 import registry

        host = registry_host(registry.DEFAULT, store)  # the models `serve` would use now
        host.start()
        host.wait()
        pipeline = host.pipeline()  # raises, named, when they failed to load
    report = import_labels(store, Path(cfg.data_yaml), cfg.user, lambda items, **kw: tqdm(items, **kw), pipeline)
    for name, why in report.failed:
        print(f"FAILED {name}: {why}", file=sys.stderr)
    if cfg.suggest and report.skipped:
        print(f"{report.skipped} photo(s) were stored before and left as they are: no suggestions were added to them.", file=sys.stderr)
    if report.imported:
        print(f"{report.imported} photo(s) wait in the Review queue with their labels pending: fix what is wrong, then Photo done; "
              "the nightly job trains on done photos only.", file=sys.stderr)
    return {"db": str(store.path), "imported": report.imported, "skipped_already_stored": report.skipped, "objects": report.objects,
            "suggested": report.suggested,
            "failed": [{"photo": n, "error": e} for n, e in report.failed], "seconds": round(report.seconds, 1)}
