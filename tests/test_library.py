"""Library explorer: incremental embeddings, similar-object and text search, bulk relabel, map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.usecases.library import MapConfig, make_map
from core.data import load_dataset
from core.library.embeddings import IMAGE_MODEL, TextEncoder, embed_library
from core.library.map import PALETTE, MapPoint, colors, layout, map_points, map_svg
from core.library.search import NotEmbedded, SearchFilters, apply_class, cosine_top_k, similar_findings, text_search
from core.overlay import DEFAULT_COLORS
from core.photos import ingest
from core.taxonomy import load_taxonomy
from core.types import Detection, Finding
from db.store import Store

TAX = load_taxonomy()


def _add_sample_photos(store: Store, samples_yaml, folder, count: int) -> list[int]:
    """Ingest ``count`` real sample photos with their labelled objects as model findings."""
    ds = load_dataset(samples_yaml, TAX)
    store.ensure_user("ana")
    photo_ids = []
    for s in ds.samples("valid")[:count]:
        stored = ingest(s.image_path, folder)
        record, created = store.add_photo(stored.sha256, str(stored.path), stored.image.width, stored.image.height, s.image_path.name, "ana")
        photo_ids.append(record.id)
        if not created:  # a known photo is not inspected again
            continue
        findings = []
        for o in s.objects:
            classes = [c.name for c in TAX.classes_for_type(o.type)]
            probs = {c: (1.0 if c == o.class_name else 0.0) for c in classes}
            findings.append(Finding(Detection(o.box, o.type, 0.9), o.class_name, probs,
                                    f"{o.type.replace('_', ' ')} seen in the photo.", "fake", "1"))
        store.add_run(record.id, findings, "detector:test", "fake:1", 0.1)
    return photo_ids


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder()


def test_embedding_is_incremental(tmp_path, samples_yaml):
    store = Store(tmp_path / "lib.db", TAX)
    _add_sample_photos(store, samples_yaml, tmp_path, 2)
    first = embed_library(store)
    n_objects = store.query("SELECT count(*) AS n FROM findings")[0]["n"]
    assert (first.photos, first.findings) == (2, n_objects)
    assert embed_library(store) == type(first)(0, 0, 0)  # nothing new: nothing embedded

    ids = _add_sample_photos(store, samples_yaml, tmp_path, 4)  # two already known, two new
    new_objects = store.query("SELECT count(*) AS n FROM findings WHERE photo_id IN (?, ?)", tuple(ids[2:]))[0]["n"]
    second = embed_library(store)
    assert (second.photos, second.findings) == (2, new_objects)

    # A moved box is re-embedded; the others are not.
    state = store.query("SELECT * FROM finding_state ORDER BY finding_id LIMIT 1")[0]
    from core.types import Box

    store.correct(state["finding_id"], state["revision"], "ana", "edit_box",
                  box=Box(state["x1"], state["y1"], state["x2"], state["y2"] - 5))  # this object is 7 px wide: keep its width
    assert embed_library(store).findings == 1
    ids_, matrix = store.load_vectors("finding", IMAGE_MODEL)
    assert matrix.shape == (n_objects + new_objects, 1280) and np.isfinite(matrix).all()


def test_similar_objects_rank_the_planted_neighbour_first(tmp_path, samples_yaml):
    store = Store(tmp_path / "lib.db", TAX)
    _add_sample_photos(store, samples_yaml, tmp_path, 2)
    fids = [r["finding_id"] for r in store.query("SELECT finding_id FROM finding_state ORDER BY finding_id")]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(fids), 16)).astype(np.float32)
    vectors[-1] = vectors[0] + 0.01 * rng.normal(size=16)  # the planted near-duplicate of the first object
    store.save_vectors("finding", IMAGE_MODEL, [(f, "x", v) for f, v in zip(fids, vectors)])
    hits = similar_findings(store, fids[0], k=3)
    assert hits[0].finding.finding_id == fids[-1] and hits[0].score > 0.99
    assert fids[0] not in [h.finding.finding_id for h in hits] and len(hits) == 3
    # The Library names objects as Review numbers them, on their photo, with the id it takes.
    from app.library_tab import LibraryHandlers

    last, first = store.live_findings()[fids[-1]], store.live_findings()[fids[0]]
    gallery, choices, message = LibraryHandlers(store).similar(fids[0], 3)
    assert gallery[0][1].startswith(f"photo {last.photo_id} #{last.index} (id {last.finding_id}) ")
    assert message == f"3 similar object(s) to photo {first.photo_id} #{first.index} (id {first.finding_id})."
    # A bulk apply names each object it retyped, and shows the list again as it now is, unticked
    # (left as it was, it named the old classes and invited a second apply).
    hit_ids = [h.finding.finding_id for h in hits]
    other = next(c.name for c in TAX.classes if c.type != store.state(hit_ids[0]).object_type)
    was = store.state(hit_ids[0]).class_name
    said, gallery, choices = LibraryHandlers(store).bulk([hit_ids[0]], other, fids[0], 3, None)
    target = store.live_findings()[hit_ids[0]]
    assert said == (f"Saved: {other} on 1 object(s), one correction each. Type changed on 1: "
                    f"photo {target.photo_id} #{target.index} (id {hit_ids[0]}) (was {was}).")
    assert choices["value"] == [] and f"(id {hit_ids[0]}) {other} (" in dict((v, c) for c, v in choices["choices"])[hit_ids[0]]
    again, _, _ = LibraryHandlers(store).bulk([hit_ids[0]], other, fids[0], 3, None)
    assert again == f"Saved: {other} on 0 object(s), one correction each. 1 already had it as decided: left as they were."

    # Deleted objects are never offered.
    s = store.state(fids[-1])
    store.correct(fids[-1], s.revision, "ana", "delete")
    assert fids[-1] not in [h.finding.finding_id for h in similar_findings(store, fids[0], k=len(fids))]
    with pytest.raises(NotEmbedded):
        similar_findings(store, 10_000)


def test_cosine_top_k_excludes_and_orders():
    m = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    assert [i for i, _ in cosine_top_k(m, np.array([1, 0.1]), 3)] == [0, 2, 1]
    assert [i for i, _ in cosine_top_k(m, np.array([1, 0.1]), 3, exclude={0})] == [2, 1]
    assert cosine_top_k(np.zeros((0, 2)), np.array([1.0, 0.0]), 3) == []


def test_apply_class_to_similar_objects_writes_one_correction_each(tmp_path, samples_yaml):
    store = Store(tmp_path / "lib.db", TAX)
    _add_sample_photos(store, samples_yaml, tmp_path, 2)
    drains = [r["finding_id"] for r in store.query("SELECT finding_id FROM finding_state WHERE object_type = 'slope_drain'")][:2]
    veg = store.query("SELECT finding_id FROM finding_state WHERE object_type != 'slope_drain' LIMIT 1")[0]["finding_id"]
    before = store.query("SELECT count(*) AS n FROM corrections")[0]["n"]
    # A drain that already says "blocked" is accepted: a relabel to the class it has changes nothing.
    expected = ["accept" if store.state(f).class_name == "slope drain blocked" else "relabel" for f in drains] + ["retype"]
    out = apply_class(store, "bo", drains + [veg], "slope drain blocked")
    assert [o.class_name for o in out] == ["slope drain blocked"] * 3 and all(o.status == "reviewed" for o in out)
    assert store.state(veg).object_type == "slope_drain"  # another type is retyped with the class
    rows = store.query("SELECT * FROM corrections ORDER BY id")[before:]
    assert [r["reviewer"] for r in rows] == ["bo"] * 3 and [r["action"] for r in rows] == expected
    assert apply_class(store, "bo", drains, "slope drain blocked") == []  # all reviewed with the class: nothing to write


def test_text_search_with_filters(tmp_path, samples_yaml, text_encoder):
    store = Store(tmp_path / "lib.db", TAX)
    _add_sample_photos(store, samples_yaml, tmp_path, 3)
    target = store.query("SELECT * FROM finding_state WHERE object_type = 'toe_drain' LIMIT 1")[0]
    store.correct(target["finding_id"], target["revision"], "ana", "note", note="outlet choked with silt and reeds under vegetation")
    store.correct(target["finding_id"], target["revision"] + 1, "ana", "accept")  # a note alone decides nothing
    counts = embed_library(store, text=text_encoder)
    assert counts.texts == store.query("SELECT count(*) AS n FROM finding_state")[0]["n"]
    hits = text_search(store, text_encoder, "drain choked with silt", k=5)
    assert hits[0].finding.finding_id == target["finding_id"]
    only_reviewed = text_search(store, text_encoder, "slope drain", k=50, filters=SearchFilters(status="reviewed"))
    assert [h.finding.finding_id for h in only_reviewed] == [target["finding_id"]]
    by_class = text_search(store, text_encoder, "drain", k=50, filters=SearchFilters(class_name="vegetation"))
    assert by_class and all(h.finding.state.class_name == "vegetation" for h in by_class)
    assert text_search(store, text_encoder, "drain", k=5, filters=SearchFilters(since=target["updated_at"] + 3600)) == []
    # Editing the note re-embeds only that finding's text.
    s = store.state(target["finding_id"])
    store.correct(target["finding_id"], s.revision, "ana", "note", note="clear")
    assert embed_library(store, text=text_encoder).texts == 1
    with pytest.raises(ValueError, match="empty"):
        text_search(store, text_encoder, "  ")


def test_text_encoder_ranks_paraphrases(text_encoder):
    v = text_encoder.embed(["blocked toe drain", "the drain at the foot of the slope is clogged", "healthy grass"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_map_on_real_samples(tmp_path, samples_yaml, monkeypatch):
    db = tmp_path / "lib.db"
    store = Store(db, TAX)
    _add_sample_photos(store, samples_yaml, tmp_path, 6)
    result = make_map(MapConfig(out=tmp_path / "map.png", db=db, color_by="condition", embed=True))
    n = store.query("SELECT count(*) AS n FROM finding_state")[0]["n"]
    assert result["points"] == n and result["method"] == ("umap" if n >= 15 else "pca")
    image = Image.open(tmp_path / "map.png")
    assert image.size[0] > 300 and len(set(image.convert("L").getdata())) > 10  # drawn, not blank
    points, _ = map_points(store, "disagreement")
    assert {p.key for p in points} == {"not reviewed"}
    svg = map_svg(points, {points[0].finding_id: "data:image/jpeg;base64,AAAA"})
    assert svg.count('class="sw-pt"') == n and f'data-fid="{points[0].finding_id}"' in svg
    p = points[0]
    assert f'data-label="photo {p.photo_id} #{p.index} (id {p.finding_id}) ' in svg
    assert p.index == store.live_findings()[p.finding_id].index


def test_layout_falls_back_to_pca_and_handles_tiny_inputs():
    xy, method = layout(np.random.default_rng(0).normal(size=(5, 8)))
    assert method == "pca" and xy.shape == (5, 2) and xy.min() >= 0 and xy.max() <= 1
    assert layout(np.ones((1, 8)))[0].shape == (1, 2)
    assert layout(np.zeros((0, 8)))[1] == "none"


def test_a_map_by_condition_uses_the_review_colours():
    """A walk-through's find: the map coloured "normal" red and "damaged" orange, against the
    Review canvas's legend (normal green, damaged red)."""
    def points(*keys):
        return [MapPoint(k, 1, k, 0.0, 0.0, key, key) for k, key in enumerate(keys)]

    conditions = ("normal", "damaged", "blocked", "none")
    assert colors(points(*conditions)) == {k: DEFAULT_COLORS[k] for k in conditions}
    # Other keys (classes, statuses) have no colour of their own: the palette, one each.
    by_class = colors(points("Rock toe- Normal", "Toe drain- Blocked", "normal"))
    assert sorted(by_class.values()) == sorted(PALETTE[:3])


def test_map_refuses_an_empty_library(tmp_path):
    Store(tmp_path / "empty.db", TAX)
    with pytest.raises(NotEmbedded, match="slopewatch embed"):
        make_map(MapConfig(out=tmp_path / "m.png", db=tmp_path / "empty.db"))
    with pytest.raises(ValueError, match="color_by"):
        MapConfig(out=tmp_path / "m.png", color_by="mood")
