"""SQL the store's parts share: the findings view, per-photo progress and a by-name INSERT."""

from __future__ import annotations

import sqlite3

from core.types import Status

# The current state of findings joined with their model output; ``idx`` numbers the findings of
# each photo in detection order (the "#k" shown everywhere).
FINDINGS_SQL = (
    "SELECT s.*, f.photo_id, f.class_name AS model_class, f.confidence, f.margin, f.detector_confidence, f.model_version, "
    "f.probabilities_json, f.box_probability, f.rationale AS model_rationale, f.source = 'reviewer' AS drawn, "
    "f.x1 AS model_x1, f.y1 AS model_y1, f.x2 AS model_x2, f.y2 AS model_y2, "
    "ROW_NUMBER() OVER (PARTITION BY f.photo_id ORDER BY s.finding_id) - 1 AS idx "
    "FROM finding_state s JOIN findings f ON f.id = s.finding_id"
)


# Whether correction ``c`` was undone (an undo row points at it): such a correction no longer
# stands, teaches nothing and indicts no model.
UNDONE_SQL = "EXISTS (SELECT 1 FROM corrections u WHERE u.undoes = c.id)"


# Whether correction ``c`` drew a box that is deleted now (a reviewer drew it and took it back):
# the detector missed nothing there.
RETRACTED_ADD_SQL = ("(c.action = 'add' AND EXISTS (SELECT 1 FROM finding_state rs WHERE rs.finding_id = c.finding_id "
                     f"AND rs.status = '{Status.DELETED.value}'))")


def progress_sql(where: str = "") -> str:
    """Per-photo review progress (``PhotoProgress`` columns plus ``last_confirmer``), one row per photo.

    Parameters ``:pending``, ``:reviewed`` and ``:deleted`` are the status values (``STATUS``).
    Done: nothing live is pending, and the latest confirmation is no older than the latest
    correction on any of the photo's findings (an edit after confirming reopens the photo; a note
    changes no label, so it does not).
    """
    return (
        "SELECT *, (n_pending = 0 AND last_confirmed IS NOT NULL AND last_confirmed >= COALESCE(last_edit, last_confirmed)) AS done "
        "FROM (SELECT p.id AS photo_id, "
        "COUNT(CASE WHEN s.status != :deleted THEN 1 END) AS n_objects, "
        "COUNT(CASE WHEN s.status = :pending THEN 1 END) AS n_pending, "
        "COUNT(CASE WHEN s.status = :reviewed THEN 1 END) AS n_reviewed, "
        "COUNT(CASE WHEN s.status = :deleted THEN 1 END) AS n_deleted, "
        "(SELECT MAX(c.created_at) FROM corrections c JOIN findings cf ON cf.id = c.finding_id "
        "WHERE cf.photo_id = p.id AND c.action != 'note') AS last_edit, "
        "(SELECT MAX(r.created_at) FROM photo_reviews r WHERE r.photo_id = p.id) AS last_confirmed, "
        "(SELECT r.reviewer FROM photo_reviews r WHERE r.photo_id = p.id ORDER BY r.created_at DESC, r.id DESC LIMIT 1) AS last_confirmer "
        "FROM photos p LEFT JOIN findings f ON f.photo_id = p.id LEFT JOIN finding_state s ON s.finding_id = f.id "
        f"{where} GROUP BY p.id)"
    )


STATUS = {"pending": Status.PENDING.value, "reviewed": Status.REVIEWED.value, "deleted": Status.DELETED.value}


def insert(conn: sqlite3.Connection, table: str, row: dict) -> int:
    """INSERT by column name; returns the new rowid. (sqlite-utils' insert would commit the
    caller's BEGIN IMMEDIATE transaction through ``with conn:``, so it is not used for writes.)"""
    cols = ", ".join(row)
    return conn.execute(f"INSERT INTO {table}({cols}) VALUES ({', '.join(':' + k for k in row)})", row).lastrowid
