"""The web app through gradio_client against a launched server, with real photos."""


import pytest

gr = pytest.importorskip("gradio")

from core.paths import samples_dir  # noqa: E402
from db.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def server(probe_pipeline, free_port, tmp_path_factory):
    from app.models import ModelHost
    from app.web import ServeConfig, build_app, page_head

    db = tmp_path_factory.mktemp("web") / "review.db"
    store = Store(db)
    cfg = ServeConfig(no_auth=True, port=free_port())
    demo = build_app(ModelHost.ready(probe_pipeline), store, cfg)
    demo.launch(server_name="127.0.0.1", server_port=cfg.port, prevent_thread_lock=True, max_file_size="5mb",
                allowed_paths=[], head=page_head(), quiet=True, show_error=True)
    yield f"http://127.0.0.1:{cfg.port}/", store
    demo.close()


def test_upload_review_and_bad_files(server, tmp_path):
    from gradio_client import Client, handle_file

    url, store = server
    client = Client(url, verbose=False)
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[0]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    gallery, rows, message, last = client.predict([handle_file(str(photo)), handle_file(str(empty)), handle_file(str(text))],
                                                  api_name="/inspect")
    assert "✗ empty.jpg: expected" in message and "✗ notes.jpg: expected" in message  # each bad file named, with its reason
    assert len(gallery) == 1
    data = rows["data"] if isinstance(rows, dict) else rows
    photo_id = store.query("SELECT id FROM photos")[0]["id"]
    assert last == photo_id and data and all(r[0] == photo_id for r in data)
    # The same upload twice is one photo, not two.
    client.predict([handle_file(str(photo))], api_name="/inspect")
    assert store.query("SELECT count(*) AS n FROM photos")[0]["n"] == 1
    # Only the good photo was stored; the server is still serving.
    assert [r[1] for r in data] == list(range(len(data)))  # per-photo indices, as rationales cite them
    row = next(r for r in data if r[3] != "vegetation")
    fid = row[2]
    view = client.predict(photo_id, api_name="/open_photo")
    canvas = view[0]
    assert len(canvas["boxes"]) == len(data) and f"#{row[1]} {row[4]}" in [b["label"] for b in canvas["boxes"]]
    client.predict(photo_id, fid, api_name="/select_object")
    cands = [c.name for c in store.taxonomy.classes_for_type(row[3]) if c.name != row[4]]
    status = client.predict(photo_id, fid, store.state(fid).revision, cands[0], api_name="/set_class")[0]
    assert "Saved" in status
    assert store.state(fid).class_name == cands[0]
    hist = store.history(fid)
    assert hist[-1].reviewer == "anonymous" and hist[-1].action == "relabel"
    # Another reviewer changes it since: acting on the revision seen before is refused, the client
    # is told it changed, and nothing is lost. (Its own change since is no news: see caught_up.)
    store.ensure_user("bo")
    store.correct(fid, store.state(fid).revision, "bo", "relabel", class_name=row[4])
    stale = client.predict(photo_id, fid, 1, cands[0], api_name="/set_class")[0]
    assert "changed" in stale and store.state(fid).class_name == row[4]


def test_library_over_the_api(server):
    from gradio_client import Client, handle_file

    url, store = server
    client = Client(url, verbose=False)
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[1]
    client.predict([handle_file(str(photo))], api_name="/inspect")
    assert "Embedded" in client.predict(api_name="/embed")
    assert client.predict(api_name="/embed") == "Nothing new to embed."
    svg, note = client.predict("condition", api_name="/draw")
    live = store.query("SELECT finding_id, object_type FROM finding_state WHERE status != 'deleted' ORDER BY finding_id")
    assert svg.count('class="sw-pt"') == len(live) and ("pca" in note or "umap" in note)

    first = next(r for r in live if r["object_type"] != "vegetation")
    gallery, choices, message = client.predict(first["finding_id"], 3, api_name="/similar")
    assert len(gallery) == 3 and "similar" in message
    picked = [c[1] if isinstance(c, (list, tuple)) else c for c in choices["choices"]][:2]
    before = store.query("SELECT count(*) AS n FROM corrections")[0]["n"]
    retyped = [f for f in picked if store.state(int(f)).object_type != "rock_toe"]
    status, _, shown = client.predict(picked, "rock toe damaged", first["finding_id"], 3, api_name="/bulk")
    assert "2 object(s)" in status and (f"Type changed on {len(retyped)}:" in status) == bool(retyped)
    assert shown["value"] == []  # the list again, as it now is, unticked
    assert store.query("SELECT count(*) AS n FROM corrections")[0]["n"] == before + 2
    assert all(store.state(int(f)).class_name == "rock toe damaged" for f in picked)

    client.predict(api_name="/embed")  # the relabel changed two texts
    gallery, table, message = client.predict("damaged rock toe", "rock toe damaged", "reviewed", 0, api_name="/search")
    rows = table["data"] if isinstance(table, dict) else table
    assert sorted(r[0] for r in rows) == sorted(int(f) for f in picked)
    _, _, message = client.predict("", "", "any", 0, api_name="/search")
    assert "⚠" in message  # an empty query is refused, and the server keeps serving
    assert client.predict(api_name="/embed") == "Nothing new to embed."


def test_serve_config_rules(tmp_path):
    from app.web import ServeConfig

    with pytest.raises(ValueError, match="only on localhost"):
        ServeConfig(no_auth=True, host="0.0.0.0")
    with pytest.raises(ValueError, match="expected reviewers"):
        ServeConfig()
    with pytest.raises(ValueError, match="user:password"):
        ServeConfig(auth="ana")
    users = tmp_path / "users.txt"
    users.write_text("# reviewers\nana:one\nbo:two\n")
    assert ServeConfig(auth_file=users, auth="cy:three").users() == [("cy", "three"), ("ana", "one"), ("bo", "two")]
