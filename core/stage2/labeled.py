"""Photos with known classes: what stage-2 training and scoring read, from a dataset or from
reviewed photos in the store (``db.store.Store.reviewed_photos`` builds the same type)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from core.data import Sample, YoloDataset, file_sha256
from core.errors import DatasetError
from core.images import load_image
from core.types import Detection, Status


@dataclass(frozen=True)
class LabeledPhoto:
    """A photo with its objects and their true classes (``None``: not verified, skipped in
    training and scoring), keyed by content hash. Datasets and reviewed DB photos both give these."""

    image: object
    detections: tuple[Detection, ...]
    classes: tuple[str | None, ...]
    key: str
    imported: tuple[bool, ...] = ()  # per object: its class is an imported dataset label no reviewer decided yet

    def __post_init__(self) -> None:
        if len(self.detections) != len(self.classes):
            raise ValueError(f"LabeledPhoto {self.key[:12]}: expected one class per detection, "
                             f"found {len(self.classes)} classes for {len(self.detections)} detections")
        if self.imported and len(self.imported) != len(self.classes):
            raise ValueError(f"LabeledPhoto {self.key[:12]}: expected one imported flag per detection, found {len(self.imported)}")

    def decided(self) -> "LabeledPhoto":
        """Only what reviewers decided carries a class: a photo that judges or calibrates a model
        must not do so on labels nobody checked (a label-review photo outside the replayed split)."""
        if not any(self.imported):
            return self
        classes = tuple(None if pending else c for c, pending in zip(self.classes, self.imported))
        return LabeledPhoto(self.image, self.detections, classes, self.key)


def ground_truth(ds: YoloDataset, split: str) -> Iterator[tuple[Sample, object, list[Detection], list[str], str]]:
    """Per photo: the sample, the upright image, GT boxes as detections, GT classes, content hash."""
    if ds.label_space != "classes":
        raise DatasetError(f"expected condition classes {ds.taxonomy.class_names}, found types {ds.names}", str(ds.yaml_path))
    for s in ds.samples(split):
        dets = [Detection(o.box, o.type, 1.0) for o in s.objects]
        yield s, load_image(s.image_path), dets, [o.class_name for o in s.objects], file_sha256(s.image_path)


def labeled_photos(ds: YoloDataset, split: str) -> list[LabeledPhoto]:
    return [LabeledPhoto(image, tuple(dets), tuple(classes), key) for _, image, dets, classes, key in ground_truth(ds, split)]


def reviewed_photos(store, pending_labels: bool = True) -> Iterator[LabeledPhoto]:
    """Every reviewed photo of ``store`` (a ``db.store.Store``: ``Store.reviewed_photos``) as a
    LabeledPhoto, decoded one at a time: live objects keep their box as context; the reviewed ones
    carry a label, and so do imported dataset labels not yet decided (a reviewed photo replaces the
    dataset's copy of it, so one object reviewed in a label-review pass dropped the photo's other
    labels from that night's training). ``pending_labels=False``: reviewed objects only (what a
    reviewer decided, e.g. evidence cited as "reviewed")."""
    for p in store.reviewed_photos():
        imported = tuple(pending_labels and f.status is not Status.REVIEWED and f.finding_id in p.labels for f in p.findings)
        classes = tuple(f.class_name if f.status is Status.REVIEWED or pending else None for f, pending in zip(p.findings, imported))
        yield LabeledPhoto(load_image(p.photo.path), tuple(Detection(f.box, f.object_type, 1.0) for f in p.findings), classes,
                           p.photo.sha256, imported)
