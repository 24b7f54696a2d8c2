"""Typed rows the store returns: what a finding looks like now, its history, a reviewed photo,
a photo's review progress, its line in the photo queue and a nightly run's record.

Rows are small frozen dataclasses built with ``from_row`` from ``sqlite3.Row``; nothing outside
``db/`` sees a raw row, a column name or a status string.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import PurePath

from core.types import Box, Status, is_labels_version, object_name


def _pick(cls, row: sqlite3.Row | dict, **extra) -> dict:
    keys = row.keys()
    return {f.name: row[f.name] for f in fields(cls) if f.name in keys} | extra


@dataclass(frozen=True)
class PhotoRecord:
    """A stored photo (content-addressed by the SHA-256 of the uploaded bytes).

    ``width``/``height`` are the stored (working) image's, the pixels every box lives in;
    ``original_width``/``original_height`` are the upload's, upright. They differ only for a
    photo downscaled on ingest.
    """

    id: int
    sha256: str
    path: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_name: str | None = None

    @classmethod
    def from_row(cls, row) -> "PhotoRecord":
        return cls(**_pick(cls, row))


@dataclass(frozen=True)
class FindingState:
    """A finding as it is now: the model's output with every correction applied."""

    finding_id: int
    object_type: str
    class_name: str | None
    x1: float
    y1: float
    x2: float
    y2: float
    rationale: str | None
    note: str | None
    status: Status
    revision: int
    updated_at: float
    updated_by: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    @classmethod
    def from_row(cls, row) -> "FindingState":
        return cls(**_pick(cls, row))

    @property
    def box(self) -> Box:
        return Box(self.x1, self.y1, self.x2, self.y2)

    @property
    def live(self) -> bool:
        return self.status is not Status.DELETED

    def to_json(self) -> dict:
        """The column values, as stored in a correction's before/after JSON."""
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class StoredFinding:
    """A finding's current state with its photo and the model's own output.

    ``index`` is the object's position on its photo (in detection order): the ``#k`` that
    rationales, the overlay and the tables all show.
    """

    state: FindingState
    photo_id: int
    index: int
    model_class: str | None
    confidence: float | None
    margin: float | None
    detector_confidence: float | None
    model_version: str | None
    probabilities: dict | None = None  # the model's probability per candidate class (None: drawn by a reviewer)
    box_probability: float | None = None  # calibrated chance the box is real (None: uncalibrated detector, or drawn)
    model_rationale: str | None = None  # what the model said about its own label (the state's may have been edited or cleared)
    model_box: Box | None = None  # the box as output (a reviewer's drawn box: as drawn); the state's may have been moved
    drawn: bool = False  # drawn by a reviewer (a missed object), not output by a model or imported

    @classmethod
    def from_row(cls, row) -> "StoredFinding":
        probs = row["probabilities_json"]
        return cls(FindingState.from_row(row), row["photo_id"], row["idx"], row["model_class"], row["confidence"],
                   row["margin"], row["detector_confidence"], row["model_version"], json.loads(probs) if probs else None,
                   row["box_probability"], row["model_rationale"],
                   Box(row["model_x1"], row["model_y1"], row["model_x2"], row["model_y2"]), bool(row["drawn"]))

    @property
    def finding_id(self) -> int:
        return self.state.finding_id

    @property
    def name(self) -> str:
        """As a reviewer finds it: "photo 12 #3 (id 57)" (``core.types.object_name``)."""
        return object_name(self.photo_id, self.index, self.finding_id)

    @property
    def from_labels(self) -> bool:
        """A dataset's label imported for review (``slopewatch import-labels``), not a model's output."""
        return is_labels_version(self.model_version)


@dataclass(frozen=True)
class Correction:
    """One appended history row: who did what to which finding, from what state to what state."""

    id: int
    finding_id: int
    reviewer: str
    action: str
    before: dict
    after: dict
    model_version: str | None
    revision: int
    created_at: float
    undoes: int | None = None  # on an "undo" row: the id of the correction it reverses
    kind: str | None = None  # what it indicts (core.attribution.Kind): detector kinds train stage 1, condition kinds stage 2
    batch: int | None = None  # corrections one action wrote together ("Accept all"): undone together

    @classmethod
    def from_row(cls, row) -> "Correction":
        return cls(row["id"], row["finding_id"], row["reviewer"], row["action"], json.loads(row["before_json"]),
                   json.loads(row["after_json"]), row["model_version"], row["revision"], row["created_at"], row["undoes"],
                   row["kind"], row["batch"])


@dataclass(frozen=True)
class ReviewedPhoto:
    """A photo and all its live (not deleted) findings, in detection order.

    ``Store.reviewed_photos`` gives the photos with at least one reviewed finding (what the nightly
    job trains on); ``Store.done_photos`` the confirmed ones (what export writes by default).
    """

    photo: PhotoRecord
    findings: tuple[FindingState, ...]
    # Findings that are a dataset's labels imported for review (``slopewatch import-labels``): a
    # pending one still carries the dataset's class, as trustworthy as the dataset itself.
    labels: frozenset[int] = frozenset()

    @property
    def complete(self) -> bool:
        """Every live finding decided by a reviewer (none pending)."""
        return all(f.status is Status.REVIEWED for f in self.findings)


@dataclass(frozen=True)
class PhotoProgress:
    """How far a photo's review is: object counts by status, and whether a reviewer confirmed it.

    ``done``: no live finding is pending and a confirmation is no older than the photo's latest
    correction (an edit after confirming reopens the photo until it is confirmed again).
    ``confirmed_by``: the latest confirmer while done, else None.
    """

    photo_id: int
    n_objects: int
    n_pending: int
    n_reviewed: int
    n_deleted: int
    done: bool
    confirmed_by: str | None = None

    @classmethod
    def from_row(cls, row) -> "PhotoProgress":
        done = bool(row["done"])
        return cls(row["photo_id"], row["n_objects"], row["n_pending"], row["n_reviewed"], row["n_deleted"], done,
                   row["last_confirmer"] if done else None)


@dataclass(frozen=True)
class PhotoQueueRow:
    """One photo in the photo-by-photo review queue.

    Attributes:
        photo_id: the photo.
        name: its upload name (the stored file's name when there is none).
        n_objects: live (not deleted) findings.
        n_pending: live findings still awaiting a reviewer.
        min_margin: lowest top-1 minus top-2 probability over pending findings (None without one).
        min_detector_confidence: lowest detector confidence over pending findings (None without one).
        expected_errors: sum over pending model findings of ``1 - P(box real) * P(class right)``
            (calibrated box probability where the detector has one, else its score; the class's
            calibrated confidence): how many wrong objects the models expect on the photo (0 when
            nothing is pending). The queue puts the photos with the most first.
        done: as in ``PhotoProgress.done``.
        n_labels: live imported labels (``slopewatch import-labels``): a label-review photo.
    """

    photo_id: int
    name: str
    n_objects: int
    n_pending: int
    min_margin: float | None
    min_detector_confidence: float | None
    expected_errors: float
    done: bool
    n_labels: int = 0

    @classmethod
    def from_row(cls, row) -> "PhotoQueueRow":
        name = row["original_name"] or PurePath(row["path"]).name
        return cls(row["photo_id"], name, row["n_objects"], row["n_pending"], row["min_margin"],
                   row["min_detector_confidence"], float(row["expected_errors"]), bool(row["done"]), int(row["n_labels"]))


@dataclass(frozen=True)
class ReviewerActivity:
    """What one reviewer's corrections came to (the Dashboard's "Corrections per reviewer").

    Attributes:
        reviewer: who.
        standing: corrections of theirs that stand (what the models learn from and are blamed for).
        undone: corrections of theirs that were later undone (by them or another reviewer).
        undos: undo actions they made.
    """

    reviewer: str
    standing: int
    undone: int
    undos: int

    @classmethod
    def from_row(cls, row) -> "ReviewerActivity":
        return cls(row["reviewer"], int(row["standing"]), int(row["undone"]), int(row["undos"]))

    def __str__(self) -> str:
        extra = [f"{n} {word}" for n, word in ((self.undone, "undone"), (self.undos, "undo" if self.undos == 1 else "undos")) if n]
        return f"{self.standing} standing" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class TrainingRun:
    """One nightly run of one stage as recorded: its decision, the gate's reasons and what it
    counted (``counts["judged_as"]``: the stage-2 model the gate scored, e.g. the blend)."""

    started_at: float
    stage: str
    decision: str
    candidate_version: str | None
    duration_s: float | None
    counts: dict
    reasons: tuple[str, ...]  # empty for runs recorded before migration 8

    @classmethod
    def from_row(cls, row) -> "TrainingRun":
        return cls(row["started_at"], row["stage"], row["decision"], row["candidate_version"], row["duration_s"],
                   json.loads(row["counts_json"] or "{}"), tuple(json.loads(row["reasons_json"] or "[]")))


@dataclass(frozen=True)
class BoxRepair:
    """One live finding the one-off repair changed (``Store.repair``).

    Attributes:
        finding_id: the finding.
        photo_id: its photo.
        before: the stored box ``(x1, y1, x2, y2)``, outside the photo, non-finite or thinner than
            the minimum side (or the unchanged box when only a text was cut).
        after: the box clamped to the photo, or None when nothing of it was left inside (the
            finding was deleted by the repair correction).
        texts_cut: the text fields (rationale, note) cut to the cap.
    """

    finding_id: int
    photo_id: int
    before: tuple[float, float, float, float]
    after: tuple[float, float, float, float] | None
    texts_cut: tuple[str, ...] = ()
