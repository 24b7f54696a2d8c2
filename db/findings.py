"""Model output and what reviewers decided, read back: one pipeline run's findings stored, a
finding's state, a photo's findings, the photos a reviewer labelled (what export and the nightly
read) and a finding's history. Mixed into ``db.store.Store``, which supplies ``write()``,
``_rows()`` and ``_snapshot()``."""

from __future__ import annotations

import json
import time

from core.types import Finding, Status, is_labels_version
from db.checks import InvalidEdit, NotFound, check_box, check_id, check_text
from db.rows import Correction, FindingState, PhotoRecord, ReviewedPhoto, StoredFinding
from db.sql import FINDINGS_SQL, STATUS, insert, progress_sql


class Findings:
    """``Store``'s model output and finding reads (see the module docstring)."""

    def add_run(self, photo_id: int, findings: list[Finding], detector_version: str, classifier_version: str | None, seconds: float) -> list[int]:
        """Store one pipeline run's findings (immutable) and their initial state; returns finding ids."""
        photo_id = check_id(photo_id, "photo")
        now = time.time()
        ids = []
        with self.write() as conn:
            width, height = self._photo_size(conn, photo_id)
            run = insert(conn, "inference_runs", {"photo_id": photo_id, "detector_version": detector_version,
                                                    "classifier_version": classifier_version, "seconds": seconds, "created_at": now})
            for k, f in enumerate(findings):
                try:
                    b = check_box(f.detection.box, width, height)
                    check_text(f.rationale, "rationale")
                except InvalidEdit as exc:  # the whole run is refused: a partial one would renumber the #k
                    raise type(exc)(f"photo {photo_id} detection {k} ({f.detection.type}): {exc}") from None
                fid = insert(conn, "findings", {
                    "photo_id": photo_id, "run_id": run, "object_type": f.detection.type, "class_name": f.class_name,
                    "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "detector_confidence": f.detection.confidence,
                    "box_probability": f.detection.p_real,
                    "confidence": f.confidence, "margin": f.margin, "probabilities_json": json.dumps(f.probabilities),
                    "rationale": f.rationale, "model_version": f"{f.backend}:{f.version}", "source": "model", "created_at": now})
                state = FindingState(fid, f.detection.type, f.class_name, b.x1, b.y1, b.x2, b.y2, f.rationale, None,
                                     Status.PENDING, 0, now, None)
                insert(conn, "finding_state", state.to_json())
                ids.append(fid)
        return ids

    def state(self, finding_id: int) -> FindingState:
        finding_id = check_id(finding_id, "finding")
        rows = self._rows("SELECT * FROM finding_state WHERE finding_id = ?", (finding_id,))
        if not rows:
            raise NotFound(f"no finding with id {finding_id}")
        return FindingState.from_row(rows[0])

    def finding(self, finding_id: int) -> StoredFinding:
        """One finding (deleted too) with its photo and its ``#k`` there."""
        finding_id = check_id(finding_id, "finding")
        rows = self._rows(f"SELECT * FROM ({FINDINGS_SQL}) WHERE photo_id = (SELECT photo_id FROM findings WHERE id = ?) "
                          "AND finding_id = ?", (finding_id, finding_id))
        if not rows:
            raise NotFound(f"no finding with id {finding_id}")
        return StoredFinding.from_row(rows[0])

    def photo_findings(self, photo_id: int) -> list[StoredFinding]:
        """All findings of one photo (deleted ones too), in detection order."""
        return [StoredFinding.from_row(r) for r in self._rows(
            f"SELECT * FROM ({FINDINGS_SQL}) WHERE photo_id = ? ORDER BY finding_id", (check_id(photo_id, "photo"),))]

    def live_findings(self) -> dict[int, StoredFinding]:
        """Every finding not deleted, by id in id order (what embedding, the map and search read)."""
        rows = self._rows(f"SELECT * FROM ({FINDINGS_SQL}) WHERE status != ? ORDER BY finding_id", (Status.DELETED.value,))
        return {r["finding_id"]: StoredFinding.from_row(r) for r in rows}

    def reviewed_photos(self) -> list[ReviewedPhoto]:
        """Photos with at least one reviewed finding, each with its live findings in detection order."""
        rows = self._rows(
            "SELECT p.id AS pid, f.model_version AS finding_version, s.* FROM finding_state s JOIN findings f ON f.id = s.finding_id "
            "JOIN photos p ON p.id = f.photo_id WHERE s.status != ? ORDER BY p.id, s.finding_id", (Status.DELETED.value,))
        by_photo: dict[int, list[FindingState]] = {}
        labels: dict[int, set[int]] = {}
        for r in rows:
            by_photo.setdefault(r["pid"], []).append(FindingState.from_row(r))
            if is_labels_version(r["finding_version"]):
                labels.setdefault(r["pid"], set()).add(r["finding_id"])
        return [ReviewedPhoto(self.photo(pid), tuple(states), frozenset(labels.get(pid, ()))) for pid, states in by_photo.items()
                if any(s.status is Status.REVIEWED for s in states)]

    def labelled_photos(self) -> list[tuple[ReviewedPhoto, bool]]:
        """Every photo that has findings or is done, with its live findings and whether it is done
        (``PhotoProgress.done``), in upload order. One read transaction: a photo's labels and its
        done flag always belong together (export writes both)."""
        with self._snapshot() as conn:
            done = {r["photo_id"]: bool(r["done"]) for r in conn.execute(progress_sql(), STATUS)}
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

    def history(self, finding_id: int) -> list[Correction]:
        return [Correction.from_row(r) for r in self._rows("SELECT * FROM corrections WHERE finding_id = ? ORDER BY revision",
                                                           (check_id(finding_id, "finding"),))]
