"""What the store refuses, and the checks that refuse it: named errors for stale or invalid edits,
and the one rule each for ids, texts and boxes (model output, drawn and moved boxes alike)."""

from __future__ import annotations

import math
import numbers

from core.errors import SlopewatchError
from core.types import Box
from db.rows import FindingState

# A box must keep at least this many pixels a side inside its photo: thinner is a slip of the
# mouse (or a typed number), not an object, and a zero-area box breaks export and training.
MIN_BOX_SIDE_PX = 2.0
# Notes and rationales are a sentence or a paragraph. Every correction copies the finding's
# whole state (before and after), so an unbounded note would grow the history by its size on
# every later edit of the object.
MAX_TEXT_CHARS = 2000
# SQLite integers are signed 64-bit; a larger Python int raises OverflowError inside sqlite3.
_SQLITE_INT = (-(2**63), 2**63 - 1)


class StaleEdit(SlopewatchError):
    """The finding changed since the reviewer loaded it; ``current`` is its state now."""

    def __init__(self, finding_id: int, expected: int, current: FindingState):
        self.current = current
        super().__init__(f"finding {finding_id} changed: expected revision {expected}, found {current.revision} "
                         f"(now {current.class_name!r}, by {current.updated_by})")


class InvalidEdit(SlopewatchError):
    """An edit that does not fit the taxonomy or the finding."""


class AlreadyDecided(InvalidEdit):
    """An accept of a finding whose current state is this reviewer's own decision: it would add a
    history row that records no change and count as a second, independent agreement."""


class AlreadyDone(InvalidEdit):
    """Photo done on a photo that is done with no edit since: another confirmation would count,
    in ``confirmations_since``, as new complete labels for the detector nightly."""


class StillPending(InvalidEdit):
    """A photo marked done while objects on it are undecided; ``pending`` holds their ``#k``."""

    def __init__(self, photo_id: int, pending: list[int]):
        self.pending = pending
        super().__init__(f"photo {photo_id}: expected no pending object to confirm, found "
                         f"{', '.join(f'#{i}' for i in pending)} still pending")


class NotFound(InvalidEdit):
    """No photo or finding with that id (an id outside SQLite's integer range included)."""


class InvalidBox(InvalidEdit):
    """A box that is not finite, or keeps less than ``MIN_BOX_SIDE_PX`` a side inside its photo."""


class TextTooLong(InvalidEdit):
    """A note or rationale over ``MAX_TEXT_CHARS``."""


def shown(value, limit: int = 60) -> str:
    """``repr(value)``, cut: an error message must not echo a 5 MB string back to the page."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def check_id(value, what: str) -> int:
    """An object id as SQLite can look it up.

    Raises:
        InvalidEdit: not an integer (a bool, a float, a string).
        NotFound: outside SQLite's signed 64-bit range: no such object can exist.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidEdit(f"expected an integer {what} id, found {shown(value)}")
    value = int(value)
    if not _SQLITE_INT[0] <= value <= _SQLITE_INT[1]:
        raise NotFound(f"no {what} with id {shown(value)} (ids are integers below 2**63)")
    return value


def check_text(value, what: str) -> str:
    """A note or rationale as stored: a string of at most ``MAX_TEXT_CHARS`` characters.

    Raises:
        TextTooLong: longer than the cap.
    """
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLong(f"{what}: expected at most {MAX_TEXT_CHARS:,} characters, found {len(text):,}")
    return text


def storable(box: Box) -> bool:
    """Whether a box inside its photo is large enough to store (``MIN_BOX_SIDE_PX`` a side): a
    dataset label under it (the data has a sub-pixel one) is no object a reviewer could draw."""
    return min(box.width, box.height) >= MIN_BOX_SIDE_PX


def check_box(box, width: int, height: int) -> Box:
    """The one rule for every box stored (model output, a drawn box, a moved box).

    Coordinates must be finite; the box is clamped to the ``width`` x ``height`` photo (a box
    drawn a pixel past the edge is the reviewer's intent) and must keep at least
    ``MIN_BOX_SIDE_PX`` a side inside it.

    Args:
        box: a ``Box`` or four numbers ``(x1, y1, x2, y2)`` in photo pixels.

    Returns:
        The clamped box.

    Raises:
        InvalidBox: not four finite numbers, or too thin (or wholly outside) after clamping.
    """
    values = box.xyxy if isinstance(box, Box) else box
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise InvalidBox(f"expected a box of four numbers (x1, y1, x2, y2), found {shown(box)}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise InvalidBox(f"expected finite box coordinates, found ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < MIN_BOX_SIDE_PX or y2 - y1 < MIN_BOX_SIDE_PX:
        raw = ", ".join(f"{float(v):g}" for v in values)
        raise InvalidBox(f"expected a box at least {MIN_BOX_SIDE_PX:g} px a side inside the {width}x{height} photo, found "
                         f"({raw}) -> ({x1:g}, {y1:g}, {x2:g}, {y2:g}) after clamping, {x2 - x1:g}x{y2 - y1:g} px")
    return Box(x1, y1, x2, y2)
