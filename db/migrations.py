"""The SQLite schema, built by numbered migrations. Append new ones; never edit an applied one.

Each migration is a tuple of single statements, run in one transaction (``executescript``
would commit the transaction it runs in, and splitting a script on ``;`` breaks on literals). A
statement may instead be a function of the connection, where the rule it applies lives in Python
(migration 11 re-derives correction kinds with ``core.attribution``'s own rule).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Callable

from core.attribution import Kind, attribute


def _rekind_revisions(conn: sqlite3.Connection) -> None:
    """Migration 11: re-derive, by ``core.attribution``'s own rule, which kinded rows changed a reviewer's decision."""
    rows = conn.execute(
        "SELECT c.id, c.action, c.before_json, c.after_json, f.object_type, f.class_name, f.x1, f.y1, f.x2, f.y2, f.rationale "
        "FROM corrections c JOIN findings f ON f.id = c.finding_id "
        "WHERE f.source = 'model' AND c.kind IN ('type_error', 'condition_error', 'localisation', 'rationale')").fetchall()
    for cid, action, before, after, *output in rows:
        model = dict(zip(("object_type", "class_name", "x1", "y1", "x2", "y2", "rationale"), output))
        if attribute(action, json.loads(before), json.loads(after), model=model) is Kind.REVISION:
            conn.execute("UPDATE corrections SET kind = ? WHERE id = ?", (Kind.REVISION.value, cid))


MIGRATIONS: list[tuple[int, str, tuple[str | Callable[[sqlite3.Connection], None], ...]]] = [
    (1, "initial schema", (
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            display_name TEXT,
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE photos (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            original_name TEXT,
            uploaded_by TEXT REFERENCES users(name),
            uploaded_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE model_versions (
            id TEXT PRIMARY KEY,
            stage TEXT NOT NULL CHECK (stage IN ('detector', 'classifier')),
            backend TEXT NOT NULL,
            path TEXT,
            metrics_json TEXT,
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE inference_runs (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            detector_version TEXT NOT NULL,
            classifier_version TEXT,
            seconds REAL,
            created_at REAL NOT NULL
        )
        """,
        """
        -- Model output, never changed after insert. Reviewer edits live in corrections.
        CREATE TABLE findings (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            run_id INTEGER REFERENCES inference_runs(id),
            object_type TEXT NOT NULL,
            class_name TEXT,
            x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
            detector_confidence REAL,
            confidence REAL,
            margin REAL,
            probabilities_json TEXT,
            rationale TEXT,
            model_version TEXT,
            source TEXT NOT NULL CHECK (source IN ('model', 'reviewer')),
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE INDEX findings_photo ON findings(photo_id)
        """,
        """
        -- Append-only history: who changed what, when, from what, to what, on whose model output.
        CREATE TABLE corrections (
            id INTEGER PRIMARY KEY,
            finding_id INTEGER NOT NULL REFERENCES findings(id),
            reviewer TEXT NOT NULL REFERENCES users(name),
            action TEXT NOT NULL,
            before_json TEXT NOT NULL,
            after_json TEXT NOT NULL,
            model_version TEXT,
            revision INTEGER NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (finding_id, revision)
        )
        """,
        """
        CREATE INDEX corrections_finding ON corrections(finding_id)
        """,
        """
        -- Current state of each finding: a projection of findings + corrections, kept in the same
        -- transaction as each correction, with a revision number for optimistic concurrency.
        CREATE TABLE finding_state (
            finding_id INTEGER PRIMARY KEY REFERENCES findings(id),
            object_type TEXT NOT NULL,
            class_name TEXT,
            x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
            rationale TEXT,
            note TEXT,
            status TEXT NOT NULL CHECK (status IN ('pending', 'reviewed', 'deleted')),
            revision INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT
        )
        """,
        """
        CREATE TABLE training_runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            data_hash TEXT,
            counts_json TEXT,
            candidate_metrics_json TEXT,
            current_metrics_json TEXT,
            decision TEXT,
            candidate_version TEXT,
            duration_s REAL
        )
        """,
    )),
    (2, "library embeddings", (
        """
        -- One vector per (what, id, model). source_hash says what was embedded (photo bytes, box,
        -- finding text): a moved box or an edited rationale no longer matches and is re-embedded.
        CREATE TABLE embeddings (
            kind TEXT NOT NULL CHECK (kind IN ('photo', 'finding', 'finding_text')),
            ref_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            source_hash TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (kind, model, ref_id)
        )
        """,
    )),
    (3, "undo and photo confirmations", (
        """
        -- An undo is itself an appended correction naming the one it reverses (NULL on every other
        -- row), so history stays append-only and "already undone?" is one indexed lookup. The column
        -- must default to NULL: SQLite only adds a REFERENCES column to a table that way.
        ALTER TABLE corrections ADD COLUMN undoes INTEGER REFERENCES corrections(id)
        """,
        """
        -- UNIQUE: a correction is undone at most once, even if two undo requests race (NULLs do not clash).
        CREATE UNIQUE INDEX corrections_undoes ON corrections(undoes)
        """,
        """
        -- A reviewer's "this photo is done", appended on each confirmation. A photo counts as done
        -- only while its latest confirmation is no older than its latest correction.
        CREATE TABLE photo_reviews (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            reviewer TEXT NOT NULL REFERENCES users(name),
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE INDEX photo_reviews_photo ON photo_reviews(photo_id)
        """,
    )),
    (4, "original photo size", (
        """
        -- Large photos are downscaled to a working size on ingest: width/height stay the stored
        -- image's (every box lives in its pixels), these are the upload's, upright. sha256 was
        -- always the uploaded bytes' hash.
        ALTER TABLE photos ADD COLUMN original_width INTEGER
        """,
        """
        ALTER TABLE photos ADD COLUMN original_height INTEGER
        """,
        """
        -- Photos stored before this migration were never downscaled.
        UPDATE photos SET original_width = width, original_height = height
        """,
    )),
    (5, "correction kinds", (
        """
        -- What each correction indicts (core.attribution): detector kinds train stage 1,
        -- condition kinds stage 2. New rows get it from the store; old rows are backfilled here.
        ALTER TABLE corrections ADD COLUMN kind TEXT
        """,
        """
        -- Backfilled moves count as localisation: the "small nudge" IoU rule applies to new rows.
        UPDATE corrections SET kind = CASE action
            WHEN 'add' THEN 'detector_miss'
            WHEN 'delete' THEN 'detector_false_positive'
            WHEN 'edit_box' THEN 'localisation'
            WHEN 'edit_rationale' THEN 'rationale'
            WHEN 'accept' THEN 'accept'
            WHEN 'note' THEN 'note'
            WHEN 'undo' THEN 'undo'
            WHEN 'repair' THEN 'repair'
            ELSE CASE WHEN json_extract(after_json, '$.object_type') IS NOT NULL
                       AND json_extract(before_json, '$.object_type') IS NOT json_extract(after_json, '$.object_type')
                      THEN 'type_error' ELSE 'condition_error' END
        END
        """,
        """
        CREATE INDEX corrections_kind ON corrections(kind)
        """,
    )),
    (6, "nightly runs per stage", (
        """
        -- The nightly job retrains both stages; each stage's run is its own row. Older rows were stage 2's.
        ALTER TABLE training_runs ADD COLUMN stage TEXT NOT NULL DEFAULT 'classifier' CHECK (stage IN ('detector', 'classifier'))
        """,
    )),
    (7, "calibrated box probability", (
        """
        -- The calibrated chance a detected box is a real object (core.stage1.calibration); NULL for
        -- a detector without a calibration, and for boxes drawn by reviewers.
        ALTER TABLE findings ADD COLUMN box_probability REAL CHECK (box_probability IS NULL OR box_probability BETWEEN 0 AND 1)
        """,
    )),
    (8, "nightly gate reasons", (
        """
        -- Why the gate promoted or refused (a JSON list of its reasons), so a refusal is explained
        -- where operators look (the Dashboard), not only in the job's log. NULL for older runs.
        ALTER TABLE training_runs ADD COLUMN reasons_json TEXT
        """,
    )),
    (9, "revisions of drawn boxes", (
        """
        -- Moving, retyping, relabelling or deleting a box a reviewer drew is no model's error
        -- (core.attribution: 'revision'); rows written before this counted against the detector.
        UPDATE corrections SET kind = 'revision'
        WHERE action IN ('delete', 'edit_box', 'retype', 'relabel', 'edit_rationale')
          AND finding_id IN (SELECT id FROM findings WHERE source = 'reviewer')
        """,
    )),
    (10, "correction batches", (
        """
        -- Corrections one reviewer action wrote together (Accept all, Accept likely right) share a
        -- batch number, so one undo takes the whole action back. NULL: a single correction.
        ALTER TABLE corrections ADD COLUMN batch INTEGER
        """,
        """
        CREATE INDEX corrections_batch ON corrections(batch)
        """,
    )),
    (11, "revisions of reviewers' decisions", (
        # Changing a label, box or rationale a reviewer had already changed is no model's error
        # (core.attribution: 'revision'): the first change counted it, and rows written before
        # this counted it again. Re-derived by the store's own rule rather than restated in SQL.
        _rekind_revisions,
    )),
]


def applied_versions(conn: sqlite3.Connection) -> list[int]:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every pending migration, each in its own transaction. Returns the versions applied."""
    done = set(applied_versions(conn))
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:  # SQL, or a function of the connection where a rule lives in Python
                statement(conn) if callable(statement) else conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied
