"""Who has which photo open in the Review tab, in this server's memory.

"Next photo to review" handed two reviewers the same photo (the top of the queue) and neither
knew the other was on it: their edits then collided, each refused in turn as stale (a
two-reviewer walk-through). A reviewer is on the photo she was last shown or last edited; the
next photo to review skips photos another reviewer is on, and a photo opened anyway says who is
on it. Presence lapses after ``ttl_s`` without an action (a closed tab says nothing), and nothing
is stored: a restart forgets it, which costs at most one collision.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class OnPhoto:
    """Another reviewer on a photo, and how long ago she last acted on it."""

    reviewer: str
    seconds_ago: float

    def __str__(self) -> str:
        minutes = int(self.seconds_ago // 60)
        return f"{self.reviewer} ({'just now' if minutes < 1 else f'{minutes} min ago'})"


class Presence:
    """Each reviewer's current photo, with the time of her last action on it (thread-safe)."""

    def __init__(self, ttl_s: float = 600.0, clock=time.monotonic):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: expected > 0 seconds, found {ttl_s}")
        self.ttl_s, self._clock = ttl_s, clock
        self._on: dict[str, tuple[int, float]] = {}  # reviewer -> (photo id, when)
        self._lock = threading.Lock()

    def saw(self, reviewer: str, photo_id: int | None) -> None:
        """``reviewer`` was shown (or edited) ``photo_id``; None: no photo open."""
        with self._lock:
            if photo_id is None:
                self._on.pop(reviewer, None)
            else:
                self._on[reviewer] = (int(photo_id), self._clock())

    def _others(self, reviewer: str) -> list[tuple[int, OnPhoto]]:
        """``(photo id, reviewer there)`` for every other reviewer who acted within ``ttl_s``."""
        now = self._clock()
        with self._lock:
            return [(pid, OnPhoto(who, now - when)) for who, (pid, when) in self._on.items()
                    if who != reviewer and now - when <= self.ttl_s]

    def others_on(self, photo_id: int, reviewer: str) -> list[OnPhoto]:
        """The other reviewers on ``photo_id`` within the last ``ttl_s``, most recent first."""
        return sorted((o for pid, o in self._others(reviewer) if pid == int(photo_id)), key=lambda o: o.seconds_ago)

    def taken(self, reviewer: str) -> set[int]:
        """Photos another reviewer is on (within the last ``ttl_s``)."""
        return {pid for pid, _ in self._others(reviewer)}
