"""The browser app (Gradio Blocks). It only wires the UI to ``core`` (pipeline, photos) and
``db`` (store, export); every rule lives there.

Keyboard shortcuts on the Review tab (when no text field has focus): ``a`` accept and go to the
next queued object, ``n`` next without changing, ``d`` delete the selected box.
"""

# No `from __future__ import annotations` here: Gradio finds the request parameter by its
# evaluated annotation (gr.Request), which a postponed string annotation would hide.
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.draw import draw_boxes
from core.errors import ImageError, SlopewatchError
from core.paths import clip_model_dir
from core.photos import MAX_UPLOAD_BYTES, ingest, photos_dir
from core.pipeline import Pipeline
from core.types import Box
from db.store import InvalidEdit, StaleEdit, Store

# "#" is the object's index within its photo: the number rationales cite ("slope drain #2").
TABLE_HEADERS = ["id", "photo", "#", "type", "class", "confidence", "rationale", "status", "revision"]
LOCALHOST = ("127.0.0.1", "localhost", "::1")

SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target.tagName;
  if (t === 'INPUT' || t === 'TEXTAREA' || e.ctrlKey || e.metaKey || e.altKey) return;
  const id = {a: 'sw-accept-next', n: 'sw-next', d: 'sw-delete'}[e.key];
  const el = id && document.getElementById(id);
  if (el) { e.preventDefault(); el.click(); }
});
</script>
"""


@dataclass
class ServeConfig:
    """Settings of ``slopewatch serve``.

    Attributes:
        host: interface to listen on.
        port: TCP port.
        db: review database (default: in the data dir).
        backend: stage-2 backend: adapter or probe.
        auth: comma-separated user:password pairs.
        auth_file: file with one user:password per line.
        no_auth: allow anonymous use (only on localhost).
        max_upload_mb: largest accepted upload.
        queue_size: most requests waiting at once; more are refused, not queued forever.
        clip_model: CLIP checkpoint folder for photo search (default: $SLOPEWATCH_CLIP_MODEL; none hides it).
    """

    host: str = "127.0.0.1"
    port: int = 7860
    db: Path | None = None
    backend: str = "adapter"
    auth: str = ""
    auth_file: Path | None = None
    no_auth: bool = False
    max_upload_mb: int = MAX_UPLOAD_BYTES // 2**20
    queue_size: int = 16
    clip_model: Path | None = None

    def __post_init__(self) -> None:
        if self.no_auth and self.host not in LOCALHOST:
            raise ValueError(f"no_auth: anonymous use is allowed only on localhost, found host {self.host!r}")
        if not self.no_auth and not self.users():
            raise ValueError("expected reviewers: pass --auth user:pass, --auth-file FILE, or --no-auth (localhost only)")
        if self.max_upload_mb < 1 or self.queue_size < 1:
            raise ValueError(f"max_upload_mb and queue_size: expected >= 1, found {self.max_upload_mb} and {self.queue_size}")

    def users(self) -> list[tuple[str, str]]:
        pairs = [p for p in self.auth.split(",") if p.strip()]
        if self.auth_file:
            pairs += [line for line in Path(self.auth_file).read_text().splitlines() if line.strip() and not line.startswith("#")]
        out = []
        for pair in pairs:
            user, sep, password = pair.strip().partition(":")
            if not sep or not user or not password:
                raise ValueError(f"auth: expected user:password, found {pair.strip()!r}")
            out.append((user, password))
        return out


def _user(request) -> str:
    return getattr(request, "username", None) or "anonymous"


def inspect_photo(pipeline: Pipeline, store: Store, source, user: str, name: str) -> tuple[int, object]:
    """Ingest one upload, run both stages, store the findings; returns ``(photo_id, overlay)``."""
    stored = ingest(source, photos_dir())
    store.ensure_user(user)
    record, created = store.add_photo(stored.sha256, str(stored.path), stored.image.width, stored.image.height, name, user)
    if created or not store.query("SELECT 1 FROM findings WHERE photo_id = ?", (record.id,)):
        t0 = time.perf_counter()
        _, result = pipeline.run(stored.image, name)
        det_version = f"detector:{Path(pipeline.detector.weights).name}"
        cls_version = f"{pipeline.classifier.backend.name}:{pipeline.classifier.backend.version}" if pipeline.classifier else None
        store.add_run(record.id, list(result.findings), det_version, cls_version, time.perf_counter() - t0)
    return record.id, render(store, record.id)


def render(store: Store, photo_id: int, selected: int | None = None):
    """The stored photo with the current (reviewed) state of its findings drawn on it."""
    from PIL import Image

    photo = store.photo(photo_id)
    image = Image.open(photo.path).convert("RGB")
    rows = [r for r in photo_rows(store, photo_id) if r["status"] != "deleted"]
    boxes = [Box(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows]
    keys = [store.taxonomy.get_class(r["class_name"]).condition or "none" for r in rows]
    labels = [f"#{r['index']} {r['class_name']}" + ("" if r["status"] == "pending" else " ✓")
              + (f"\n{r['rationale']}" if r["rationale"] and r["finding_id"] == selected else "") for r in rows]
    scale = 2 if max(image.size) < 800 else 1
    big = image.resize((image.width * scale, image.height * scale))
    boxes = [Box(b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale) for b in boxes]
    return draw_boxes(big, boxes, labels, keys, wrap=48)


def photo_rows(store: Store, photo_id: int) -> list[dict]:
    """The photo's findings in detection order, each with its per-photo ``index``."""
    rows = store.query(
        "SELECT s.*, f.confidence, f.photo_id FROM finding_state s JOIN findings f ON f.id = s.finding_id "
        "WHERE f.photo_id = ? ORDER BY s.finding_id", (photo_id,))
    return [{**r, "index": k} for k, r in enumerate(rows)]


def table(rows: list[dict]) -> list[list]:
    return [[r["finding_id"], r["photo_id"], r["index"], r["object_type"], r["class_name"],
             None if r.get("confidence") is None else round(r["confidence"], 3), r["rationale"] or "", r["status"], r["revision"]]
            for r in rows]


def build_app(pipeline: Pipeline, store: Store, config: ServeConfig | None = None):
    """The Gradio Blocks app over a pipeline and a store."""
    import gradio as gr

    from app.library_tab import build_library_tab  # imported here: it uses this module's helpers

    tax = store.taxonomy
    config = config or ServeConfig(no_auth=True)

    def inspect(files, request: gr.Request, progress=gr.Progress()):
        if not files:
            return [], [], "Choose one or more photos first.", None
        gallery, rows, problems, last = [], [], [], None
        for f in progress.tqdm(files, desc="Inspecting photos"):
            path = f if isinstance(f, str) else f.name
            name = Path(path).name
            try:
                last, overlay = inspect_photo(pipeline, store, path, _user(request), name)
            except ImageError as exc:  # one bad file is reported; the others still go through
                problems.append(f"✗ {name}: {exc}")
                continue
            gallery.append((overlay, f"photo {last}: {name}"))
            rows += table(photo_rows(store, last))
        note = "\n".join(problems) or f"Inspected {len(gallery)} photo(s)."
        return gallery, rows, note, last

    def load_finding(finding_id):
        blank = (None, "Select an object in the table, or enter its id.", gr.update(), gr.update(), None, [], None, None, None, None)
        if finding_id is None:
            return blank
        try:
            state = store.state(int(finding_id))
        except InvalidEdit as exc:
            return (None, str(exc), *blank[2:])
        row = store.query("SELECT photo_id FROM findings WHERE id = ?", (int(finding_id),))[0]
        classes = [c.name for c in tax.classes_for_type(state["object_type"])]
        summary = (f"**#{state['finding_id']}** {state['object_type']} — **{state['class_name']}** ({state['status']}, "
                   f"revision {state['revision']}{', by ' + state['updated_by'] if state['updated_by'] else ''})\n\n"
                   f"{state['rationale'] or ''}" + (f"\n\nNote: {state['note']}" if state["note"] else ""))
        history = [[h["revision"], h["reviewer"], h["action"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["created_at"])),
                    h["model_version"] or ""] for h in store.history(int(finding_id))]
        return (render(store, row["photo_id"], state["finding_id"]), summary,
                gr.update(choices=classes, value=state["class_name"]), gr.update(value=state["rationale"] or ""),
                state["revision"], history, *(round(state[k], 1) for k in ("x1", "y1", "x2", "y2")))

    def act(action, finding_id, revision, request: gr.Request, **changes):
        if finding_id is None or revision is None:
            return "Select an object first."
        try:
            store.ensure_user(_user(request))
            store.correct(int(finding_id), int(revision), _user(request), action, **changes)
        except StaleEdit as exc:
            return f"⚠ Not saved: {exc}. The object has been reloaded; check it and try again."
        except (InvalidEdit, ValueError) as exc:
            return f"⚠ Not saved: {exc}"
        return f"Saved: {action} on #{finding_id}."

    def next_in_queue(current):
        queue = [r for r in store.queue(limit=50) if r["status"] == "pending" and r["finding_id"] != current]
        return queue[0]["finding_id"] if queue else current

    def queue_rows(object_type, class_name, condition, model_version, reviewer):
        rows = store.queue(object_type or None, class_name or None, condition or None, model_version or None, reviewer or None)
        return [[r["finding_id"], r["photo_id"], r["index"], r["object_type"], r["class_name"], r["model_class"],
                 None if r["margin"] is None else round(r["margin"], 3), r["status"], r["model_version"] or "", r["updated_by"] or ""]
                for r in rows]

    def dashboard():
        d = store.dashboard()
        lines = ["### Findings by class", *[f"- {k}: {v}" for k, v in sorted(d["by_class"].items(), key=str)],
                 "### By condition", *[f"- {k}: {v}" for k, v in sorted(d["by_condition"].items())],
                 "### Review status", *[f"- {k}: {v}" for k, v in sorted(d["status"].items())],
                 "### Corrections per reviewer", *[f"- {k}: {v}" for k, v in sorted(d["corrections_per_reviewer"].items())],
                 "### Models", f"- detector: `{Path(pipeline.detector.weights).name}`"]
        if pipeline.classifier:
            lines.append(f"- stage 2: `{pipeline.classifier.backend.name}` version `{pipeline.classifier.backend.version}`")
        if d["training_runs"]:
            lines.append("### Nightly runs")
            lines += [f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['started_at']))}: {r['decision']} "
                      f"({r['candidate_version'] or '-'}, {r['duration_s'] or 0:.0f} s)" for r in d["training_runs"]]
        return "\n".join(lines)

    def do_export(fmt):
        from db.export import export

        out = Path(tempfile.mkdtemp(prefix="export-"))
        counts = export(store, out / "dataset", fmt)
        zipped = shutil.make_archive(str(out / f"slopewatch-{fmt}"), "zip", out / "dataset")
        return zipped, f"Exported {counts['photos']} reviewed photo(s), {counts['objects']} object(s) as {fmt}."

    with gr.Blocks(title="slopewatch") as demo:
        gr.Markdown("# slopewatch — embankment drainage inspection")
        photo_state = gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("Inspect"):
                files = gr.File(label="Inspection photos (JPEG, PNG, HEIC)", file_count="multiple", file_types=["image"], elem_id="sw-upload")
                run = gr.Button("Inspect", variant="primary", elem_id="sw-inspect")
                message = gr.Markdown(elem_id="sw-message")
                gallery = gr.Gallery(label="Findings", columns=2, height="auto", elem_id="sw-gallery")
                objects = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="sw-objects")
            with gr.Tab("Review", id="review"):
                with gr.Row():
                    finding = gr.Number(label="Object id", precision=0, elem_id="sw-finding")
                    load = gr.Button("Load", elem_id="sw-load")
                    nxt = gr.Button("Next in queue (n)", elem_id="sw-next")
                # A (hidden) component, not gr.State: API clients must send the revision they saw.
                revision = gr.Number(visible=False, precision=0, elem_id="sw-revision")
                with gr.Row():
                    review_image = gr.Image(label="Photo", type="pil", interactive=False)
                    with gr.Column():
                        summary = gr.Markdown()
                        accept_next = gr.Button("Accept and next (a)", variant="primary", elem_id="sw-accept-next")
                        new_class = gr.Dropdown(label="Class", choices=tax.class_names, elem_id="sw-class")
                        relabel = gr.Button("Change class", elem_id="sw-relabel")
                        with gr.Row():
                            new_type = gr.Dropdown(label="Type", choices=tax.type_names)
                            new_type_class = gr.Dropdown(label="Class for that type", choices=tax.class_names)
                        retype = gr.Button("Change type and class")
                        rationale = gr.Textbox(label="Rationale", lines=2)
                        save_rationale = gr.Button("Save rationale")
                        note = gr.Textbox(label="Note", lines=1)
                        save_note = gr.Button("Add note")
                        with gr.Row():
                            bx = [gr.Number(label=n) for n in ("x1", "y1", "x2", "y2")]
                        save_box = gr.Button("Move box")
                        delete = gr.Button("Delete false box (d)", variant="stop", elem_id="sw-delete")
                        with gr.Accordion("Add a missed object", open=False):
                            missed_class = gr.Dropdown(label="Class", choices=tax.class_names)
                            add_box = gr.Button("Add box (uses x1..y2 above, on the loaded photo)")
                        status = gr.Markdown(elem_id="sw-status")
                history = gr.Dataframe(headers=["revision", "reviewer", "action", "when", "model"], interactive=False, label="History")
            with gr.Tab("Queue"):
                with gr.Row():
                    f_type = gr.Dropdown(label="Type", choices=[""] + tax.type_names, value="")
                    f_class = gr.Dropdown(label="Class", choices=[""] + tax.class_names, value="")
                    f_cond = gr.Dropdown(label="Condition", choices=["", *tax.conditions, "none"], value="")
                    f_model = gr.Textbox(label="Model version")
                    f_reviewer = gr.Textbox(label="Reviewer")
                refresh = gr.Button("Refresh queue")
                queue_table = gr.Dataframe(headers=["id", "photo", "type", "class", "model class", "margin", "status", "model", "reviewer"],
                                           interactive=False)
            with gr.Tab("Dashboard"):
                dash = gr.Markdown()
                gr.Button("Refresh").click(dashboard, None, dash)
            with gr.Tab("Export"):
                fmt = gr.Radio(["yolo", "coco"], value="yolo", label="Format")
                export_btn = gr.Button("Export reviewed photos")
                export_file = gr.File(label="Dataset")
                export_msg = gr.Markdown()
                export_btn.click(do_export, fmt, [export_file, export_msg])

            load_outputs = [review_image, summary, new_class, rationale, revision, history, *bx]
            build_library_tab(store, finding, tabs, load_finding, load_outputs, config.clip_model or clip_model_dir())

        run.click(inspect, files, [gallery, objects, message, photo_state], concurrency_limit=1)
        def pick(evt: gr.SelectData):
            return evt.row_value[0] if evt.row_value else None

        objects.select(pick, None, finding).then(load_finding, finding, load_outputs)
        load.click(load_finding, finding, load_outputs)
        nxt.click(next_in_queue, finding, finding).then(load_finding, finding, load_outputs)

        def wire(button, handler, inputs):
            button.click(handler, [finding, revision, *inputs], status).then(load_finding, finding, load_outputs)

        # Gradio passes the request (hence the reviewer) to parameters annotated gr.Request.
        def do_relabel(f, r, c, request: gr.Request):
            return act("relabel", f, r, request, class_name=c)

        def do_retype(f, r, t, c, request: gr.Request):
            return act("retype", f, r, request, object_type=t, class_name=c or None)

        def do_rationale(f, r, text, request: gr.Request):
            return act("edit_rationale", f, r, request, rationale=text)

        def do_note(f, r, text, request: gr.Request):
            return act("note", f, r, request, note=text)

        def do_delete(f, r, request: gr.Request):
            return act("delete", f, r, request)

        wire(relabel, do_relabel, [new_class])
        wire(retype, do_retype, [new_type, new_type_class])
        wire(save_rationale, do_rationale, [rationale])
        wire(save_note, do_note, [note])
        wire(delete, do_delete, [])

        def move(f, r, x1, y1, x2, y2, request: gr.Request):
            try:
                box = Box(float(x1), float(y1), float(x2), float(y2))
            except (TypeError, ValueError) as exc:
                return f"⚠ Not saved: {exc}"
            return act("edit_box", f, r, request, box=box)

        wire(save_box, move, bx)

        def add_missed(f, r, cls, x1, y1, x2, y2, request: gr.Request):
            if f is None:
                return "Load an object of the photo first."
            try:
                photo_id = store.query("SELECT photo_id FROM findings WHERE id = ?", (int(f),))[0]["photo_id"]
                store.ensure_user(_user(request))
                state = store.add_missed(photo_id, _user(request), Box(float(x1), float(y1), float(x2), float(y2)), cls)
            except (SlopewatchError, TypeError, ValueError, IndexError) as exc:
                return f"⚠ Not saved: {exc}"
            return f"Added #{state['finding_id']} ({cls})."

        wire(add_box, add_missed, [missed_class, *bx])

        def accept_then_next(f, r, request: gr.Request):
            msg = act("accept", f, r, request)
            return msg, next_in_queue(f)

        accept_next.click(accept_then_next, [finding, revision], [status, finding]).then(load_finding, finding, load_outputs)
        refresh.click(queue_rows, [f_type, f_class, f_cond, f_model, f_reviewer], queue_table)
        demo.load(dashboard, None, dash)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    return demo


def serve(cfg: ServeConfig, prevent_thread_lock: bool = False):
    """Build the default pipeline and store, and launch the app."""
    from core.classifier import ConditionClassifier
    from core.detector import Detector, DetectorConfig
    from core.evaluate_classifier import make_stage2_backend

    detector = Detector(DetectorConfig())
    pipeline = Pipeline(detector, ConditionClassifier(make_stage2_backend(cfg.backend, detector.taxonomy), detector.taxonomy))
    store = Store(cfg.db, detector.taxonomy)
    demo = build_app(pipeline, store, cfg)
    demo.launch(
        server_name=cfg.host, server_port=cfg.port, share=False, auth=None if cfg.no_auth else cfg.users(),
        max_file_size=f"{cfg.max_upload_mb}mb", allowed_paths=[], prevent_thread_lock=prevent_thread_lock,
        head=SHORTCUTS_JS, show_error=True, quiet=True,
    )
    return demo


def serve_forever(cfg: ServeConfig) -> dict:
    """``slopewatch serve``: blocks until interrupted."""
    serve(cfg)
    return {"stopped": True}
