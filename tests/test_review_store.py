"""Review store on a real SQLite file: no-op edits, the rationale on a class change, undo, photo confirmation,
the photo queue and migration 3. Each case asserts the correction rows written."""

import sqlite3

import pytest

from core.types import Box, Detection, Finding
from db import migrations
from db.checks import AlreadyDecided, AlreadyDone, InvalidEdit, StaleEdit
from db.migrations import MIGRATIONS, applied_versions, migrate
from db.progress import NO_MODEL
from db.store import Store

BOOKKEEPING = ("revision", "updated_at", "updated_by")

SLOPE = {"slope drain": 0.6, "slope drain blocked": 0.3, "slope drain damaged": 0.1}  # margin 0.3
ROCK = {"rock toe": 0.55, "rock toe damaged": 0.45}  # margin 0.1
VEG = {"vegetation": 1.0}  # margin 1.0


def _finding(type_, cls, probs, box=(10, 10, 20, 80), det=0.9):
    return Finding(Detection(Box(*box), type_, det), cls, probs, "why", "probe", "abc")


def _content(state: dict) -> dict:
    """A state without who/when/revision: what an undo must restore."""
    return {k: v for k, v in state.items() if k not in BOOKKEEPING}


@pytest.fixture
def env(tmp_path):
    """A file store with reviewers ana and bo and one photo: #0 slope drain, #1 rock toe, #2 vegetation."""
    store = Store(tmp_path / "review.db")
    store.ensure_user("ana")
    store.ensure_user("bo")
    photo, _ = store.add_photo("a" * 64, "/photos/a.png", 312, 312, "a.jpg", "ana")
    ids = store.add_run(photo.id, [_finding("slope_drain", "slope drain", SLOPE), _finding("rock_toe", "rock toe", ROCK),
                                   _finding("vegetation", "vegetation", VEG)], "det:1", "probe:abc", 0.5)
    return store, photo, ids


# --- correct(): no-op relabels and the rationale on a class change ---------------------------

@pytest.mark.parametrize("k, action, changes, current", [
    (0, "relabel", {"class_name": "slope drain"}, "slope drain"),
    (0, "retype", {"object_type": "slope_drain", "class_name": "slope drain"}, "slope drain"),
    (2, "retype", {"object_type": "vegetation"}, "vegetation"),  # single-class type, class implied
])
def test_relabel_to_the_label_it_has_is_refused_and_writes_nothing(env, k, action, changes, current):
    store, _, ids = env
    fid = ids[k]
    with pytest.raises(InvalidEdit, match=f"^#{fid} is already {current}; nothing to change$"):
        store.correct(fid, 0, "ana", action, **changes)
    assert store.history(fid) == []
    assert store.state(fid).revision == 0 and store.state(fid).status == "pending"


@pytest.mark.parametrize("k, action, changes, expected", [
    # Another label: the model's rationale for the old one is dropped unless a new one comes with the edit.
    (0, "retype", {"object_type": "vegetation"}, {"object_type": "vegetation", "class_name": "vegetation", "rationale": ""}),
    (0, "retype", {"object_type": "vegetation", "rationale": "grass over it"},
     {"object_type": "vegetation", "class_name": "vegetation", "rationale": "grass over it"}),
    (2, "retype", {"object_type": "rock_toe", "class_name": "rock toe damaged"},
     {"object_type": "rock_toe", "class_name": "rock toe damaged", "rationale": ""}),
    # Same type, another condition: the rationale argued for the old label, so it goes too.
    (0, "retype", {"object_type": "slope_drain", "class_name": "slope drain blocked"},
     {"object_type": "slope_drain", "class_name": "slope drain blocked", "rationale": ""}),
    (0, "relabel", {"class_name": "slope drain damaged"}, {"class_name": "slope drain damaged", "rationale": ""}),
    (0, "relabel", {"class_name": "slope drain damaged", "rationale": "cracked pipe"},
     {"class_name": "slope drain damaged", "rationale": "cracked pipe"}),
])
def test_retype_and_relabel_rows(env, k, action, changes, expected):
    store, _, ids = env
    fid = ids[k]
    store.correct(fid, 0, "ana", action, **changes)
    [row] = store.history(fid)
    assert (row.action, row.reviewer, row.revision, row.undoes) == (action, "ana", 1, None)
    assert row.before["rationale"] == "why" and row.before["status"] == "pending"
    assert {key: row.after[key] for key in expected} == expected and row.after["status"] == "reviewed"
    assert store.state(fid).to_json() == row.after


@pytest.mark.parametrize("first, by, written", [
    ({"action": "relabel", "class_name": "slope drain blocked"}, "ana", False),  # her own decision: nothing new
    ({"action": "edit_rationale", "rationale": "silt"}, "ana", False),
    ({"action": "accept"}, "ana", False),
    ({"action": "relabel", "class_name": "slope drain blocked"}, "bo", True),  # a second reviewer agrees: recorded
    (None, "ana", True),  # pending: the model's label accepted
])
def test_accept_of_ones_own_decision_writes_nothing(env, first, by, written):
    store, _, ids = env
    fid = ids[0]
    if first:
        first = dict(first)
        store.correct(fid, 0, "ana", first.pop("action"), **first)
    before = store.state(fid)
    n = len(store.history(fid))
    if written:
        assert store.correct(fid, before.revision, by, "accept").updated_by == by
        assert len(store.history(fid)) == n + 1
    else:
        with pytest.raises(AlreadyDecided, match=f"^#{fid} is already decided by you"):
            store.correct(fid, before.revision, by, "accept")
        assert len(store.history(fid)) == n and store.state(fid) == before


@pytest.mark.parametrize("action", ["add", "undo"])
def test_correct_refuses_actions_with_their_own_entry_point(env, action):
    store, _, ids = env
    with pytest.raises(InvalidEdit, match="expected an action among"):
        store.correct(ids[0], 0, "ana", action)
    assert store.history(ids[0]) == []


# --- undo ---------------------------------------------------------------------------------------

def _relabel(store, photo, ids):
    return store.correct(ids[0], 0, "ana", "relabel", class_name="slope drain blocked").finding_id


def _delete(store, photo, ids):
    return store.correct(ids[1], 0, "ana", "delete").finding_id


def _edit_box(store, photo, ids):
    return store.correct(ids[2], 0, "ana", "edit_box", box=Box(1, 2, 30, 40)).finding_id


def _retype(store, photo, ids):
    return store.correct(ids[0], 0, "ana", "retype", object_type="vegetation").finding_id


def _add(store, photo, ids):
    return store.add_missed(photo.id, "ana", Box(0, 250, 312, 280), "Toe drain- Blocked").finding_id


@pytest.mark.parametrize("do, field, done_value, undone_value", [
    (_relabel, "class_name", "slope drain blocked", "slope drain"),
    (_delete, "status", "deleted", "pending"),
    (_edit_box, "x2", 30, 20),
    (_retype, "rationale", "", "why"),
    (_add, "status", "reviewed", "deleted"),  # an added box is not removed from history: it becomes deleted
])
def test_undo_appends_a_row_restoring_the_state_before(env, do, field, done_value, undone_value):
    store, photo, ids = env
    fid = do(store, photo, ids)
    [target] = store.history(fid)
    [state] = store.undo_last(photo.id, "ana")

    target_after, [target_again, undo] = target.after, store.history(fid)
    assert target_again == target  # the undone row itself is untouched
    assert (undo.action, undo.reviewer, undo.revision, undo.undoes) == ("undo", "ana", target.revision + 1, target.id)
    assert undo.before == target_after  # before: the state as it was (the target's result)
    restored = {**target_after, "status": "deleted"} if target.action == "add" else target.before
    assert _content(undo.after) == _content(restored)
    assert (undo.before[field], undo.after[field]) == (done_value, undone_value)
    assert (undo.after["revision"], undo.after["updated_by"]) == (target.revision + 1, "ana")
    assert state == store.state(fid) and state.to_json() == undo.after
    raw = store.query("SELECT undoes FROM corrections WHERE action = 'undo'")
    assert raw == [{"undoes": target.id}]


@pytest.mark.parametrize("steps, expected_undone", [
    # Two findings: the latest action first, then the one before it, then nothing.
    ([(0, "relabel", {"class_name": "slope drain blocked"}), (1, "delete", {})], [(1, "delete"), (0, "relabel")]),
    # One finding twice: the second undo must not be refused because the first bumped the revision.
    ([(0, "relabel", {"class_name": "slope drain blocked"}), (0, "note", {"note": "silt"})], [(0, "note"), (0, "relabel")]),
])
def test_consecutive_undos_walk_back_newest_first(env, steps, expected_undone):
    store, photo, ids = env
    originals = {ids[k]: store.state(ids[k]).to_json() for k, _, _ in steps}
    for k, action, changes in steps:
        store.correct(ids[k], store.state(ids[k]).revision, "ana", action, **changes)
    for k, action in expected_undone:
        store.undo_last(photo.id, "ana")
        undo = store.history(ids[k])[-1]
        target = next(c for c in store.history(ids[k]) if c.id == undo.undoes)
        assert (undo.action, target.action, undo.reviewer) == ("undo", action, "ana")
    assert store.undo_last(photo.id, "ana") == []
    for fid, original in originals.items():
        assert _content(store.state(fid).to_json()) == _content(original)
    assert store.query("SELECT count(*) AS n FROM corrections")[0]["n"] == 2 * len(steps)  # nothing deleted


def test_undo_refused_when_another_reviewer_changed_the_finding_since(env):
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", "relabel", class_name="slope drain blocked")
    store.correct(ids[0], 1, "bo", "relabel", class_name="slope drain damaged")
    with pytest.raises(StaleEdit) as info:
        store.undo_last(photo.id, "ana")
    assert info.value.current.class_name == "slope drain damaged" and info.value.current.updated_by == "bo"
    assert [c.action for c in store.history(ids[0])] == ["relabel", "relabel"]
    assert store.state(ids[0]).revision == 2


def test_one_undo_takes_back_a_whole_bulk_accept_and_nothing_before_it(env):
    """"Accept all" writes one accept per object; pressed by mistake on a photo of 12 objects it
    took 12 undos. The accepts share a batch, and one undo reverses all of them, only them."""
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", "relabel", class_name="slope drain blocked")
    accepted = store.accept_pending(photo.id, "ana")
    assert sorted(s.finding_id for s in accepted) == ids[1:]
    batch = {c.batch for f in ids[1:] for c in store.history(f)}
    assert len(batch) == 1 and None not in batch
    restored = store.undo_last(photo.id, "ana")
    assert sorted(s.finding_id for s in restored) == ids[1:] and all(s.status == "pending" for s in restored)
    assert store.state(ids[0]).class_name == "slope drain blocked"  # the relabel before it stands
    assert [s.finding_id for s in store.undo_last(photo.id, "ana")] == [ids[0]]  # the next undo takes that back


def test_a_bulk_undo_is_refused_whole_when_one_object_changed_since(env):
    store, photo, ids = env
    store.accept_pending(photo.id, "ana", {ids[0], ids[1]})
    store.correct(ids[1], 1, "bo", "relabel", class_name="rock toe damaged")
    with pytest.raises(StaleEdit):
        store.undo_last(photo.id, "ana")
    assert store.state(ids[0]).status == "reviewed"  # nothing undone: the batch is one action
    assert [c.action for c in store.history(ids[0])] == ["accept"]


def test_undo_allowed_once_the_other_reviewers_change_is_undone(env):
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", "relabel", class_name="slope drain blocked")
    store.correct(ids[0], 1, "bo", "note", note="silt")
    assert store.undo_last(photo.id, "bo")[0].note is None
    [state] = store.undo_last(photo.id, "ana")
    assert (state.class_name, state.status, state.revision) == ("slope drain", "pending", 4)
    assert [(c.action, c.reviewer, c.revision, c.undoes) for c in store.history(ids[0])] == [
        ("relabel", "ana", 1, None), ("note", "bo", 2, None), ("undo", "bo", 3, store.history(ids[0])[1].id),
        ("undo", "ana", 4, store.history(ids[0])[0].id)]


@pytest.mark.parametrize("setup", [
    lambda store, photo, ids: None,  # nothing done at all
    lambda store, photo, ids: store.correct(ids[0], 0, "bo", "accept"),  # only another reviewer acted
    lambda store, photo, ids: (store.correct(ids[0], 0, "ana", "accept"), store.undo_last(photo.id, "ana")),  # all undone
])
def test_undo_with_nothing_to_undo_returns_none_and_writes_nothing(env, setup):
    store, photo, ids = env
    setup(store, photo, ids)
    n = store.query("SELECT count(*) AS n FROM corrections")[0]["n"]
    assert store.undo_last(photo.id, "ana") == []
    assert store.query("SELECT count(*) AS n FROM corrections")[0]["n"] == n


def test_undo_stays_on_its_photo(env):
    store, photo, ids = env
    other, _ = store.add_photo("b" * 64, "/photos/b.png", 100, 100, "b.jpg", "ana")
    [fid] = store.add_run(other.id, [_finding("rock_toe", "rock toe", ROCK)], "det:1", "probe:abc", 0.1)
    store.correct(ids[0], 0, "ana", "accept")
    store.correct(fid, 0, "ana", "delete")  # later, but on the other photo
    store.undo_last(photo.id, "ana")
    assert store.state(ids[0]).status == "pending" and store.state(fid).status == "deleted"


# --- photo confirmation -------------------------------------------------------------------------

def _accept_all(store, ids, reviewer="ana"):
    for fid in ids:
        store.correct(fid, store.state(fid).revision, reviewer, "accept")


def test_confirm_refused_while_objects_are_pending(env):
    store, photo, ids = env
    store.correct(ids[1], 0, "ana", "accept")
    with pytest.raises(InvalidEdit, match=r"found #0, #2 still pending$"):
        store.confirm_photo(photo.id, "ana")
    assert store.query("SELECT count(*) AS n FROM photo_reviews")[0]["n"] == 0
    p = store.photo_progress(photo.id)
    assert (p.n_objects, p.n_pending, p.n_reviewed, p.n_deleted, p.done, p.confirmed_by) == (3, 2, 1, 0, False, None)


def test_a_box_move_decides_the_box_not_the_class(env):
    """Moving a pending box used to mark it reviewed, so the model's class, which nobody looked
    at, became a stage-2 training label (``core.stage2.labeled.reviewed_photos`` labels reviewed objects)."""
    store, photo, ids = env
    moved = store.correct(ids[0], 0, "ana", "edit_box", box=Box(12, 10, 60, 120))
    store.accept_pending(photo.id, "ana", {ids[1], ids[2]})
    assert (moved.status.value, moved.x2, moved.updated_by) == ("pending", 60, "ana")
    assert [c.kind for c in store.history(ids[0])] == ["localisation"]
    assert [f.status.value for f in store.reviewed_photos()[0].findings] == ["pending", "reviewed", "reviewed"]  # #0 trains nothing yet
    with pytest.raises(InvalidEdit, match="found #0 still pending$"):
        store.confirm_photo(photo.id, "ana")
    assert store.correct(ids[0], moved.revision, "ana", "accept").status.value == "reviewed"  # the class decided by an accept
    [reviewed] = store.reviewed_photos()
    assert [(f.class_name, f.status.value) for f in reviewed.findings][0] == ("slope drain", "reviewed")
    # A reviewed object stays reviewed when its box moves.
    assert store.correct(ids[0], moved.revision + 1, "bo", "edit_box", box=Box(12, 10, 70, 120)).status.value == "reviewed"


@pytest.mark.parametrize("action, field", [("note", "note"), ("edit_rationale", "rationale")])
def test_saving_the_same_text_again_writes_nothing(env, action, field):
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", action, **{field: "silt at the outlet"})
    with pytest.raises(InvalidEdit, match=f"already has that {field}"):
        store.correct(ids[0], 1, "ana", action, **{field: "silt at the outlet"})
    assert len(store.history(ids[0])) == 1


def test_confirming_a_done_photo_again_records_nothing_new(env):
    """Photo done pressed twice wrote a second confirmation, which the nightly reads as new
    complete labels (``confirmations_since``); nothing was checked anew."""
    store, photo, ids = env
    for f in ids:
        store.correct(f, 0, "ana", "accept")
    assert store.confirm_photo(photo.id, "ana").done and store.confirmations_since(0) == 1
    with pytest.raises(AlreadyDone, match=f"^photo {photo.id} is already done and nothing changed since"):
        store.confirm_photo(photo.id, "bo")
    assert store.confirmations_since(0) == 1
    assert store.photo_progress(photo.id).confirmed_by == "ana"
    store.correct(ids[0], 1, "bo", "relabel", class_name="slope drain blocked")  # an edit reopens it: confirming counts again
    assert not store.photo_progress(photo.id).done
    assert store.confirm_photo(photo.id, "bo").done and store.confirmations_since(0) == 2


@pytest.mark.parametrize("edit, reopens", [
    (lambda s, ids: s.correct(ids[0], s.state(ids[0]).revision, "bo", "note", note="later"), False),  # a note changes no label
    (lambda s, ids: s.correct(ids[0], s.state(ids[0]).revision, "bo", "delete"), True),
    (lambda s, ids: s.undo_last(s.photo_of(ids[0]), "ana"), True),  # an undo is an edit too
    (lambda s, ids: None, False),
])
def test_edit_after_confirm_makes_the_photo_not_done(env, edit, reopens):
    store, photo, ids = env
    _accept_all(store, ids)
    progress = store.confirm_photo(photo.id, "ana")
    assert (progress.done, progress.confirmed_by, progress.n_reviewed) == (True, "ana", 3)
    [row] = store.query("SELECT photo_id, reviewer, created_at FROM photo_reviews")
    assert (row["photo_id"], row["reviewer"]) == (photo.id, "ana")
    edit(store, ids)
    after = store.photo_progress(photo.id)
    assert after.done is (not reopens) and (after.confirmed_by is None) is reopens
    assert [p.photo.id for p in store.done_photos()] == ([] if reopens else [photo.id])
    if reopens and after.n_pending == 0:
        again = store.confirm_photo(photo.id, "bo")
        assert (again.done, again.confirmed_by) == (True, "bo")
        assert store.query("SELECT count(*) AS n FROM photo_reviews")[0]["n"] == 2  # appended, not replaced


def test_confirm_counts_deleted_and_an_empty_photo_can_be_done(env):
    store, photo, ids = env
    for fid in ids:
        store.correct(fid, 0, "ana", "delete")
    p = store.confirm_photo(photo.id, "ana")
    assert (p.n_objects, p.n_pending, p.n_reviewed, p.n_deleted, p.done) == (0, 0, 0, 3, True)
    [done] = store.done_photos()
    assert done.photo.id == photo.id and done.findings == ()
    with pytest.raises(InvalidEdit, match="expected a photo with id 999, found none"):
        store.confirm_photo(999, "ana")
    # A photo the detector found nothing on, confirmed as such, is done too (a negative example).
    empty, _ = store.add_photo("e" * 64, "/photos/e.png", 50, 50, "e.jpg", "ana")
    assert not store.photo_progress(empty.id).done
    assert store.confirm_photo(empty.id, "bo").confirmed_by == "bo"
    assert [(p.photo.id, p.findings) for p in store.done_photos()] == [(photo.id, ()), (empty.id, ())]


def test_confirm_is_not_older_than_the_edits_it_confirms(env, monkeypatch):
    """A wall clock that lags the last correction (stepped back, or another process's) must not
    leave a fresh confirmation looking older than the edits it confirms."""
    import time

    store, photo, ids = env
    _accept_all(store, ids)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 60)
    assert store.confirm_photo(photo.id, "ana").done


def test_done_photos_holds_live_findings_and_reviewed_photos_is_unchanged(env):
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", "accept")
    assert [p.photo.id for p in store.reviewed_photos()] == [photo.id] and store.done_photos() == []
    store.correct(ids[1], 0, "ana", "delete")
    store.correct(ids[2], 0, "ana", "accept")
    store.confirm_photo(photo.id, "ana")
    [done] = store.done_photos()
    assert [f.finding_id for f in done.findings] == [ids[0], ids[2]] and done.complete


# --- photo queue ----------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path):
    """Five photos: p1 has two pending (lowest margin 0.1), p2 one pending (margin 0.3), p3 one pending
    (margin 0.3, lower detector confidence), p4 all decided but not confirmed, p5 confirmed."""
    store = Store(tmp_path / "queue.db")
    store.ensure_user("ana")
    made = {}
    specs = {
        "p1": [_finding("rock_toe", "rock toe", ROCK), _finding("slope_drain", "slope drain", SLOPE)],
        "p2": [_finding("slope_drain", "slope drain", SLOPE, det=0.9)],
        "p3": [_finding("slope_drain", "slope drain", SLOPE, det=0.4)],
        "p4": [_finding("vegetation", "vegetation", VEG)],
        "p5": [_finding("rock_toe", "rock toe", ROCK)],
    }
    for k, (name, findings) in enumerate(specs.items()):
        rec, _ = store.add_photo(str(k) * 64, f"/photos/{k}.png", 100, 100, f"{name}.jpg" if name != "p3" else None, "ana")
        made[name] = (rec.id, store.add_run(rec.id, findings, "det:1", "probe:abc", 0.1))
    _accept_all(store, made["p4"][1])
    _accept_all(store, made["p5"][1])
    store.confirm_photo(made["p5"][0], "ana")
    return store, made


def test_photo_queue_order_and_numbers(photos):
    store, made = photos
    rows = store.photo_queue()
    assert [r.photo_id for r in rows] == [made[n][0] for n in ("p1", "p3", "p2", "p4", "p5")]
    by_name = {r.name: r for r in rows}
    assert set(by_name) == {"p1.jpg", "2.png", "p2.jpg", "p4.jpg", "p5.jpg"}  # no upload name: the stored file's
    p1 = by_name["p1.jpg"]
    assert (p1.n_objects, p1.n_pending, p1.done) == (2, 2, False)
    assert p1.min_margin == pytest.approx(0.1) and p1.min_detector_confidence == pytest.approx(0.9)
    # 1 - P(box real) * P(class right), per pending object (no box calibration: the detector's score).
    assert p1.expected_errors == pytest.approx((1 - 0.9 * 0.55) + (1 - 0.9 * 0.6))
    p4, p5 = by_name["p4.jpg"], by_name["p5.jpg"]
    assert (p4.n_pending, p4.min_margin, p4.min_detector_confidence, p4.expected_errors, p4.done) == (0, None, None, 0.0, False)
    assert (p5.n_pending, p5.done) == (0, True)
    assert store.photo_queue(limit=2) == rows[:2]


def test_photo_queue_puts_the_most_expected_errors_first_using_the_calibrated_box_probability(tmp_path):
    store = Store(tmp_path / "q.db")
    store.ensure_user("ana")
    ids = {}
    # Same class confidence everywhere; the detector's score says "a" is the surest box, its
    # calibration says it is the least likely to be real.
    for k, (name, det, p_real) in enumerate((("a", 0.95, 0.30), ("b", 0.50, None), ("c", 0.90, 0.85))):
        rec, _ = store.add_photo(str(k) * 64, f"/photos/{k}.png", 100, 100, f"{name}.jpg", "ana")
        finding = Finding(Detection(Box(10, 10, 20, 80), "slope_drain", det, p_real), "slope drain", SLOPE, "why", "probe", "abc")
        store.add_run(rec.id, [finding], "det:1", "probe:abc", 0.1)
        ids[name] = rec.id
    rows = store.photo_queue()
    conf = max(SLOPE.values())
    assert [(r.name, round(r.expected_errors, 4)) for r in rows] == [
        ("a.jpg", round(1 - 0.30 * conf, 4)), ("b.jpg", round(1 - 0.50 * conf, 4)), ("c.jpg", round(1 - 0.85 * conf, 4))]
    assert store.photo_findings(ids["a"])[0].box_probability == pytest.approx(0.30)


@pytest.mark.parametrize("filters, expected", [
    ({"object_type": "slope_drain"}, ["p1", "p3", "p2"]),
    ({"object_type": "rock_toe"}, ["p1", "p5"]),
    ({"condition": "normal"}, ["p1", "p3", "p2", "p5"]),
    ({"class_name": "vegetation"}, ["p4"]),
    ({"reviewer": "ana"}, ["p4", "p5"]),
    ({"model_version": "probe:abc", "object_type": "vegetation"}, ["p4"]),
    ({"model_version": "other:1"}, []),
])
def test_photo_queue_filters(photos, filters, expected):
    store, made = photos
    assert [r.photo_id for r in store.photo_queue(**filters)] == [made[n][0] for n in expected]


def test_photo_queue_puts_an_unknown_margin_last_within_its_group(photos):
    store, made = photos
    # A pending finding without a margin (no stage-2 verdict, as in rows older than the classifier):
    # p3 now expects as many errors as p2, and goes after it.
    store.query("UPDATE findings SET margin = NULL, detector_confidence = 0.9 WHERE photo_id = ?", (made["p3"][0],))
    rows = store.photo_queue()
    assert rows[1].expected_errors == pytest.approx(rows[2].expected_errors)
    assert [r.photo_id for r in rows] == [made[n][0] for n in ("p1", "p2", "p3", "p4", "p5")]


def test_photo_queue_counts_only_live_findings_and_photo_ids_in_upload_order(photos):
    store, made = photos
    pid, (rock, slope) = made["p1"]
    store.correct(rock, 0, "ana", "delete")
    row = next(r for r in store.photo_queue() if r.photo_id == pid)
    assert (row.n_objects, row.n_pending) == (1, 1) and row.min_margin == pytest.approx(0.3)
    assert row.expected_errors == pytest.approx(1 - 0.9 * 0.6)
    assert store.photo_ids() == [made[n][0] for n in ("p1", "p2", "p3", "p4", "p5")]


# --- migration 3 -------------------------------------------------------------------------------

def test_fresh_db_has_versions_1_to_11(tmp_path):
    Store(tmp_path / "fresh.db")
    conn = sqlite3.connect(tmp_path / "fresh.db")
    assert applied_versions(conn) == list(range(1, 12))
    assert "reasons_json" in {r[1] for r in conn.execute("PRAGMA table_info(training_runs)")}
    assert "box_probability" in {r[1] for r in conn.execute("PRAGMA table_info(findings)")}
    assert "stage" in {r[1] for r in conn.execute("PRAGMA table_info(training_runs)")}
    assert "kind" in {r[1] for r in conn.execute("PRAGMA table_info(corrections)")}
    assert "undoes" in {r[1] for r in conn.execute("PRAGMA table_info(corrections)")}
    assert {r[1] for r in conn.execute("PRAGMA table_info(photo_reviews)")} == {"id", "photo_id", "reviewer", "created_at"}


def test_migrating_a_version_2_db_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:2])
    assert migrate(conn) == [1, 2]
    monkeypatch.undo()
    conn.execute("INSERT INTO users VALUES ('ana', 'Ana', 1.0)")
    conn.execute("INSERT INTO photos VALUES (1, ?, '/p/a.png', 100, 100, 'a.jpg', 'ana', 1.0)", ("a" * 64,))
    conn.execute("INSERT INTO findings(id, photo_id, object_type, class_name, x1, y1, x2, y2, model_version, source, created_at) "
                 "VALUES (1, 1, 'rock_toe', 'rock toe', 0, 0, 10, 10, 'probe:v1', 'model', 1.0)")
    conn.execute("INSERT INTO finding_state VALUES (1, 'rock_toe', 'rock toe damaged', 0, 0, 10, 10, 'r', NULL, 'reviewed', 1, 2.0, 'ana')")
    conn.execute("INSERT INTO corrections(id, finding_id, reviewer, action, before_json, after_json, model_version, revision, created_at) "
                 "VALUES (1, 1, 'ana', 'relabel', ?, ?, 'probe:v1', 1, 2.0)",
                 ('{"finding_id": 1, "object_type": "rock_toe", "class_name": "rock toe", "x1": 0, "y1": 0, "x2": 10, "y2": 10, '
                  '"rationale": "r", "note": null, "status": "pending", "revision": 0, "updated_at": 1.0, "updated_by": null}',
                  '{"class_name": "rock toe damaged"}'))
    # A box a reviewer drew and deleted again: the delete was counted against the detector then.
    conn.execute("INSERT INTO photos VALUES (2, ?, '/p/b.png', 100, 100, 'b.jpg', 'ana', 1.0)", ("b" * 64,))
    conn.execute("INSERT INTO findings(id, photo_id, object_type, class_name, x1, y1, x2, y2, source, created_at) "
                 "VALUES (2, 2, 'vegetation', 'vegetation', 20, 20, 40, 40, 'reviewer', 3.0)")
    conn.execute("INSERT INTO finding_state VALUES (2, 'vegetation', 'vegetation', 20, 20, 40, 40, '', NULL, 'deleted', 2, 4.0, 'ana')")
    drawn = ('{"finding_id": 2, "object_type": "vegetation", "class_name": "vegetation", "x1": 20, "y1": 20, "x2": 40, "y2": 40, '
             '"rationale": "", "note": null, "status": "%s", "revision": %d, "updated_at": %.1f, "updated_by": "ana"}')
    for cid, action, before, after, at in ((2, "add", "{}", drawn % ("reviewed", 1, 3.0), 3.0),
                                           (3, "delete", drawn % ("reviewed", 1, 3.0), drawn % ("deleted", 2, 4.0), 4.0)):
        conn.execute("INSERT INTO corrections(id, finding_id, reviewer, action, before_json, after_json, revision, created_at) "
                     "VALUES (?, 2, 'ana', ?, ?, ?, ?, ?)", (cid, action, before, after, cid - 1, at))
    conn.close()

    store = Store(path)
    assert [r["version"] for r in store.query("SELECT version FROM schema_migrations ORDER BY version")] == list(range(1, 12))
    # Migration 4: a photo stored before downscaling existed is its own original.
    assert (store.photo(1).original_width, store.photo(1).original_height) == (100, 100)
    [old] = store.history(1)
    assert (old.action, old.reviewer, old.revision, old.undoes, old.after) == ("relabel", "ana", 1, None, {"class_name": "rock toe damaged"})
    assert old.kind == "condition_error"  # migration 5 backfilled its kind (a class change within the type)
    # Migration 9: deleting one's own drawn box is a revision, no detector false positive.
    assert [c.kind for c in store.history(2)] == ["detector_miss", "revision"]
    assert store.state(1).class_name == "rock toe damaged" and store.photo(1).original_name == "a.jpg"
    # The old correction can be undone and the photo confirmed: the new columns and table work on it.
    assert store.undo_last(1, "ana")[0].class_name == "rock toe"
    assert store.history(1)[-1].undoes == 1
    store.correct(1, 2, "ana", "accept")
    assert store.confirm_photo(1, "ana").done
    assert store.integrity_ok()


def test_migration_11_rekinds_changes_to_a_reviewers_decision(env):
    """One wrong model answer overruled twice (bo relabels what ana relabelled) was counted as two
    condition errors against the model; migration 11 re-kinds such rows written before the rule."""
    store, photo, ids = env
    store.correct(ids[0], 0, "ana", "relabel", class_name="slope drain damaged")
    store.correct(ids[0], 1, "bo", "relabel", class_name="slope drain blocked")
    store.correct(ids[1], 0, "ana", "edit_box", box=Box(10, 10, 40, 80))
    store.correct(ids[1], 1, "bo", "edit_box", box=Box(10, 10, 60, 80))
    store.correct(ids[1], 2, "bo", "accept")
    written = [(c.action, c.kind) for f in ids[:2] for c in store.history(f)]
    assert written == [("relabel", "condition_error"), ("relabel", "revision"),
                       ("edit_box", "localisation"), ("edit_box", "revision"), ("accept", "accept")]
    assert store.correction_kinds()["total"] == {"condition_error": 1, "localisation": 1, "revision": 2, "accept": 1}
    # A change to a reviewer's decision is no model's error: the Dashboard files it under no model.
    assert store.correction_kinds()["by_model"][NO_MODEL] == {"revision": 2}
    # As the store wrote them before migration 11, then migrated.
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("UPDATE corrections SET kind = CASE action WHEN 'relabel' THEN 'condition_error' ELSE 'localisation' END "
                 "WHERE kind = 'revision'")
    conn.execute("DELETE FROM schema_migrations WHERE version = 11")
    assert migrate(conn) == [11]
    conn.close()
    assert [(c.action, c.kind) for f in ids[:2] for c in store.history(f)] == written


@pytest.mark.parametrize("xyxy", [(190.849, 132.127, 191.678, 132.937), (0, 0, 2, 2), (0, 0, 1.9, 50), (10, 10, 60, 11.5), (5, 5, 300, 300)])
def test_storable_says_what_check_box_accepts_for_a_box_inside_its_photo(xyxy):
    """The simulations leave out dataset labels the store would refuse: one rule for both."""
    from core.types import Box
    from db.checks import InvalidBox, check_box, storable

    try:
        check_box(Box(*xyxy), 312, 312)
        accepted = True
    except InvalidBox:
        accepted = False
    assert storable(Box(*xyxy)) is accepted
