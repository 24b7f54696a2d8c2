"""The review store: photos, model findings and reviewers' corrections in one SQLite file.

Corrections are precious and writes are few, so: WAL with ``synchronous=FULL``, a busy
timeout, one connection per thread, and every read-then-write in ``BEGIN IMMEDIATE`` (a
deferred ``BEGIN`` can fail with SQLITE_BUSY at once, ignoring the timeout). Each edit is an
appended correction row; the finding's current state carries a revision, and an edit made
against a stale revision is refused with the state the reviewer did not see. An undo is one more
appended correction (naming the one it reverses); a photo is done when a reviewer confirms it
with nothing pending, and stays done only until its next correction.
"""

import contextlib
import fcntl
import json
import numbers
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from core.errors import SlopewatchError
from core.paths import data_dir
from core.taxonomy import Taxonomy
from db.checks import InvalidEdit, NotFound, check_id, shown
from db.corrections import Corrections
from db.findings import Findings
from db.migrations import migrate
from db.progress import Progress
from db.rows import PhotoRecord
from db.sql import insert


def wal_reset_bug(version: str = sqlite3.sqlite_version) -> bool:
    """Whether this SQLite has the WAL-reset corruption bug with concurrent writers
    (3.7.0 to 3.51.2, fixed in 3.51.3, 3.50.7 and 3.44.6)."""
    v = tuple(int(x) for x in version.split(".")[:3])
    if v < (3, 7, 0) or v >= (3, 51, 3):
        return False
    return not ((3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0))


def default_db_path() -> Path:
    return data_dir() / "slopewatch.db"


class Store(Findings, Corrections, Progress):
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
                raise InvalidEdit(f"photo {what}: expected a positive integer, found {shown(v)}")
        with self.write() as conn:
            row = conn.execute("SELECT * FROM photos WHERE sha256 = ?", (sha256,)).fetchone()
            if row:
                return PhotoRecord.from_row(row), False
            pid = insert(conn, "photos", {"sha256": sha256, "path": path, "width": width, "height": height,
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

    def record_training_run(self, started_at: float, data_hash: str, counts: dict, candidate_metrics: dict, current_metrics: dict,
                            decision: str, candidate_version: str, duration_s: float, stage: str = "classifier",
                            reasons: Sequence[str] = ()) -> int:
        """Append one nightly run's record for one stage, with the gate's reasons (shown on the dashboard)."""
        with self.write() as conn:
            return insert(conn, "training_runs", {
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
