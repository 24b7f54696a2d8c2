"""The web app's handlers called by name, without a server, on real photos and a real SQLite
file: inspect, the per-photo Review workspace (canvas save, class keys, accept, accept all,
undo, photo done, next photo), and the photo queue. Each asserts the correction rows written."""

import zipfile
from types import SimpleNamespace

import gradio as gr
import pytest

pytest.importorskip("gradio")

from conftest import db_rows as rows  # noqa: E402

from app.handlers import QUEUE_HEADERS, TABLE_HEADERS, Handlers  # noqa: E402
from app.models import ModelHost  # noqa: E402
from app.review_handlers import LIKELY_BOX_SCORE, ReviewHandlers  # noqa: E402
from app.usecases.canvas import canvas_scale, parse_label  # noqa: E402
from app.usecases.flight import SUFFIXES, photo_sources  # noqa: E402
from core.paths import samples_dir  # noqa: E402
from core.types import Box, Detection, Finding  # noqa: E402

ANA, BO = SimpleNamespace(username="ana"), SimpleNamespace(username="bo")
PHOTOS = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))
VIEW = len(ReviewHandlers.VIEW) + len(ReviewHandlers.PANEL)


class NoProgress:
    def tqdm(self, items, desc=None, total=None):
        return items


def view(out, offset=0) -> dict:
    """A handler's view tuple by component name (``offset`` 1 skips a leading status line); the
    canvas's boxes in ``#k`` order (the canvas lists them in ``click_rank`` order)."""
    v = dict(zip(ReviewHandlers.VIEW + ReviewHandlers.PANEL, out[offset:]))
    if isinstance(v.get("canvas"), dict) and v["canvas"].get("boxes"):
        v["canvas"] = {**v["canvas"], "boxes": sorted(v["canvas"]["boxes"], key=lambda b: parse_label(b["label"])[0])}
    return v


def shown(r, photo_id) -> dict:
    """``{finding id: revision}`` as the reviewer is shown the photo now (the view's ``seen``)."""
    return view(r.open_photo(photo_id))["seen"]


def inspect(app, *photos):
    gallery, table, message, last = app.h.inspect([str(p) for p in photos], ANA, NoProgress())
    return gallery, table, message, last


def test_inspect_lists_objects_with_their_photo_numbering_and_skips_bad_files(app, tmp_path):
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_text("hello")
    gallery, table, message, last = inspect(app, PHOTOS[0], bad, PHOTOS[0])
    assert len(gallery) == 1 and table and all(len(r) == len(TABLE_HEADERS) for r in table)
    assert [r[1] for r in table] == list(range(len(table)))  # "#k", as the overlay and canvas show it
    assert "✗ not_a_photo.jpg: expected" in message and "<" not in message  # the file's name and its reason, no raw "<bytes>"
    assert "Inspected 1 photo(s)" in message and last == table[0][0]
    assert f": {len(table)} object(s), {len(table)} to review." in message  # a fresh photo: every object pending
    assert rows(app.db, "SELECT count(*) FROM photos") == [(1,)]


def test_a_zipped_flight_streams_photo_by_photo_with_bad_members_listed(app, tmp_path):
    import zipfile

    flight = tmp_path / "flight.zip"
    with zipfile.ZipFile(flight, "w") as z:
        for p in PHOTOS[:3]:
            z.write(p, f"DCIM/{p.name}")
        z.writestr("DCIM/broken.jpg", b"not a jpeg")
        z.writestr("notes.txt", b"skipped: not a photo")
    steps = list(app.h.inspect_stream([str(flight), str(PHOTOS[4])], ANA, NoProgress()))
    # The last run's answer cleared first, then one update per good photo (reviewable at once), then the summary.
    assert steps[0] == ([], [], "Inspecting 5 photo(s)…", None)
    assert [len(g) for g, *_ in steps] == [0, 1, 2, 3, 4, 4]
    assert "Inspected 1 of 5 photo(s)" in steps[1][2] and steps[1][3] is not None
    gallery, table, message, last = steps[-1]
    assert "Inspected 4 photo(s) at " in message and message.count("✗") == 1
    assert "✗ flight.zip: broken.jpg" in message or "✗ flight.zip:DCIM/broken.jpg" in message  # which archive, which member
    assert message.endswith("\n\n− Left out, not photos: flight.zip:notes.txt")  # skipped, said after the result
    names = [r[0] for r in rows(app.db, "SELECT original_name FROM photos ORDER BY id")]
    assert names == [p.name for p in PHOTOS[:3]] + [PHOTOS[4].name]  # members keep their own names
    # The same zip again, twice over (an upload box that kept the last flight): one pass, nothing new.
    again = app.h.inspect([str(flight), str(flight)], ANA, NoProgress())[2]
    assert "3 had been inspected before" in again and "same photo as" not in again and again.count("✗") == 1
    assert rows(app.db, "SELECT count(*) FROM photos") == [(4,)]


def test_an_archive_or_folder_without_photos_is_named_with_its_reason(app, tmp_path):
    """A walk-through's find: an empty zip, or one holding only a text file, cleared the page and
    said nothing."""
    empty, text, folder = tmp_path / "empty.zip", tmp_path / "notes.zip", tmp_path / "DCIM"
    zipfile.ZipFile(empty, "w").close()
    with zipfile.ZipFile(text, "w") as z:
        z.writestr("readme.txt", b"no photos here")
    folder.mkdir()
    *_, message, last = app.h.inspect([str(empty), str(text)], ANA, NoProgress())
    assert message.splitlines()[::2] == [f"✗ empty.zip: expected photos ({', '.join(SUFFIXES)}) in the archive, found it empty",
                                         f"✗ notes.zip: expected photos ({', '.join(SUFFIXES)}) in the archive, found 1 file(s) "
                                         "without a photo suffix", "Nothing inspected."]
    assert last is None and rows(app.db, "SELECT count(*) FROM photos") == [(0,)]
    # A zip with photos among other files is not refused; a folder (the CLI's) without them is.
    with zipfile.ZipFile(text, "a") as z:
        z.write(PHOTOS[0], PHOTOS[0].name)
    assert "✗" not in app.h.inspect([str(text)], ANA, NoProgress())[2]
    [(name, error)] = photo_sources([folder])
    assert name == "DCIM" and str(error).endswith("in the folder, found it empty")


def test_models_loading_is_said_not_crashed(app):
    loading = Handlers(ModelHost(lambda version: None), app.store)
    assert "loading" in loading.inspect([str(PHOTOS[0])], ANA, NoProgress())[2]


def test_canvas_edits_each_write_one_correction(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    boxes = v["canvas"]["boxes"]
    assert [b["label"].split(" ")[0] for b in boxes] == [f"#{k}" for k in range(len(boxes))]
    ids = [fid for fid, _ in sorted(((int(k), r) for k, r in v["seen"].items()))]
    assert len(boxes) >= 2
    # Move #0, delete #1, draw a new rock toe: three corrections, one per change.
    edited = [{**boxes[0], "xmin": boxes[0]["xmin"] + 6, "xmax": boxes[0]["xmax"] + 6}, *boxes[2:],
              {"xmin": 5, "ymin": 5, "xmax": 60, "ymax": 50, "label": "rock toe damaged"}]
    out = app.r.save_canvas(photo_id, {"boxes": edited}, v["seen"], ANA)
    assert out[0].startswith("Saved") and "#1 deleted" in out[0] and "added" in out[0]
    # A move decides the box only: the reviewer is told the class still waits for an accept.
    cls = app.store.state(ids[0]).class_name
    assert f"#0 moved/resized (its class, {cls}, is still pending: a accepts it)" in out[0]
    assert app.store.state(ids[0]).status.value == "pending"
    moved = dict(zip(ReviewHandlers.PANEL, app.r.select(photo_id, ids[0])))
    assert "— pending, revision 1, last changed by ana" in moved["detail"]  # not "by ana", which reads as her decision
    got = rows(app.db, "SELECT finding_id, action, reviewer FROM corrections ORDER BY id")
    assert got == [(ids[1], "delete", "ana"), (ids[0], "edit_box", "ana"), (max(ids) + 1, "add", "ana")]
    x1 = rows(app.db, "SELECT x1 FROM finding_state WHERE finding_id = ?", ids[0])[0][0]
    photo = app.store.photo(photo_id)
    assert x1 == pytest.approx((boxes[0]["xmin"] + 6) / canvas_scale(photo.width, photo.height), abs=1)  # stored in photo pixels
    # The canvas echoes what the server drew: nothing more is written, nothing redrawn.
    again = view(out, 1)
    assert not isinstance(app.r.save_canvas(photo_id, again["canvas"], again["seen"], ANA)[0], str)  # gr.skip(): nothing said
    assert len(rows(app.db, "SELECT id FROM corrections")) == 3
    # A second reviewer saving over the old view is refused, the photo reloads, nothing is written.
    stale = app.r.save_canvas(photo_id, {"boxes": edited[:1]}, v["seen"], BO)
    assert "changed" in stale[0] and len(rows(app.db, "SELECT id FROM corrections")) == 3


def test_the_panel_follows_the_object_a_canvas_edit_or_an_undo_touched(app):
    """A walk-through's defect: with #3 selected, moving #2 said "Saved: #2 moved/resized" while
    the panel switched to #0; undoing a delete of #1 left the panel on #0 too."""
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    boxes = v["canvas"]["boxes"]
    ids = [fid for fid, _ in sorted(((int(k), r) for k, r in v["seen"].items()))]
    assert len(ids) >= 3
    moved = [*boxes[:1], {**boxes[1], "xmin": boxes[1]["xmin"] + 8, "xmax": boxes[1]["xmax"] + 8}, *boxes[2:]]
    out = app.r.save_canvas(photo_id, {"boxes": moved}, v["seen"], ANA)
    assert "#1 moved/resized" in out[0] and view(out, 1)["select"]["value"] == ids[1]
    after = view(out, 1)
    out = app.r.save_canvas(photo_id, {"boxes": [b for k, b in enumerate(after["canvas"]["boxes"]) if k != 2]}, after["seen"], ANA)
    assert "#2 deleted" in out[0]
    # Undoing the delete shows the box it brought back.
    out = app.r.undo(photo_id, ANA)
    assert out[0] == "Undone: your delete of #2 (restored)." and view(out, 1)["select"]["value"] == ids[2]


def test_each_undo_says_which_of_the_reviewers_actions_it_took_back(app):
    """Undo said only "your last action on #2": after a run of edits a reviewer could not tell
    whether Ctrl+Z took back the relabel or the box move. Actions done, then undone newest first."""
    *_, photo_id = inspect(app, PHOTOS[2])
    tax = app.store.taxonomy
    f = next(f for f in app.store.photo_findings(photo_id) if len(tax.classes_for_type(f.state.object_type)) > 1)
    model_class = f.state.class_name
    other = next(c.name for c in tax.classes_for_type(f.state.object_type) if c.name != model_class)
    other_type = next(t for t in tax.type_names if t != f.state.object_type)
    rev = lambda: app.store.state(f.finding_id).revision  # noqa: E731

    def move():
        v = view(app.r.open_photo(photo_id))
        boxes = [*v["canvas"]["boxes"]]
        boxes[f.index] = {**boxes[f.index], "xmin": boxes[f.index]["xmin"] + 9, "xmax": boxes[f.index]["xmax"] + 9}
        return app.r.save_canvas(photo_id, {"boxes": boxes}, v["seen"], ANA)

    done = [  # (the action, what its undo says)
        (lambda: app.r.accept(photo_id, f.finding_id, rev(), ANA), f"your accept of #{f.index} (pending again)"),
        (move, f"your box move on #{f.index} (box back where it was)"),
        (lambda: app.r.set_class(photo_id, f.finding_id, rev(), other, ANA), f"your relabel of #{f.index} (back to {model_class})"),
        (lambda: app.r.edit_rationale(photo_id, f.finding_id, rev(), "silt at the outlet", ANA),
         f"your rationale edit on #{f.index} (the earlier rationale is back)"),
        (lambda: app.r.add_note(photo_id, f.finding_id, rev(), "check again", ANA), f"your note on #{f.index} (the earlier note is back)"),
        (lambda: app.r.retype(photo_id, f.finding_id, rev(), other_type, tax.classes_for_type(other_type)[0].name, ANA),
         f"your type change of #{f.index} (back to {other})"),
        (lambda: app.r.delete(photo_id, f.finding_id, rev(), ANA), f"your delete of #{f.index} (restored)"),
    ]
    for act, _ in done:
        assert act()[0].startswith("Saved"), act
    for _, said in reversed(done):
        assert app.r.undo(photo_id, ANA)[0] == f"Undone: {said}."
    assert app.store.state(f.finding_id).class_name == model_class and app.store.state(f.finding_id).status == "pending"
    # A drawn box's undo removes it; a whole "Accept all" comes back pending in one undo.
    fresh = view(app.r.open_photo(photo_id))
    drawn = app.r.save_canvas(photo_id, {"boxes": [*fresh["canvas"]["boxes"], {"xmin": 5, "ymin": 5, "xmax": 60, "ymax": 50,
                                                                                  "label": "rock toe damaged"}]}, fresh["seen"], ANA)
    k = len(fresh["canvas"]["boxes"])
    assert "added" in drawn[0] and app.r.undo(photo_id, ANA)[0] == f"Undone: your drawn box #{k} (removed)."
    app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    assert app.r.undo(photo_id, ANA)[0].endswith(" (pending again).")
    assert app.r.undo(photo_id, ANA)[0] == "Nothing of yours to undo on this photo."


def test_a_key_pressed_before_the_last_one_was_answered_applies_over_her_own_change_only(app):
    """Keys queued faster than the page redraws carry the revision from before the reviewer's
    previous key. Her own change since is no news to her: "2" then "1" ends on class 1. Another
    reviewer's change in between still refuses the edit."""
    *_, photo_id = inspect(app, PHOTOS[2])
    tax = app.store.taxonomy
    f = next(f for f in app.store.photo_findings(photo_id) if len(tax.classes_for_type(f.state.object_type)) > 2)
    slip, meant = [c.name for c in tax.classes_for_type(f.state.object_type) if c.name != f.state.class_name][:2]
    assert app.r.set_class(photo_id, f.finding_id, 0, slip, ANA)[0].startswith("Saved")
    assert app.r.set_class(photo_id, f.finding_id, 0, meant, ANA)[0] == f"Saved: #{f.index} relabelled → {meant}."
    assert app.store.state(f.finding_id).class_name == meant
    assert app.r.accept(photo_id, f.finding_id, 0, ANA)[0].startswith(f"#{f.index} is already decided by you")
    app.r.set_class(photo_id, f.finding_id, 2, slip, BO)  # bo changes it
    refused = app.r.set_class(photo_id, f.finding_id, 2, meant, ANA)
    assert refused[0].startswith("⚠ Not saved") and app.store.state(f.finding_id).class_name == slip
    # Not over her accept (the page moved on: a class key pressed meanwhile may be meant for the
    # next object) nor over her delete (a key would bring the box back as a training label).
    g, h = [x for x in app.store.photo_findings(photo_id) if x.finding_id != f.finding_id
            and len(tax.classes_for_type(x.state.object_type)) > 1][:2]
    other = next(c.name for c in tax.classes_for_type(g.state.object_type) if c.name != g.state.class_name)
    assert app.r.accept(photo_id, g.finding_id, 0, ANA)[0].startswith("Saved")
    assert app.r.set_class(photo_id, g.finding_id, 0, other, ANA)[0].startswith("⚠ Not saved")
    assert app.r.delete(photo_id, h.finding_id, 0, ANA)[0].startswith("Saved")
    assert app.r.accept(photo_id, h.finding_id, 0, ANA)[0].startswith("⚠ Not saved")
    assert app.store.state(g.finding_id).class_name == g.state.class_name and app.store.state(h.finding_id).status == "deleted"
    # A drawn box whose label is text typed into the dialog (appended to the placeholder) waits
    # for a class from the list: nothing written, nothing lost, the reviewer told what to do.
    v = view(app.r.open_photo(photo_id))
    n = rows(app.db, "SELECT count(*) FROM corrections")
    typed = app.r.save_canvas(photo_id, {"boxes": [*v["canvas"]["boxes"], {"xmin": 5, "ymin": 5, "xmax": 60, "ymax": 50,
                                                                             "label": "(choose a class)vege"}]}, v["seen"], ANA)
    assert typed[0].startswith("A drawn box waits for its class") and rows(app.db, "SELECT count(*) FROM corrections") == n
    # Dismissed (Escape): the canvas reports it without the box, and the hint about it goes; any
    # other line stays as it was.
    assert app.r.save_canvas(photo_id, v["canvas"], v["seen"], ANA, shown=typed[0])[0] == ""
    assert app.r.save_canvas(photo_id, v["canvas"], v["seen"], ANA, shown="Saved: #1 deleted.")[0] == gr.skip()


def test_an_undo_another_reviewer_overtook_says_so_and_that_retrying_cannot_help(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    app.r.open_photo(photo_id)
    assert app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)[0].startswith("Saved: accepted")
    assert app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)[0] == "Nothing saved: no object on this photo is pending."
    # Not #0: the view's default selection, which would pass for "kept selected" by chance.
    target = [f for f in app.store.photo_findings(photo_id) if len(app.store.taxonomy.classes_for_type(f.state.object_type)) > 1][-1]
    assert target.index > 0
    other = next(c.name for c in app.store.taxonomy.classes_for_type(target.state.object_type) if c.name != target.state.class_name)
    app.store.ensure_user("bo")
    app.store.correct(target.finding_id, target.state.revision, "bo", "relabel", class_name=other)
    out = app.r.undo(photo_id, ANA)
    assert out[0].startswith(f"⚠ Not undone: #{target.index} changed since your last action on it: bo relabelled it")
    assert "can no longer be undone" in out[0] and rows(app.db, "SELECT count(*) FROM corrections WHERE action = 'undo'") == [(0,)]
    assert view(out, 1)["select"]["value"] == target.finding_id  # the object the refusal is about stays selected


def test_accept_all_leaves_what_another_reviewer_changed_since_the_photo_was_loaded(app):
    """Shift+A decides only what the reviewer was shown: a box bo moved after ana loaded the photo
    stays pending for her to look at, and the status line says what bo did (no class: he moved it)."""
    *_, photo_id = inspect(app, PHOTOS[2])
    loaded = shown(app.r, photo_id)
    target = app.store.photo_findings(photo_id)[1]
    b = target.state.box
    app.store.ensure_user("bo")
    app.store.correct(target.finding_id, target.state.revision, "bo", "edit_box", box=Box(b.x1 + 5, b.y1, b.x2 + 5, b.y2))
    out = app.r.accept_all(photo_id, loaded, ANA)
    states = {f.finding_id: f.state.status for f in app.store.photo_findings(photo_id)}
    assert states.pop(target.finding_id) == "pending" and set(states.values()) == {"reviewed"}
    assert out[0] == (f"Saved: accepted {len(states)} object(s). Left as others changed them since you loaded the photo (check "
                      f"them): #{target.index}: bo moved its box.")
    # Sent without what was shown (an old client), nothing is accepted, and the line does not
    # claim that nothing is pending.
    assert app.r.accept_all(photo_id, {}, ANA)[0] == ("Nothing saved: what you were shown of this photo is out of date. It has been "
                                                      "reloaded; press again.")
    # Loaded again, it is shown as bo left it, and accepted.
    assert app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)[0] == "Saved: accepted 1 object(s)."


def test_accept_all_takes_the_reviewers_own_change_since_as_seen(app):
    """A box ana nudged a moment ago (its reply not back yet, or in another tab) is no news to her:
    Shift+A from the view before it accepts it too, and names nothing."""
    *_, photo_id = inspect(app, PHOTOS[2])
    loaded = shown(app.r, photo_id)
    target = app.store.photo_findings(photo_id)[1]
    b = target.state.box
    app.store.correct(target.finding_id, target.state.revision, "ana", "edit_box", box=Box(b.x1 + 2, b.y1, b.x2 + 2, b.y2))
    n = len(app.store.photo_findings(photo_id))
    assert app.r.accept_all(photo_id, loaded, ANA)[0] == f"Saved: accepted {n} object(s)."
    assert {f.state.status for f in app.store.photo_findings(photo_id)} == {"reviewed"}


def test_class_keys_accept_accept_all_undo_and_photo_done(app):
    *_, photo_id = inspect(app, PHOTOS[2])
    app.r.open_photo(photo_id)
    tax = app.store.taxonomy
    # An object whose type has several classes, so a class key can change it.
    first = next(f.finding_id for f in app.store.photo_findings(photo_id) if len(tax.classes_for_type(f.state.object_type)) > 1)
    panel = dict(zip(ReviewHandlers.PANEL, app.r.select(photo_id, first)))
    state = app.store.state(first)
    other = next(c.name for c in tax.classes_for_type(state.object_type) if c.name != state.class_name)
    out = app.r.set_class(photo_id, first, panel["revision"], other, ANA)
    assert out[0].startswith("Saved") and app.store.state(first).class_name == other
    # Choosing the class it already has writes nothing.
    assert "already" in app.r.set_class(photo_id, first, app.store.state(first).revision, other, ANA)[0]
    # `a` right after one's own relabel writes nothing and selects the next pending object after it.
    n = len(rows(app.db, "SELECT id FROM corrections"))
    moved = app.r.accept(photo_id, first, app.store.state(first).revision, ANA)
    pending = [f.finding_id for f in app.store.photo_findings(photo_id) if f.state.status == "pending"]
    assert "already decided by you" in moved[0] and len(rows(app.db, "SELECT id FROM corrections")) == n
    after = [f for f in pending if f > first]  # finding ids follow #k on one photo
    assert view(moved, 1)["select"]["value"] == (after or pending)[0] != first
    # A stale accept is refused and stays on the same object.
    stale = app.r.accept(photo_id, first, -1, ANA)
    assert stale[0].startswith("⚠ Not saved") and view(stale, 1)["select"]["value"] == first
    n_before = len(rows(app.db, "SELECT id FROM corrections"))
    done_early = app.r.photo_done(photo_id, shown(app.r, photo_id), ANA)
    still = sorted(f.index for f in app.store.photo_findings(photo_id) if f.state.status == "pending")
    assert done_early[0].startswith(f"⚠ Not done yet: #{still[0]}") and "still pending" in done_early[0]
    assert len(rows(app.db, "SELECT id FROM photo_reviews")) == 0
    out = app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    pending = [f for f in app.store.photo_findings(photo_id) if f.state.status == "pending"]
    assert out[0].startswith("Saved: accepted") and not pending
    accepted = len(rows(app.db, "SELECT id FROM corrections")) - n_before
    assert accepted == len(rows(app.db, "SELECT id FROM corrections WHERE action = 'accept'"))
    # One undo takes the whole "Accept all" back, one undo row per accept; nothing is deleted.
    undone = app.r.undo(photo_id, ANA)
    assert undone[0].startswith("Undone: your accept of #") and undone[0].endswith("(pending again).") and undone[0].count("#") == accepted
    assert rows(app.db, "SELECT count(*) FROM corrections WHERE action = 'undo' AND reviewer = 'ana'") == [(accepted,)]
    assert sorted(f.state.status for f in app.store.photo_findings(photo_id)).count("pending") == accepted
    app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    done = view(app.r.photo_done(photo_id, shown(app.r, photo_id), ANA), 1)
    assert "reviewed" in done["header"] and rows(app.db, "SELECT reviewer FROM photo_reviews") == [("ana",)]
    # The canvas marks decided boxes as the object list does, and the mark is no class change.
    assert all(b["label"].endswith(" ✓") for b in done["canvas"]["boxes"])
    n = len(rows(app.db, "SELECT id FROM corrections"))
    assert not isinstance(app.r.save_canvas(photo_id, done["canvas"], done["seen"], ANA)[0], str)  # no line: nothing to say
    assert len(rows(app.db, "SELECT id FROM corrections")) == n
    again = app.r.photo_done(photo_id, shown(app.r, photo_id), ANA)
    assert again[0].startswith("Nothing saved: this photo is already done") and rows(app.db, "SELECT count(*) FROM photo_reviews") == [(1,)]


def test_next_photo_and_queue_by_photo(app):
    inspect(app, PHOTOS[0], PHOTOS[3])
    ids = [r[0] for r in app.h.queue_rows("", "", "", "", "")]
    assert len(ids) == 2 and all(len(r) == len(QUEUE_HEADERS) for r in app.h.queue_rows("", "", "", "", ""))
    first = view(app.r.open_photo(ids[0]))
    assert view(app.r.next_photo(ids[0]))["photo"] != first["photo"]
    assert not view(app.r.next_photo(ids[0]))["header"].startswith("↻")
    wrapped = view(app.r.next_photo(view(app.r.next_photo(ids[0]))["photo"]))
    assert wrapped["photo"] == ids[0] and wrapped["header"].startswith("↻ Past the last photo: back to the first.")  # wraps, and says so
    assert view(app.r.prev_photo(ids[0]))["header"].startswith("↻ Before the first photo: on to the last.")
    app.r.accept_all(ids[0], shown(app.r, ids[0]), ANA)
    app.r.photo_done(ids[0], shown(app.r, ids[0]), ANA)
    assert [r[0] for r in app.h.queue_rows("", "", "", "", "")][-1] == ids[0]  # a done photo goes last
    assert view(app.r.next_in_queue(ids[0]))["photo"] == ids[1]
    assert view(app.r.next_in_queue(ids[1]))["header"].startswith("This is the last photo left to review.")
    # The model and reviewer filters offer what the store holds (exact values nobody could type), and each filters.
    models, reviewers = (u["choices"] for u in app.h.queue_filter_choices())
    held = sorted({f.model_version for i in ids for f in app.store.photo_findings(i)})
    assert [m[1] if isinstance(m, tuple) else m for m in models] == ["", *held] and len(held) > 1
    assert ("passthrough:1 (types with one class, such as vegetation: labelled without a stage-2 model)", "passthrough:1") in models
    assert reviewers == [("(any)", ""), "ana"]
    assert [r[0] for r in app.h.queue_rows("", "", "", "", "ana")] == [ids[0]]
    for version in held:
        assert app.h.queue_rows("", "", "", version, ""), version
    assert app.h.queue_rows("", "", "", "nope", "") == []
    # The Class filter lists the chosen type's classes; a class of another type is cleared.
    narrowed = app.h.queue_class_choices("vegetation", "slope drain damaged")
    assert narrowed["choices"] == [("(any)", ""), "vegetation"] and narrowed["value"] == ""
    kept = app.h.queue_class_choices("slope_drain", "slope drain damaged")
    assert kept["value"] == "slope drain damaged" and len(kept["choices"]) == 4
    assert app.h.queue_class_choices("", "rock toe")["choices"] == [("(any)", ""), *app.store.taxonomy.class_names]
    # Opening the Review tab with no photo open starts on the next one to review; with one open it changes nothing.
    assert view(app.r.open_first(None))["photo"] == ids[1] and view(app.r.open_first(0))["photo"] == ids[1]
    assert list(app.r.open_first(ids[0])) == [gr.skip()] * len(ReviewHandlers.VIEW + ReviewHandlers.PANEL)
    # The queue emptied: the button says so instead of doing nothing.
    app.r.accept_all(ids[1], shown(app.r, ids[1]), ANA)
    app.r.photo_done(ids[1], shown(app.r, ids[1]), ANA)
    emptied = view(app.r.next_in_queue(ids[1]))
    assert emptied["photo"] == ids[1] and emptied["header"].startswith("✓ Every photo is reviewed: nothing left in the queue.")


def test_a_box_drawn_on_a_photo_changed_meanwhile_is_saved_as_drawn_and_the_other_change_kept(app):
    """A walk-through's defect: bo deleted #1 while ana had the photo open; ana drew a box. The
    drawn box's first event reloaded her canvas with the class dialog open, and the class she
    then picked relabelled #0 ('Saved: #0 retype → vegetation'), her box lost. Then the whole
    photo was refused; now her canvas is compared with the photo as she loaded it, so her box is
    saved, bo's delete stands, and she is told about it."""
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    boxes = v["canvas"]["boxes"]
    ids = [fid for fid, _ in sorted(((int(k), r) for k, r in v["seen"].items()))]
    app.store.ensure_user("bo")
    app.store.correct(ids[1], 0, "bo", "delete")
    drawn = {"xmin": 5, "ymin": 5, "xmax": 60, "ymax": 50, "label": ""}
    waiting = app.r.save_canvas(photo_id, {"boxes": [*boxes, drawn]}, v["seen"], ANA)
    # Nothing written and nothing redrawn while the class dialog is open: only the hint.
    assert "waits for its class" in waiting[0]
    assert isinstance(view(waiting, 1)["canvas"], type(gr.skip()))
    chosen = app.r.save_canvas(photo_id, {"boxes": [*boxes, {**drawn, "label": "vegetation"}]}, v["seen"], ANA)
    assert chosen[0].startswith(f"Saved: added #{len(ids)} vegetation.")
    assert chosen[0].endswith("Also changed by others since you loaded the photo (kept): #1: bo deleted it.")
    assert rows(app.db, "SELECT reviewer, action, finding_id FROM corrections") == [("bo", "delete", ids[1]), ("ana", "add", max(ids) + 1)]
    assert app.store.state(ids[1]).status.value == "deleted" and app.store.state(ids[0]).revision == 0  # nothing of bo's undone


def test_a_canvas_save_without_what_was_seen_is_refused_not_saved_as_duplicates(app):
    """Compared with the photo as loaded, a canvas sent without ``seen`` (a client that dropped it)
    would read every "#k" box as new; it is refused instead and nothing is written."""
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    boxes = v["canvas"]["boxes"]
    moved = [{**boxes[0], "xmin": boxes[0]["xmin"] + 9, "xmax": boxes[0]["xmax"] + 9}, *boxes[1:]]
    for seen in ({}, None):
        out = app.r.save_canvas(photo_id, {"boxes": moved}, seen, ANA)
        assert out[0].startswith("⚠ Not saved: photo") and rows(app.db, "SELECT count(*) FROM corrections") == [(0,)]
        # The canvas only reporting the photo just opened (its value reached the server before
        # ``seen`` did: a photo opened from the Queue) is no edit: no warning, nothing written.
        assert not isinstance(app.r.save_canvas(photo_id, {"boxes": boxes}, seen, ANA)[0], str)
    assert len(app.store.photo_findings(photo_id)) == len(boxes) and rows(app.db, "SELECT count(*) FROM corrections") == [(0,)]


def test_a_canvas_change_to_an_object_another_reviewer_changed_is_refused(app):
    """Only changes to objects changed since are refused: ana moves #0, which bo relabelled meanwhile."""
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    boxes = v["canvas"]["boxes"]
    ids = [fid for fid, _ in sorted(((int(k), r) for k, r in v["seen"].items()))]
    app.store.ensure_user("bo")
    other = next(c.name for c in app.store.taxonomy.classes if c.type == app.store.state(ids[0]).object_type
                 and c.name != app.store.state(ids[0]).class_name)
    app.store.correct(ids[0], 0, "bo", "relabel", class_name=other)
    # ana's canvas still shows #0 with the old class: unmoved, it is no change of hers and writes nothing.
    assert not isinstance(app.r.save_canvas(photo_id, {"boxes": boxes}, v["seen"], ANA)[0], str)
    moved = [{**boxes[0], "xmin": boxes[0]["xmin"] + 9, "xmax": boxes[0]["xmax"] + 9}, *boxes[1:]]
    out = app.r.save_canvas(photo_id, {"boxes": moved}, v["seen"], ANA)
    assert out[0].startswith("⚠ Not saved: photo") and f"#0: bo relabelled it (now {other})" in out[0]
    assert view(out, 1)["select"]["value"] == ids[0]  # the refused edit's object stays selected, to look at again
    assert rows(app.db, "SELECT reviewer, action FROM corrections") == [("bo", "relabel")]
    assert app.store.state(ids[0]).class_name == other
    # Moving #1, which nobody touched, from the same old view is saved, and bo's relabel of #0 stands.
    moved = [boxes[0], {**boxes[1], "xmin": boxes[1]["xmin"] + 9, "xmax": boxes[1]["xmax"] + 9}, *boxes[2:]]
    out = app.r.save_canvas(photo_id, {"boxes": moved}, v["seen"], ANA)
    assert out[0].startswith("Saved: #1 moved/resized") and f"(kept): #0: bo relabelled it (now {other})." in out[0]
    assert rows(app.db, "SELECT reviewer, action FROM corrections") == [("bo", "relabel"), ("ana", "edit_box")]
    assert app.store.state(ids[0]).class_name == other


def test_a_stale_rationale_save_keeps_the_draft_and_says_what_the_other_reviewer_did(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    v = view(app.r.open_photo(photo_id))
    fid = v["select"]["value"]
    app.store.ensure_user("bo")
    app.store.correct(fid, 0, "bo", "edit_rationale", rationale="bo's reason")
    out = app.r.edit_rationale(photo_id, fid, 0, "ana's reason", ANA)
    k = app.r._index(fid)
    assert out[0].startswith(f"⚠ Not saved: #{k} changed since you loaded it: bo edited its rationale: “bo's reason”. ")
    assert out[0].endswith("Your rationale is still in its box: save it again to replace theirs.")
    assert view(out, 1)["rationale"]["value"] == "ana's reason"  # her draft, not bo's text
    assert app.store.state(fid).rationale == "bo's reason" and len(rows(app.db, "SELECT id FROM corrections")) == 1
    # Saved again over the reloaded revision: hers replaces his, and the line says what was saved.
    saved = app.r.edit_rationale(photo_id, fid, app.store.state(fid).revision, "ana's reason", ANA)
    assert saved[0] == f"Saved: #{app.r._index(fid)} rationale saved." and app.store.state(fid).rationale == "ana's reason"


def test_saving_one_text_field_leaves_the_other_as_the_reviewer_has_it(app):
    """A rationale save's answer redrew the note too: a note typed while the save was on its way
    was replaced by the stored one, unsaved. Each save now leaves the other field alone, unless the
    answer shows another object (the saved one deleted meanwhile)."""
    *_, photo_id = inspect(app, PHOTOS[1])
    fid = app.store.photo_findings(photo_id)[0].finding_id
    out = view(app.r.edit_rationale(photo_id, fid, 0, "silt at the outlet", ANA), 1)
    assert app.store.state(fid).rationale == "silt at the outlet" and out["rationale"] == "silt at the outlet"
    assert out["note"] == gr.skip()  # the note box keeps what it holds
    out = view(app.r.add_note(photo_id, fid, app.store.state(fid).revision, "check again", ANA), 1)
    assert out["note"] == "check again" and out["rationale"] == gr.skip()
    # An empty save is refused, and the other field is still left alone.
    assert view(app.r.add_note(photo_id, fid, app.store.state(fid).revision, " ", ANA), 1)["rationale"] == gr.skip()
    # The object was deleted meanwhile: the answer shows another one, whose note is drawn.
    app.store.correct(fid, app.store.state(fid).revision, "ana", "delete")
    out = view(app.r.edit_rationale(photo_id, fid, 0, "late", ANA), 1)
    assert out["select"]["value"] != fid and out["note"] == (app.store.state(out["select"]["value"]).note or "")


def test_status_lines_name_what_was_saved(app):
    *_, photo_id = inspect(app, PHOTOS[2])
    pending = [f for f in app.store.photo_findings(photo_id) if len(app.store.taxonomy.classes_for_type(f.state.object_type)) > 1]
    first, second = pending[:2]
    other = next(c.name for c in app.store.taxonomy.classes_for_type(first.state.object_type) if c.name != first.state.class_name)
    relabelled = app.r.set_class(photo_id, first.finding_id, 0, other, ANA)
    # The emptied rationale field is said, or it read as text lost.
    assert relabelled[0] == (f"Saved: #{first.index} relabelled → {other} (the rationale, which argued for {first.state.class_name}, "
                             "is cleared: write yours if it helps).")
    # The model's rationale argued for its own label: it leaves the editable box (and the stored
    # state) and is shown as what the model said.
    panel = view(relabelled, 1)
    assert first.state.rationale and panel["rationale"] == "" and app.store.state(first.finding_id).rationale == ""
    assert f"The model said **{first.state.class_name}**: {first.state.rationale}" in panel["detail"]
    # A note decides nothing: the object stays pending, so the model's label does not become a
    # training label because a reviewer wrote "not sure".
    assert app.r.add_note(photo_id, second.finding_id, 0, "not sure", ANA)[0] == (
        f"Saved: #{second.index} note saved (the object is still pending: a note decides nothing).")
    assert app.store.state(second.finding_id).status == "pending"
    assert app.r.delete(photo_id, second.finding_id, 1, ANA)[0] == f"Saved: #{second.index} deleted."


def test_no_label_control_starts_on_a_real_class(app):
    """Gradio starts a dropdown on its first choice unless told otherwise; a class or type that
    nobody picked must never be what a button saves."""
    from app.web import ServeConfig, build_app

    demo = build_app(ModelHost.ready(None), app.store, ServeConfig(no_auth=True))
    tax = app.store.taxonomy
    labels = set(tax.class_names) | set(tax.type_names)
    controls = [c for c in demo.config["components"] if c["type"] in ("dropdown", "radio")]
    assert len(controls) >= 8
    assert [(c["props"].get("label"), c["props"].get("value")) for c in controls if c["props"].get("value") in labels] == []


def test_a_promoted_model_is_served_without_a_restart(tmp_path):
    """The app checks the registry's CURRENT pointer between requests and swaps in the new model."""
    from core.model_registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "adapter.json").write_text("{}")
        registry.add(tmp_path / version, version)
    registry.promote("v1")
    host = ModelHost(lambda version: SimpleNamespace(version=version), registry.current)
    host.start()
    assert host.wait(10) and host.pipeline().version == "v1"
    registry.promote("v2", "nightly")
    assert host.pipeline().version == "v1"  # the old model serves while the new one loads
    assert host.wait(10) and host.pipeline().version == "v2" and host.version == "v2"


def test_a_model_that_fails_to_load_keeps_the_old_one_serving(tmp_path):
    current, builds = {"v": "good"}, []

    def build(version):
        builds.append(version)
        if version == "broken":
            raise OSError("weights missing")
        return SimpleNamespace(version=version)

    host = ModelHost(build, lambda: current["v"])
    host.start()
    assert host.wait(10)
    current["v"] = "broken"
    host.pipeline()
    host.wait(10)
    assert host.pipeline().version == "good" and "weights missing" in str(host.error)
    host.pipeline()
    host.wait(10)
    assert builds == ["good", "broken"]  # not retried on every request


def test_accept_likely_right_touches_only_the_band(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    pending = [f for f in app.store.photo_findings(photo_id) if len(f.probabilities or {}) > 1]
    confs = sorted(f.confidence for f in pending)
    threshold = confs[len(confs) // 2]  # half the objects in the band
    served = SimpleNamespace(classifier=SimpleNamespace(backend=SimpleNamespace(calibration=SimpleNamespace(likely_right=threshold))))
    r = ReviewHandlers(app.store, ModelHost.ready(served))
    band = {f.finding_id for f in pending if f.confidence >= threshold and f.detector_confidence >= LIKELY_BOX_SCORE}
    v = view(r.open_photo(photo_id))
    assert sum("likely right" in label for label, _ in v["select"]["choices"]) == len(band) > 0
    assert sum(b["label"].endswith("likely right") for b in v["canvas"]["boxes"]) == len(band)  # marked on the canvas too
    out = r.accept_likely_right(photo_id, shown(r, photo_id), ANA)
    assert out[0] == f"Saved: accepted {len(band)} likely-right object(s)."
    accepted = rows(app.db, "SELECT finding_id, reviewer FROM corrections WHERE action = 'accept'")
    assert sorted(fid for fid, _ in accepted) == sorted(band) and {who for _, who in accepted} == {"ana"}
    below = [f for f in app.store.photo_findings(photo_id) if f.finding_id not in band]
    assert all(f.state.status == "pending" for f in below)  # nothing below the band was touched
    again = r.accept_likely_right(photo_id, shown(r, photo_id), ANA)  # the band is spent: said so, nothing written
    assert again[0].startswith("Nothing saved") and len(rows(app.db, "SELECT 1 FROM corrections WHERE action = 'accept'")) == len(band)



def test_a_stale_accept_likely_right_names_what_left_the_band_as_shown_and_nothing_else(app):
    """L decides the band as the reviewer was shown it: a band object bo moved out of it since is
    named, not silently dropped; an object outside the band that bo nudged is not mentioned."""
    *_, photo_id = inspect(app, PHOTOS[1])
    pending = [f for f in app.store.photo_findings(photo_id) if len(f.probabilities or {}) > 1]
    threshold = min(f.confidence for f in pending)  # all in the band that the detector is sure of
    served = SimpleNamespace(classifier=SimpleNamespace(backend=SimpleNamespace(calibration=SimpleNamespace(likely_right=threshold))))
    r = ReviewHandlers(app.store, ModelHost.ready(served))
    loaded = shown(r, photo_id)
    band = sorted(r.likely_right(app.store.photo_findings(photo_id)))
    outside = next(f for f in app.store.photo_findings(photo_id) if f.finding_id not in band and f.state.status == "pending")
    assert len(band) >= 2
    moved = next(f for f in app.store.photo_findings(photo_id) if f.finding_id == band[0])
    app.store.ensure_user("bo")
    for f, dx in ((moved, moved.state.box.x2 - moved.state.box.x1), (outside, 1.5)):  # out of the band; a nudge
        b = f.state.box
        app.store.correct(f.finding_id, f.state.revision, "bo", "edit_box", box=Box(b.x1 + dx, b.y1, b.x2 + dx, b.y2))
    out = r.accept_likely_right(photo_id, loaded, ANA)
    assert out[0] == (f"Saved: accepted {len(band) - 1} likely-right object(s). Left as others changed them since you loaded the "
                      f"photo (check them): #{moved.index}: bo moved its box.")
    assert sorted(fid for (fid,) in rows(app.db, "SELECT finding_id FROM corrections WHERE action = 'accept'")) == band[1:]
    # Pressed again before the reload: only the moved one is left in the band as shown (her own
    # accepts are no news to her), so nothing to accept, and still said why; reloaded, the band is empty.
    assert r.accept_likely_right(photo_id, shown(r, photo_id), ANA)[0] == "Nothing saved: no pending object on this photo is in the " \
                                                                         "likely-right band."
    again = r.accept_likely_right(photo_id, loaded, ANA)
    assert again[0] == ("Nothing saved. Left as others changed them since you loaded the photo (check them): "
                        f"#{moved.index}: bo moved its box.")


def test_likely_right_leaves_boxes_the_detector_doubts_for_a_look(app, monkeypatch):
    import app.review_handlers as review_handlers

    *_, photo_id = inspect(app, PHOTOS[1])
    pending = [f for f in app.store.photo_findings(photo_id) if len(f.probabilities or {}) > 1]
    floor = sorted(f.detector_confidence for f in pending)[len(pending) // 2]
    monkeypatch.setattr(review_handlers, "LIKELY_BOX_SCORE", floor)
    threshold = min(f.confidence for f in pending)  # every label confident enough: only the box decides
    served = SimpleNamespace(classifier=SimpleNamespace(backend=SimpleNamespace(calibration=SimpleNamespace(likely_right=threshold))))
    r = ReviewHandlers(app.store, ModelHost.ready(served))
    doubted = {f.finding_id for f in pending if f.detector_confidence < floor}
    assert doubted and r.likely_right(pending) == {f.finding_id for f in pending} - doubted


def test_accept_walks_on_to_the_next_pending_object_and_wraps_round(app):
    """A walk-through's find: `a` always jumped back to the first pending object (#0)."""
    *_, photo_id = inspect(app, PHOTOS[1])
    ids = [f.finding_id for f in app.store.photo_findings(photo_id)]
    assert len(ids) >= 3
    out = app.r.accept(photo_id, ids[1], 0, ANA)
    assert out[0] == "Saved: #1 accepted." and view(out, 1)["select"]["value"] == ids[2]
    out = app.r.accept(photo_id, ids[-1], 0, ANA)
    assert view(out, 1)["select"]["value"] == ids[0]  # nothing pending after the last: back to the first
    # With nothing pending, `a` on a decided object says so rather than claim to move on.
    app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    again = app.r.accept(photo_id, ids[1], app.store.state(ids[1]).revision, ANA)
    assert again[0] == "#1 is already decided by you, and nothing on this photo is pending." and view(again, 1)["select"]["value"] == ids[1]


def test_a_moved_box_leaves_the_likely_right_band(app):
    """A walk-through's find: a moved box kept its "likely right" mark and L accepted it, though
    its confidence was for the crop the model scored, not the box the reviewer made."""
    *_, photo_id = inspect(app, PHOTOS[1])
    pending = [f for f in app.store.photo_findings(photo_id) if len(f.probabilities or {}) > 1]
    threshold = min(f.confidence for f in pending)
    served = SimpleNamespace(classifier=SimpleNamespace(backend=SimpleNamespace(calibration=SimpleNamespace(likely_right=threshold))))
    r = ReviewHandlers(app.store, ModelHost.ready(served))
    band = r.likely_right(pending)
    first, second = [f for f in pending if f.finding_id in band][:2]
    b, c = first.state.box, second.state.box
    app.store.correct(first.finding_id, 0, "ana", "edit_box", box=type(b)(b.x1, b.y1, b.x1 + 0.5 * b.width, b.y2))  # IoU 0.5
    app.store.correct(second.finding_id, 0, "ana", "edit_box", box=type(c)(c.x1, c.y1, c.x2 + 1, c.y2))  # a nudge stays
    assert r.likely_right(app.store.photo_findings(photo_id)) == band - {first.finding_id}


def test_a_pending_vegetation_box_asks_for_a_box_check_not_a_label_look(app):
    for photo in PHOTOS:
        *_, photo_id = inspect(app, photo)
        table = view(ReviewHandlers(app.store).open_photo(photo_id))["objects"]
        bands = {r[2]: r[7] for r in table}  # type -> band of the last object of that type (no model: no likely right)
        if "vegetation" in bands:
            assert bands["vegetation"] == "check the box" and all(b == "needs a look" for t, b in bands.items() if t != "vegetation")
            return
    pytest.fail("expected a detected vegetation box on one of the sample photos")

def test_a_click_on_the_canvas_selects_the_box_the_canvas_selects(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    photo = app.store.photo(photo_id)
    live = [f for f in app.store.photo_findings(photo_id) if f.state.status != "deleted"]
    cw, ch = 718.0, 624.0  # the canvas element; the photo is fitted and centred in it
    fit = min(cw / photo.width, ch / photo.height)
    left, top = (cw - photo.width * fit) / 2, (ch - photo.height * fit) / 2
    checked = 0
    for target in live:
        b = target.state.box
        x, y = b.cx, b.cy
        # the canvas takes a box whose handle is under the point first, else the first box containing it
        near = [f for f in live if min(abs(x - hx) + abs(y - hy) for hx in (f.state.box.x1, f.state.box.cx, f.state.box.x2)
                                       for hy in (f.state.box.y1, f.state.box.cy, f.state.box.y2) if (hx, hy) != (f.state.box.cx, f.state.box.cy)) <= 6 / fit]
        first = min((f for f in live if f.state.box.x1 <= x <= f.state.box.x2 and f.state.box.y1 <= y <= f.state.box.y2),
                    key=lambda f: f.state.box.area)  # the canvas lists boxes smallest first
        if near or first.finding_id != target.finding_id:
            continue  # another box wins this point: not a clean probe
        out = app.r.pick_at(photo_id, f"{(left + x * fit) / cw},{(top + y * fit) / ch},{cw},{ch},1")
        assert out[0]["value"] == target.finding_id and f"#{target.index} " in out[1]
        checked += 1
    assert checked >= 2
    miss = app.r.pick_at(photo_id, "0.001,0.001,718,624,2")  # the margin beside the photo: nothing selected
    assert not isinstance(miss[0], dict) or miss[0].get("value") is None
    # A model's small box inside a large one with a lower #k: in #k order the large box took every
    # click inside the small one, which could then be selected on the canvas only by a handle.
    big = max(live, key=lambda f: f.state.box.area)
    b = big.state.box
    inner = Detection(Box(b.cx - 6, b.cy - 6, b.cx + 6, b.cy + 6), "vegetation", 0.9)
    (small,) = app.store.add_run(photo_id, [Finding(inner, "vegetation", {"vegetation": 1.0}, "", "test", "t1")], "det:t", "cls:t", 0.1)
    boxes = app.r.open_photo(photo_id)[0]["boxes"]
    assert parse_label(boxes[0]["label"])[0] == len(live)  # the smallest, listed first: the canvas tries it first
    out = app.r.pick_at(photo_id, f"{(left + (b.cx + 3) * fit) / cw},{(top + (b.cy + 3) * fit) / ch},{cw},{ch},3")
    assert out[0]["value"] == small
    # The list never reorders under an edit or an add: the component remembers its selection by
    # list position across redraws, so a reordered list made its Delete remove another box.
    order = [bx["label"].split(" ")[0] for bx in boxes]
    app.store.correct(small, 0, "ana", "edit_box", box=Box(1, 1, b.x2, b.y2))  # now the largest box
    drawn = app.store.add_missed(photo_id, "ana", Box(2, 2, 6, 6), "vegetation")  # the smallest, but drawn: appended
    after = [bx["label"].split(" ")[0] for bx in app.r.open_photo(photo_id)[0]["boxes"]]
    assert after == [*order, f"#{len(live) + 1}"] and app.store.state(drawn.finding_id).box.area < inner.box.area


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 10**30, -1])
def test_an_absurd_photo_id_is_answered_not_raised(app, bad):
    out = view(app.r.open_photo(bad))
    assert out["canvas"] is None and out["header"].startswith("⚠")


def test_a_mistyped_photo_id_keeps_the_photo_on_screen(app):
    """A mistyped id closed the photo being reviewed, and ← then went to the first photo."""
    *_, photo_id = inspect(app, PHOTOS[0], PHOTOS[3])
    shown = view(app.r.open_photo(photo_id))
    out = view(app.r.open_photo(9999, shown["seen"]))
    assert out["photo"] == photo_id and out["canvas"]
    assert out["header"].startswith("⚠ no photo with id 9999. Still on this photo: **Photo")
    assert view(app.r.prev_photo(out["photo"]))["photo"] == photo_id - 1
    # An emptied box (letters typed into the number field read as none) is not "close the photo".
    out = view(app.r.open_photo(None, shown["seen"]))
    assert out["photo"] == photo_id and out["header"].startswith("⚠ type a photo id (a number) first. Still on this photo: **Photo")


def test_a_promoted_detector_is_served_without_a_restart(tmp_path, monkeypatch):
    """serve's host follows the detector registry too: a nightly promotion swaps the detector in."""
    import shutil

    from app.models import registry_host
    from core.data import file_sha256
    from core.model_registry import ModelRegistry
    from core.stage1.detector import shipped_detector_path

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    host = registry_host("probe")
    host.start()
    assert host.wait(60) and host.pipeline().detector.version.startswith("shipped-")
    (tmp_path / "v1").mkdir()
    shutil.copy(shipped_detector_path(), tmp_path / "v1" / "detector.pt")
    registry = ModelRegistry(stage="detector")
    registry.add(tmp_path / "v1", "v1", {"sha256": file_sha256(tmp_path / "v1" / "detector.pt")})
    registry.promote("v1", "nightly")
    host.pipeline()
    assert host.wait(60) and host.pipeline().detector.version == "v1"
    assert host.pipeline().detector.weights == registry.path("v1") / "detector.pt"


def test_dashboard_shows_both_models_the_schedule_and_each_stages_runs(app):
    from app.scheduler import SchedulerState

    inspect(app, *PHOTOS)
    vegetation = app.store.query("SELECT id FROM findings WHERE model_version LIKE 'passthrough:%' LIMIT 1")
    assert vegetation, "the sample photos hold vegetation"
    app.store.correct(vegetation[0]["id"], 0, "ana", "accept")
    app.store.record_training_run(1.0, "h", {}, {}, {}, "refused", "v-det", 12.0, stage="detector",
                                  reasons=["mAP50 0.641 -> 0.630", "mAP50 dropped"])
    app.store.record_training_run(2.0, "h", {"judged_as": "ensemble"}, {}, {}, "promoted", "v-cls", 30.0)
    h = Handlers(app.h.models, app.store, schedule=SchedulerState("02:00", next_start=3 * 86400.0, last_exit=0, last_log="/x.log"))
    text = h.dashboard()
    assert "### Scheduled nightly job" in text and "scheduled daily at 02:00" in text and "exited with code 0" in text
    assert "detector: refused (v-det" in text and "classifier: promoted (v-cls, 30 s, judged as ensemble)" in text
    assert "detector: refused (v-det, 12 s)\n  - mAP50 0.641 -> 0.630\n  - mAP50 dropped" in text  # why, under the run
    assert "- model `passthrough:1` (types with one class, such as vegetation: labelled without a stage-2 model): accept 1" in text
    detector = app.h.models.pipeline().detector
    assert f"detector: version `{detector.version}`" in text and detector.runtime in text
    assert "Scheduled" not in app.h.dashboard()  # no --nightly-at: nothing about a schedule
    # Classes and conditions in the taxonomy's order (as text, "rock toe damaged" sorted before "rock toe").
    listed = text.split("### Findings by class\n")[1].split("\n### Review status")[0]
    names = [line[2:].rsplit(":", 1)[0] for line in listed.splitlines() if line.startswith("- ")]
    tax = app.store.taxonomy
    classes = [n for n in names if n in tax.class_names]
    conditions = [n for n in names if n not in tax.class_names]
    assert len(classes) > 2 and classes == sorted(classes, key=tax.class_names.index)
    assert conditions == sorted(conditions, key=[*tax.conditions, "none"].index) and conditions[-1] == "none"


def test_compare_shows_the_object_beside_the_neighbours_its_rationale_counted(app, probe_pipeline):
    from pathlib import Path

    inspect(app, *PHOTOS)
    review = ReviewHandlers(app.store, ModelHost.ready(probe_pipeline))
    findings = list(app.store.live_findings().values())
    drain = next(f for f in findings if app.store.taxonomy.needs_condition(f.state.object_type))
    sentence, tiles = review.compare_similar(drain.finding_id)
    assert sentence.rstrip(".").lower() in drain.state.rationale.lower()  # the same count the rationale cites
    assert len(tiles) == 6 and tiles[0][1].startswith(f"this object: {drain.state.class_name}")
    assert all("similarity" in caption for _, caption in tiles[1:]) and all(im.size[0] > 0 for im, _ in tiles)
    vegetation = next(f for f in findings if f.state.object_type == "vegetation")  # the samples have some
    message, tiles = review.compare_similar(vegetation.finding_id)
    assert message.startswith("⚠") and "no condition" in message and tiles == []
    assert review.compare_similar(None) == ("Select an object first.", [])
    assert "loading" in ReviewHandlers(app.store).compare_similar(drain.finding_id)[0]

    other = next(f for f in findings if f.finding_id != drain.finding_id and f.photo_id != drain.photo_id
                 and app.store.taxonomy.needs_condition(f.state.object_type))
    path = Path(app.store.photo(other.photo_id).path)
    path.rename(path.with_suffix(".gone"))  # the stored file lost: said, not a crash
    message, tiles = review.compare_similar(other.finding_id)
    assert message.startswith("⚠") and "cannot be read" in message and tiles == []
    app.store.correct(drain.finding_id, drain.state.revision, "ana", "delete")
    message, tiles = review.compare_similar(drain.finding_id)
    assert message.startswith("⚠") and "deleted" in message and tiles == []


def test_objects_reviewed_today_become_evidence_without_a_restart(app, probe_pipeline):
    from app.models import LiveEvidence, evidence_index
    from core.stage2.evidence import Evidencer

    inspect(app, PHOTOS[0])
    evidencer = Evidencer(evidence_index(app.store), probe_pipeline.classifier.evidencer.features)
    shipped = len(evidencer.index)
    live = LiveEvidence(app.store, evidencer, every=0)
    assert not live.maybe_refresh()  # nothing reviewed since the build
    drains = [f for f in app.store.photo_findings(1) if app.store.taxonomy.needs_condition(f.state.object_type)]
    for f in drains:
        app.store.correct(f.finding_id, f.state.revision, "ana", "accept")
    assert live.maybe_refresh()
    live.wait(60)
    added = [s for s in evidencer.index.sources if s.startswith("review:")]
    assert len(evidencer.index) == shipped + len(drains) == shipped + len(added)
    assert not live.maybe_refresh()  # and nothing new since that rebuild


def test_export_says_what_it_left_out(app):
    """A walk-through's find: with nothing done, Export wrote an empty dataset and did not say why."""
    *_, photo_id = inspect(app, PHOTOS[0])
    zipped, message = app.h.export("yolo", False, 0)
    assert message.startswith("Exported 0 reviewed photo(s), 0 object(s) as yolo")
    assert message.endswith("1 photo(s) not done yet were left out (tick “Also export photos not yet marked done” "
                            "to export them marked).")
    app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    app.r.photo_done(photo_id, shown(app.r, photo_id), ANA)
    zipped, message = app.h.export("yolo", False, 0)
    assert message.startswith("Exported 1 reviewed photo(s)") and "left out" not in message
    with zipfile.ZipFile(zipped) as z:
        assert any(n.startswith("train/labels/") for n in z.namelist())


def test_a_one_class_object_shows_its_box_score_not_a_100_percent_class(app):
    """A walk-through's find: vegetation read "100%" on the overlay however weak its box, because
    a type with one class always gets probability 1; the detector's score is what can be doubted."""
    from app.usecases.inspect import overlay_items

    *_, photo_id = inspect(app, PHOTOS[1])
    findings = app.store.photo_findings(photo_id)
    texts = {f.finding_id: item.text() for f, item in zip(findings, overlay_items(app.store, findings))}
    one = [f for f in findings if len(f.probabilities or {}) == 1]
    several = [f for f in findings if len(f.probabilities or {}) > 1]
    assert one and several
    for f in one:
        assert texts[f.finding_id] == f"#{f.index} {f.state.class_name} box {f.detector_confidence:.0%}"
    for f in several:
        assert texts[f.finding_id] == f"#{f.index} {f.state.class_name} {f.confidence:.0%}"


def test_the_upload_box_drops_only_the_files_a_run_deleted(tmp_path):
    """A walk-through's find: a refused file stayed in the upload box with a link to nothing."""
    kept, refused, added = (tmp_path / n for n in ("a.jpg", "bad.jpg", "next-flight.zip"))
    for f in (kept, refused, added):
        f.write_bytes(b"x")
    refused.unlink()  # what the run does to a refused upload
    assert Handlers.unspent_uploads([str(kept), str(refused), str(added)]) == [str(kept), str(added)]
    assert Handlers.unspent_uploads([str(kept)]) == gr.skip()  # nothing deleted: the box is left as it is
    assert Handlers.unspent_uploads([str(refused)]) is None and Handlers.unspent_uploads(None) == gr.skip()


def test_review_keys_queue_in_one_lane_one_at_a_time(tmp_path):
    """Keys pressed before the last one is answered: Gradio drops a repeated click by default
    ("2" then "1" saved the slip), and the queue's default of 2 workers would run queued keys side
    by side, in either order. Class keys, accept and undo queue; every edit runs alone, in order."""
    from app.web import ServeConfig, build_app
    from db.store import Store

    demo = build_app(ModelHost.ready(None), Store(tmp_path / "review.db"), ServeConfig(auth="ana:x"))
    fns = {f.api_name: f for f in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns)}
    for name in ("set_class", "accept", "undo"):
        assert fns[name].trigger_mode == "multiple", name
    for name in ("save_canvas", "set_class", "accept", "accept_all", "delete", "undo", "photo_done", "edit_rationale", "add_note"):
        assert (fns[name].concurrency_id, fns[name].concurrency_limit) == ("review", 1), name
    assert fns["delete"].trigger_mode == "once"  # a double-clicked Delete is one delete


def test_a_rationale_citing_an_object_deleted_or_retyped_since_says_so(app):
    """A walk-through: #0's accepted rationale still said "next to rock toe #2" after #2 was
    deleted as a false box, and read as true. The panel now says what changed since."""
    import re

    *_, photo_id = inspect(app, PHOTOS[1])
    findings = app.store.photo_findings(photo_id)
    by_index = {f.index: f for f in findings}
    reader, cited = next((f, int(m.group(1))) for f in findings for m in re.finditer(r"#(\d+)", f.state.rationale or "")
                         if int(m.group(1)) != f.index)
    detail = app.r.panel(photo_id, reader.finding_id)[0]
    assert "⚠" not in detail  # every citation holds
    gone = by_index[cited]
    app.store.correct(gone.finding_id, gone.state.revision, "ana", "delete")
    detail = app.r.panel(photo_id, reader.finding_id)[0]
    said = f"⚠ The rationale cites what has changed since it was written: {gone.state.object_type.replace('_', ' ')} #{cited} was deleted"
    assert said in detail


def test_a_refused_delete_keeps_its_object_and_photo_done_is_refused_on_a_view_changed_since(app):
    """A two-reviewer walk-through: bo's Delete on #2, which ana had just relabelled, was refused
    ("try again") with #0 selected instead, and his second Delete deleted #0. And bo's Photo done
    on a photo ana had just relabelled saved "photo reviewed ✓": a label he never saw."""
    *_, photo_id = inspect(app, PHOTOS[1])
    bo_saw = shown(app.r, photo_id)
    findings = app.store.photo_findings(photo_id)
    tax = app.store.taxonomy
    target = next(f for f in findings if f.index > 0 and len(tax.classes_for_type(f.state.object_type)) > 1)
    other = next(c.name for c in tax.classes_for_type(target.state.object_type) if c.name != target.state.class_name)
    app.r.set_class(photo_id, target.finding_id, target.state.revision, other, ANA)  # ana relabels it
    refused = app.r.delete(photo_id, target.finding_id, target.state.revision, BO)
    assert refused[0].startswith("⚠ Not saved") and view(refused, 1)["select"]["value"] == target.finding_id
    again = app.r.delete(photo_id, target.finding_id, view(refused, 1)["revision"], BO)  # as the message invites
    assert again[0].startswith(f"Saved: #{target.index} deleted")
    assert rows(app.db, "SELECT finding_id FROM corrections WHERE action = 'delete'") == [(target.finding_id,)]

    app.r.accept_all(photo_id, shown(app.r, photo_id), ANA)
    bo_saw = shown(app.r, photo_id)  # bo's view: everything decided
    decided = next(f for f in app.store.photo_findings(photo_id) if f.state.status == "reviewed"
                   and len(tax.classes_for_type(f.state.object_type)) > 1)
    relabel = next(c.name for c in tax.classes_for_type(decided.state.object_type) if c.name != decided.state.class_name)
    app.r.set_class(photo_id, decided.finding_id, decided.state.revision, relabel, ANA)
    stale = app.r.photo_done(photo_id, bo_saw, BO)
    assert stale[0].startswith(f"⚠ Not saved: the photo changed since you loaded it (#{decided.index}: ana relabelled it")
    assert rows(app.db, "SELECT count(*) FROM photo_reviews") == [(0,)]
    # Reloaded, it is confirmed; his own edits since the view he acts on do not count against him.
    reloaded = view(stale, 1)["seen"]
    app.r.add_note(photo_id, decided.finding_id, app.store.state(decided.finding_id).revision, "checked the outlet", BO)
    assert app.store.state(decided.finding_id).revision != reloaded[str(decided.finding_id)]
    mine = app.r.photo_done(photo_id, reloaded, BO)
    assert mine[0] == "Saved: photo reviewed ✓." and rows(app.db, "SELECT reviewer FROM photo_reviews") == [("bo",)]


def test_next_photo_to_review_hands_two_reviewers_different_photos(app):
    """A two-reviewer walk-through: ana on photo 3, bo pressed N and was handed photo 3 too; their
    edits then collided. N skips a photo another reviewer is on; opened anyway, it names her."""
    inspect(app, PHOTOS[0], PHOTOS[1])
    ana_on = view(app.r.next_in_queue(None, ANA))["photo"]
    bo_on = view(app.r.next_in_queue(None, BO))["photo"]
    assert bo_on != ana_on and {ana_on, bo_on} == {r[0] for r in app.h.queue_rows("", "", "", "", "")}
    joined = view(app.r.open_photo(ana_on, None, BO))
    assert joined["header"].startswith("⚠ Also on this photo: ana (just now).")
    assert "Also on this photo" not in view(app.r.open_photo(bo_on, None, ANA))["header"]  # bo left it
    # Only another reviewer's photo left: handed out anyway, and named.
    assert view(app.r.next_in_queue(ana_on, BO))["header"].startswith("⚠ Also on this photo: ana")


def test_presence_lapses_and_follows_each_reviewer():
    from app.presence import Presence

    now = [0.0]
    p = Presence(ttl_s=600, clock=lambda: now[0])
    p.saw("ana", 3)
    p.saw("bo", 3)
    assert [o.reviewer for o in p.others_on(3, "bo")] == ["ana"] and p.taken("bo") == {3} and p.taken("cy") == {3}
    p.saw("ana", 4)  # she moved on
    assert p.others_on(3, "bo") == [] and p.taken("bo") == {4}
    now[0] = 601.0  # a closed tab says nothing: presence lapses
    assert p.taken("bo") == set() and p.others_on(4, "bo") == []
    p.saw("ana", None)
    assert p.taken("bo") == set()
    with pytest.raises(ValueError, match="ttl_s"):
        Presence(ttl_s=0)
