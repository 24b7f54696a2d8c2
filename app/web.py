"""The browser app (Gradio Blocks): page layout and wiring only.

Handlers are the named methods of ``app.handlers.Handlers``, ``app.review_handlers.ReviewHandlers``
and ``app.library_tab.LibraryHandlers``, wired with explicit ``api_name``s; they call the use
cases in ``app.usecases``; the rules live there and in ``db``. Review keys: ``app.review_tab``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from app.auth import parse_users, read_auth_file
from app.models import ModelHost, registry_host
from app.scheduler import NightlyScheduler, SchedulerState, parse_hhmm
from core.paths import clip_model_dir, data_dir
from core.photos import MAX_UPLOAD_BYTES, WORKING_SIZE_PX
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
        backend: stage-2 backend (a live one of ``core.stage2.registry``: ensemble, the default,
            adapter, probe, qwen2vl, clip).
        qwen_model: Qwen2-VL / Qwen2.5-VL hub id or folder (backend qwen2vl); the LoRA the nightly
            promoted (``train nightly --backend qwen2vl``) is applied and followed without a restart.
        auth: comma-separated user:password pairs, for local trials only: the command line (and
            so the passwords) shows in ps; give reviewers an auth_file.
        auth_file: file with one user:secret per line, the secret a scrypt hash written by
            `slopewatch user add` (or a plain password).
        no_auth: allow anonymous use (only on localhost).
        max_upload_mb: largest accepted upload.
        queue_size: most requests waiting at once, all users and events together; more are refused,
            not queued forever (one user's inspections are capped by inspect_per_user first).
        inspect_per_user: most inspections one reviewer may have waiting or running at once; more
            are answered at once with a message.
        inspect_slots: inspection requests admitted at once across reviewers (one runs, the
            others wait their turn outside Gradio's shared queue).
        working_size: photos larger than this many pixels on their long side are stored shrunk to
            it (the original's hash and size are kept).
        cache_minutes: files Gradio caches (uploads, returned images) are deleted after this many minutes.
        clip_model: CLIP checkpoint folder for photo search (default: $SLOPEWATCH_CLIP_MODEL; none hides it).
        nightly_at: run ``train nightly`` on this database every day at this local time (HH:MM), in a
            low-priority child process; "" for never (use cron instead, see README).
        nightly_args: further ``train nightly`` arguments for the scheduled job, e.g.
            "--frozen-yaml DATA --train-yaml DATA".
    """

    host: str = "127.0.0.1"
    port: int = 7860
    db: Path | None = None
    backend: str = registry.DEFAULT
    qwen_model: str | None = None
    auth: str = ""
    auth_file: Path | None = None
    no_auth: bool = False
    max_upload_mb: int = MAX_UPLOAD_BYTES // 2**20
    queue_size: int = 128
    inspect_per_user: int = 2
    inspect_slots: int = 8
    working_size: int = WORKING_SIZE_PX
    cache_minutes: int = 60
    clip_model: Path | None = None
    nightly_at: str = ""
    nightly_args: str = ""

    def __post_init__(self) -> None:
        if self.no_auth and self.host not in LOCALHOST:
            raise ValueError(f"no_auth: anonymous use is allowed only on localhost, found host {self.host!r}")
        if not self.no_auth and not self.users():
            raise ValueError("expected reviewers: pass --auth user:pass, --auth-file FILE, or --no-auth (localhost only)")
        registry.check(self.backend, live_only=True)
        if self.backend == "qwen2vl" and not self.qwen_model:
            raise ValueError("qwen_model: the qwen2vl backend needs a model; pass --qwen-model HUB_ID_OR_FOLDER")
        for name in ("max_upload_mb", "queue_size", "inspect_per_user", "inspect_slots", "cache_minutes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, found {getattr(self, name)}")
        if self.working_size < 320:
            raise ValueError(f"working_size: expected >= 320 px (the detector's input), found {self.working_size}")
        if self.nightly_at:
            parse_hhmm(self.nightly_at)

    def scheduled_nightly_args(self) -> str:
        """``nightly_args`` for the scheduled job, fine-tuning and judging the stage-2 model this
        server runs (unless the args say otherwise): under ``--backend qwen2vl`` the Qwen2-VL LoRA
        on the same model; under ``--backend adapter`` the adapter gated alone, not in the blend."""
        given = shlex.split(self.nightly_args)
        extra: list[str] = []
        if self.backend == "qwen2vl" and "--backend" not in given:
            extra = ["--backend", "qwen2vl", "--qwen-model", str(self.qwen_model)]
        elif self.backend == "adapter" and "--gate-on" not in given:
            extra = ["--gate-on", "adapter"]
        return shlex.join(extra + given)

    def users(self) -> list[tuple[str, str]]:
        """``(user, secret)`` pairs: ``auth`` first, then ``auth_file`` (a user's later line wins)."""
        out = parse_users([p for p in self.auth.split(",")], "--auth")
        if self.auth_file:
            out += read_auth_file(self.auth_file)
        return out


# Gradio shows a lone gallery image the full width of the page inside a box capped at 55% of the
# window, so most of a square photo (and the objects at its bottom) was hidden until one scrolled
# inside it. Tiles of at least 420 px, a box of 80% of the window: a photo is seen whole, a
# flight scrolls row by row.
GALLERY_CSS = ("#sw-gallery .grid-container{grid-template-columns:repeat(auto-fill,minmax(min(100%,420px),1fr)) !important}"
               "#sw-gallery .fixed-height{max-height:80vh !important}")


# Signed out in another tab (Gradio's /logout ends all of a user's sessions) or by a server
# restart, every press on an open page was refused by the server and nothing on the page said so:
# a reviewer kept working and none of it was saved. The first refusal says it, at the top.
SESSION_JS = """
const swFetch = window.fetch;
window.fetch = async (...args) => {
  const answer = await swFetch(...args);
  if (answer.status === 401 && !document.getElementById('sw-signed-out')) {
    const bar = document.createElement('div');
    bar.id = 'sw-signed-out';
    bar.style.cssText = 'position:fixed;top:0;left:0;right:0;z-index:10000;padding:10px 16px;background:#b91c1c;color:#fff;'
      + 'font-weight:bold;text-align:center';
    bar.textContent = '⚠ You are signed out (in another tab, or the server restarted): nothing you do on this page is saved. '
      + 'Reload the page to sign in again.';
    document.body.appendChild(bar);
  }
  return answer;
};
"""


# The signed-in line sits in the title's row, at its right: a row of its own pushed every tab down.
WHO_CSS = "#sw-who{position:absolute;top:14px;right:24px;width:auto;z-index:5}"


def page_head() -> str:
    """The page's extra ``<head>``: the Review tab's keyboard shortcuts, the signed-out warning and
    the Inspect gallery's layout."""
    from app.review_tab import REVIEW_KEYS_JS

    return f"<style>{GALLERY_CSS}{WHO_CSS}</style><script>{SESSION_JS}{REVIEW_KEYS_JS}</script>"


def build_app(models: ModelHost, store: Store, config: ServeConfig | None = None, schedule: SchedulerState | None = None):
    """The Gradio Blocks app over the served models and a store (``schedule``: the nightly job's
    state, for the dashboard)."""
    import gradio as gr

    from app.handlers import ANY, QUEUE_COLUMNS, QUEUE_HEADERS, TABLE_COLUMNS, TABLE_HEADERS, Handlers, InspectLane
    from app.library_tab import build_library_tab
    from app.review_handlers import ReviewHandlers
    from app.review_tab import RELEASE, build_review_tab
    from core.images import ACCEPTED

    tax = store.taxonomy
    config = config or ServeConfig(no_auth=True)
    h = Handlers(models, store, InspectLane(config.inspect_per_user), config.working_size, schedule)
    rh = ReviewHandlers(store, models)

    # Uploads (refused ones included) and returned images live in Gradio's cache until deleted.
    age = config.cache_minutes * 60
    with gr.Blocks(title="slopewatch", delete_cache=(max(60, age // 4), age)) as demo:
        gr.Markdown("# slopewatch — embankment drainage inspection")
        # Who the corrections are saved as, and a way out (top right: WHO_CSS). HTML, not Markdown:
        # Markdown opens links in a new tab, and the tab signed out from still said "Signed in".
        who = gr.HTML(elem_id="sw-who")
        with gr.Tabs() as tabs:
            # The Review tab, opened at its top: a row clicked far down the Inspect table, the Queue
            # or the library map left the page scrolled there, the canvas out of view.
            to_review = {"fn": lambda: gr.Tabs(selected="review"), "inputs": None, "outputs": tabs, "api_name": False,
                         "js": "() => { window.scrollTo(0, 0); }"}
            with gr.Tab("Inspect", id="inspect"):
                files = gr.File(label=f"Inspection photos ({ACCEPTED}) or zip archives of a flight", file_count="multiple",
                                file_types=["image", ".zip"], elem_id="sw-upload")
                run = gr.Button("Inspect", variant="primary", elem_id="sw-inspect")
                message = gr.Markdown(elem_id="sw-message")
                gallery = gr.Gallery(label="Findings", columns=2, height="auto", object_fit="contain", elem_id="sw-gallery")
                gr.HTML("Colours: " + "".join(f'<span style="color:{c};font-weight:bold">■ {k}</span>&nbsp;&nbsp;'
                                              for k, c in sorted(rh.colors.items())), elem_id="sw-inspect-legend")
                # Shown once a photo is inspected: before that the field read 0 and the button opened nothing.
                with gr.Row(visible=False) as last_row:
                    last_photo = gr.Number(label="Last inspected photo", value=None, precision=0, interactive=False, elem_id="sw-last-photo")
                    review_this = gr.Button("Review this photo", elem_id="sw-review-this")
                objects = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="sw-objects",
                                       label="Objects (click a row to review it)", column_widths=[w for _, w in TABLE_COLUMNS])
            photo, view, review_status = build_review_tab(store, rh)
            shown = [review_status, *view]  # a photo opened from another tab: its status line starts empty
            with gr.Tab("Queue", id="queue") as queue_tab:
                with gr.Row():
                    f_type = gr.Dropdown(label="Type", choices=[ANY, *tax.type_names], value="")
                    f_class = gr.Dropdown(label="Class", choices=[ANY, *tax.class_names], value="")
                    f_cond = gr.Dropdown(label="Condition", choices=[ANY, *tax.conditions, "none"], value="")
                    # Choices filled from the store when the tab opens (queue_filter_choices).
                    f_model = gr.Dropdown(label="Model version", choices=[ANY], value="")
                    f_reviewer = gr.Dropdown(label="Reviewer (last changed by)", choices=[ANY], value="")
                refresh = gr.Button("Refresh queue", elem_id="sw-refresh-queue")
                queue_table = gr.Dataframe(headers=QUEUE_HEADERS, interactive=False, elem_id="sw-queue", wrap=True,
                                           column_widths=[w for _, w in QUEUE_COLUMNS],
                                           label="Photos by need: unreviewed first, then least certain (click a row to review it)")
            with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                dash = gr.Markdown()
                dash_refresh = gr.Button("Refresh")
            with gr.Tab("Export", id="export"):
                fmt = gr.Radio(["yolo", "coco"], value="yolo", label="Format")
                include_unreviewed = gr.Checkbox(label="Also export photos not yet marked done (marked unreviewed in manifest.json)", value=False)
                valid_percent = gr.Slider(0, 50, value=0, step=5, label="Photos held out as valid (%; by photo hash)")
                export_btn = gr.Button("Export")
                export_file = gr.File(label="Dataset")
                export_msg = gr.Markdown()
            build_library_tab(store, to_review, rh.show_finding, shown, config.clip_model or clip_model_dir())

        picked = gr.Number(visible=False)
        # Inspections have their own lane, several requests wide so that one over a reviewer's cap
        # is answered at once; InspectLane runs one at a time. Review actions have theirs
        # ("review", app/review_tab.py) and every other event its own: none waits on an inspection.
        # The progress bar sits on the message only: the gallery and table stay visible and grow
        # photo by photo, so the first photos can be reviewed while the rest are processed.
        run.click(h.inspect_stream, files, [gallery, objects, message, last_photo], concurrency_limit=config.inspect_slots,
                  concurrency_id="inspect", api_name="inspect", show_progress_on=message).then(
            h.unspent_uploads, files, files, api_name=False, show_progress="hidden")
        last_photo.change(lambda pid: gr.Row(visible=bool(pid)), last_photo, last_row, api_name=False, show_progress="hidden")
        review_this.click(rh.show_photo, last_photo, shown, api_name="review_photo").then(**to_review).then(**RELEASE)
        objects.select(h.pick_object, None, picked, api_name=False).then(
            rh.show_finding, picked, shown, api_name=False).then(**to_review).then(**RELEASE)
        queue_filters = [f_type, f_class, f_cond, f_model, f_reviewer]
        refresh.click(h.queue_rows, queue_filters, queue_table, api_name="queue_rows")
        for chosen in (f_class.input, f_cond.input, f_model.input, f_reviewer.input):  # a filter applies when set
            chosen(h.queue_rows, queue_filters, queue_table, api_name=False)
        f_type.input(h.queue_class_choices, [f_type, f_class], f_class, api_name=False).then(  # the type's classes, then the rows
            h.queue_rows, queue_filters, queue_table, api_name=False)
        queue_table.select(h.pick_photo, None, photo, api_name=False).then(rh.show_photo, photo, shown, api_name=False).then(
            **to_review).then(**RELEASE)
        dash_refresh.click(h.dashboard, None, dash, api_name="dashboard")
        export_btn.click(h.export, [fmt, include_unreviewed, valid_percent], [export_file, export_msg], api_name="export")
        demo.load(h.dashboard, None, dash, api_name=False)
        demo.load(h.signed_in, None, who, api_name=False, show_progress="hidden")
        # Opening a tab shows it as it is now, not as it was when the page loaded.
        queue_tab.select(h.queue_rows, queue_filters, queue_table, api_name=False)
        for opened in (queue_tab.select, refresh.click):
            opened(h.queue_filter_choices, None, [f_model, f_reviewer], api_name=False, show_progress="hidden")
        dash_tab.select(h.dashboard, None, dash, api_name=False)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    return demo


def launch_options(cfg: ServeConfig) -> dict:
    """``demo.launch`` keyword arguments that carry the security settings: logins through the
    throttled ``Authenticator`` (with the client address from ``ClientAddressMiddleware``), the
    upload cap, no share link, and nothing served from disk beyond Gradio's cache and the
    photo folders."""
    from starlette.middleware import Middleware

    from app.auth import Authenticator, ClientAddressMiddleware
    from app.handlers import overlays_dir
    from core.photos import photos_dir

    return {
        "server_name": cfg.host, "server_port": cfg.port, "share": False,
        "auth": None if cfg.no_auth else Authenticator(cfg.users()).check,
        "app_kwargs": {"middleware": [Middleware(ClientAddressMiddleware)]},
        "max_file_size": f"{cfg.max_upload_mb}mb",
        # Gradio copies a returned file into its cache only from the working directory, the temp
        # dir or these folders: the stored photos, the Review canvas's enlarged copies
        # (app.usecases.review.canvas_image) and Inspect's overlays. Logged-in users may fetch
        # files from them; the database and the models live elsewhere and are never served.
        "allowed_paths": [str(photos_dir()), str(data_dir() / "canvas"), str(overlays_dir())],
    }


def serve(cfg: ServeConfig, prevent_thread_lock: bool = False):
    """Launch the app at once and load the models in the background; print the URL, then a
    ready line when inspection can start."""
    from core.taxonomy import load_taxonomy

    store = Store(cfg.db, load_taxonomy())
    models = registry_host(cfg.backend, store, cfg.qwen_model)
    models.start()
    scheduler = NightlyScheduler(cfg.nightly_at, store.path, cfg.scheduled_nightly_args()) if cfg.nightly_at else None
    demo = build_app(models, store, cfg, scheduler.state if scheduler else None)
    demo.launch(**launch_options(cfg), prevent_thread_lock=True, head=page_head(), show_error=True, quiet=True)
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}/"
    print(f"slopewatch: serving {url} (database {store.path}); models loading…", flush=True)
    if cfg.auth.strip():
        print("slopewatch: --auth puts passwords on the command line (visible in ps): for local trials only; "
              "give reviewers `slopewatch user add NAME --auth-file FILE` and --auth-file", flush=True)
    if scheduler:
        scheduler.start()
        print(f"slopewatch: nightly job scheduled daily at {cfg.nightly_at} (logs in {data_dir() / 'logs'})", flush=True)
    if n := store.needs_repair():
        print(f"slopewatch: {n} stored finding(s) have a box outside their photo or an over-long text; "
              f"run `slopewatch repair --db {store.path}`", flush=True)
    if models.wait():
        backend = models.pipeline().classifier.backend
        detector = models.pipeline().detector
        print(f"slopewatch: ready — detector {detector.version} ({detector.runtime}), stage 2 {backend.name} {backend.version}", flush=True)
    else:
        print(f"slopewatch: models failed to load: {models.error}; the review tabs work, inspection does not", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


def serve_forever(cfg: ServeConfig) -> dict:
    """``slopewatch serve``: blocks until interrupted."""
    serve(cfg)
    return {"stopped": True}
