"""The Review tab's named handlers (:class:`ReviewHandlers`): a photo's view and an object's
panel, navigation, and (from ``app.review_edits``) every edit a reviewer makes, each answered
with the new view and a status line. The
rules are in ``app.usecases.review`` (saving the canvas, accept, undo, photo done) and ``db``;
the layout, keys and wiring in ``app.review_tab``."""

# No `from __future__ import annotations`: Gradio reads the gr.Request annotation.
import time

import gradio as gr

from app.handlers import reviewer
from app.presence import Presence
from app.review_edits import ReviewEdits
from app.usecases import review
from app.usecases.canvas import LABEL_MARK, LIKELY_MARK, canvas_boxes, canvas_scale, click_rank
from app.usecases.evidence import compare_similar
from core.attribution import NUDGE_IOU
from core.errors import SlopewatchError
from core.overlay import DEFAULT_COLORS
from core.stage2.rationale import stale_citations
from core.types import Status
from db.store import Store

OBJECT_HEADERS = ["#", "id", "type", "class", "status", "confidence", "detector", "band"]
# The band's label confidence says nothing about whether the box is real, and accepting a false
# box teaches the nightly detector a false object. Boxes scored >= 0.7 by the shipped detector
# were real 92.7% of the time on hash half A of valid (where 0.7 was chosen: the lowest score
# above 0.9) and 89.9% on half B; at 0.25, 69% and 61%.
LIKELY_BOX_SCORE = 0.7
# Widths given: in the narrow side column Gradio's auto widths wrapped "revision" letter by
# letter and cut the before → after column, the one a reviewer reads.
HISTORY_COLUMNS = [("rev", "10%"), ("by", "21%"), ("action", "16%"), ("when", "15%"), ("before → after", "38%")]
HISTORY_HEADERS = [name for name, _ in HISTORY_COLUMNS]


def _changes(before: dict, after: dict) -> str:
    """``class: a → b; status: pending → reviewed`` for a history row."""
    out = []
    if before.get("class_name") != after.get("class_name"):
        out.append(f"class: {before.get('class_name') or '—'} → {after.get('class_name')}")
    box = [round(before.get(k, 0)) for k in ("x1", "y1", "x2", "y2")], [round(after.get(k, 0)) for k in ("x1", "y1", "x2", "y2")]
    if before and box[0] != box[1]:
        out.append(f"box: {tuple(box[0])} → {tuple(box[1])}")
    for key in ("status", "rationale", "note"):
        if before.get(key) != after.get(key) and (before or key == "status"):
            out.append(f"{key}: {before.get(key) or '—'} → {after.get(key) or '—'}")
    return "; ".join(out)


def _handles(box) -> list[tuple[float, float]]:
    """The canvas's resize handles of a box: corners and edge midpoints."""
    xs, ys = (box.x1, box.cx, box.x2), (box.y1, box.cy, box.y2)
    return [(x, y) for x in xs for y in ys if (x, y) != (box.cx, box.cy)]


class ReviewHandlers(ReviewEdits):
    """Every handler of the Review tab over one store: the views and navigation here, the edits in
    :class:`~app.review_edits.ReviewEdits`. A *view* is the tuple of the tab's photo outputs
    (:data:`VIEW`) followed by the side panel's (:data:`PANEL`)."""

    VIEW = ("canvas", "header", "select", "objects", "seen", "photo")
    PANEL = ("detail", "classes", "rationale", "note", "history", "revision", "new_type", "type_class")

    def __init__(self, store: Store, models=None):
        self.store, self.models = store, models
        self.presence = Presence()  # who is on which photo: "Next photo to review" hands out another
        tax = store.taxonomy
        self.colors = {k: DEFAULT_COLORS.get(k, "#1f77b4") for k in {tax.condition_key(c) for c in tax.class_names}}

    def likely_right_threshold(self) -> float | None:
        """The served model's "likely right" confidence (chosen on train folds), None when uncalibrated or loading."""
        if self.models is None or not self.models.is_ready:
            return None
        classifier = self.models.pipeline().classifier
        calibration = getattr(classifier.backend, "calibration", None) if classifier else None
        return calibration.likely_right if calibration is not None else None

    def likely_right(self, findings) -> set[int]:
        """Pending objects still carrying the model's label with a calibrated confidence in the band,
        on a box the detector is sure of (an accepted box is a true object to the nightly detector)
        and still where the model scored it (a moved box shows another crop than the one scored)."""
        t = self.likely_right_threshold()
        if t is None:
            return set()
        # An imported label is certain by construction, not by a measured band: it needs a look.
        return {f.finding_id for f in findings if f.state.status is Status.PENDING and f.state.class_name == f.model_class
                and not f.from_labels and f.confidence is not None and f.confidence >= t and len(f.probabilities or {}) > 1
                and (f.detector_confidence is None or f.detector_confidence >= LIKELY_BOX_SCORE)
                and (f.model_box is None or f.state.box.iou(f.model_box) >= NUDGE_IOU)}

    # --- views ------------------------------------------------------------------------------
    def view(self, photo_id, selected=None) -> tuple:
        """The photo's canvas, header, object list and table, then the panel of ``selected``
        (default: the first pending object)."""
        if photo_id is None:
            return (None, "Open a photo: pick one in the Queue or the Inspect table, or enter its id.", gr.update(choices=[], value=None),
                    [], {}, None, *self.panel(None, None))
        photo = self.store.photo(int(photo_id))
        findings = self.store.photo_findings(photo.id)
        live = [f for f in findings if f.state.status is not Status.DELETED]
        band = self.likely_right(live)
        objects = review.canvas_objects(findings, band)
        scale = canvas_scale(photo.width, photo.height)
        canvas = {"image": review.canvas_image(photo, scale), "boxes": canvas_boxes(objects, self.colors, self.store.taxonomy, scale)}
        progress = self.store.photo_progress(photo.id)
        pending = [f for f in live if f.state.status is Status.PENDING]
        if selected is None or int(selected) not in {f.finding_id for f in live}:
            selected = (pending or live or [None])[0]
            selected = selected.finding_id if selected is not None else None
        state = "✓ reviewed" + (f" by {progress.confirmed_by}" if progress.confirmed_by else "") if progress.done else (
            f"{progress.n_pending} pending" if progress.n_pending else "all decided — press **Photo done** (Shift+D)")
        # (How to edit boxes is in the legend under the canvas: said here too, it made the header
        # four lines under a long file name, and the buttons below it moved from photo to photo.)
        header = f"**Photo {photo.id}** {photo.original_name or ''} — {progress.n_objects} object(s), {state}."
        choices = [(f"#{f.index} {f.state.class_name or f.state.object_type}" + (" ✓" if f.state.status is Status.REVIEWED else "")
                    + (f" {LIKELY_MARK}" if f.finding_id in band else "") + (f" {LABEL_MARK}" if f.from_labels else ""), f.finding_id)
                   for f in live]
        # An imported label's stored scores (1.0) read as model certainty: no number for it.
        table = [[f.index, f.finding_id, f.state.object_type, f.state.class_name, str(f.state.status),
                  None if f.confidence is None or f.from_labels else round(f.confidence, 3),
                  None if f.detector_confidence is None or f.from_labels else round(f.detector_confidence, 3),
                  "likely right" if f.finding_id in band else ("" if f.state.status is not Status.PENDING else "check the label"
                                                               if f.from_labels else
                                                               "check the box" if len(f.probabilities or {}) <= 1 else "needs a look")]
                 for f in live]  # a one-class type (vegetation) has no label to doubt: only its box
        if band:
            header += f" {len(band)} likely right (press L to accept them)."
        labels = sum(f.from_labels for f in live)
        if labels:  # a label-review pass: what the labels hold, and what the model found that they miss
            header += (f" Label review: {labels} imported label(s) (· label), {len(live) - labels} box(es) the model found that no label "
                       "covers, or that a reviewer drew.")
        seen = {str(f.finding_id): f.state.revision for f in live}
        return (canvas, header, gr.update(choices=choices, value=selected), table, seen, photo.id, *self.panel(photo.id, selected, findings))

    def panel(self, photo_id, finding_id, findings=None) -> tuple:
        """The side panel of one object: top-3 probabilities, detector confidence, model, rationale, history.
        ``findings``: the photo's, when the caller has just read them."""
        blank = ("", gr.update(choices=[], value=None), "", "", [], None, gr.update(value=None), gr.update(choices=[], value=None))
        if finding_id is None or photo_id is None:
            return blank
        findings = findings or self.store.photo_findings(int(photo_id))
        found = [f for f in findings if f.finding_id == int(finding_id)]
        if not found:
            return blank
        f, s = found[0], found[0].state
        tax = self.store.taxonomy
        top = sorted((f.probabilities or {}).items(), key=lambda kv: -kv[1])[:3]
        lines = [f"**#{f.index} {s.class_name}** ({s.object_type}) — {s.status}, revision {s.revision}"
                 # "last changed": a pending object may carry a reviewer's box move or undo, not a decision
                 + (f", last changed by {s.updated_by}" if s.updated_by else ""),
                 f"Imported label: {f.model_class} — `{f.model_version}`; no model has judged it" if f.from_labels else
                 "Model: " + (" · ".join(f"{k} {v:.2f}" for k, v in top) if top else "drawn by a reviewer")
                 + (f" — detector {f.detector_confidence:.2f}" if f.detector_confidence is not None else "")
                 + (f" — `{f.model_version}`" if f.model_version else "")]
        if s.class_name != f.model_class and f.model_class:
            said = f": {f.model_rationale}" if f.model_rationale and not f.from_labels else "."
            lines.append(f"The {'label' if f.from_labels else 'model'} said **{f.model_class}**{said}")
        now = {o.index: None if o.state.status is Status.DELETED else o.state.object_type for o in findings}
        stale = stale_citations(s.rationale, now, tax)
        if stale:
            lines.append(f"⚠ The rationale cites what has changed since it was written: {'; '.join(stale)}.")
        history = [[h.revision, h.reviewer, h.action, time.strftime("%m-%d %H:%M", time.localtime(h.created_at)), _changes(h.before, h.after)]
                   for h in self.store.history(f.finding_id)]
        classes = [c.name for c in tax.classes_for_type(s.object_type)]
        return ("\n\n".join(lines), gr.update(choices=[(f"{k + 1} {c}", c) for k, c in enumerate(classes)], value=s.class_name),
                s.rationale or "", s.note or "", history, s.revision, gr.update(value=None), gr.update(choices=[], value=None))

    def compare_similar(self, finding_id):
        """The selected object beside its most similar labelled objects, and the count they make."""
        if finding_id is None:
            return "Select an object first.", []
        pipeline = self.models.pipeline() if self.models is not None and self.models.is_ready else None
        evidencer = pipeline.classifier.evidencer if pipeline and pipeline.classifier else None
        if evidencer is None:
            return "The models are still loading (or run without an evidence index): try again in a moment.", []
        try:
            comparison = compare_similar(self.store, evidencer, int(finding_id))
        except SlopewatchError as exc:
            return f"⚠ {exc}", []
        return comparison.sentence, list(comparison.tiles)

    def _after(self, photo_id, selected, message) -> tuple:
        """The status line, then the refreshed view."""
        return (message, *self.view(photo_id, selected))

    # --- navigation ---------------------------------------------------------------------------
    def _here(self, out: tuple, request) -> tuple:
        """The view ``out`` as shown to the reviewer of ``request``: she is now on its photo, and
        another reviewer on it too is named at the head of the header."""
        if request is None:
            return out
        who, photo_id = reviewer(request), out[self.VIEW.index("photo")]
        if not isinstance(photo_id, int):
            return out
        self.presence.saw(who, photo_id)
        others = self.presence.others_on(photo_id, who)
        return self._noted(out, f"⚠ Also on this photo: {', '.join(map(str, others))}.") if others else out

    def open_photo(self, photo_id, seen=None, request: gr.Request = None):
        """The photo of ``photo_id``; an unknown or absurd id is answered, and the photo on screen
        (the one ``seen`` was of) stays open: a mistyped id used to close it, and ← then went to
        the first photo instead of back."""
        return self._here(self._open_photo(photo_id, seen), request)

    def _open_photo(self, photo_id, seen):
        try:
            if photo_id is None and seen:  # an emptied box (letters typed into a number read as none) closed the photo
                raise ValueError("no id")
            return self.view(photo_id)
        except (SlopewatchError, ValueError, OverflowError) as exc:
            what = "type a photo id (a number) first" if photo_id is None else f"expected a photo id, found {photo_id!r}"
            said = f"⚠ {exc if isinstance(exc, SlopewatchError) else what}."
            shown = next(iter(seen or {}), None)
            if shown is not None:
                try:
                    return self._noted(self.view(self.store.photo_of(int(shown))), f"{said} Still on this photo:")
                except SlopewatchError:
                    pass  # that object is gone too (a repaired store): nothing to stay on
            return (None, said, *self.view(None)[2:])

    def show_photo(self, photo_id, request: gr.Request = None):
        """``open_photo`` from elsewhere (Inspect, the Queue): the status line about the photo
        reviewed before goes with it ("Saved: #0 relabelled" would read as news about this one)."""
        return ("", *self.open_photo(photo_id, None, request))

    def show_finding(self, finding_id, request: gr.Request = None):
        """``open_finding`` from elsewhere (the Inspect table, the library map), status line cleared."""
        return ("", *self._here(self.open_finding(finding_id), request))

    def open_finding(self, finding_id):
        """The photo of one object, with that object selected."""
        if finding_id is None:
            return self.view(None)
        try:
            return self.view(self.store.photo_of(int(finding_id)), int(finding_id))
        except SlopewatchError as exc:
            return (None, f"⚠ {exc}", *self.view(None)[2:])

    @staticmethod
    def pick_object(evt: gr.SelectData):
        """The status line cleared and the object id of a clicked row of the photo's object table."""
        return "", (evt.row_value[1] if evt.row_value else None)

    def pick_at(self, photo_id, click):
        """The object a click on the canvas selected, chosen as the canvas chooses: a box whose
        resize handle is under the click first, else the first box containing it, in the canvas's
        list order (``click_rank``).
        ``click`` is ``"fx,fy,width,height,n"``: the click as fractions of the canvas element and
        the element's size; the photo is drawn fitted and centred in it (at the default zoom)."""
        try:
            fx, fy, cw, ch = (float(v) for v in str(click).split(",")[:4])
        except ValueError:
            return gr.skip(), *(gr.skip() for _ in self.PANEL)
        if photo_id is None or cw <= 0 or ch <= 0:
            return gr.skip(), *(gr.skip() for _ in self.PANEL)
        photo = self.store.photo(int(photo_id))
        fit = min(cw / photo.width, ch / photo.height)
        x, y = (fx * cw - (cw - photo.width * fit) / 2) / fit, (fy * ch - (ch - photo.height * fit) / 2) / fit
        handle = 6 / fit  # the canvas's 8 px handles, in photo pixels, less a margin
        live = sorted((f for f in self.store.photo_findings(photo.id) if f.state.status is not Status.DELETED),
                      key=lambda f: click_rank(f.index, f.drawn, f.model_box))
        hit = next((f for f in live if any(abs(x - hx) <= handle and abs(y - hy) <= handle for hx, hy in _handles(f.state.box))), None)
        hit = hit or next((f for f in live if f.state.box.x1 <= x <= f.state.box.x2 and f.state.box.y1 <= y <= f.state.box.y2), None)
        if hit is None:
            return gr.skip(), *(gr.skip() for _ in self.PANEL)
        return gr.update(value=hit.finding_id), *self.panel(photo.id, hit.finding_id)

    def select(self, photo_id, finding_id):
        return self.panel(photo_id, finding_id)

    @staticmethod
    def _noted(out: tuple, note: str) -> tuple:
        """A view with ``note`` leading its header (navigation clears the status line)."""
        return (out[0], f"{note} {out[1]}", *out[2:])

    def step(self, photo_id, delta: int):
        ids = self.store.photo_ids()
        if not ids:
            return self.view(None)
        k = ids.index(int(photo_id)) + delta if photo_id is not None and int(photo_id) in ids else 0
        out = self.view(ids[k % len(ids)])
        # Walking a flight with → past its end started it over with nothing said: "Photo 1" read
        # as one more photo to review.
        if len(ids) > 1 and not 0 <= k < len(ids):
            out = self._noted(out, "↻ Past the last photo: back to the first." if delta > 0 else
                              "↻ Before the first photo: on to the last.")
        return out

    def next_photo(self, photo_id, request: gr.Request = None):
        return self._here(self.step(photo_id, +1), request)

    def prev_photo(self, photo_id, request: gr.Request = None):
        return self._here(self.step(photo_id, -1), request)

    def open_first(self, photo_id, request: gr.Request = None):
        """The Review tab opened with no photo open: the next photo to review, so a reviewer starts
        at once; with a photo open, nothing changes (another tab may just have opened it)."""
        if photo_id:  # ids start at 1; an empty Number reads as None or 0
            return tuple(gr.skip() for _ in self.VIEW + self.PANEL)
        return self.next_in_queue(None, request)

    def next_in_queue(self, photo_id, request: gr.Request = None):
        """The neediest photo left to review other than this one, and not one another reviewer is
        on (two reviewers pressing N were both handed the top of the queue); hers only when no
        other is left, and then the header names her."""
        queue = self.store.photo_queue()
        left = [row.photo_id for row in queue if not row.done]
        others = [k for k in left if k != photo_id]
        taken = self.presence.taken(reviewer(request)) if request is not None else set()
        following = next((k for k in others if k not in taken), others[0] if others else None)
        if following is not None or not queue:
            return self._here(self.view(following), request)
        # Nothing else to open: the button did nothing and said nothing.
        return self._here(self._noted(self.view(photo_id), "This is the last photo left to review." if left else
                                      "✓ Every photo is reviewed: nothing left in the queue."), request)
