"""The web app's event handlers outside the Review and Library tabs, as named methods of
:class:`Handlers` (Inspect, Queue, Dashboard, Export).

``app/web.py`` lays the page out and wires these with explicit ``api_name``s; tests call them
directly. Each handler turns component values into a use case call (``app.usecases``) and the
result back into component values; the rules live in the use cases and the store.
"""

# No `from __future__ import annotations`: Gradio finds the request parameter by its evaluated
# annotation (gr.Request), which a postponed string annotation would hide.
import contextlib
import hashlib
import html
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from app.models import ModelHost, ModelsLoading
from app.scheduler import SchedulerState
from app.usecases.inspect import inspect_photo, overlay_items
from core.attribution import STAGE1, STAGE2
from core.errors import SlopewatchError
from core.overlay import render_overlay
from core.paths import data_dir
from core.photos import WORKING_SIZE_PX
from core.types import Status, is_labels_version
from db.store import Store

# "#" is the object's index within its photo: the number rationales, the overlay and the Review
# canvas all show ("slope drain #2").
# The Inspect table's columns and widths: the number columns just wide enough for their headers.
TABLE_COLUMNS = [("photo", "6%"), ("#", "4%"), ("id", "5%"), ("type", "10%"), ("class", "13%"), ("confidence", "9%"),
                 ("detector", "8%"), ("top 3", "22%"), ("rationale", "23%")]
TABLE_HEADERS = [name for name, _ in TABLE_COLUMNS]
# What "passthrough:1" is, where the Dashboard counts corrections by model version: a type with
# one class (vegetation) gets its label without a stage-2 model.
PASSTHROUGH_NOTE = " (types with one class, such as vegetation: labelled without a stage-2 model)"
# The "no filter" entry of the Queue's dropdowns: an empty value, labelled (an empty label shows as a bare ✓).
ANY = ("(any)", "")
# Widths given and the name wrapped: a drone photo's long file name pushed "done" off the screen.
QUEUE_COLUMNS = [("photo", "7%"), ("name", "33%"), ("objects", "9%"), ("pending", "9%"), ("expected errors", "12%"),
                 ("lowest margin", "11%"), ("lowest detector", "11%"), ("done", "8%")]
QUEUE_HEADERS = [name for name, _ in QUEUE_COLUMNS]


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


class LaneFull(SlopewatchError):
    """The user already has as many inspections waiting or running as one user may."""


class InspectLane:
    """Inspections: at most ``per_user`` of one user's waiting or running at once, one running.

    The web app admits several inspection requests at a time (``ServeConfig.inspect_slots``), so
    a request over a user's cap is answered at once instead of holding a place in Gradio's queue,
    which is shared by every user and every event. Admitted requests take turns on the models.
    """

    def __init__(self, per_user: int = 2):
        if per_user < 1:
            raise ValueError(f"per_user: expected >= 1, found {per_user}")
        self.per_user = per_user
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._run = threading.Lock()

    def in_flight(self, user: str) -> int:
        with self._counts_lock:
            return self._counts.get(user, 0)

    @contextlib.contextmanager
    def admit(self, user: str, on_wait=None):
        """Count the user in (``LaneFull`` past the cap), then wait for the models' turn
        (calling ``on_wait()`` first when another inspection holds them)."""
        with self._counts_lock:
            n = self._counts.get(user, 0)
            if n >= self.per_user:
                raise LaneFull(f"you already have {n} inspection(s) waiting or running (at most {self.per_user} per reviewer); "
                               "this one was not started: press Inspect again when one has finished")
            self._counts[user] = n + 1
        try:
            if not self._run.acquire(blocking=False):
                if on_wait is not None:
                    on_wait()
                self._run.acquire()
            try:
                yield
            finally:
                self._run.release()
        finally:
            with self._counts_lock:
                self._counts[user] -= 1
                if not self._counts[user]:
                    del self._counts[user]


def overlays_dir() -> Path:
    """Where Inspect's overlays are written (in the data dir; the web app lets Gradio read it)."""
    path = data_dir() / "overlays"
    path.mkdir(parents=True, exist_ok=True)
    return path


def overlay_file(store: Store, photo_id: int, max_age_s: float = 24 * 3600.0) -> str:
    """The photo's overlay as a file named by the photo and what is drawn on it.

    One written in place under a shared name could be read half-written by a concurrent request
    for the same photo. A name per content (the photo's hash and every drawn box, label and
    colour), written under a temporary name and renamed, never changes once it exists. Overlays
    not handed out for ``max_age_s`` are removed as new ones are written. Gradio serves them from
    this folder (an allowed path), not from a copy, so one handed out again is marked used: the
    same photo inspected again with the same findings (another day, another database) reuses the
    old file, and the next sweep deleted it under the gallery that showed it (a blank tile, 403).
    """
    photo = store.photo(photo_id)
    drawn = overlay_items(store, store.photo_findings(photo_id))
    state = hashlib.sha256(repr(drawn).encode()).hexdigest()[:16]
    folder = overlays_dir()
    path = folder / f"{photo.sha256[:32]}-{state}.jpg"
    with contextlib.suppress(FileNotFoundError):  # (a sweep may remove it between the two: write it anew)
        os.utime(path)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".jpg.tmp")
        os.close(fd)
        try:
            image = Image.open(photo.path).convert("RGB")
            render_overlay(image, drawn).save(tmp, "JPEG", quality=90)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        now = time.time()
        for old in folder.glob("*.jpg"):
            with contextlib.suppress(FileNotFoundError):
                if now - old.stat().st_mtime > max_age_s:
                    old.unlink()
    return str(path)


def _discard_upload(path: str) -> None:
    """Delete a refused upload from Gradio's upload folder at once (files elsewhere are never touched)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    if is_in_or_equal(path, get_upload_folder()):
        with contextlib.suppress(OSError):
            os.remove(path)


class Handlers:
    """The Inspect, Queue, Dashboard and Export handlers over the served models and one store.

    Args:
        models: the served models.
        store: the review store.
        lane: the inspection lane (default: 2 inspections per reviewer).
        working_size: photos larger than this on their long side are shrunk to it on ingest.
        schedule: the scheduled nightly job's state (``serve --nightly-at``), shown on the dashboard.
    """

    def __init__(self, models: ModelHost, store: Store, lane: InspectLane | None = None, working_size: int = WORKING_SIZE_PX,
                 schedule: SchedulerState | None = None):
        self.models, self.store = models, store
        self.lane = lane or InspectLane()
        self.working_size = working_size
        self.schedule = schedule

    # --- Inspect ----------------------------------------------------------------------------
    def inspect(self, files, request: gr.Request, progress=gr.Progress()):
        """Returns the gallery, the object table, the message and the last inspected photo's id
        (the final state of :meth:`inspect_stream`)."""
        out = None
        for out in self.inspect_stream(files, request, progress):
            pass
        return out

    def inspect_stream(self, files, request: gr.Request, progress=gr.Progress()):
        """Yields the gallery, the object table, the message and the last inspected photo's id after
        every photo, so the first photos of a flight can be reviewed while the rest are processed.
        Files may be photos or zip archives of photos (members read one at a time, never extracted)."""
        if not files:
            yield [], [], "Choose one or more photos (or a zip of them) first.", None
            return
        try:
            pipeline = self.models.pipeline()
        except ModelsLoading as exc:
            yield [], [], f"⏳ {exc}", None
            return
        user = reviewer(request)
        waiting = (lambda: progress(0, desc="Waiting for the inspection before yours")) if callable(progress) else None
        try:
            with self.lane.admit(user, waiting):
                yield from self._inspect(pipeline, files, user, progress)
        except LaneFull as exc:
            yield [], [], f"⚠ {html.escape(str(exc))}", None

    def _inspect(self, pipeline, files, user, progress):
        from app.usecases.flight import count_sources, photo_sources

        gallery, rows, problems, last, reused, pending, left_out = [], [], [], None, 0, 0, []
        names: dict[int, str] = {}  # photo id -> the name it was first uploaded under in this request
        # The same file given twice (an upload box that kept the last flight) is one file.
        uploads = list(dict.fromkeys(Path(f if isinstance(f, str) else f.name) for f in files))
        total = count_sources(uploads)
        # The last run's photos, message and "Review this photo" go at once: left up until this
        # run's first photo was done, "Review this photo" opened the last run's photo as if new.
        yield [], [], f"Inspecting {total} photo(s)…", None
        for k, (name, source) in enumerate(progress.tqdm(photo_sources(uploads, left_out=left_out), total=total, desc="Inspecting photos")):
            # Gradio keeps the upload's own name; a zip member is shown as "archive.zip:member".
            # A zip member comes as bytes (or its error) named "archive.zip:member"; a plain upload's
            # own name may hold a ":" (12:30.jpg) and is kept whole.
            member = not isinstance(source, Path)
            shown = name.split(":", 1)[-1] if member and ":" in name else name
            try:
                if isinstance(source, Exception):
                    raise source
                done = inspect_photo(pipeline, self.store, source, user, Path(shown).name, working_size=self.working_size)
            except SlopewatchError as exc:  # one bad file is reported; the others still go through
                archive = f"{name.split(':', 1)[0]}: " if member and ":" in name and not str(exc).startswith(name) else ""
                problems.append(f"✗ {html.escape(archive + str(exc))}")
                if isinstance(source, Path):
                    _discard_upload(str(source))
                continue
            if done.photo_id in names:  # the same photo twice in one upload is one photo
                problems.append(f"= {html.escape(name)} is the same photo as {html.escape(names[done.photo_id])} (shown once)"
                                if name != names[done.photo_id] else f"= {html.escape(name)} is in this upload twice (shown once)")
                continue
            names[done.photo_id] = name
            reused += not done.ran
            last = done.photo_id
            gallery.append((overlay_file(self.store, done.photo_id), f"photo {done.photo_id}: {name}"))
            found = self.store.photo_findings(done.photo_id)
            rows += object_rows(found)
            pending += sum(f.state.status is Status.PENDING for f in found)
            yield list(gallery), list(rows), "\n\n".join([*problems, f"Inspected {k + 1} of {total} photo(s)… "
                                                                         "(review the first ones meanwhile)"]), last
        for upload in uploads:
            if upload.suffix.lower() == ".zip":  # every member has been read: the archive is not needed any more
                _discard_upload(str(upload))
        # The time and counts tell one run's answer from the last one's (the same photos give the same count).
        summary = (f"Inspected {len(gallery)} photo(s) at {time.strftime('%H:%M:%S')}: {len(rows)} object(s), {pending} to review."
                   + (f" {reused} had been inspected before (same content)." if reused else ""))
        # A flight's videos and sidecar files, skipped without a word, looked inspected. (Said after
        # the run's result: news, not a failure.)
        named = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        aside = [f"− Left out, not photos: {html.escape(named)}"] if left_out else []
        yield gallery, rows, "\n\n".join([*problems, summary if gallery else "Nothing inspected.", *aside]), last

    @staticmethod
    def unspent_uploads(files):
        """After a run, the upload box keeps only entries whose files still exist: a refused file and
        a zip read member by member were deleted by the run, and their links led nowhere. Photos
        stay (pressing Inspect again finds them stored), and so does a file added during the run."""
        kept = [f for f in files or [] if Path(f if isinstance(f, str) else f.name).exists()]
        return gr.skip() if len(kept) == len(files or []) else (kept or None)

    @staticmethod
    def pick_object(evt: gr.SelectData):
        """The object id of a clicked row of the object table."""
        return evt.row_value[2] if evt.row_value else None

    # --- Queue, Dashboard, Export -----------------------------------------------------------
    @staticmethod
    def signed_in(request: gr.Request) -> str:
        """Who this page's corrections are saved as; signed in, the way to sign out."""
        name = getattr(request, "username", None)
        if name:
            return f"Signed in as <b>{html.escape(name)}</b> · <a href='logout' target='_self'>Sign out</a>"
        return "Not signed in (<code>--no-auth</code>): corrections are saved as <b>anonymous</b>"

    def queue_filter_choices(self):
        """The model-version and reviewer filters list what the store holds (both match exactly)."""
        versions = [(v + PASSTHROUGH_NOTE, v) if v.startswith("passthrough:") else v for v in self.store.model_versions()]
        return gr.update(choices=[ANY, *versions]), gr.update(choices=[ANY, *self.store.reviewers()])

    def queue_class_choices(self, object_type, class_name):
        """The Class filter lists the chosen type's classes only: a class of another type beside it
        matched no photo and left an empty queue with no word why. A class not of the type is cleared."""
        tax = self.store.taxonomy
        names = [c.name for c in tax.classes_for_type(object_type)] if object_type else list(tax.class_names)
        return gr.update(choices=[ANY, *names], value=class_name if class_name in names else "")

    def queue_rows(self, object_type, class_name, condition, model_version, reviewer_name):
        rows = self.store.photo_queue(object_type or None, class_name or None, condition or None, model_version or None, reviewer_name or None)
        # A label-review photo says so: its imported labels' scores (1.0) are no model's certainty.
        return [[r.photo_id, r.name + (f" · label review ({r.n_labels} label(s))" if r.n_labels else ""), r.n_objects, r.n_pending,
                 round(r.expected_errors, 2), None if r.min_margin is None else round(r.min_margin, 3),
                 None if r.min_detector_confidence is None else round(r.min_detector_confidence, 3),
                 "✓" if r.done else ""] for r in rows]

    @staticmethod
    def pick_photo(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else None

    def dashboard(self):
        d = self.store.dashboard()
        tax = self.store.taxonomy

        def in_taxonomy_order(counts: dict, names: list[str]) -> list[str]:
            # The taxonomy's order keeps a type's classes together: sorted as text, "rock toe damaged"
            # came before "rock toe". A name no longer in the taxonomy comes last.
            rank = {n: i for i, n in enumerate(names)}
            return [f"- {k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))]

        lines = ["### Findings by class", *in_taxonomy_order(d["by_class"], list(tax.class_names)),
                 "### By condition", *in_taxonomy_order(d["by_condition"], list(tax.conditions)),
                 "### Review status", *[f"- {k}: {v}" for k, v in sorted(d["status"].items())],
                 "### Corrections per reviewer", *([f"- {k}: {v}" for k, v in sorted(d["corrections_per_reviewer"].items())]
                                                   or ["- none yet"]),
                 "### What the corrections indict", f"(stage 1: {', '.join(sorted(STAGE1))}; stage 2: {', '.join(sorted(STAGE2))}; "
                 "accept, note and revision (a change to a box a reviewer drew, or to what a reviewer already changed) blame no model; "
                 "label (a corrected imported label, `slopewatch import-labels`) blames the dataset; "
                 "undone corrections are not counted, nor is a drawn box deleted again counted as a miss)",
                 *[f"- {k}: {v}" for k, v in sorted(d["kinds"]["total"].items())],
                 *[f"- {'labels' if is_labels_version(m) else 'model'} `{m}`"
                   f"{PASSTHROUGH_NOTE if m.startswith('passthrough:') else ''}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                   for m, c in sorted(d["kinds"]["by_model"].items())],
                 *[f"- week {w}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for w, c in sorted(d["kinds"]["by_week"].items())],
                 "### Models"]
        if self.models.is_ready:
            pipeline = self.models.pipeline()
            lines.append(f"- detector: version `{pipeline.detector.version}` (`{Path(pipeline.detector.weights).name}`, {pipeline.detector.runtime})")
            if pipeline.classifier:
                backend = pipeline.classifier.backend
                lines.append(f"- stage 2: `{backend.name}` version `{backend.version}`")
        else:
            lines.append("- loading…")
        if self.schedule is not None:
            lines += ["### Scheduled nightly job", *self.schedule.lines()]
        if d["training_runs"]:
            lines.append("### Nightly runs")
            for r in d["training_runs"]:
                # A stage-2 gate may score the blend reviewers are served, not the model it trained.
                judged = f", judged as {r.counts['judged_as']}" if r.counts.get("judged_as") else ""
                lines.append(f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.started_at))} {r.stage}: {r.decision} "
                             f"({r.candidate_version or '-'}, {r.duration_s or 0:.0f} s{judged})")
                lines += [f"  - {reason}" for reason in r.reasons]  # why, as the gate said it
        return "\n".join(lines)

    def export(self, fmt, include_unreviewed, valid_percent):
        from db.export import export

        out = Path(tempfile.mkdtemp(prefix="export-"))
        counts = export(self.store, out / "dataset", fmt, include_unreviewed=bool(include_unreviewed), valid_percent=int(valid_percent or 0))
        zipped = shutil.make_archive(str(out / f"slopewatch-{fmt}"), "zip", out / "dataset")
        extra = f" and {counts['unreviewed_photos']} unreviewed (marked in manifest.json)" if include_unreviewed else ""
        left = (f" {counts['left_out_not_done']} photo(s) not done yet were left out (tick “Also export photos not yet marked done” "
                "to export them marked)." if counts["left_out_not_done"] else "")
        return zipped, (f"Exported {counts['reviewed_photos']} reviewed photo(s){extra}, {counts['objects']} object(s) as {fmt} "
                        f"(splits: {', '.join(f'{k} {v}' for k, v in sorted(counts['splits'].items()))}).{left}")
