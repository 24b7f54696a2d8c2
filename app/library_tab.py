"""The app's Library tab: embedding map, similar objects with bulk relabel, text search, and
(only when a CLIP checkpoint is configured) text-to-image photo search. Named handlers
(:class:`LibraryHandlers`) and wiring only: the work is in ``core.library``.
"""

# No `from __future__ import annotations`: Gradio reads gr.Request / gr.EventData annotations.
import threading
import time

import gradio as gr
from PIL import Image

from app.handlers import reviewer
from app.review_tab import RELEASE
from core.errors import ImageError, SlopewatchError
from core.images import load_image
from core.library.embeddings import TextEncoder, embed_library
from core.library.map import COLOR_BY, data_uri, map_points, map_svg
from core.library.search import SearchFilters, apply_class, similar_findings, text_search, thumbnail
from core.types import Status

# Hover shows the point's thumbnail and label; a click sends its finding id to the server.
MAP_JS = """
element.addEventListener('mousemove', (e) => {
  const p = e.target.closest('.sw-pt');
  const t = element.querySelector('.sw-tip');
  if (!t) return;
  if (!p) { t.style.display = 'none'; return; }
  t.replaceChildren();
  if (p.dataset.thumb) { const img = document.createElement('img'); img.src = p.dataset.thumb; img.width = 96; t.appendChild(img); }
  const label = document.createElement('div'); label.textContent = p.dataset.label; t.appendChild(label);
  Object.assign(t.style, {display: 'block', position: 'fixed', left: (e.clientX + 14) + 'px', top: (e.clientY + 14) + 'px',
                          background: 'white', border: '1px solid #999', padding: '4px', zIndex: 1000, pointerEvents: 'none'});
});
element.addEventListener('click', (e) => {
  const p = e.target.closest('.sw-pt');
  if (p) trigger('click', {finding_id: p.dataset.fid});
});
"""


class _Lazy:
    """Builds an expensive object once, on first use, from any handler thread."""

    def __init__(self, factory):
        self.factory, self.value, self.lock = factory, None, threading.Lock()

    def get(self):
        with self.lock:
            if self.value is None:
                self.value = self.factory()
            return self.value


def _caption(hit) -> str:
    f = hit.finding
    return f"{f.name} {f.state.class_name or f.state.object_type} ({hit.score:.2f})"


class LibraryHandlers:
    """The Library tab's handlers, as named methods over one store (and an optional CLIP folder)."""

    def __init__(self, store, clip_folder=None):
        self.store = store
        self.text = _Lazy(TextEncoder)
        self.clip = None
        if clip_folder:
            from core.stage2.backends.clip import ClipModel

            self.clip = _Lazy(lambda: ClipModel(clip_folder))

    def embed(self, progress=gr.Progress()):
        try:
            counts = embed_library(self.store, text=self.text.get(), progress=progress.tqdm)
        except SlopewatchError as exc:  # e.g. a stored photo gone from disk: say which; what was embedded stays
            return f"⚠ {exc}"
        return (f"Embedded {counts.photos} new photo(s), {counts.findings} object(s), {counts.texts} text(s)."
                if counts != type(counts)(0, 0, 0) else "Nothing new to embed.")

    def draw(self, color_by):
        # The first layout of a server's life compiles UMAP (28 s measured on 2 cores), and the page
        # looked idle all that time (a progress bar on the empty message had no height): said first.
        yield gr.skip(), "Laying out the objects: the first map after a start takes about half a minute."
        points, method = map_points(self.store, color_by)
        if not points:
            yield "<p>No embedded objects yet: press <b>Embed new photos</b>.</p>", "No points."
            return
        thumbs = {}
        rows = self.store.live_findings()
        opened: dict = {}  # by photo, one at a time: each photo is read once, and only one is held
        for p in sorted(points, key=lambda p: p.photo_id):
            if p.photo_id not in opened:
                try:
                    opened = {p.photo_id: load_image(self.store.photo(p.photo_id).path)}
                except ImageError:  # a photo gone from disk: its points stay, without thumbnails
                    opened = {p.photo_id: None}
            if opened[p.photo_id] is not None:
                thumbs[p.finding_id] = data_uri(thumbnail(self.store, rows[p.finding_id], 64, opened[p.photo_id]))
        yield map_svg(points, thumbs), f"{len(points)} objects, {method} layout, coloured by {color_by}. Click a point to review it."

    @staticmethod
    def pick(evt: gr.EventData):
        fid = getattr(evt, "finding_id", None) if evt is not None and isinstance(evt._data, dict) else None
        return int(fid) if fid not in (None, "") else gr.update()

    def similar(self, finding_id, k):
        if finding_id is None:
            return [], gr.update(choices=[], value=[]), "Enter an object id."
        try:
            hits = similar_findings(self.store, int(finding_id), int(k))
        except SlopewatchError as exc:
            return [], gr.update(choices=[], value=[]), f"⚠ {exc}"
        gallery = [(thumbnail(self.store, h.finding), _caption(h)) for h in hits]
        choices = [(_caption(h), h.finding.finding_id) for h in hits]
        shown = self.store.finding(int(finding_id)).name
        return gallery, gr.update(choices=choices, value=[]), f"{len(hits)} similar object(s) to {shown}."

    def bulk(self, selected, class_name, finding_id, k, request: gr.Request):
        """Apply a class to the ticked objects; the list is then shown again as it now is, ticks
        cleared: left as it was, it still named the old classes and invited a second apply."""
        if not selected or not class_name:
            return "Select objects and a class first.", gr.skip(), gr.skip()
        ids = [int(s) for s in selected]
        before = {fid: self.store.state(fid) for fid in ids}
        try:
            done = apply_class(self.store, reviewer(request), ids, class_name)
        except SlopewatchError as exc:
            return f"⚠ Not saved: {exc}", gr.skip(), gr.skip()
        # A class fixes its type, so a class of another type retypes the object: named, as a bulk
        # retype is easy to miss among thumbnails.
        retyped = [f"{self.store.finding(s.finding_id).name} (was {before[s.finding_id].class_name or before[s.finding_id].object_type})"
                   for s in done if before[s.finding_id].object_type != s.object_type]
        left = len(ids) - len(done)
        said = (f"Saved: {class_name} on {len(done)} object(s), one correction each."
                + (f" Type changed on {len(retyped)}: {'; '.join(retyped)}." if retyped else "")
                + (f" {left} already had it as decided: left as they were." if left else ""))
        gallery, choices, _ = self.similar(finding_id, k)
        return said, gallery, choices

    def search(self, query, class_name, status, days):
        filters = SearchFilters(class_name or None, None if status == "any" else status,
                                time.time() - float(days) * 86400 if days else None)
        try:
            hits = text_search(self.store, self.text.get(), query or "", 20, filters)
        except (SlopewatchError, ValueError) as exc:
            return [], [], f"⚠ {exc}"
        table = [[h.finding.finding_id, h.finding.photo_id, h.finding.state.class_name, str(h.finding.state.status), round(h.score, 3),
                  h.finding.state.rationale or "", h.finding.state.note or ""] for h in hits]
        # A ranking, not a match: every embedded finding has a score, and "12 finding(s)" for a
        # search of 12 objects read as 12 matches (a walk-through).
        said = f"The {len(hits)} finding(s) closest to your text, closest first (score: similarity; the filters narrow the list)."
        return [(thumbnail(self.store, h.finding), _caption(h)) for h in hits], table, said

    def photo_search(self, query):
        from core.library.photo_search import search_photos

        try:
            hits = search_photos(self.store, self.clip.get(), query or "")
        except (SlopewatchError, ValueError) as exc:
            return [], f"⚠ {exc}"
        return [(Image.open(h["path"]).convert("RGB"), f"photo {h['photo_id']} ({h['score']:.2f})") for h in hits], f"{len(hits)} photo(s)."


def build_library_tab(store, to_review: dict, open_finding, review_view, clip_folder=None):
    """Add the Library tab's components and wire its handlers inside the open ``gr.Tabs``.

    Args:
        store: the review store.
        to_review: the ``.then`` arguments that switch to the Review tab (at its top).
        open_finding: the Review tab's handler opening an object's photo, and ``review_view`` its outputs.
        clip_folder: CLIP checkpoint folder; None hides photo search.
    """
    tax = store.taxonomy
    h = LibraryHandlers(store, clip_folder)

    with gr.Tab("Library", id="library"):
        with gr.Row():
            embed_btn = gr.Button("Embed new photos", elem_id="sw-embed")
            embed_msg = gr.Markdown(elem_id="sw-embed-msg")
        with gr.Accordion("Map", open=True):
            with gr.Row():
                color_by = gr.Radio(list(COLOR_BY), value="class", label="Colour by")
                draw_btn = gr.Button("Draw map", elem_id="sw-draw-map")
            map_msg = gr.Markdown(elem_id="sw-map-msg")
            map_view = gr.HTML(elem_id="sw-map", js_on_load=MAP_JS)
            map_pick = gr.Number(visible=False, elem_id="sw-map-pick")
        with gr.Accordion("Similar objects", open=False):
            with gr.Row():
                sim_id = gr.Number(label="Object id (Review's object table and Search list it)", precision=0, elem_id="sw-sim-id")
                sim_k = gr.Slider(1, 50, value=8, step=1, label="How many")
                sim_btn = gr.Button("Find similar", elem_id="sw-sim")
            sim_msg = gr.Markdown()
            sim_gallery = gr.Gallery(label="Similar objects", columns=8, height="auto")
            sim_pick = gr.CheckboxGroup(label="Apply a class to these", choices=[])
            with gr.Row():
                sim_class = gr.Dropdown(label="Class", choices=tax.class_names, value=None)  # never a class nobody picked
                sim_apply = gr.Button("Apply class to selected", variant="primary")
            sim_status = gr.Markdown()
        with gr.Accordion("Search findings", open=False):
            with gr.Row():
                query = gr.Textbox(label="Search text", placeholder="blocked toe drain near vegetation", elem_id="sw-query")
                q_class = gr.Dropdown(label="Class", choices=[""] + tax.class_names, value="")
                q_status = gr.Radio(["any", Status.PENDING.value, Status.REVIEWED.value], value="any", label="Status")
                q_days = gr.Number(label="Updated in the last N days (0: any)", value=0, precision=0)
            q_btn = gr.Button("Search", elem_id="sw-search")
            q_msg = gr.Markdown()
            q_gallery = gr.Gallery(label="Matches", columns=8, height="auto")
            q_table = gr.Dataframe(headers=["id", "photo", "class", "status", "score", "rationale", "note"], interactive=False)
        with gr.Accordion("Photo search (CLIP)", open=False, visible=h.clip is not None):
            p_query = gr.Textbox(label="Describe the photo")
            p_btn = gr.Button("Search photos")
            p_msg = gr.Markdown()
            p_gallery = gr.Gallery(label="Photos", columns=4, height="auto")

    # One lane for embedding and drawing: a map drawn while an embedding ran said "No embedded
    # objects yet" beside "Embedded 6 new photo(s)"; it now waits for the embedding to end.
    library_lane = {"concurrency_id": "library-embed", "concurrency_limit": 1}
    # A map drawn before kept saying "No embedded objects yet" after an embedding: drawn anew.
    embed_btn.click(h.embed, None, embed_msg, api_name="embed", **library_lane).then(
        h.draw, color_by, [map_view, map_msg], api_name=False, show_progress="hidden", **library_lane)
    draw_btn.click(h.draw, color_by, [map_view, map_msg], api_name="draw", show_progress="hidden", **library_lane)
    map_view.click(h.pick, None, map_pick, api_name="pick").then(open_finding, map_pick, review_view, api_name=False).then(
        **to_review).then(**RELEASE)
    sim_btn.click(h.similar, [sim_id, sim_k], [sim_gallery, sim_pick, sim_msg], api_name="similar")
    sim_apply.click(h.bulk, [sim_pick, sim_class, sim_id, sim_k], [sim_status, sim_gallery, sim_pick], api_name="bulk")
    q_btn.click(h.search, [query, q_class, q_status, q_days], [q_gallery, q_table, q_msg], api_name="search")
    if h.clip is not None:
        p_btn.click(h.photo_search, p_query, [p_gallery, p_msg], api_name="photo_search")
