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
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import SlopewatchError
from core.paths import data_dir
from core.taxonomy import Taxonomy
from core.types import Box, Finding, Status
from db.migrations import migrate
from db.rows import Correction, FindingState, PhotoRecord, ReviewedPhoto, StoredFinding

ACTIONS = ("accept", "relabel", "retype", "delete", "add", "edit_box", "edit_rationale", "note")


class StaleEdit(SlopewatchError):
    """The finding changed since the reviewer loaded it; ``current`` is its state now."""

    def __init__(self, finding_id: int, expected: int, current: FindingState):
        self.current = current
        super().__init__(f"finding {finding_id} changed: expected revision {expected}, found {current.revision} "
                         f"(now {current.class_name!r}, by {current.updated_by})")


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


# The current state of findings joined with their model output; ``idx`` numbers the findings of
# each photo in detection order (the "#k" shown everywhere).
_FINDINGS_SQL = (
    "SELECT s.*, f.photo_id, f.class_name AS model_class, f.confidence, f.margin, f.detector_confidence, f.model_version, "
    "ROW_NUMBER() OVER (PARTITION BY f.photo_id ORDER BY s.finding_id) - 1 AS idx "
    "FROM finding_state s JOIN findings f ON f.id = s.finding_id"
)


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
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(name, display_name, created_at) VALUES (?, ?, ?)", (name, display_name or name, time.time()))

    def add_photo(self, sha256: str, path: str, width: int, height: int, original_name: str | None, uploaded_by: str | None) -> tuple[PhotoRecord, bool]:
        """Insert a photo by content hash; returns ``(record, created)``: the same bytes twice give one photo."""
        with self.write() as conn:
            row = conn.execute("SELECT * FROM photos WHERE sha256 = ?", (sha256,)).fetchone()
            if row:
                return PhotoRecord.from_row(row), False
            pid = _insert(conn, "photos", {"sha256": sha256, "path": path, "width": width, "height": height,
                                           "original_name": original_name, "uploaded_by": uploaded_by, "uploaded_at": time.time()})
            return PhotoRecord(pid, sha256, path, width, height, original_name), True

    def photo(self, photo_id: int) -> PhotoRecord:
        rows = self._rows("SELECT * FROM photos WHERE id = ?", (photo_id,))
        if not rows:
            raise SlopewatchError(f"no photo with id {photo_id}")
        return PhotoRecord.from_row(rows[0])

    def photos(self) -> list[PhotoRecord]:
        """Every stored photo, oldest first."""
        return [PhotoRecord.from_row(r) for r in self._rows("SELECT * FROM photos ORDER BY id")]

    def has_findings(self, photo_id: int) -> bool:
        """Whether the pipeline (or a reviewer) has stored any finding on the photo."""
        return bool(self._rows("SELECT 1 FROM findings WHERE photo_id = ? LIMIT 1", (photo_id,)))

    def photo_of(self, finding_id: int) -> int:
        """The id of the photo a finding is on."""
        rows = self._rows("SELECT photo_id FROM findings WHERE id = ?", (finding_id,))
        if not rows:
            raise InvalidEdit(f"no finding with id {finding_id}")
        return rows[0]["photo_id"]

    # --- model output --------------------------------------------------------------------
    def add_run(self, photo_id: int, findings: list[Finding], detector_version: str, classifier_version: str | None, seconds: float) -> list[int]:
        """Store one pipeline run's findings (immutable) and their initial state; returns finding ids."""
        now = time.time()
        ids = []
        with self.write() as conn:
            run = _insert(conn, "inference_runs", {"photo_id": photo_id, "detector_version": detector_version,
                                                    "classifier_version": classifier_version, "seconds": seconds, "created_at": now})
            for f in findings:
                b = f.detection.box
                fid = _insert(conn, "findings", {
                    "photo_id": photo_id, "run_id": run, "object_type": f.detection.type, "class_name": f.class_name,
                    "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "detector_confidence": f.detection.confidence,
                    "confidence": f.confidence, "margin": f.margin, "probabilities_json": json.dumps(f.probabilities),
                    "rationale": f.rationale, "model_version": f"{f.backend}:{f.version}", "source": "model", "created_at": now})
                state = FindingState(fid, f.detection.type, f.class_name, b.x1, b.y1, b.x2, b.y2, f.rationale, None,
                                     Status.PENDING, 0, now, None)
                _insert(conn, "finding_state", state.to_json())
                ids.append(fid)
        return ids

    # --- review --------------------------------------------------------------------------
    def state(self, finding_id: int) -> FindingState:
        rows = self._rows("SELECT * FROM finding_state WHERE finding_id = ?", (finding_id,))
        if not rows:
            raise InvalidEdit(f"no finding with id {finding_id}")
        return FindingState.from_row(rows[0])

    def photo_findings(self, photo_id: int) -> list[StoredFinding]:
        """All findings of one photo (deleted ones too), in detection order."""
        return [StoredFinding.from_row(r) for r in self._rows(
            f"SELECT * FROM ({_FINDINGS_SQL}) WHERE photo_id = ? ORDER BY finding_id", (photo_id,))]

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
            before = FindingState.from_row(row)
            if before.revision != expected_revision:
                raise StaleEdit(finding_id, expected_revision, before)
            after = self._apply(before.to_json(), action, changes)
            after.update(revision=before.revision + 1, updated_at=time.time(), updated_by=reviewer)
            model_version = conn.execute("SELECT model_version FROM findings WHERE id = ?", (finding_id,)).fetchone()[0]
            _insert(conn, "corrections", {"finding_id": finding_id, "reviewer": reviewer, "action": action,
                                          "before_json": json.dumps(before.to_json()), "after_json": json.dumps(after),
                                          "model_version": model_version, "revision": after["revision"], "created_at": after["updated_at"]})
            cols = ", ".join(f"{k} = :{k}" for k in after if k != "finding_id")
            conn.execute(f"UPDATE finding_state SET {cols} WHERE finding_id = :finding_id", after)
            return FindingState.from_row(after)

    def _apply(self, before: dict, action: str, changes: dict) -> dict:
        after = dict(before)
        tax = self.taxonomy
        if action == "delete":
            after["status"] = Status.DELETED.value
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
        after["status"] = Status.REVIEWED.value
        return after

    def add_missed(self, photo_id: int, reviewer: str, box: Box, class_name: str, rationale: str = "") -> FindingState:
        """A box the detector missed, drawn by a reviewer: a reviewer-sourced finding plus its 'add' correction."""
        cls = self.taxonomy.get_class(class_name)
        now = time.time()
        with self.write() as conn:
            fid = _insert(conn, "findings", {"photo_id": photo_id, "object_type": cls.type, "class_name": class_name,
                                             "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2, "rationale": rationale,
                                             "source": "reviewer", "created_at": now})
            state = FindingState(fid, cls.type, class_name, box.x1, box.y1, box.x2, box.y2, rationale, None, Status.REVIEWED, 1, now, reviewer)
            _insert(conn, "finding_state", state.to_json())
            _insert(conn, "corrections", {"finding_id": fid, "reviewer": reviewer, "action": "add", "before_json": "{}",
                                          "after_json": json.dumps(state.to_json()), "model_version": None, "revision": 1,
                                          "created_at": now})
            return state

    def queue(self, object_type: str | None = None, class_name: str | None = None, condition: str | None = None,
              model_version: str | None = None, reviewer: str | None = None, limit: int = 200) -> list[StoredFinding]:
        """The review queue across photos: unreviewed first, then lowest margin (top-1 minus top-2) first."""
        where, params = ["status != ?"], [Status.DELETED.value]
        for column, value in (("object_type", object_type), ("class_name", class_name), ("model_version", model_version),
                              ("updated_by", reviewer)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if condition:
            names = [c.name for c in self.taxonomy.classes if self.taxonomy.condition_key(c.name) == condition]
            where.append(f"class_name IN ({','.join('?' * len(names)) or 'NULL'})")
            params += names
        rows = self._rows(
            f"SELECT * FROM ({_FINDINGS_SQL}) WHERE {' AND '.join(where)} "
            "ORDER BY (status = ?), COALESCE(margin, 1.0), finding_id LIMIT ?", (*params, Status.REVIEWED.value, limit))
        return [StoredFinding.from_row(r) for r in rows]

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
        runs = self.query("SELECT started_at, decision, candidate_version, duration_s, candidate_metrics_json, current_metrics_json "
                          "FROM training_runs ORDER BY started_at DESC LIMIT 20")
        return {"by_class": by_class, "by_condition": by_condition, "status": status, "corrections_per_reviewer": reviewers,
                "training_runs": runs}

    def history(self, finding_id: int) -> list[Correction]:
        return [Correction.from_row(r) for r in self._rows("SELECT * FROM corrections WHERE finding_id = ? ORDER BY revision", (finding_id,))]

    def corrections_since(self, t: float) -> int:
        """How many corrections were made after time ``t`` (what is new to a model cut at ``t``)."""
        return self._rows("SELECT count(*) AS n FROM corrections WHERE created_at > ?", (t,))[0]["n"]

    def record_training_run(self, started_at: float, data_hash: str, counts: dict, candidate_metrics: dict, current_metrics: dict,
                            decision: str, candidate_version: str, duration_s: float) -> int:
        """Append one nightly run's record (shown on the dashboard)."""
        with self.write() as conn:
            return _insert(conn, "training_runs", {
                "started_at": started_at, "finished_at": time.time(), "data_hash": data_hash, "counts_json": json.dumps(counts),
                "candidate_metrics_json": json.dumps(candidate_metrics), "current_metrics_json": json.dumps(current_metrics),
                "decision": decision, "candidate_version": candidate_version, "duration_s": duration_s})

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
