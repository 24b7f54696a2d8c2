"""The review store: photos, model findings and reviewers' corrections in one SQLite file.

Corrections are precious and writes are few, so: WAL with ``synchronous=FULL``, a busy
timeout, one connection per thread, and every read-then-write in ``BEGIN IMMEDIATE`` (a
deferred ``BEGIN`` can fail with SQLITE_BUSY at once, ignoring the timeout). Each edit is an
appended correction row; the finding's current state carries a revision, and an edit made
against a stale revision is refused with the state the reviewer did not see.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlite_utils

from core.errors import SlopewatchError
from core.paths import data_dir
from core.taxonomy import Taxonomy
from core.types import Box, Finding
from db.migrations import migrate

ACTIONS = ("accept", "relabel", "retype", "delete", "add", "edit_box", "edit_rationale", "note")


class StaleEdit(SlopewatchError):
    """The finding changed since the reviewer loaded it; ``current`` is its state now."""

    def __init__(self, finding_id: int, expected: int, current: dict):
        self.current = current
        super().__init__(f"finding {finding_id} changed: expected revision {expected}, found {current['revision']} "
                         f"(now {current['class_name']!r}, by {current['updated_by']})")


class InvalidEdit(SlopewatchError):
    """An edit that does not fit the taxonomy or the finding."""


def wal_reset_bug(version: str = sqlite3.sqlite_version) -> bool:
    """Whether this SQLite has the WAL-reset corruption bug with concurrent writers
    (3.7.0 to 3.51.2, fixed in 3.51.3, 3.50.7 and 3.44.6)."""
    v = tuple(int(x) for x in version.split(".")[:3])
    if v < (3, 7, 0) or v >= (3, 51, 3):
        return False
    return not ((3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0))


def default_db_path() -> Path:
    return data_dir() / "slopewatch.db"


@dataclass(frozen=True)
class PhotoRecord:
    id: int
    sha256: str
    path: str
    width: int
    height: int


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

    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view on this thread's connection, for queries."""
        with self._connection() as conn:
            return sqlite_utils.Database(conn)

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        with self._connection() as conn:
            return [dict(r) for r in conn.execute(sql, params)]

    # --- users and photos ----------------------------------------------------------------
    def ensure_user(self, name: str, display_name: str | None = None) -> None:
        if not name:
            raise InvalidEdit("expected a reviewer name, found an empty one")
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(name, display_name, created_at) VALUES (?, ?, ?)", (name, display_name or name, time.time()))

    def add_photo(self, sha256: str, path: str, width: int, height: int, original_name: str | None, uploaded_by: str | None) -> tuple[PhotoRecord, bool]:
        """Insert a photo by content hash; returns ``(record, created)``: the same bytes twice give one photo."""
        with self.write() as conn:
            row = conn.execute("SELECT * FROM photos WHERE sha256 = ?", (sha256,)).fetchone()
            if row:
                return PhotoRecord(row["id"], row["sha256"], row["path"], row["width"], row["height"]), False
            cur = conn.execute(
                "INSERT INTO photos(sha256, path, width, height, original_name, uploaded_by, uploaded_at) VALUES (?,?,?,?,?,?,?)",
                (sha256, path, width, height, original_name, uploaded_by, time.time()),
            )
            return PhotoRecord(cur.lastrowid, sha256, path, width, height), True

    def photo(self, photo_id: int) -> PhotoRecord:
        rows = self.query("SELECT * FROM photos WHERE id = ?", (photo_id,))
        if not rows:
            raise SlopewatchError(f"no photo with id {photo_id}")
        r = rows[0]
        return PhotoRecord(r["id"], r["sha256"], r["path"], r["width"], r["height"])

    # --- model output --------------------------------------------------------------------
    def add_run(self, photo_id: int, findings: list[Finding], detector_version: str, classifier_version: str | None, seconds: float) -> list[int]:
        """Store one pipeline run's findings (immutable) and their initial state; returns finding ids."""
        now = time.time()
        ids = []
        with self.write() as conn:
            run = conn.execute(
                "INSERT INTO inference_runs(photo_id, detector_version, classifier_version, seconds, created_at) VALUES (?,?,?,?,?)",
                (photo_id, detector_version, classifier_version, seconds, now),
            ).lastrowid
            for f in findings:
                b = f.detection.box
                fid = conn.execute(
                    "INSERT INTO findings(photo_id, run_id, object_type, class_name, x1, y1, x2, y2, detector_confidence, confidence,"
                    " margin, probabilities_json, rationale, model_version, source, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,'model',?)",
                    (photo_id, run, f.detection.type, f.class_name, b.x1, b.y1, b.x2, b.y2, f.detection.confidence, f.confidence,
                     f.margin, json.dumps(f.probabilities), f.rationale, f"{f.backend}:{f.version}", now),
                ).lastrowid
                conn.execute(
                    "INSERT INTO finding_state VALUES (?,?,?,?,?,?,?,?,NULL,'pending',0,?,NULL)",
                    (fid, f.detection.type, f.class_name, b.x1, b.y1, b.x2, b.y2, f.rationale, now),
                )
                ids.append(fid)
        return ids

    # --- review --------------------------------------------------------------------------
    def state(self, finding_id: int) -> dict:
        rows = self.query("SELECT * FROM finding_state WHERE finding_id = ?", (finding_id,))
        if not rows:
            raise InvalidEdit(f"no finding with id {finding_id}")
        return rows[0]

    def correct(self, finding_id: int, expected_revision: int, reviewer: str, action: str, **changes) -> dict:
        """Apply one reviewer action atomically; returns the new state.

        Args:
            finding_id: the finding to change.
            expected_revision: the revision the reviewer saw; a different current one raises StaleEdit.
            reviewer: who acts (must exist in users).
            action: one of ACTIONS.
            **changes: ``class_name``, ``object_type``, ``box`` (a Box), ``rationale`` or ``note``.
        """
        if action not in ACTIONS or action == "add":
            raise InvalidEdit(f"expected an action among {[a for a in ACTIONS if a != 'add']}, found {action!r}")
        with self.write() as conn:
            row = conn.execute("SELECT * FROM finding_state WHERE finding_id = ?", (finding_id,)).fetchone()
            if row is None:
                raise InvalidEdit(f"no finding with id {finding_id}")
            before = dict(row)
            if before["revision"] != expected_revision:
                raise StaleEdit(finding_id, expected_revision, before)
            after = self._apply(before, action, changes)
            after.update(revision=before["revision"] + 1, updated_at=time.time(), updated_by=reviewer)
            model_version = conn.execute("SELECT model_version FROM findings WHERE id = ?", (finding_id,)).fetchone()[0]
            conn.execute(
                "INSERT INTO corrections(finding_id, reviewer, action, before_json, after_json, model_version, revision, created_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (finding_id, reviewer, action, json.dumps(before), json.dumps(after), model_version, after["revision"], after["updated_at"]),
            )
            cols = ", ".join(f"{k} = :{k}" for k in after if k != "finding_id")
            conn.execute(f"UPDATE finding_state SET {cols} WHERE finding_id = :finding_id", after)
            return after

    def _apply(self, before: dict, action: str, changes: dict) -> dict:
        after = dict(before)
        tax = self.taxonomy
        if action == "delete":
            after["status"] = "deleted"
            return after
        if action in ("relabel", "retype"):
            new_type = changes.get("object_type", before["object_type"]) if action == "retype" else before["object_type"]
            new_class = changes.get("class_name")
            if new_class is None:
                candidates = tax.classes_for_type(new_type)
                if len(candidates) != 1:
                    raise InvalidEdit(f"type {new_type!r} has several classes; expected class_name among {[c.name for c in candidates]}")
                new_class = candidates[0].name
            if tax.get_class(new_class).type != new_type:
                raise InvalidEdit(f"class {new_class!r} is not a {new_type!r}; expected one of {[c.name for c in tax.classes_for_type(new_type)]}")
            after.update(object_type=new_type, class_name=new_class)
        elif action == "edit_box":
            box = changes.get("box")
            if not isinstance(box, Box) or box.area <= 0:
                raise InvalidEdit(f"expected a non-empty Box, found {box!r}")
            after.update(x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2)
        elif action == "edit_rationale":
            after["rationale"] = str(changes.get("rationale", ""))
        elif action == "note":
            after["note"] = str(changes.get("note", ""))
        after["status"] = "reviewed"
        return after

    def add_missed(self, photo_id: int, reviewer: str, box: Box, class_name: str, rationale: str = "") -> dict:
        """A box the detector missed, drawn by a reviewer: a reviewer-sourced finding plus its 'add' correction."""
        cls = self.taxonomy.get_class(class_name)
        now = time.time()
        with self.write() as conn:
            fid = conn.execute(
                "INSERT INTO findings(photo_id, object_type, class_name, x1, y1, x2, y2, rationale, source, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,'reviewer',?)",
                (photo_id, cls.type, class_name, box.x1, box.y1, box.x2, box.y2, rationale, now),
            ).lastrowid
            state = {"finding_id": fid, "object_type": cls.type, "class_name": class_name, "x1": box.x1, "y1": box.y1,
                     "x2": box.x2, "y2": box.y2, "rationale": rationale, "note": None, "status": "reviewed",
                     "revision": 1, "updated_at": now, "updated_by": reviewer}
            conn.execute("INSERT INTO finding_state VALUES (:finding_id,:object_type,:class_name,:x1,:y1,:x2,:y2,:rationale,:note,"
                         ":status,:revision,:updated_at,:updated_by)", state)
            conn.execute(
                "INSERT INTO corrections(finding_id, reviewer, action, before_json, after_json, model_version, revision, created_at)"
                " VALUES (?,?,'add','{}',?,NULL,1,?)",
                (fid, reviewer, json.dumps(state), now),
            )
            return state

    def queue(self, object_type: str | None = None, class_name: str | None = None, condition: str | None = None,
              model_version: str | None = None, reviewer: str | None = None, limit: int = 200) -> list[dict]:
        """The review queue across photos: unreviewed first, then lowest margin (top-1 minus top-2) first."""
        where, params = ["s.status != 'deleted'"], []
        if object_type:
            where.append("s.object_type = ?")
            params.append(object_type)
        if class_name:
            where.append("s.class_name = ?")
            params.append(class_name)
        if condition:
            names = [c.name for c in self.taxonomy.classes if (c.condition or "none") == condition]
            where.append(f"s.class_name IN ({','.join('?' * len(names)) or 'NULL'})")
            params += names
        if model_version:
            where.append("f.model_version = ?")
            params.append(model_version)
        if reviewer:
            where.append("s.updated_by = ?")
            params.append(reviewer)
        return self.query(
            "SELECT s.*, f.photo_id, f.margin, f.confidence, f.model_version, f.class_name AS model_class FROM finding_state s "
            f"JOIN findings f ON f.id = s.finding_id WHERE {' AND '.join(where)} "
            "ORDER BY (s.status = 'reviewed'), COALESCE(f.margin, 1.0), s.finding_id LIMIT ?",
            (*params, limit),
        )

    def dashboard(self) -> dict:
        """Counts for the dashboard: by class and condition, reviewed vs pending, per reviewer, nightly runs."""
        by_class = {r["class_name"]: r["n"] for r in self.query(
            "SELECT class_name, count(*) AS n FROM finding_state WHERE status != 'deleted' GROUP BY class_name")}
        by_condition: dict[str, int] = {}
        for name, n in by_class.items():
            cond = (self.taxonomy.get_class(name).condition or "none") if name else "unlabelled"
            by_condition[cond] = by_condition.get(cond, 0) + n
        status = {r["status"]: r["n"] for r in self.query("SELECT status, count(*) AS n FROM finding_state GROUP BY status")}
        reviewers = {r["reviewer"]: r["n"] for r in self.query("SELECT reviewer, count(*) AS n FROM corrections GROUP BY reviewer")}
        runs = self.query("SELECT started_at, decision, candidate_version, duration_s, candidate_metrics_json, current_metrics_json "
                          "FROM training_runs ORDER BY started_at DESC LIMIT 20")
        return {"by_class": by_class, "by_condition": by_condition, "status": status, "corrections_per_reviewer": reviewers,
                "training_runs": runs}

    def history(self, finding_id: int) -> list[dict]:
        return self.query("SELECT * FROM corrections WHERE finding_id = ? ORDER BY revision", (finding_id,))

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
