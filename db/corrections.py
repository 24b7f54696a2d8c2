"""Reviewers' edits as appended corrections: one action on a finding (refused against a stale
revision), undo, a missed box drawn, a photo confirmed, and the one-off repair of rows stored
before the checks existed. Mixed into ``db.store.Store``, which supplies ``write()``,
``_snapshot()``, ``_photo_size()`` and ``taxonomy``."""

from __future__ import annotations

import json
import numbers
import sqlite3
import time

from core.attribution import Kind, attribute
from core.types import Box, Status, is_labels_version
from db.checks import (
    MAX_TEXT_CHARS,
    AlreadyDecided,
    AlreadyDone,
    InvalidBox,
    InvalidEdit,
    NotFound,
    StaleEdit,
    StillPending,
    check_box,
    check_id,
    check_text,
    shown,
)
from db.rows import BoxRepair, Correction, FindingState, PhotoProgress
from db.sql import FINDINGS_SQL, STATUS, UNDONE_SQL, insert, progress_sql

ACTIONS = ("accept", "relabel", "retype", "delete", "add", "edit_box", "edit_rationale", "note", "undo", "repair")
# Actions with their own entry point (add_missed, undo_last, repair), not accepted by Store.correct.
_OWN_ENTRY = ("add", "undo", "repair")
# Who appends the one-off repair's corrections (``Store.repair``).
REPAIR_REVIEWER = "slopewatch-repair"


class Corrections:
    """``Store``'s writes of reviewers' decisions (see the module docstring)."""

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
            InvalidEdit: an unknown action, a label outside the taxonomy, a relabel/retype to
                the label the finding already has, or any action on a deleted finding (nothing is written).
            AlreadyDecided: an accept of a finding whose current state is the reviewer's own
                decision (nothing is written; another reviewer's accept is a second opinion).
        """
        if action not in ACTIONS or action in _OWN_ENTRY:
            raise InvalidEdit(f"expected an action among {[a for a in ACTIONS if a not in _OWN_ENTRY]}, found {shown(action)}")
        finding_id = check_id(finding_id, "finding")
        if isinstance(expected_revision, bool) or not isinstance(expected_revision, numbers.Integral):
            raise InvalidEdit(f"expected the integer revision you saw, found {shown(expected_revision)}")
        with self.write() as conn:
            row = conn.execute("SELECT s.*, f.photo_id FROM finding_state s JOIN findings f ON f.id = s.finding_id "
                               "WHERE s.finding_id = ?", (finding_id,)).fetchone()
            if row is None:
                raise NotFound(f"no finding with id {finding_id}")
            before = FindingState.from_row(row)
            if before.revision != expected_revision:
                raise StaleEdit(finding_id, expected_revision, before)
            if before.status == Status.DELETED:  # an accept or relabel would bring a deleted box back as a training label
                raise InvalidEdit(f"finding {finding_id} is deleted; undo the delete to restore it")
            if action == "accept" and before.status == Status.REVIEWED and before.updated_by == reviewer:
                raise AlreadyDecided(f"#{finding_id} is already decided by you ({before.class_name}); nothing to accept")
            after = self._apply(before.to_json(), action, changes, self._photo_size(conn, row["photo_id"]))
            after.update(revision=before.revision + 1, updated_at=time.time(), updated_by=reviewer)
            return self._append(conn, reviewer, action, before.to_json(), after)

    def _append(self, conn: sqlite3.Connection, reviewer: str, action: str, before: dict, after: dict,
                undoes: int | None = None, batch: int | None = None) -> FindingState:
        """Append one correction and move the finding's state to ``after``; the caller holds ``write()``."""
        finding_id = after["finding_id"]
        model = conn.execute("SELECT model_version, source, object_type, class_name, x1, y1, x2, y2, rationale FROM findings "
                             "WHERE id = ?", (finding_id,)).fetchone()
        kind = attribute(action, before, after, drawn=model["source"] == "reviewer", model=dict(model))
        insert(conn, "corrections", {"finding_id": finding_id, "reviewer": reviewer, "action": action,
                                      "before_json": json.dumps(before), "after_json": json.dumps(after),
                                      "model_version": model["model_version"], "revision": after["revision"],
                                      "created_at": after["updated_at"], "undoes": undoes, "batch": batch, "kind": kind.value})
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
                raise InvalidEdit(f"expected a type among {tax.type_names}, found {shown(new_type)}")
            if new_class is not None and new_class not in tax.class_names:
                raise InvalidEdit(f"expected a class among {tax.class_names}, found {shown(new_class)}")
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
            # The rationale argued for the old label ("blocked at 61%, 4 of the 5 most similar …");
            # kept, it would contradict the new one on the panel and in every export. The model's
            # own text stays with its output (``StoredFinding.model_rationale``) and in the history.
            after["rationale"] = check_text(changes.get("rationale", ""), "rationale")
            after.update(object_type=new_type, class_name=new_class)
        elif action == "edit_box":
            box = check_box(changes.get("box"), *photo_size)
            after.update(x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2)
            # A move decides the box, not the class: were it to mark a pending object reviewed, the
            # model's class (never looked at) would become a stage-2 training label.
            return after
        elif action in ("edit_rationale", "note"):
            field = "rationale" if action == "edit_rationale" else "note"
            after[field] = check_text(changes.get(field, ""), field)
            # Saving the same text again would add a history row that records no change.
            if (after[field] or "") == (before.get(field) or ""):
                raise InvalidEdit(f"#{before['finding_id']} already has that {field}; nothing to change")
            if action == "note":
                # A note ("not sure", "check in spring") decides nothing: were it to mark the object
                # reviewed, the model's label would become a training label nobody chose.
                return after
        after["status"] = Status.REVIEWED.value
        return after

    def accept_pending(self, photo_id: int, reviewer: str, finding_ids: set[int] | None = None,
                       seen: dict[int, int] | None = None) -> list[FindingState]:
        """Accept the photo's pending objects (those among ``finding_ids``; None: all) in one
        transaction: one ``accept`` correction each, all in one batch, so that one undo takes the
        whole action back ("Accept all" by mistake on 12 objects used to take 12 undos).

        With ``seen`` ({finding id: revision the reviewer was shown}) only objects still at that
        revision are accepted: one another reviewer moved or drew since is not accepted unseen.
        (Checked inside the write transaction, so nothing can change between check and write.)"""
        photo_id = check_id(photo_id, "photo")
        with self.write() as conn:
            rows = conn.execute("SELECT s.* FROM finding_state s JOIN findings f ON f.id = s.finding_id "
                                "WHERE f.photo_id = ? AND s.status = ? ORDER BY s.finding_id", (photo_id, Status.PENDING.value)).fetchall()
            chosen = [FindingState.from_row(r) for r in rows if (finding_ids is None or r["finding_id"] in finding_ids)
                      and (seen is None or seen.get(r["finding_id"]) == r["revision"])]
            if not chosen:
                return []
            batch = conn.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM corrections").fetchone()[0]
            out = []
            for state in chosen:
                before = state.to_json()
                after = {**before, "status": Status.REVIEWED.value, "revision": state.revision + 1, "updated_at": time.time(),
                         "updated_by": reviewer}
                out.append(self._append(conn, reviewer, "accept", before, after, batch=batch))
            return out

    def undo_last(self, photo_id: int, reviewer: str) -> list[FindingState]:
        """Undo this reviewer's latest action on the photo that is not an undo and not yet undone:
        one correction, or every correction of its batch (``accept_pending``), in one transaction.

        Each undo is appended as its own correction (action "undo", ``undoes`` = the reversed row):
        its after-state is the undone correction's before-state, or, for an "add", the added
        finding deleted. Repeated calls walk back through the reviewer's actions, newest first.

        Returns:
            The restored findings' new states; empty when the reviewer has nothing left to undo on the photo.

        Raises:
            StaleEdit: a finding changed since that correction (a later correction on it that was
                not itself undone), e.g. another reviewer relabelled it; nothing is undone then.
        """
        photo_id = check_id(photo_id, "photo")
        with self.write() as conn:
            # Newest by id, not created_at: ids follow commit order, a wall clock can step back.
            row = conn.execute(
                "SELECT c.* FROM corrections c JOIN findings f ON f.id = c.finding_id "
                "WHERE f.photo_id = ? AND c.reviewer = ? AND c.action != 'undo' "
                f"AND NOT {UNDONE_SQL} ORDER BY c.id DESC LIMIT 1",
                (photo_id, reviewer)).fetchone()
            if row is None:
                return []
            target = Correction.from_row(row)
            targets = [target] if target.batch is None else [Correction.from_row(r) for r in conn.execute(
                f"SELECT c.* FROM corrections c WHERE c.batch = ? AND c.reviewer = ? AND c.action != 'undo' AND NOT {UNDONE_SQL} "
                "ORDER BY c.id DESC", (target.batch, reviewer))]
            return [self._undo(conn, t, reviewer) for t in targets]

    def _undo(self, conn: sqlite3.Connection, target: Correction, reviewer: str) -> FindingState:
        """Append the undo of ``target``; the caller holds ``write()``."""
        current = FindingState.from_row(conn.execute("SELECT * FROM finding_state WHERE finding_id = ?",
                                                     (target.finding_id,)).fetchone())
        # The finding still shows the target's result when every later correction on it is
        # netted out: undone, or an undo of something after the target. (Comparing revisions
        # alone would refuse the second of two undos on one finding: the first bumped it.)
        later = conn.execute(
            f"SELECT c.action, c.undoes, {UNDONE_SQL} AS undone "
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
            raise InvalidEdit(f"expected a class among {self.taxonomy.class_names}, found {shown(class_name)}")
        cls = self.taxonomy.get_class(class_name)
        rationale = check_text(rationale, "rationale")
        now = time.time()
        with self.write() as conn:
            box = check_box(box, *self._photo_size(conn, photo_id))
            # The miss is the latest run's: on a photo whose only run is imported labels (no detector
            # ran on it), the labels missed the object, not a detector.
            run = conn.execute("SELECT detector_version FROM inference_runs WHERE photo_id = ? ORDER BY id DESC LIMIT 1",
                               (photo_id,)).fetchone()
            kind = Kind.LABEL if run and is_labels_version(run["detector_version"]) else Kind.DETECTOR_MISS
            fid = insert(conn, "findings", {"photo_id": photo_id, "object_type": cls.type, "class_name": class_name,
                                             "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2, "rationale": rationale,
                                             "source": "reviewer", "created_at": now})
            state = FindingState(fid, cls.type, class_name, box.x1, box.y1, box.x2, box.y2, rationale, None, Status.REVIEWED, 1, now, reviewer)
            insert(conn, "finding_state", state.to_json())
            insert(conn, "corrections", {"finding_id": fid, "reviewer": reviewer, "action": "add", "before_json": "{}",
                                          "after_json": json.dumps(state.to_json()), "model_version": None, "revision": 1,
                                          "created_at": now, "kind": kind.value})
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
            NotFound: no such photo. StillPending: a live finding is still pending (named by its ``#k``).
            AlreadyDone: the photo is done with no edit since, so nothing new was checked (nothing is written).
        """
        photo_id = check_id(photo_id, "photo")
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM photos WHERE id = ?", (photo_id,)).fetchone() is None:
                raise NotFound(f"expected a photo with id {photo_id}, found none")
            pending = [r["idx"] for r in conn.execute(
                f"SELECT idx FROM ({FINDINGS_SQL}) WHERE photo_id = ? AND status = ? ORDER BY idx", (photo_id, Status.PENDING.value))]
            if pending:
                raise StillPending(photo_id, pending)

            def progress() -> PhotoProgress:
                row = conn.execute(progress_sql("WHERE p.id = :photo_id"), {**STATUS, "photo_id": photo_id}).fetchone()
                return PhotoProgress.from_row(row)

            if progress().done:
                raise AlreadyDone(f"photo {photo_id} is already done and nothing changed since; nothing to confirm")
            last_edit = conn.execute("SELECT MAX(c.created_at) FROM corrections c JOIN findings f ON f.id = c.finding_id "
                                     "WHERE f.photo_id = ?", (photo_id,)).fetchone()[0]
            # Never older than the edits it confirms: done compares the two times, and a wall clock
            # (or another process's) can lag the last correction's.
            insert(conn, "photo_reviews", {"photo_id": photo_id, "reviewer": reviewer, "created_at": max(time.time(), last_edit or 0.0)})
            return progress()
