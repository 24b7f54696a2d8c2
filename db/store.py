"""The review store: photos, model findings and reviewers' corrections in one SQLite file.

Corrections are precious and writes are few, so: WAL with ``synchronous=FULL``, a busy
timeout, one connection per thread, and every read-then-write in ``BEGIN IMMEDIATE`` (a
deferred ``BEGIN`` can fail with SQLITE_BUSY at once, ignoring the timeout). Each edit is an
appended correction row; the finding's current state carries a revision, and an edit made
against a stale revision is refused with the state the reviewer did not see. An undo is one more
appended correction (naming the one it reverses); a photo is done when a reviewer confirms it
with nothing pending, and stays done only until its next correction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import numbers
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from core.attribution import STAGE1, Kind, attribute
from core.errors import SlopewatchError
from core.paths import data_dir
from core.taxonomy import Taxonomy
from core.types import Box, Finding, Status
from db.migrations import migrate
from db.rows import BoxRepair, Correction, FindingState, PhotoProgress, PhotoQueueRow, PhotoRecord, ReviewedPhoto, StoredFinding

ACTIONS = ("accept", "relabel", "retype", "delete", "add", "edit_box", "edit_rationale", "note", "undo", "repair")
# Actions with their own entry point (add_missed, undo_last, repair), not accepted by Store.correct.
_OWN_ENTRY = ("add", "undo", "repair")

# A box must keep at least this many pixels a side inside its photo: thinner is a slip of the
# mouse (or a typed number), not an object, and a zero-area box breaks export and training.
MIN_BOX_SIDE_PX = 2.0
# Notes and rationales are a sentence or a paragraph. Every correction copies the finding's
# whole state (before and after), so an unbounded note would grow the history by its size on
# every later edit of the object.
MAX_TEXT_CHARS = 2000
# SQLite integers are signed 64-bit; a larger Python int raises OverflowError inside sqlite3.
_SQLITE_INT = (-(2**63), 2**63 - 1)
# Who appends the one-off repair's corrections (``Store.repair``).
REPAIR_REVIEWER = "slopewatch-repair"


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


class NotFound(InvalidEdit):
    """No photo or finding with that id (an id outside SQLite's integer range included)."""


class InvalidBox(InvalidEdit):
    """A box that is not finite, or keeps less than ``MIN_BOX_SIDE_PX`` a side inside its photo."""


class TextTooLong(InvalidEdit):
    """A note or rationale over ``MAX_TEXT_CHARS``."""


def _shown(value, limit: int = 60) -> str:
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
        raise InvalidEdit(f"expected an integer {what} id, found {_shown(value)}")
    value = int(value)
    if not _SQLITE_INT[0] <= value <= _SQLITE_INT[1]:
        raise NotFound(f"no {what} with id {_shown(value)} (ids are integers below 2**63)")
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
        raise InvalidBox(f"expected a box of four numbers (x1, y1, x2, y2), found {_shown(box)}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise InvalidBox(f"expected finite box coordinates, found ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < MIN_BOX_SIDE_PX or y2 - y1 < MIN_BOX_SIDE_PX:
        raw = ", ".join(f"{float(v):g}" for v in values)
        raise InvalidBox(f"expected a box at least {MIN_BOX_SIDE_PX:g} px a side inside the {width}x{height} photo, found "
                         f"({raw}) -> ({x1:g}, {y1:g}, {x2:g}, {y2:g}) after clamping, {x2 - x1:g}x{y2 - y1:g} px")
    return Box(x1, y1, x2, y2)


def wal_reset_bug(version: str = sqlite3.sqlite_version) -> bool:
    """Whether this SQLite has the WAL-reset corruption bug with concurrent writers
    (3.7.0 to 3.51.2, fixed in 3.51.3, 3.50.7 and 3.44.6)."""
    v = tuple(int(x) for x in version.split(".")[:3])
    if v < (3, 7, 0) or v >= (3, 51, 3):
        return False
    return not ((3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0))


def default_db_path() -> Path:
    return data_dir() / "slopewatch.db"


# The current state of findings joined with their model output; ``idx`` numbers the findings of
# each photo in detection order (the "#k" shown everywhere).
_FINDINGS_SQL = (
    "SELECT s.*, f.photo_id, f.class_name AS model_class, f.confidence, f.margin, f.detector_confidence, f.model_version, "
    "f.probabilities_json, f.box_probability, "
    "ROW_NUMBER() OVER (PARTITION BY f.photo_id ORDER BY s.finding_id) - 1 AS idx "
    "FROM finding_state s JOIN findings f ON f.id = s.finding_id"
)


def _progress_sql(where: str = "") -> str:
    """Per-photo review progress (``PhotoProgress`` columns plus ``last_confirmer``), one row per photo.

    Parameters ``:pending``, ``:reviewed`` and ``:deleted`` are the status values (``_STATUS``).
    Done: nothing live is pending, and the latest confirmation is no older than the latest
    correction on any of the photo's findings (an edit after confirming reopens the photo).
    """
    return (
        "SELECT *, (n_pending = 0 AND last_confirmed IS NOT NULL AND last_confirmed >= COALESCE(last_edit, last_confirmed)) AS done "
        "FROM (SELECT p.id AS photo_id, "
        "COUNT(CASE WHEN s.status != :deleted THEN 1 END) AS n_objects, "
        "COUNT(CASE WHEN s.status = :pending THEN 1 END) AS n_pending, "
        "COUNT(CASE WHEN s.status = :reviewed THEN 1 END) AS n_reviewed, "
        "COUNT(CASE WHEN s.status = :deleted THEN 1 END) AS n_deleted, "
        "(SELECT MAX(c.created_at) FROM corrections c JOIN findings cf ON cf.id = c.finding_id WHERE cf.photo_id = p.id) AS last_edit, "
        "(SELECT MAX(r.created_at) FROM photo_reviews r WHERE r.photo_id = p.id) AS last_confirmed, "
        "(SELECT r.reviewer FROM photo_reviews r WHERE r.photo_id = p.id ORDER BY r.created_at DESC, r.id DESC LIMIT 1) AS last_confirmer "
        "FROM photos p LEFT JOIN findings f ON f.photo_id = p.id LEFT JOIN finding_state s ON s.finding_id = f.id "
        f"{where} GROUP BY p.id)"
    )


_STATUS = {"pending": Status.PENDING.value, "reviewed": Status.REVIEWED.value, "deleted": Status.DELETED.value}


def _insert(conn: sqlite3.Connection, table: str, row: dict) -> int:
    """INSERT by column name; returns the new rowid. (sqlite-utils' insert would commit the
    caller's BEGIN IMMEDIATE transaction through ``with conn:``, so it is not used for writes.)"""
    cols = ", ".join(row)
    return conn.execute(f"INSERT INTO {table}({cols}) VALUES ({', '.join(':' + k for k in row)})", row).lastrowid


class Store:
    """Thread-safe access to one SQLite file (``":memory:"`` for tests: one shared connection)."""

    def __init__(self, path: str | Path | None = None, taxonomy: Taxonomy | None = None):
        from core.taxonomy import load_taxonomy

        self.path = str(path or default_db_path())
        self.taxonomy = taxonomy or load_taxonomy()
        self._local = threading.local()
        self._memory = self.path == ":memory:"
        self._shared = None
        self._lock = threading.RLock()
        # Serialise writers where this SQLite has the WAL-reset bug (across processes too).
        self._serialise = wal_reset_bug()
        with self._connection() as conn:
            migrate(conn)

    # --- connections ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=not self._memory)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
                yield self._shared
            return
        if getattr(self._local, "conn", None) is None:
            self._local.conn = self._open()
        yield self._local.conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction (serialised across processes when SQLite needs it)."""
        with contextlib.ExitStack() as stack:
            if self._serialise and not self._memory:
                lock = stack.enter_context(open(self.path + ".writelock", "a"))
                fcntl.flock(lock, fcntl.LOCK_EX)
                stack.callback(fcntl.flock, lock, fcntl.LOCK_UN)
            conn = stack.enter_context(self._connection())
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs that see one state of the file (WAL readers get a
        snapshot at their first read), so no correction lands between them."""
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        """Raw read-only SQL as dicts: for tests and one-off inspection. Application code uses the
        named methods below (``tests/test_architecture.py`` keeps SQL out of app, core and train)."""
        return [dict(r) for r in self._rows(sql, params)]

    # --- users and photos ----------------------------------------------------------------
    def ensure_user(self, name: str, display_name: str | None = None) -> None:
        if not name:
            raise InvalidEdit("expected a reviewer name, found an empty one")
        if len(name) > 100:
            raise InvalidEdit(f"expected a reviewer name of at most 100 characters, found {len(name):,}")
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(name, display_name, created_at) VALUES (?, ?, ?)", (name, display_name or name, time.time()))

    def add_photo(self, sha256: str, path: str, width: int, height: int, original_name: str | None, uploaded_by: str | None,
                  original_size: tuple[int, int] | None = None) -> tuple[PhotoRecord, bool]:
        """Insert a photo by content hash; returns ``(record, created)``: the same bytes twice give one photo.

        ``width``/``height`` are the stored image's (boxes live in its pixels); ``original_size``
        is the upload's when it was downscaled on ingest (default: the same).
        """
        ow, oh = original_size or (width, height)
        for what, v in (("width", width), ("height", height), ("original width", ow), ("original height", oh)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise InvalidEdit(f"photo {what}: expected a positive integer, found {_shown(v)}")
        with self.write() as conn:
            row = conn.execute("SELECT * FROM photos WHERE sha256 = ?", (sha256,)).fetchone()
            if row:
                return PhotoRecord.from_row(row), False
            pid = _insert(conn, "photos", {"sha256": sha256, "path": path, "width": width, "height": height,
                                           "original_width": ow, "original_height": oh, "original_name": original_name,
                                           "uploaded_by": uploaded_by, "uploaded_at": time.time()})
            return PhotoRecord(pid, sha256, path, width, height, ow, oh, original_name), True

    def photo(self, photo_id: int) -> PhotoRecord:
        photo_id = check_id(photo_id, "photo")
        rows = self._rows("SELECT * FROM photos WHERE id = ?", (photo_id,))
        if not rows:
            raise NotFound(f"no photo with id {photo_id}")
        return PhotoRecord.from_row(rows[0])

    def photos(self) -> list[PhotoRecord]:
        """Every stored photo, oldest first."""
        return [PhotoRecord.from_row(r) for r in self._rows("SELECT * FROM photos ORDER BY id")]

    def photo_ids(self) -> list[int]:
        """Every photo's id in upload order (for next/previous photo). Ids, not ``uploaded_at``: ids
        are handed out in insert order, a wall clock can repeat or step back."""
        return [r["id"] for r in self._rows("SELECT id FROM photos ORDER BY id")]

    def was_inspected(self, photo_id: int) -> bool:
        """Whether the pipeline has run on the photo (a photo with no detections counts too)."""
        return bool(self._rows("SELECT 1 FROM inference_runs WHERE photo_id = ? LIMIT 1", (check_id(photo_id, "photo"),)))

    def photo_of(self, finding_id: int) -> int:
        """The id of the photo a finding is on."""
        finding_id = check_id(finding_id, "finding")
        rows = self._rows("SELECT photo_id FROM findings WHERE id = ?", (finding_id,))
        if not rows:
            raise NotFound(f"no finding with id {finding_id}")
        return rows[0]["photo_id"]

    @staticmethod
    def _photo_size(conn: sqlite3.Connection, photo_id: int) -> tuple[int, int]:
        row = conn.execute("SELECT width, height FROM photos WHERE id = ?", (photo_id,)).fetchone()
        if row is None:
            raise NotFound(f"no photo with id {photo_id}")
        return row["width"], row["height"]

    # --- model output --------------------------------------------------------------------
    def add_run(self, photo_id: int, findings: list[Finding], detector_version: str, classifier_version: str | None, seconds: float) -> list[int]:
        """Store one pipeline run's findings (immutable) and their initial state; returns finding ids."""
        photo_id = check_id(photo_id, "photo")
        now = time.time()
        ids = []
        with self.write() as conn:
            width, height = self._photo_size(conn, photo_id)
            run = _insert(conn, "inference_runs", {"photo_id": photo_id, "detector_version": detector_version,
                                                    "classifier_version": classifier_version, "seconds": seconds, "created_at": now})
            for k, f in enumerate(findings):
                try:
                    b = check_box(f.detection.box, width, height)
                    check_text(f.rationale, "rationale")
                except InvalidEdit as exc:  # the whole run is refused: a partial one would renumber the #k
                    raise type(exc)(f"photo {photo_id} detection {k} ({f.detection.type}): {exc}") from None
                fid = _insert(conn, "findings", {
                    "photo_id": photo_id, "run_id": run, "object_type": f.detection.type, "class_name": f.class_name,
                    "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "detector_confidence": f.detection.confidence,
                    "box_probability": f.detection.p_real,
                    "confidence": f.confidence, "margin": f.margin, "probabilities_json": json.dumps(f.probabilities),
                    "rationale": f.rationale, "model_version": f"{f.backend}:{f.version}", "source": "model", "created_at": now})
                state = FindingState(fid, f.detection.type, f.class_name, b.x1, b.y1, b.x2, b.y2, f.rationale, None,
                                     Status.PENDING, 0, now, None)
                _insert(conn, "finding_state", state.to_json())
                ids.append(fid)
        return ids

    # --- review --------------------------------------------------------------------------
    def state(self, finding_id: int) -> FindingState:
        finding_id = check_id(finding_id, "finding")
        rows = self._rows("SELECT * FROM finding_state WHERE finding_id = ?", (finding_id,))
        if not rows:
            raise NotFound(f"no finding with id {finding_id}")
        return FindingState.from_row(rows[0])

    def photo_findings(self, photo_id: int) -> list[StoredFinding]:
        """All findings of one photo (deleted ones too), in detection order."""
        return [StoredFinding.from_row(r) for r in self._rows(
            f"SELECT * FROM ({_FINDINGS_SQL}) WHERE photo_id = ? ORDER BY finding_id", (check_id(photo_id, "photo"),))]

    def live_findings(self) -> dict[int, StoredFinding]:
        """Every finding not deleted, by id in id order (what embedding, the map and search read)."""
        rows = self._rows(f"SELECT * FROM ({_FINDINGS_SQL}) WHERE status != ? ORDER BY finding_id", (Status.DELETED.value,))
        return {r["finding_id"]: StoredFinding.from_row(r) for r in rows}

    def reviewed_photos(self) -> list[ReviewedPhoto]:
        """Photos with at least one reviewed finding, each with its live findings in detection order."""
        rows = self._rows(
            "SELECT p.id AS pid, s.* FROM finding_state s JOIN findings f ON f.id = s.finding_id JOIN photos p ON p.id = f.photo_id "
            "WHERE s.status != ? ORDER BY p.id, s.finding_id", (Status.DELETED.value,))
        by_photo: dict[int, list[FindingState]] = {}
        for r in rows:
            by_photo.setdefault(r["pid"], []).append(FindingState.from_row(r))
        return [ReviewedPhoto(self.photo(pid), tuple(states)) for pid, states in by_photo.items()
                if any(s.status is Status.REVIEWED for s in states)]

    def labelled_photos(self) -> list[tuple[ReviewedPhoto, bool]]:
        """Every photo that has findings or is done, with its live findings and whether it is done
        (``PhotoProgress.done``), in upload order. One read transaction: a photo's labels and its
        done flag always belong together (export writes both)."""
        with self._snapshot() as conn:
            done = {r["photo_id"]: bool(r["done"]) for r in conn.execute(_progress_sql(), _STATUS)}
            photos = [PhotoRecord.from_row(r) for r in conn.execute("SELECT * FROM photos ORDER BY id")]
            has_findings: set[int] = set()
            live: dict[int, list[FindingState]] = {}
            for r in conn.execute("SELECT f.photo_id AS pid, s.* FROM finding_state s JOIN findings f ON f.id = s.finding_id "
                                  "ORDER BY f.photo_id, s.finding_id"):
                has_findings.add(r["pid"])
                state = FindingState.from_row(r)
                if state.live:
                    live.setdefault(r["pid"], []).append(state)
        return [(ReviewedPhoto(p, tuple(live.get(p.id, ()))), done[p.id]) for p in photos if p.id in has_findings or done[p.id]]

    def done_photos(self) -> list[ReviewedPhoto]:
        """Photos a reviewer confirmed with nothing pending and no edit since (complete labels), with
        their live findings in detection order. A confirmed photo may have no live finding at all."""
        return [photo for photo, done in self.labelled_photos() if done]

    def correct(self, finding_id: int, expected_revision: int, reviewer: str, action: str, **changes) -> FindingState:
        """Apply one reviewer action atomically; returns the new state.

        Args:
            finding_id: the finding to change.
            expected_revision: the revision the reviewer saw; a different current one raises StaleEdit.
            reviewer: who acts (must exist in users).
            action: one of ACTIONS except "add" (``add_missed``) and "undo" (``undo_last``).
            **changes: ``class_name``, ``object_type``, ``box`` (a Box), ``rationale`` or ``note``.

        Raises:
            StaleEdit: the finding is no longer at ``expected_revision``.
            InvalidEdit: an unknown action, a label outside the taxonomy, or a relabel/retype to
                the label the finding already has (nothing is written).
            AlreadyDecided: an accept of a finding whose current state is the reviewer's own
                decision (nothing is written; another reviewer's accept is a second opinion).
        """
        if action not in ACTIONS or action in _OWN_ENTRY:
            raise InvalidEdit(f"expected an action among {[a for a in ACTIONS if a not in _OWN_ENTRY]}, found {_shown(action)}")
        finding_id = check_id(finding_id, "finding")
        if isinstance(expected_revision, bool) or not isinstance(expected_revision, numbers.Integral):
            raise InvalidEdit(f"expected the integer revision you saw, found {_shown(expected_revision)}")
        with self.write() as conn:
            row = conn.execute("SELECT s.*, f.photo_id FROM finding_state s JOIN findings f ON f.id = s.finding_id "
                               "WHERE s.finding_id = ?", (finding_id,)).fetchone()
            if row is None:
                raise NotFound(f"no finding with id {finding_id}")
            before = FindingState.from_row(row)
            if before.revision != expected_revision:
                raise StaleEdit(finding_id, expected_revision, before)
            if action == "accept" and before.status == Status.REVIEWED and before.updated_by == reviewer:
                raise AlreadyDecided(f"#{finding_id} is already decided by you ({before.class_name}); nothing to accept")
            after = self._apply(before.to_json(), action, changes, self._photo_size(conn, row["photo_id"]))
            after.update(revision=before.revision + 1, updated_at=time.time(), updated_by=reviewer)
            return self._append(conn, reviewer, action, before.to_json(), after)

    def _append(self, conn: sqlite3.Connection, reviewer: str, action: str, before: dict, after: dict,
                undoes: int | None = None) -> FindingState:
        """Append one correction and move the finding's state to ``after``; the caller holds ``write()``."""
        finding_id = after["finding_id"]
        model_version = conn.execute("SELECT model_version FROM findings WHERE id = ?", (finding_id,)).fetchone()[0]
        _insert(conn, "corrections", {"finding_id": finding_id, "reviewer": reviewer, "action": action,
                                      "before_json": json.dumps(before), "after_json": json.dumps(after),
                                      "model_version": model_version, "revision": after["revision"],
                                      "created_at": after["updated_at"], "undoes": undoes,
                                      "kind": attribute(action, before, after).value})
        cols = ", ".join(f"{k} = :{k}" for k in after if k != "finding_id")
        conn.execute(f"UPDATE finding_state SET {cols} WHERE finding_id = :finding_id", after)
        return FindingState.from_row(after)

    def _apply(self, before: dict, action: str, changes: dict, photo_size: tuple[int, int]) -> dict:
        after = dict(before)
        tax = self.taxonomy
        if action == "delete":
            after["status"] = Status.DELETED.value
            return after
        if action in ("relabel", "retype"):
            new_type = changes.get("object_type", before["object_type"]) if action == "retype" else before["object_type"]
            new_class = changes.get("class_name")
            if new_type not in tax.type_names:
                raise InvalidEdit(f"expected a type among {tax.type_names}, found {_shown(new_type)}")
            if new_class is not None and new_class not in tax.class_names:
                raise InvalidEdit(f"expected a class among {tax.class_names}, found {_shown(new_class)}")
            if new_class is None:
                candidates = tax.classes_for_type(new_type)
                if len(candidates) != 1:
                    raise InvalidEdit(f"type {new_type!r} has several classes; expected class_name among {[c.name for c in candidates]}")
                new_class = candidates[0].name
            if tax.get_class(new_class).type != new_type:
                raise InvalidEdit(f"class {new_class!r} is not a {new_type!r}; expected one of {[c.name for c in tax.classes_for_type(new_type)]}")
            # A no-op relabel would still mark the finding reviewed and add a history row that
            # records no change; "accept" is the action for agreeing with the label.
            if (new_type, new_class) == (before["object_type"], before["class_name"]):
                raise InvalidEdit(f"#{before['finding_id']} is already {new_class}; nothing to change")
            if new_type != before["object_type"]:
                # The rationale explained the old type's condition; kept, it would describe another object.
                after["rationale"] = check_text(changes.get("rationale", ""), "rationale")
            after.update(object_type=new_type, class_name=new_class)
        elif action == "edit_box":
            box = check_box(changes.get("box"), *photo_size)
            after.update(x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2)
        elif action == "edit_rationale":
            after["rationale"] = check_text(changes.get("rationale", ""), "rationale")
        elif action == "note":
            after["note"] = check_text(changes.get("note", ""), "note")
        after["status"] = Status.REVIEWED.value
        return after

    def undo_last(self, photo_id: int, reviewer: str) -> FindingState | None:
        """Undo this reviewer's latest correction on the photo that is not an undo and not yet undone.

        The undo is appended as its own correction (action "undo", ``undoes`` = the reversed row):
        its after-state is the undone correction's before-state, or, for an "add", the added
        finding deleted. Repeated calls walk back through the reviewer's corrections, newest first.

        Returns:
            The finding's new state, or None when the reviewer has nothing left to undo on the photo.

        Raises:
            StaleEdit: the finding changed since that correction (a later correction on it that was
                not itself undone), e.g. another reviewer relabelled it.
        """
        photo_id = check_id(photo_id, "photo")
        with self.write() as conn:
            # Newest by id, not created_at: ids follow commit order, a wall clock can step back.
            row = conn.execute(
                "SELECT c.* FROM corrections c JOIN findings f ON f.id = c.finding_id "
                "WHERE f.photo_id = ? AND c.reviewer = ? AND c.action != 'undo' "
                "AND NOT EXISTS (SELECT 1 FROM corrections u WHERE u.undoes = c.id) ORDER BY c.id DESC LIMIT 1",
                (photo_id, reviewer)).fetchone()
            if row is None:
                return None
            target = Correction.from_row(row)
            current = FindingState.from_row(conn.execute("SELECT * FROM finding_state WHERE finding_id = ?",
                                                         (target.finding_id,)).fetchone())
            # The finding still shows the target's result when every later correction on it is
            # netted out: undone, or an undo of something after the target. (Comparing revisions
            # alone would refuse the second of two undos on one finding: the first bumped it.)
            later = conn.execute(
                "SELECT c.action, c.undoes, EXISTS (SELECT 1 FROM corrections u WHERE u.undoes = c.id) AS undone "
                "FROM corrections c WHERE c.finding_id = ? AND c.id > ?", (target.finding_id, target.id)).fetchall()
            if any(not (r["undoes"] > target.id if r["action"] == "undo" else r["undone"]) for r in later):
                raise StaleEdit(target.finding_id, target.revision, current)
            if target.action == "add":
                after = {**current.to_json(), "status": Status.DELETED.value}
            else:
                after = {**target.before, "finding_id": target.finding_id}
            after.update(revision=current.revision + 1, updated_at=time.time(), updated_by=reviewer)
            return self._append(conn, reviewer, "undo", current.to_json(), after, undoes=target.id)

    def add_missed(self, photo_id: int, reviewer: str, box: Box, class_name: str, rationale: str = "") -> FindingState:
        """A box the detector missed, drawn by a reviewer: a reviewer-sourced finding plus its 'add' correction.

        Raises:
            NotFound: no such photo.
            InvalidBox: the box breaks ``check_box`` on this photo (it is stored clamped otherwise).
            InvalidEdit: a class outside the taxonomy; TextTooLong: a rationale over the cap.
        """
        photo_id = check_id(photo_id, "photo")
        if class_name not in self.taxonomy.class_names:
            raise InvalidEdit(f"expected a class among {self.taxonomy.class_names}, found {_shown(class_name)}")
        cls = self.taxonomy.get_class(class_name)
        rationale = check_text(rationale, "rationale")
        now = time.time()
        with self.write() as conn:
            box = check_box(box, *self._photo_size(conn, photo_id))
            fid = _insert(conn, "findings", {"photo_id": photo_id, "object_type": cls.type, "class_name": class_name,
                                             "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2, "rationale": rationale,
                                             "source": "reviewer", "created_at": now})
            state = FindingState(fid, cls.type, class_name, box.x1, box.y1, box.x2, box.y2, rationale, None, Status.REVIEWED, 1, now, reviewer)
            _insert(conn, "finding_state", state.to_json())
            _insert(conn, "corrections", {"finding_id": fid, "reviewer": reviewer, "action": "add", "before_json": "{}",
                                          "after_json": json.dumps(state.to_json()), "model_version": None, "revision": 1,
                                          "created_at": now, "kind": Kind.DETECTOR_MISS.value})
            return state

    # --- one-off repair ----------------------------------------------------------------------
    def _repairs(self, conn: sqlite3.Connection, reviewer: str) -> list[tuple[BoxRepair, dict, dict]]:
        """What ``repair`` would change: ``(summary, before, after)`` per live finding."""
        out = []
        rows = conn.execute("SELECT s.*, f.photo_id, p.width, p.height FROM finding_state s JOIN findings f ON f.id = s.finding_id "
                            "JOIN photos p ON p.id = f.photo_id WHERE s.status != ? ORDER BY s.finding_id", (Status.DELETED.value,))
        for r in rows:
            before = FindingState.from_row(r).to_json()
            after = dict(before)
            raw = (r["x1"], r["y1"], r["x2"], r["y2"])
            try:
                fixed = check_box(raw, r["width"], r["height"]).xyxy
            except InvalidBox:
                fixed = None  # nothing usable inside the photo
            if fixed is None:
                after["status"] = Status.DELETED.value
            elif fixed != raw:
                after.update(zip(("x1", "y1", "x2", "y2"), fixed))
            cut = tuple(k for k in ("rationale", "note") if len(before[k] or "") > MAX_TEXT_CHARS)
            for k in cut:
                after[k] = before[k][:MAX_TEXT_CHARS]
            if after != before:
                after.update(revision=before["revision"] + 1, updated_at=time.time(), updated_by=reviewer)
                out.append((BoxRepair(r["finding_id"], r["photo_id"], raw, fixed, cut), before, after))
        return out

    def needs_repair(self) -> int:
        """How many live findings ``repair`` would change (stored before every box and text was checked)."""
        with self._snapshot() as conn:
            return len(self._repairs(conn, REPAIR_REVIEWER))

    def repair(self, reviewer: str = REPAIR_REVIEWER) -> list[BoxRepair]:
        """Bring rows stored before ``check_box``/``check_text`` existed inside the rules, once.

        Each live finding whose box breaks ``check_box`` on its photo, or whose rationale or note
        is over ``MAX_TEXT_CHARS``, gets one appended ``repair`` correction by ``reviewer``: the box
        clamped to the photo, or the finding deleted when less than ``MIN_BOX_SIDE_PX`` a side of it
        is inside (it marks nothing on the photo); texts cut to the cap. History keeps the old
        values (the correction's before-state); a photo marked done reopens, as after any edit.
        Running it again changes nothing.

        Returns:
            One ``BoxRepair`` per finding changed.
        """
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(name, display_name, created_at) VALUES (?, ?, ?)",
                         (reviewer, "one-off repair", time.time()))
            repairs = self._repairs(conn, reviewer)
            for _, before, after in repairs:
                self._append(conn, reviewer, "repair", before, after)
        return [summary for summary, _, _ in repairs]

    # --- photos as a unit of review ---------------------------------------------------------
    def confirm_photo(self, photo_id: int, reviewer: str) -> PhotoProgress:
        """Record that a reviewer checked the whole photo (appended; earlier confirmations stay).

        Raises:
            InvalidEdit: no such photo, or a live finding is still pending (named by its ``#k``).
        """
        photo_id = check_id(photo_id, "photo")
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM photos WHERE id = ?", (photo_id,)).fetchone() is None:
                raise NotFound(f"expected a photo with id {photo_id}, found none")
            pending = [r["idx"] for r in conn.execute(
                f"SELECT idx FROM ({_FINDINGS_SQL}) WHERE photo_id = ? AND status = ? ORDER BY idx", (photo_id, Status.PENDING.value))]
            if pending:
                raise InvalidEdit(f"photo {photo_id}: expected no pending object to confirm, found "
                                  f"{', '.join(f'#{i}' for i in pending)} still pending")
            last_edit = conn.execute("SELECT MAX(c.created_at) FROM corrections c JOIN findings f ON f.id = c.finding_id "
                                     "WHERE f.photo_id = ?", (photo_id,)).fetchone()[0]
            # Never older than the edits it confirms: done compares the two times, and a wall clock
            # (or another process's) can lag the last correction's.
            now = max(time.time(), last_edit or 0.0)
            _insert(conn, "photo_reviews", {"photo_id": photo_id, "reviewer": reviewer, "created_at": now})
            return PhotoProgress.from_row(conn.execute(_progress_sql("WHERE p.id = :photo_id"), {**_STATUS, "photo_id": photo_id}).fetchone())

    def photo_progress(self, photo_id: int) -> PhotoProgress:
        """Counts by status and whether the photo is done (see ``PhotoProgress``)."""
        rows = self._rows(_progress_sql("WHERE p.id = :photo_id"), {**_STATUS, "photo_id": check_id(photo_id, "photo")})
        if not rows:
            raise NotFound(f"expected a photo with id {photo_id}, found none")
        return PhotoProgress.from_row(rows[0])

    def _finding_filters(self, object_type: str | None, class_name: str | None, condition: str | None,
                         model_version: str | None, reviewer: str | None) -> tuple[str, dict]:
        """WHERE clause over ``_FINDINGS_SQL`` rows: live findings matching every given filter."""
        where, params = ["status != :deleted"], {"deleted": Status.DELETED.value}
        for column, value in (("object_type", object_type), ("class_name", class_name), ("model_version", model_version),
                              ("updated_by", reviewer)):
            if value:
                where.append(f"{column} = :{column}")
                params[column] = value
        if condition:
            names = [c.name for c in self.taxonomy.classes if self.taxonomy.condition_key(c.name) == condition]
            keys = [f"condition{i}" for i in range(len(names))]
            where.append(f"class_name IN ({','.join(':' + k for k in keys) or 'NULL'})")
            params.update(zip(keys, names))
        return " AND ".join(where), params

    def queue(self, object_type: str | None = None, class_name: str | None = None, condition: str | None = None,
              model_version: str | None = None, reviewer: str | None = None, limit: int = 200) -> list[StoredFinding]:
        """The review queue across photos: unreviewed first, then lowest margin (top-1 minus top-2) first."""
        where, params = self._finding_filters(object_type, class_name, condition, model_version, reviewer)
        rows = self._rows(
            f"SELECT * FROM ({_FINDINGS_SQL}) WHERE {where} "
            "ORDER BY (status = :reviewed), COALESCE(margin, 1.0), finding_id LIMIT :limit",
            {**params, "reviewed": Status.REVIEWED.value, "limit": limit})
        return [StoredFinding.from_row(r) for r in rows]

    def photo_queue(self, object_type: str | None = None, class_name: str | None = None, condition: str | None = None,
                    model_version: str | None = None, reviewer: str | None = None, limit: int = 200) -> list[PhotoQueueRow]:
        """The review queue photo by photo.

        A photo is listed when any of its live findings matches every given filter (as in
        ``queue``); its numbers are over all its findings. Order: photos with pending objects,
        then photos that only need confirming, then done ones; within each, most expected errors
        first (``PhotoQueueRow.expected_errors``), then lowest pending margin, then upload order.
        """
        where, params = self._finding_filters(object_type, class_name, condition, model_version, reviewer)
        rows = self._rows(
            f"SELECT g.*, p.original_name, p.path, st.min_margin, st.min_detector_confidence, st.expected_errors "
            f"FROM ({_progress_sql()}) g JOIN photos p ON p.id = g.photo_id JOIN ("
            "SELECT f.photo_id, MIN(CASE WHEN s.status = :pending THEN f.margin END) AS min_margin, "
            "MIN(CASE WHEN s.status = :pending THEN f.detector_confidence END) AS min_detector_confidence, "
            # Chance a pending model object is wrong: its box is not real, or its class is not right
            # (calibrated p_real where the detector has a calibration, else its raw score).
            "TOTAL(CASE WHEN s.status = :pending AND f.source = 'model' "
            "THEN 1 - COALESCE(f.box_probability, f.detector_confidence, 1) * f.confidence END) AS expected_errors "
            "FROM findings f JOIN finding_state s ON s.finding_id = f.id GROUP BY f.photo_id) st ON st.photo_id = g.photo_id "
            f"WHERE g.photo_id IN (SELECT photo_id FROM ({_FINDINGS_SQL}) WHERE {where}) "
            "ORDER BY CASE WHEN g.done THEN 2 WHEN g.n_pending > 0 THEN 0 ELSE 1 END, "
            "st.expected_errors DESC, st.min_margin IS NULL, st.min_margin, g.photo_id "
            "LIMIT :limit", {**params, **_STATUS, "limit": limit})
        return [PhotoQueueRow.from_row(r) for r in rows]

    def dashboard(self) -> dict:
        """Counts for the dashboard: by class and condition, reviewed vs pending, per reviewer, nightly runs."""
        by_class = {r["class_name"]: r["n"] for r in self.query(
            "SELECT class_name, count(*) AS n FROM finding_state WHERE status != ? GROUP BY class_name", (Status.DELETED.value,))}
        by_condition: dict[str, int] = {}
        for name, n in by_class.items():
            cond = self.taxonomy.condition_key(name)
            by_condition[cond] = by_condition.get(cond, 0) + n
        status = {r["status"]: r["n"] for r in self.query("SELECT status, count(*) AS n FROM finding_state GROUP BY status")}
        reviewers = {r["reviewer"]: r["n"] for r in self.query("SELECT reviewer, count(*) AS n FROM corrections GROUP BY reviewer")}
        runs = self.query("SELECT started_at, stage, decision, candidate_version, duration_s, candidate_metrics_json, current_metrics_json, "
                          "reasons_json FROM training_runs ORDER BY started_at DESC LIMIT 20")
        return {"by_class": by_class, "by_condition": by_condition, "status": status, "corrections_per_reviewer": reviewers,
                "training_runs": runs, "kinds": self.correction_kinds()}

    def correction_kinds(self, since: float = 0.0) -> dict:
        """Corrections by kind (what they indict) after ``since``: in all, per model version, per ISO week."""
        # A box correction indicts the detector run that produced the photo's boxes (for a drawn
        # box, the photo's latest run: the detector that missed it); other kinds the stage-2 model.
        stage1 = sorted(k.value for k in STAGE1)
        rows = self._rows(
            "SELECT c.kind, COALESCE(CASE WHEN c.kind IN (" + ",".join("?" * len(stage1)) + ") THEN COALESCE(r.detector_version, "
            "(SELECT lr.detector_version FROM inference_runs lr WHERE lr.photo_id = f.photo_id ORDER BY lr.id DESC LIMIT 1)) "
            "ELSE c.model_version END, 'drawn by a reviewer') AS model, "
            "strftime('%Y-W%W', c.created_at, 'unixepoch') AS week, count(*) AS n "
            "FROM corrections c JOIN findings f ON f.id = c.finding_id LEFT JOIN inference_runs r ON r.id = f.run_id "
            "WHERE c.created_at > ? GROUP BY c.kind, model, week", (*stage1, since))
        out: dict = {"total": {}, "by_model": {}, "by_week": {}}
        for r in rows:
            for key, group in (("total", None), ("by_model", r["model"]), ("by_week", r["week"])):
                bucket = out[key] if group is None else out[key].setdefault(group, {})
                bucket[r["kind"]] = bucket.get(r["kind"], 0) + r["n"]
        return out

    def history(self, finding_id: int) -> list[Correction]:
        return [Correction.from_row(r) for r in self._rows("SELECT * FROM corrections WHERE finding_id = ? ORDER BY revision",
                                                           (check_id(finding_id, "finding"),))]

    def corrections_since(self, t: float, kinds=None) -> int:
        """How many corrections were made after time ``t`` (what is new to a model cut at ``t``);
        with ``kinds``, only corrections of those kinds (``core.attribution.Kind``)."""
        if kinds is None:
            return self._rows("SELECT count(*) AS n FROM corrections WHERE created_at > ?", (t,))[0]["n"]
        kinds = sorted(str(k) for k in kinds)
        marks = ",".join("?" * len(kinds))
        return self._rows(f"SELECT count(*) AS n FROM corrections WHERE created_at > ? AND kind IN ({marks})", (t, *kinds))[0]["n"]

    def confirmations_since(self, t: float) -> int:
        """How many times a reviewer marked a photo done after time ``t`` (new complete labels)."""
        return self._rows("SELECT count(*) AS n FROM photo_reviews WHERE created_at > ?", (t,))[0]["n"]

    def record_training_run(self, started_at: float, data_hash: str, counts: dict, candidate_metrics: dict, current_metrics: dict,
                            decision: str, candidate_version: str, duration_s: float, stage: str = "classifier",
                            reasons: Sequence[str] = ()) -> int:
        """Append one nightly run's record for one stage, with the gate's reasons (shown on the dashboard)."""
        with self.write() as conn:
            return _insert(conn, "training_runs", {
                "started_at": started_at, "finished_at": time.time(), "data_hash": data_hash, "counts_json": json.dumps(counts),
                "candidate_metrics_json": json.dumps(candidate_metrics), "current_metrics_json": json.dumps(current_metrics),
                "decision": decision, "candidate_version": candidate_version, "duration_s": duration_s, "stage": stage,
                "reasons_json": json.dumps(list(reasons))})

    # --- library embeddings ----------------------------------------------------------------
    def save_vectors(self, kind: str, model: str, rows) -> int:
        """Upsert ``(ref_id, source_hash, vector)`` rows of one kind and model; returns how many."""
        now, n = time.time(), 0
        with self.write() as conn:
            for ref_id, source_hash, vector in rows:
                v = np.asarray(vector, dtype=np.float32)
                conn.execute("INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?,?,?,?)",
                             (kind, int(ref_id), model, source_hash, v.shape[0], v.tobytes(), now))
                n += 1
        return n

    def load_vectors(self, kind: str, model: str) -> tuple[list[int], np.ndarray]:
        """Every stored vector of one kind and model: ``(ref_ids, matrix)``."""
        rows = self._rows("SELECT ref_id, dim, vector FROM embeddings WHERE kind = ? AND model = ? ORDER BY ref_id", (kind, model))
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [r["ref_id"] for r in rows], np.stack([np.frombuffer(r["vector"], np.float32, r["dim"]) for r in rows])

    def vector_hashes(self, kind: str, model: str) -> dict[int, str]:
        """``{ref_id: source_hash}`` of what is embedded: a changed hash means re-embed."""
        return {r["ref_id"]: r["source_hash"] for r in self._rows(
            "SELECT ref_id, source_hash FROM embeddings WHERE kind = ? AND model = ?", (kind, model))}

    def integrity_ok(self) -> bool:
        return self.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"


def snapshot(db_path: str | Path, out: str | Path) -> Path:
    """A consistent copy of a live database for a long reader (the nightly job).

    ``VACUUM INTO`` a temporary file, check its integrity, then rename: reviewers keep
    writing meanwhile, and a damaged copy is never used.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(str(db_path), timeout=30)
    try:
        src.execute("VACUUM INTO ?", (str(tmp),))
    finally:
        src.close()
    check = sqlite3.connect(str(tmp))
    try:
        result = check.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        check.close()
    if result != "ok":
        tmp.unlink(missing_ok=True)
        raise SlopewatchError(f"snapshot of {db_path}: expected integrity 'ok', found {result!r}")
    os.replace(tmp, out)
    return out
