"""How review stands: a photo's progress, the review queues (by object and by photo, most
expected errors first), dashboard counts and corrections by the kind of error they indict.
Mixed into ``db.store.Store``, which supplies ``_rows()``, ``query()`` and ``taxonomy``."""

from __future__ import annotations

import datetime

from core.attribution import STAGE1, Kind
from core.types import LABELS_BACKEND, Status
from db.checks import NotFound, check_id
from db.rows import PhotoProgress, PhotoQueueRow, ReviewerActivity, StoredFinding, TrainingRun
from db.sql import FINDINGS_SQL, RETRACTED_ADD_SQL, STATUS, UNDONE_SQL, progress_sql

# A finding that is an imported label (``slopewatch import-labels``), with ``:labels`` its version prefix.
LABEL_SQL = "COALESCE(f.model_version, '') LIKE :labels"

# The Dashboard's "model" for corrections that indict none (a change to a reviewer's decision, a note, a repair).
NO_MODEL = "no model (reviewers' own changes)"


def iso_week(day: str) -> str:
    """``2026-W48`` for a ``YYYY-MM-DD`` day (UTC): the ISO week, which SQLite's ``%W`` is not
    (it counts from the first Monday, so it ran a week behind in 2026)."""
    year, week, _ = datetime.date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


class Progress:
    """``Store``'s review progress, queues and counts (see the module docstring)."""

    def photo_progress(self, photo_id: int) -> PhotoProgress:
        """Counts by status and whether the photo is done (see ``PhotoProgress``)."""
        rows = self._rows(progress_sql("WHERE p.id = :photo_id"), {**STATUS, "photo_id": check_id(photo_id, "photo")})
        if not rows:
            raise NotFound(f"expected a photo with id {photo_id}, found none")
        return PhotoProgress.from_row(rows[0])

    def _finding_filters(self, object_type: str | None, class_name: str | None, condition: str | None,
                         model_version: str | None, reviewer: str | None) -> tuple[str, dict]:
        """WHERE clause over ``FINDINGS_SQL`` rows: live findings matching every given filter."""
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

    def model_versions(self) -> list[str]:
        """The stage-2 versions of live findings, sorted: the queue's model filter matches exactly,
        and nobody could type ``ensemble:0f3a…``."""
        return self._distinct("model_version")

    def reviewers(self) -> list[str]:
        """Who last changed a live finding, sorted: the queue's reviewer filter matches exactly."""
        return self._distinct("updated_by")

    def _distinct(self, column: str) -> list[str]:
        return [r[column] for r in self._rows(f"SELECT DISTINCT {column} FROM ({FINDINGS_SQL}) WHERE status != :deleted "
                                              f"AND {column} IS NOT NULL ORDER BY {column}", {"deleted": Status.DELETED.value})]

    def queue(self, object_type: str | None = None, class_name: str | None = None, condition: str | None = None,
              model_version: str | None = None, reviewer: str | None = None, limit: int = 200) -> list[StoredFinding]:
        """The review queue across photos: unreviewed first, then lowest margin (top-1 minus top-2) first."""
        where, params = self._finding_filters(object_type, class_name, condition, model_version, reviewer)
        rows = self._rows(
            f"SELECT * FROM ({FINDINGS_SQL}) WHERE {where} "
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
            f"SELECT g.*, p.original_name, p.path, st.min_margin, st.min_detector_confidence, st.expected_errors, st.n_labels "
            f"FROM ({progress_sql()}) g JOIN photos p ON p.id = g.photo_id JOIN ("
            f"SELECT f.photo_id, MIN(CASE WHEN s.status = :pending AND NOT {LABEL_SQL} THEN f.margin END) AS min_margin, "
            f"MIN(CASE WHEN s.status = :pending AND NOT {LABEL_SQL} THEN f.detector_confidence END) AS min_detector_confidence, "
            # Chance a pending model object is wrong: its box is not real, or its class is not right
            # (calibrated p_real where the detector has a calibration, else its raw score).
            "TOTAL(CASE WHEN s.status = :pending AND f.source = 'model' "
            "THEN 1 - COALESCE(f.box_probability, f.detector_confidence, 1) * f.confidence END) AS expected_errors, "
            # Imported labels (a label-review photo): their scores are no model's certainty.
            f"TOTAL(s.status != :deleted AND {LABEL_SQL}) AS n_labels "
            "FROM findings f JOIN finding_state s ON s.finding_id = f.id GROUP BY f.photo_id) st ON st.photo_id = g.photo_id "
            f"WHERE g.photo_id IN (SELECT photo_id FROM ({FINDINGS_SQL}) WHERE {where}) "
            "ORDER BY CASE WHEN g.done THEN 2 WHEN g.n_pending > 0 THEN 0 ELSE 1 END, "
            "st.expected_errors DESC, st.min_margin IS NULL, st.min_margin, g.photo_id "
            "LIMIT :limit", {**params, **STATUS, "limit": limit, "labels": f"{LABELS_BACKEND}:%"})
        return [PhotoQueueRow.from_row(r) for r in rows]

    def dashboard(self) -> dict:
        """Counts for the dashboard: by class and condition, reviewed vs pending, per reviewer
        (``ReviewerActivity``), and the last 20 nightly runs (``TrainingRun``, newest first)."""
        by_class = {r["class_name"]: r["n"] for r in self.query(
            "SELECT class_name, count(*) AS n FROM finding_state WHERE status != ? GROUP BY class_name", (Status.DELETED.value,))}
        by_condition: dict[str, int] = {}
        for name, n in by_class.items():
            cond = self.taxonomy.condition_key(name)
            by_condition[cond] = by_condition.get(cond, 0) + n
        status = {r["status"]: r["n"] for r in self.query("SELECT status, count(*) AS n FROM finding_state GROUP BY status")}
        # Activity is not the same as errors found: an undone correction teaches and blames nothing.
        reviewers = {r.reviewer: r for r in map(ReviewerActivity.from_row, self._rows(
            "SELECT reviewer, sum(action != 'undo' AND NOT undone) AS standing, sum(action != 'undo' AND undone) AS undone, "
            # Undos as presses: one undo of an "Accept all" writes a row per object, and counted
            # by rows 3 presses read as 6 undos. The rows of one press undid one batch.
            "count(DISTINCT CASE WHEN action = 'undo' THEN COALESCE('batch ' || undid_batch, 'row ' || id) END) AS undos "
            f"FROM (SELECT c.id, c.reviewer, c.action, {UNDONE_SQL} AS undone, "
            "(SELECT t.batch FROM corrections t WHERE t.id = c.undoes) AS undid_batch FROM corrections c) "
            "GROUP BY reviewer"))}
        runs = [TrainingRun.from_row(r) for r in self._rows("SELECT * FROM training_runs ORDER BY started_at DESC LIMIT 20")]
        return {"by_class": by_class, "by_condition": by_condition, "status": status, "corrections_per_reviewer": reviewers,
                "training_runs": runs, "kinds": self.correction_kinds()}

    def correction_kinds(self, since: float = 0.0) -> dict:
        """Corrections that stand (not undone, not undos) by kind (what they indict) after ``since``:
        in all, per model version, per ISO week."""
        # A box correction indicts the detector run that produced the photo's boxes (for a drawn
        # box, the photo's latest run: the detector that missed it); a reviewer's change to another
        # reviewer's decision, a note or a repair indicts no model; other kinds the stage-2 model.
        stage1 = sorted(k.value for k in STAGE1)
        no_model = sorted(k.value for k in (Kind.REVISION, Kind.NOTE, Kind.REPAIR))
        rows = self._rows(
            "SELECT c.kind, CASE WHEN c.kind IN (" + ",".join("?" * len(no_model)) + ") THEN ? ELSE "
            # (A box nudged within the IoU tolerance is kind "accept": the detector's box was right; a box
            # drawn on a photo only labels were imported for is kind "label", the labels' miss.)
            "COALESCE(CASE WHEN c.kind IN (" + ",".join("?" * len(stage1)) + ") OR c.action IN ('edit_box', 'add') "
            "THEN COALESCE(r.detector_version, "
            "(SELECT lr.detector_version FROM inference_runs lr WHERE lr.photo_id = f.photo_id ORDER BY lr.id DESC LIMIT 1)) "
            "ELSE c.model_version END, 'drawn by a reviewer') END AS model, "
            "date(c.created_at, 'unixepoch') AS day, count(*) AS n "
            "FROM corrections c JOIN findings f ON f.id = c.finding_id LEFT JOIN inference_runs r ON r.id = f.run_id "
            # Only corrections that stand: an undone one indicts nothing, an undo is no model's error,
            # and a box drawn and then deleted again was no miss.
            f"WHERE c.created_at > ? AND c.action != 'undo' AND NOT {UNDONE_SQL} AND NOT {RETRACTED_ADD_SQL} "
            "GROUP BY c.kind, model, day", (*no_model, NO_MODEL, *stage1, since))
        out: dict = {"total": {}, "by_model": {}, "by_week": {}}
        for r in rows:
            for key, group in (("total", None), ("by_model", r["model"]), ("by_week", iso_week(r["day"]))):
                bucket = out[key] if group is None else out[key].setdefault(group, {})
                bucket[r["kind"]] = bucket.get(r["kind"], 0) + r["n"]
        return out

    def corrections_since(self, t: float, kinds=None) -> int:
        """How many corrections were made after time ``t`` (what is new to a model cut at ``t``);
        with ``kinds``, only corrections of those kinds (``core.attribution.Kind``)."""
        if kinds is None:
            return self._rows("SELECT count(*) AS n FROM corrections WHERE created_at > ?", (t,))[0]["n"]
        kinds = sorted(str(k) for k in kinds)
        marks = ",".join("?" * len(kinds))
        return self._rows(f"SELECT count(*) AS n FROM corrections c WHERE c.created_at > ? AND c.kind IN ({marks}) "
                          f"AND NOT {RETRACTED_ADD_SQL}", (t, *kinds))[0]["n"]

    def confirmations_since(self, t: float) -> int:
        """How many times a reviewer marked a photo done after time ``t`` (new complete labels)."""
        return self._rows("SELECT count(*) AS n FROM photo_reviews WHERE created_at > ?", (t,))[0]["n"]
