"""The web app's event handlers, as named methods of :class:`Handlers`.

``app/web.py`` lays the page out and wires these with explicit ``api_name``s; tests call them
directly. Each handler turns component values into a use case call (``app.usecases``) and the
result back into component values; the rules live in the use cases and the store.
"""

# No `from __future__ import annotations`: Gradio finds the request parameter by its evaluated
# annotation (gr.Request), which a postponed string annotation would hide.
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from app.usecases import review
from app.usecases.inspect import inspect_photo, render_photo
from core.errors import ImageError, SlopewatchError
from core.pipeline import Pipeline
from core.types import Box
from db.store import InvalidEdit, StaleEdit, Store

# "#" is the object's index within its photo: the number rationales cite ("slope drain #2").
TABLE_HEADERS = ["id", "photo", "#", "type", "class", "confidence", "rationale", "status", "revision"]
QUEUE_HEADERS = ["id", "photo", "#", "type", "class", "model class", "margin", "status", "model", "reviewer"]
HISTORY_HEADERS = ["revision", "reviewer", "action", "when", "model"]


def reviewer(request) -> str:
    """Who is acting: the logged-in user, or ``anonymous`` on a --no-auth localhost app."""
    return getattr(request, "username", None) or "anonymous"


def object_rows(findings) -> list[list]:
    """The Inspect tab's object table, one row per ``StoredFinding``."""
    return [[f.finding_id, f.photo_id, f.index, f.state.object_type, f.state.class_name,
             None if f.confidence is None else round(f.confidence, 3), f.state.rationale or "", str(f.state.status), f.state.revision]
            for f in findings]


class Handlers:
    """Every handler of the Inspect, Review, Queue, Dashboard and Export tabs, over one pipeline and store."""

    def __init__(self, pipeline: Pipeline, store: Store):
        self.pipeline, self.store = pipeline, store

    # --- Inspect ----------------------------------------------------------------------------
    def inspect(self, files, request: gr.Request, progress=gr.Progress()):
        if not files:
            return [], [], "Choose one or more photos first."
        gallery, rows, problems = [], [], []
        for f in progress.tqdm(files, desc="Inspecting photos"):
            path = f if isinstance(f, str) else f.name
            name = Path(path).name
            try:
                done = inspect_photo(self.pipeline, self.store, path, reviewer(request), name)
            except ImageError as exc:  # one bad file is reported; the others still go through
                problems.append(f"✗ {name}: {exc}")
                continue
            gallery.append((render_photo(self.store, done.photo_id), f"photo {done.photo_id}: {name}"))
            rows += object_rows(self.store.photo_findings(done.photo_id))
        return gallery, rows, "\n".join(problems) or f"Inspected {len(gallery)} photo(s)."

    @staticmethod
    def pick_row(evt: gr.SelectData):
        """A clicked table row's first cell (the object id)."""
        return evt.row_value[0] if evt.row_value else None

    # --- Review -----------------------------------------------------------------------------
    def load_finding(self, finding_id):
        blank = (None, "Select an object in the table, or enter its id.", gr.update(), gr.update(), None, [], None, None, None, None)
        if finding_id is None:
            return blank
        try:
            state = self.store.state(int(finding_id))
            photo_id = self.store.photo_of(state.finding_id)
        except InvalidEdit as exc:
            return (None, str(exc), *blank[2:])
        classes = [c.name for c in self.store.taxonomy.classes_for_type(state.object_type)]
        summary = (f"**#{state.finding_id}** {state.object_type} — **{state.class_name}** ({state.status}, "
                   f"revision {state.revision}{', by ' + state.updated_by if state.updated_by else ''})\n\n"
                   f"{state.rationale or ''}" + (f"\n\nNote: {state.note}" if state.note else ""))
        history = [[h.revision, h.reviewer, h.action, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.created_at)),
                    h.model_version or ""] for h in self.store.history(state.finding_id)]
        return (render_photo(self.store, photo_id, state.finding_id), summary,
                gr.update(choices=classes, value=state.class_name), gr.update(value=state.rationale or ""),
                state.revision, history, *(round(v, 1) for v in state.box.xyxy))

    def _act(self, action: str, finding_id, revision, request, **changes) -> str:
        if finding_id is None or revision is None:
            return "Select an object first."
        try:
            review.apply(self.store, review.ReviewAction(int(finding_id), int(revision), reviewer(request), action, changes))
        except StaleEdit as exc:
            return f"⚠ Not saved: {exc}. The object has been reloaded; check it and try again."
        except (InvalidEdit, ValueError) as exc:
            return f"⚠ Not saved: {exc}"
        return f"Saved: {action} on #{finding_id}."

    def relabel(self, finding_id, revision, class_name, request: gr.Request):
        return self._act("relabel", finding_id, revision, request, class_name=class_name)

    def retype(self, finding_id, revision, object_type, class_name, request: gr.Request):
        return self._act("retype", finding_id, revision, request, object_type=object_type, class_name=class_name or None)

    def edit_rationale(self, finding_id, revision, text, request: gr.Request):
        return self._act("edit_rationale", finding_id, revision, request, rationale=text)

    def add_note(self, finding_id, revision, text, request: gr.Request):
        return self._act("note", finding_id, revision, request, note=text)

    def delete(self, finding_id, revision, request: gr.Request):
        return self._act("delete", finding_id, revision, request)

    def move_box(self, finding_id, revision, x1, y1, x2, y2, request: gr.Request):
        try:
            box = Box(float(x1), float(y1), float(x2), float(y2))
        except (TypeError, ValueError) as exc:
            return f"⚠ Not saved: {exc}"
        return self._act("edit_box", finding_id, revision, request, box=box)

    def add_missed(self, finding_id, revision, class_name, x1, y1, x2, y2, request: gr.Request):
        if finding_id is None:
            return "Load an object of the photo first."
        try:
            state = review.add_missed(self.store, reviewer(request), int(finding_id), Box(float(x1), float(y1), float(x2), float(y2)), class_name)
        except (SlopewatchError, TypeError, ValueError) as exc:
            return f"⚠ Not saved: {exc}"
        return f"Added #{state.finding_id} ({class_name})."

    def next_in_queue(self, current):
        return review.next_pending(self.store, current)

    def accept_and_next(self, finding_id, revision, request: gr.Request):
        return self._act("accept", finding_id, revision, request), review.next_pending(self.store, finding_id)

    # --- Queue, Dashboard, Export -----------------------------------------------------------
    def queue_rows(self, object_type, class_name, condition, model_version, reviewer_name):
        rows = self.store.queue(object_type or None, class_name or None, condition or None, model_version or None, reviewer_name or None)
        return [[f.finding_id, f.photo_id, f.index, f.state.object_type, f.state.class_name, f.model_class,
                 None if f.margin is None else round(f.margin, 3), str(f.state.status), f.model_version or "", f.state.updated_by or ""]
                for f in rows]

    def dashboard(self):
        d = self.store.dashboard()
        lines = ["### Findings by class", *[f"- {k}: {v}" for k, v in sorted(d["by_class"].items(), key=str)],
                 "### By condition", *[f"- {k}: {v}" for k, v in sorted(d["by_condition"].items())],
                 "### Review status", *[f"- {k}: {v}" for k, v in sorted(d["status"].items())],
                 "### Corrections per reviewer", *[f"- {k}: {v}" for k, v in sorted(d["corrections_per_reviewer"].items())],
                 "### Models", f"- detector: `{Path(self.pipeline.detector.weights).name}`"]
        if self.pipeline.classifier:
            backend = self.pipeline.classifier.backend
            lines.append(f"- stage 2: `{backend.name}` version `{backend.version}`")
        if d["training_runs"]:
            lines.append("### Nightly runs")
            lines += [f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['started_at']))}: {r['decision']} "
                      f"({r['candidate_version'] or '-'}, {r['duration_s'] or 0:.0f} s)" for r in d["training_runs"]]
        return "\n".join(lines)

    def export(self, fmt):
        from db.export import export

        out = Path(tempfile.mkdtemp(prefix="export-"))
        counts = export(self.store, out / "dataset", fmt)
        zipped = shutil.make_archive(str(out / f"slopewatch-{fmt}"), "zip", out / "dataset")
        return zipped, f"Exported {counts['photos']} reviewed photo(s), {counts['objects']} object(s) as {fmt}."
