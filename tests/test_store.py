"""The SQLite store: migrations, append-only corrections, stale-edit detection, concurrency."""

import sqlite3
import threading

import pytest

from core.taxonomy import load_taxonomy
from core.types import Box, Detection, Finding
from db.checks import InvalidEdit, StaleEdit
from db.migrations import MIGRATIONS, applied_versions, migrate
from db.store import Store, wal_reset_bug

TAX = load_taxonomy()


def _finding(type_="slope_drain", cls="slope drain", probs=None):
    probs = probs or {"slope drain": 0.6, "slope drain blocked": 0.3, "slope drain damaged": 0.1}
    return Finding(Detection(Box(10, 10, 20, 80), type_, 0.9), cls, probs, "why", "probe", "abc")


def _seed(store, n=2):
    store.ensure_user("ana")
    store.ensure_user("bo")
    photo, created = store.add_photo("h" * 64, "/photos/x.jpg", 312, 312, "x.jpg", "ana")
    ids = store.add_run(photo.id, [_finding() for _ in range(n)], "det:1", "probe:abc", 0.5)
    return photo, ids


def test_migrations_build_the_schema_once_in_memory():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(conn) == [v for v, _, _ in MIGRATIONS]
    assert migrate(conn) == []
    assert applied_versions(conn) == [v for v, _, _ in MIGRATIONS]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"photos", "inference_runs", "findings", "corrections", "users", "model_versions", "training_runs", "finding_state"} <= tables


def test_same_photo_twice_is_one_photo():
    store = Store(":memory:")
    store.ensure_user("ana")
    a, created_a = store.add_photo("a" * 64, "/p/a.jpg", 10, 10, "a.jpg", "ana")
    b, created_b = store.add_photo("a" * 64, "/p/other.jpg", 10, 10, "copy.jpg", "ana")
    assert created_a and not created_b and a.id == b.id
    assert store.query("SELECT count(*) AS n FROM photos")[0]["n"] == 1


def test_corrections_are_appended_with_who_when_before_after():
    store = Store(":memory:")
    _, (fid, _) = _seed(store)
    s1 = store.correct(fid, 0, "ana", "relabel", class_name="slope drain blocked")
    s2 = store.correct(fid, 1, "bo", "note", note="silt at the outlet")
    assert (s1.revision, s2.revision) == (1, 2)
    hist = store.history(fid)
    assert [(h.reviewer, h.action, h.revision) for h in hist] == [("ana", "relabel", 1), ("bo", "note", 2)]
    assert hist[0].before["class_name"] == "slope drain" and hist[0].after["class_name"] == "slope drain blocked"
    assert hist[0].model_version == "probe:abc" and hist[0].created_at > 0
    # The model's own output is never overwritten.
    assert store.query("SELECT class_name FROM findings WHERE id = ?", (fid,))[0]["class_name"] == "slope drain"
    assert store.state(fid).class_name == "slope drain blocked" and store.state(fid).note == "silt at the outlet"


def test_stale_edit_is_refused_with_the_current_state():
    store = Store(":memory:")
    _, (fid, _) = _seed(store)
    store.correct(fid, 0, "ana", "relabel", class_name="slope drain damaged")
    with pytest.raises(StaleEdit) as info:
        store.correct(fid, 0, "bo", "relabel", class_name="slope drain blocked")
    assert info.value.current.class_name == "slope drain damaged" and info.value.current.updated_by == "ana"
    assert len(store.history(fid)) == 1


@pytest.mark.parametrize(
    "action, changes, message",
    [
        ("relabel", {"class_name": "Toe drain"}, "is not a 'slope_drain'"),
        ("retype", {"object_type": "toe_drain"}, "several classes"),
        ("edit_box", {"box": "x"}, "expected a box of four numbers"),
        ("fly", {}, "expected an action"),
    ],
)
def test_invalid_edits(action, changes, message):
    store = Store(":memory:")
    _, (fid, _) = _seed(store)
    with pytest.raises(InvalidEdit, match=message):
        store.correct(fid, 0, "ana", action, **changes)
    assert store.history(fid) == []


def test_retype_delete_box_and_missed_box():
    store = Store(":memory:")
    photo, (f1, f2) = _seed(store)
    assert store.correct(f1, 0, "ana", "retype", object_type="vegetation").class_name == "vegetation"
    assert store.correct(f2, 0, "ana", "delete").status == "deleted"
    assert store.correct(f1, 1, "ana", "edit_box", box=Box(0, 0, 5, 5)).x2 == 5
    added = store.add_missed(photo.id, "bo", Box(0, 250, 312, 280), "Toe drain- Blocked")
    assert added.object_type == "toe_drain" and store.history(added.finding_id)[0].action == "add"


def test_eight_reviewers_at_once_lose_nothing(tmp_path):
    store = Store(tmp_path / "review.db")
    _, ids = _seed(store, n=5)
    shared, own = ids[0], ids[1:]
    done = [0] * 8
    errors = []

    def reviewer(k):
        try:
            name = f"r{k}"
            store.ensure_user(name)
            targets = [shared] * 5 + [own[k % 4]] * 5
            for fid in targets:
                while True:  # a reviewer told "it changed" reloads and tries again
                    rev = store.state(fid).revision
                    try:
                        store.correct(fid, rev, name, "note", note=f"{name}-{rev}")
                        done[k] += 1
                        break
                    except StaleEdit:
                        continue
        except Exception as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = store.query("SELECT count(*) AS n FROM corrections")[0]["n"]
    assert total == sum(done) == 80
    for fid in ids:
        revs = [h.revision for h in store.history(fid)]
        assert revs == list(range(1, len(revs) + 1)), "revisions must be contiguous: no lost or duplicated edit"
        assert store.state(fid).revision == len(revs)
    assert len(store.history(shared)) == 40
    assert store.integrity_ok()
    assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"


@pytest.mark.parametrize("version, affected", [("3.40.1", True), ("3.44.6", False), ("3.45.0", True), ("3.50.7", False),
                                               ("3.51.2", True), ("3.51.3", False), ("3.6.23", False)])
def test_wal_reset_bug_versions(version, affected):
    assert wal_reset_bug(version) is affected
