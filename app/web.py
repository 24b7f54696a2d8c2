"""The browser app (Gradio Blocks): page layout and wiring only.

Handlers are the named methods of ``app.handlers.Handlers``, ``app.review_tab.ReviewHandlers``
and ``app.library_tab.LibraryHandlers``, wired with explicit ``api_name``s; they call the use
cases in ``app.usecases``; the rules live there and in ``db``. Review keys: ``app.review_tab``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.models import ModelHost
from core.paths import clip_model_dir
from core.photos import MAX_UPLOAD_BYTES
from core.pipeline import Pipeline
from core.stage2 import registry
from db.store import Store

LOCALHOST = ("127.0.0.1", "localhost", "::1")

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


def page_head() -> str:
    """The page's extra ``<head>``: the Review tab's keyboard shortcuts."""
    from app.review_tab import REVIEW_KEYS_JS

    return f"<script>{REVIEW_KEYS_JS}</script>"


def build_app(models: ModelHost, store: Store, config: ServeConfig | None = None):
    """The Gradio Blocks app over the served models and a store."""
    import gradio as gr

    from app.handlers import QUEUE_HEADERS, TABLE_HEADERS, Handlers
    from app.library_tab import build_library_tab
    from app.review_tab import ReviewHandlers, build_review_tab

    tax = store.taxonomy
    config = config or ServeConfig(no_auth=True)
    h, rh = Handlers(models, store), ReviewHandlers(store)
    to_review = (lambda: gr.Tabs(selected="review"), None)

    with gr.Blocks(title="slopewatch") as demo:
        gr.Markdown("# slopewatch — embankment drainage inspection")
        with gr.Tabs() as tabs:
            with gr.Tab("Inspect", id="inspect"):
                files = gr.File(label="Inspection photos (JPEG, PNG, HEIC)", file_count="multiple", file_types=["image"], elem_id="sw-upload")
                run = gr.Button("Inspect", variant="primary", elem_id="sw-inspect")
                message = gr.Markdown(elem_id="sw-message")
                gallery = gr.Gallery(label="Findings", columns=2, height="auto", object_fit="contain", elem_id="sw-gallery")
                gr.HTML("Colours: " + "".join(f'<span style="color:{c};font-weight:bold">■ {k}</span>&nbsp;&nbsp;'
                                              for k, c in sorted(rh.colors.items())), elem_id="sw-inspect-legend")
                with gr.Row():
                    last_photo = gr.Number(label="Last inspected photo", precision=0, interactive=False, elem_id="sw-last-photo")
                    review_this = gr.Button("Review this photo", elem_id="sw-review-this")
                objects = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="sw-objects",
                                       label="Objects (click a row to review it)")
            photo, view = build_review_tab(store, rh)
            with gr.Tab("Queue", id="queue"):
                with gr.Row():
                    f_type = gr.Dropdown(label="Type", choices=[""] + tax.type_names, value="")
                    f_class = gr.Dropdown(label="Class", choices=[""] + tax.class_names, value="")
                    f_cond = gr.Dropdown(label="Condition", choices=["", *tax.conditions, "none"], value="")
                    f_model = gr.Textbox(label="Model version")
                    f_reviewer = gr.Textbox(label="Reviewer")
                refresh = gr.Button("Refresh queue", elem_id="sw-refresh-queue")
                queue_table = gr.Dataframe(headers=QUEUE_HEADERS, interactive=False, elem_id="sw-queue",
                                           label="Photos by need: unreviewed first, then least certain (click a row to review it)")
            with gr.Tab("Dashboard", id="dashboard"):
                dash = gr.Markdown()
                dash_refresh = gr.Button("Refresh")
            with gr.Tab("Export", id="export"):
                fmt = gr.Radio(["yolo", "coco"], value="yolo", label="Format")
                include_unreviewed = gr.Checkbox(label="Also export photos not yet marked done (marked unreviewed in manifest.json)", value=False)
                valid_percent = gr.Slider(0, 50, value=0, step=5, label="Photos held out as valid (%; by photo hash)")
                export_btn = gr.Button("Export reviewed photos")
                export_file = gr.File(label="Dataset")
                export_msg = gr.Markdown()
            build_library_tab(store, tabs, rh.open_finding, view, config.clip_model or clip_model_dir())

        picked = gr.Number(visible=False)
        run.click(h.inspect, files, [gallery, objects, message, last_photo], concurrency_limit=1, concurrency_id="inspect", api_name="inspect")
        review_this.click(rh.open_photo, last_photo, view, api_name="review_photo").then(*to_review, tabs, api_name=False)
        objects.select(h.pick_object, None, picked, api_name=False).then(
            rh.open_finding, picked, view, api_name=False).then(*to_review, tabs, api_name=False)
        refresh.click(h.queue_rows, [f_type, f_class, f_cond, f_model, f_reviewer], queue_table, api_name="queue_rows")
        queue_table.select(h.pick_photo, None, photo, api_name=False).then(rh.open_photo, photo, view, api_name=False).then(
            *to_review, tabs, api_name=False)
        dash_refresh.click(h.dashboard, None, dash, api_name="dashboard")
        export_btn.click(h.export, [fmt, include_unreviewed, valid_percent], [export_file, export_msg], api_name="export")
        demo.load(h.dashboard, None, dash, api_name=False)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    return demo


def serve(cfg: ServeConfig, prevent_thread_lock: bool = False):
    """Launch the app at once and load the models in the background; print the URL, then a
    ready line when inspection can start."""
    from core.model_registry import ModelRegistry
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2.classifier import ConditionClassifier
    from core.taxonomy import load_taxonomy

    detector: list = []  # loaded once; a stage-2 swap reuses it

    def build(version: str | None) -> Pipeline:
        if not detector:
            detector.append(Detector(DetectorConfig()))
        backend = registry.create(cfg.backend, registry.BackendOptions(detector[0].taxonomy))
        return Pipeline(detector[0], ConditionClassifier(backend, detector[0].taxonomy))

    # Only the adapter follows the registry's promotions; other backends never swap.
    models = ModelHost(build, ModelRegistry().current if cfg.backend == "adapter" else None)
    models.start()
    store = Store(cfg.db, load_taxonomy())
    demo = build_app(models, store, cfg)
    demo.launch(
        server_name=cfg.host, server_port=cfg.port, share=False, auth=None if cfg.no_auth else cfg.users(),
        max_file_size=f"{cfg.max_upload_mb}mb", allowed_paths=[], prevent_thread_lock=True,
        head=page_head(), show_error=True, quiet=True,
    )
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}/"
    print(f"slopewatch: serving {url} (database {store.path}); models loading…", flush=True)
    if models.wait():
        backend = models.pipeline().classifier.backend
        print(f"slopewatch: ready — stage 2 {backend.name} {backend.version}", flush=True)
    else:
        print(f"slopewatch: models failed to load: {models.error}; the review tabs work, inspection does not", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


def serve_forever(cfg: ServeConfig) -> dict:
    """``slopewatch serve``: blocks until interrupted."""
    serve(cfg)
    return {"stopped": True}
