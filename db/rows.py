"""Typed rows the store returns: what a finding looks like now, its history, a reviewed photo.

Rows are small frozen dataclasses built with ``from_row`` from ``sqlite3.Row``; nothing outside
``db/`` sees a raw row, a column name or a status string.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, fields

from core.types import Box, Status


def _pick(cls, row: sqlite3.Row | dict, **extra) -> dict:
    keys = row.keys()
    return {f.name: row[f.name] for f in fields(cls) if f.name in keys} | extra


@dataclass(frozen=True)
class PhotoRecord:
    """A stored photo (content-addressed by SHA-256)."""

    id: int
    sha256: str
    path: str
    width: int
    height: int
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

    @classmethod
    def from_row(cls, row) -> "StoredFinding":
        return cls(FindingState.from_row(row), row["photo_id"], row["idx"], row["model_class"], row["confidence"],
                   row["margin"], row["detector_confidence"], row["model_version"])

    @property
    def finding_id(self) -> int:
        return self.state.finding_id


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

    @classmethod
    def from_row(cls, row) -> "Correction":
        return cls(row["id"], row["finding_id"], row["reviewer"], row["action"], json.loads(row["before_json"]),
                   json.loads(row["after_json"]), row["model_version"], row["revision"], row["created_at"])


@dataclass(frozen=True)
class ReviewedPhoto:
    """A photo with at least one reviewed finding, and all its live (not deleted) findings.

    The one definition of a photo's reviewed state: export writes it, the nightly job trains on it.
    """

    photo: PhotoRecord
    findings: tuple[FindingState, ...]

    @property
    def complete(self) -> bool:
        """Every live finding decided by a reviewer (none pending)."""
        return all(f.status is Status.REVIEWED for f in self.findings)
