"""The web app's event handlers outside the Review and Library tabs, as named methods of
:class:`Handlers` (Inspect, Queue, Dashboard, Export).

``app/web.py`` lays the page out and wires these with explicit ``api_name``s; tests call them
directly. Each handler turns component values into a use case call (``app.usecases``) and the
result back into component values; the rules live in the use cases and the store.
"""

# No `from __future__ import annotations`: Gradio finds the request parameter by its evaluated
# annotation (gr.Request), which a postponed string annotation would hide.
import html
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from app.models import ModelHost, ModelsLoading
from app.usecases.inspect import inspect_photo, render_photo
from core.errors import ImageError
from db.store import Store

# "#" is the object's index within its photo: the number rationales, the overlay and the Review
# canvas all show ("slope drain #2").
TABLE_HEADERS = ["photo", "#", "id", "type", "class", "confidence", "detector", "top 3", "rationale"]
QUEUE_HEADERS = ["photo", "name", "objects", "pending", "lowest margin", "lowest detector", "expected errors", "done"]


def reviewer(request) -> str:
    """Who is acting: the logged-in user, or ``anonymous`` on a --no-auth localhost app."""
    return getattr(request, "username", None) or "anonymous"


def object_rows(findings) -> list[list]:
    """The Inspect tab's object table, one row per live ``StoredFinding``."""
    rows = []
    for f in findings:
        if f.state.status == "deleted":
            continue
        top = sorted((f.probabilities or {}).items(), key=lambda kv: -kv[1])[:3] if len(f.probabilities or {}) > 1 else []
        rows.append([f.photo_id, f.index, f.finding_id, f.state.object_type, f.state.class_name,
                     None if f.confidence is None else round(f.confidence, 3),
                     None if f.detector_confidence is None else round(f.detector_confidence, 3),
                     ", ".join(f"{k} {v:.2f}" for k, v in top), f.state.rationale or ""])
    return rows


class Handlers:
    """The Inspect, Queue, Dashboard and Export handlers over the served models and one store."""

    def __init__(self, models: ModelHost, store: Store):
        self.models, self.store = models, store

    # --- Inspect ----------------------------------------------------------------------------
    def inspect(self, files, request: gr.Request, progress=gr.Progress()):
        """Returns the gallery, the object table, the message and the last inspected photo's id."""
        if not files:
            return [], [], "Choose one or more photos first.", None
        try:
            pipeline = self.models.pipeline()
        except ModelsLoading as exc:
            return [], [], f"⏳ {exc}", None
        gallery, rows, problems, last, reused = [], [], [], None, 0
        for f in progress.tqdm(files, desc="Inspecting photos"):
            path = f if isinstance(f, str) else f.name
            name = Path(path).name
            try:
                done = inspect_photo(pipeline, self.store, path, reviewer(request), name)
            except ImageError as exc:  # one bad file is reported; the others still go through
                problems.append(f"✗ {html.escape(str(exc))}")
                continue
            reused += not done.ran
            if done.photo_id == last or any(r[0] == done.photo_id for r in rows):
                continue  # the same photo twice in one upload is one photo
            last = done.photo_id
            gallery.append((render_photo(self.store, done.photo_id), f"photo {done.photo_id}: {name}"))
            rows += object_rows(self.store.photo_findings(done.photo_id))
        summary = f"Inspected {len(gallery)} photo(s)." + (f" {reused} had been inspected before (same content)." if reused else "")
        return gallery, rows, "\n\n".join([*problems, summary] if gallery else problems), last

    @staticmethod
    def pick_object(evt: gr.SelectData):
        """The object id of a clicked row of the object table."""
        return evt.row_value[2] if evt.row_value else None

    # --- Queue, Dashboard, Export -----------------------------------------------------------
    def queue_rows(self, object_type, class_name, condition, model_version, reviewer_name):
        rows = self.store.photo_queue(object_type or None, class_name or None, condition or None, model_version or None, reviewer_name or None)
        return [[r.photo_id, r.name, r.n_objects, r.n_pending, None if r.min_margin is None else round(r.min_margin, 3),
                 None if r.min_detector_confidence is None else round(r.min_detector_confidence, 3), round(r.expected_errors, 2),
                 "✓" if r.done else ""] for r in rows]

    @staticmethod
    def pick_photo(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else None

    def dashboard(self):
        d = self.store.dashboard()
        lines = ["### Findings by class", *[f"- {k}: {v}" for k, v in sorted(d["by_class"].items(), key=str)],
                 "### By condition", *[f"- {k}: {v}" for k, v in sorted(d["by_condition"].items())],
                 "### Review status", *[f"- {k}: {v}" for k, v in sorted(d["status"].items())],
                 "### Corrections per reviewer", *[f"- {k}: {v}" for k, v in sorted(d["corrections_per_reviewer"].items())],
                 "### Models"]
        if self.models.is_ready:
            pipeline = self.models.pipeline()
            lines.append(f"- detector: `{Path(pipeline.detector.weights).name}`")
            if pipeline.classifier:
                backend = pipeline.classifier.backend
                lines.append(f"- stage 2: `{backend.name}` version `{backend.version}`")
        else:
            lines.append("- loading…")
        if d["training_runs"]:
            lines.append("### Nightly runs")
            lines += [f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['started_at']))}: {r['decision']} "
                      f"({r['candidate_version'] or '-'}, {r['duration_s'] or 0:.0f} s)" for r in d["training_runs"]]
        return "\n".join(lines)

    def export(self, fmt, include_unreviewed, valid_percent):
        from db.export import export

        out = Path(tempfile.mkdtemp(prefix="export-"))
        counts = export(self.store, out / "dataset", fmt, include_unreviewed=bool(include_unreviewed), valid_percent=int(valid_percent or 0))
        zipped = shutil.make_archive(str(out / f"slopewatch-{fmt}"), "zip", out / "dataset")
        extra = f" and {counts['unreviewed_photos']} unreviewed (marked in manifest.json)" if include_unreviewed else ""
        return zipped, (f"Exported {counts['reviewed_photos']} reviewed photo(s){extra}, {counts['objects']} object(s) as {fmt} "
                        f"(splits: {counts['splits']}).")
