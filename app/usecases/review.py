"""Use case: apply a reviewer's action to a finding and return its new state.

One entry point for every edit the Review tab (and any script) makes, so the rules live in one
place: the reviewer is registered, the revision the reviewer saw is checked by the store (a
stale edit raises ``StaleEdit``), and each action appends exactly one correction row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.types import Box, Status
from db.rows import FindingState
from db.store import ACTIONS, InvalidEdit, Store


@dataclass(frozen=True)
class ReviewAction:
    """One reviewer action on one finding.

    Attributes:
        finding_id: the finding acted on.
        revision: the revision the reviewer saw.
        reviewer: who acts.
        action: one of ``db.store.ACTIONS`` except ``add`` (see :func:`add_missed`).
        changes: ``class_name``, ``object_type``, ``box``, ``rationale`` or ``note``, as the action needs.
    """

    finding_id: int
    revision: int
    reviewer: str
    action: str
    changes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.action == "add":
            raise InvalidEdit(f"expected an action among {[a for a in ACTIONS if a != 'add']}, found {self.action!r}")


def apply(store: Store, action: ReviewAction) -> FindingState:
    """Apply one action; returns the finding's new state."""
    store.ensure_user(action.reviewer)
    return store.correct(action.finding_id, action.revision, action.reviewer, action.action, **action.changes)


def add_missed(store: Store, reviewer: str, on_finding: int, box: Box, class_name: str) -> FindingState:
    """A box the detector missed, on the photo of ``on_finding``; returns the new finding's state."""
    store.ensure_user(reviewer)
    return store.add_missed(store.photo_of(on_finding), reviewer, box, class_name)


def next_pending(store: Store, current: int | None) -> int | None:
    """The next object to review (lowest margin first), other than ``current``; ``current`` when none is left."""
    for f in store.queue(limit=50):
        if f.state.status is Status.PENDING and f.finding_id != current:
            return f.finding_id
    return current
