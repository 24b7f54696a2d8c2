"""The browser app (Gradio Blocks): page layout and wiring only.

Handlers are the named methods of ``app.handlers.Handlers`` (wired with explicit ``api_name``s);
they call the use cases in ``app.usecases``; the rules live there and in ``db``.

Keyboard shortcuts on the Review tab (when no text field has focus): ``a`` accept and go to the
next queued object, ``n`` next without changing, ``d`` delete the selected box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.paths import clip_model_dir
from core.photos import MAX_UPLOAD_BYTES
from core.pipeline import Pipeline
from core.stage2 import registry
from db.store import Store

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
        backend: stage-2 backend (a live one of ``core.stage2.registry``: adapter, probe, qwen2vl, clip).
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
        registry.check(self.backend, live_only=True)
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


def build_app(pipeline: Pipeline, store: Store, config: ServeConfig | None = None):
    """The Gradio Blocks app over a pipeline and a store."""
    import gradio as gr

    from app.handlers import HISTORY_HEADERS, QUEUE_HEADERS, TABLE_HEADERS, Handlers
    from app.library_tab import build_library_tab

    tax = store.taxonomy
    config = config or ServeConfig(no_auth=True)
    h = Handlers(pipeline, store)

    with gr.Blocks(title="slopewatch") as demo:
        gr.Markdown("# slopewatch — embankment drainage inspection")
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
                history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, label="History")
            with gr.Tab("Queue"):
                with gr.Row():
                    f_type = gr.Dropdown(label="Type", choices=[""] + tax.type_names, value="")
                    f_class = gr.Dropdown(label="Class", choices=[""] + tax.class_names, value="")
                    f_cond = gr.Dropdown(label="Condition", choices=["", *tax.conditions, "none"], value="")
                    f_model = gr.Textbox(label="Model version")
                    f_reviewer = gr.Textbox(label="Reviewer")
                refresh = gr.Button("Refresh queue")
                queue_table = gr.Dataframe(headers=QUEUE_HEADERS, interactive=False)
            with gr.Tab("Dashboard"):
                dash = gr.Markdown()
                dash_refresh = gr.Button("Refresh")
            with gr.Tab("Export"):
                fmt = gr.Radio(["yolo", "coco"], value="yolo", label="Format")
                export_btn = gr.Button("Export reviewed photos")
                export_file = gr.File(label="Dataset")
                export_msg = gr.Markdown()

            load_outputs = [review_image, summary, new_class, rationale, revision, history, *bx]
            build_library_tab(store, finding, tabs, h.load_finding, load_outputs, config.clip_model or clip_model_dir())

        run.click(h.inspect, files, [gallery, objects, message], concurrency_limit=1, api_name="inspect")
        objects.select(h.pick_row, None, finding, api_name="pick_row").then(h.load_finding, finding, load_outputs, api_name=False)
        load.click(h.load_finding, finding, load_outputs, api_name="load_finding")
        nxt.click(h.next_in_queue, finding, finding, api_name="next_in_queue").then(h.load_finding, finding, load_outputs, api_name=False)
        # Every edit: (object id, revision seen, inputs...) -> status line, then reload the object.
        for button, handler, inputs in ((relabel, h.relabel, [new_class]), (retype, h.retype, [new_type, new_type_class]),
                                        (save_rationale, h.edit_rationale, [rationale]), (save_note, h.add_note, [note]),
                                        (delete, h.delete, []), (save_box, h.move_box, bx), (add_box, h.add_missed, [missed_class, *bx])):
            button.click(handler, [finding, revision, *inputs], status, api_name=f"do_{handler.__name__}").then(
                h.load_finding, finding, load_outputs, api_name=False)
        accept_next.click(h.accept_and_next, [finding, revision], [status, finding], api_name="accept_and_next").then(
            h.load_finding, finding, load_outputs, api_name=False)
        refresh.click(h.queue_rows, [f_type, f_class, f_cond, f_model, f_reviewer], queue_table, api_name="queue_rows")
        dash_refresh.click(h.dashboard, None, dash, api_name="dashboard")
        export_btn.click(h.export, fmt, [export_file, export_msg], api_name="export")
        demo.load(h.dashboard, None, dash, api_name=False)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    return demo


def serve(cfg: ServeConfig, prevent_thread_lock: bool = False):
    """Build the default pipeline and store, and launch the app."""
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2.classifier import ConditionClassifier

    detector = Detector(DetectorConfig())
    backend = registry.create(cfg.backend, registry.BackendOptions(detector.taxonomy))
    pipeline = Pipeline(detector, ConditionClassifier(backend, detector.taxonomy))
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
