"""Every review action maps to the kind of error it reveals, table-driven."""

import pytest

from core.attribution import Kind, attribute, indicted_stage

BOX = {"x1": 10, "y1": 10, "x2": 110, "y2": 60, "object_type": "slope_drain", "class_name": "slope drain"}

CASES = [
    ("add", {}, BOX, Kind.DETECTOR_MISS, "detector"),
    ("delete", BOX, {**BOX, "status": "deleted"}, Kind.DETECTOR_FALSE_POSITIVE, "detector"),
    ("edit_box", BOX, {**BOX, "x2": 160}, Kind.LOCALISATION, "detector"),  # IoU 0.67
    ("edit_box", BOX, {**BOX, "x2": 111}, Kind.ACCEPT, None),  # a 1 px nudge (IoU 0.99) is no detector error
    ("retype", BOX, {**BOX, "object_type": "toe_drain", "class_name": "Toe drain"}, Kind.TYPE_ERROR, "detector"),
    ("relabel", BOX, {**BOX, "class_name": "slope drain blocked"}, Kind.CONDITION_ERROR, "classifier"),
    ("retype", BOX, {**BOX, "class_name": "slope drain damaged"}, Kind.CONDITION_ERROR, "classifier"),  # same type
    ("edit_rationale", BOX, {**BOX, "rationale": "outlet silted"}, Kind.RATIONALE, "classifier"),
    ("accept", BOX, BOX, Kind.ACCEPT, None),
    ("note", BOX, {**BOX, "note": "check again in spring"}, Kind.NOTE, None),
    ("undo", BOX, BOX, Kind.UNDO, None),
    ("repair", BOX, {**BOX, "x2": 100}, Kind.REPAIR, None),
]


@pytest.mark.parametrize("action, before, after, kind, stage", CASES, ids=[f"{c[0]}->{c[3]}" for c in CASES])
def test_attribution(action, before, after, kind, stage):
    assert attribute(action, before, after) is kind
    assert indicted_stage(kind) == stage


DRAWN = [  # the same actions on a box a reviewer drew: no model made it, so none is indicted
    ("delete", BOX, {**BOX, "status": "deleted"}, Kind.REVISION),
    ("edit_box", BOX, {**BOX, "x2": 160}, Kind.REVISION),
    ("retype", BOX, {**BOX, "object_type": "toe_drain", "class_name": "Toe drain"}, Kind.REVISION),
    ("relabel", BOX, {**BOX, "class_name": "slope drain blocked"}, Kind.REVISION),
    ("edit_rationale", BOX, {**BOX, "rationale": "outlet silted"}, Kind.REVISION),
    ("accept", BOX, BOX, Kind.ACCEPT),
    ("note", BOX, {**BOX, "note": "mine"}, Kind.NOTE),
    ("undo", BOX, BOX, Kind.UNDO),
]


@pytest.mark.parametrize("action, before, after, kind", DRAWN, ids=[f"drawn {c[0]}->{c[3]}" for c in DRAWN])
def test_revising_a_drawn_box_indicts_no_model(action, before, after, kind):
    assert attribute(action, before, after, drawn=True) is kind
    assert indicted_stage(kind) is None


MODEL = {**BOX, "rationale": "why"}  # what the model output for the object
CHANGED_BY_A_REVIEWER = [  # changing again what a reviewer already changed: the model's error was counted the first time
    ("relabel", {**MODEL, "class_name": "slope drain blocked"}, {**MODEL, "class_name": "slope drain damaged"}, Kind.REVISION),
    ("retype", {**MODEL, "object_type": "toe_drain", "class_name": "Toe drain"}, {**MODEL, "object_type": "rock_toe"}, Kind.REVISION),
    ("edit_box", {**MODEL, "x2": 160}, {**MODEL, "x2": 200}, Kind.REVISION),
    ("edit_rationale", {**MODEL, "rationale": "mine"}, {**MODEL, "rationale": "mine, better"}, Kind.REVISION),
    # What still holds the model's output is the model's error to count.
    ("relabel", MODEL, {**MODEL, "class_name": "slope drain blocked"}, Kind.CONDITION_ERROR),
    # The box was moved, the class is still the model's.
    ("relabel", {**MODEL, "x2": 160}, {**MODEL, "x2": 160, "class_name": "slope drain blocked"}, Kind.CONDITION_ERROR),
    ("edit_box", {**MODEL, "x2": 111}, {**MODEL, "x2": 160}, Kind.LOCALISATION),  # a nudged box is still the model's
    ("edit_box", {**MODEL, "class_name": "slope drain blocked"}, {**MODEL, "x2": 160}, Kind.LOCALISATION),
    ("edit_rationale", {**MODEL, "class_name": "slope drain blocked"}, {**MODEL, "rationale": "mine"}, Kind.RATIONALE),
    ("delete", {**MODEL, "x2": 160}, {**MODEL, "status": "deleted"}, Kind.DETECTOR_FALSE_POSITIVE),
]


@pytest.mark.parametrize("action, before, after, kind", CHANGED_BY_A_REVIEWER, ids=[f"{c[0]}->{c[3]}" for c in CHANGED_BY_A_REVIEWER])
def test_changing_a_reviewers_decision_again_indicts_no_model(action, before, after, kind):
    assert attribute(action, before, after, model=MODEL) is kind


LABEL = {**MODEL, "model_version": "labels:drainage-conditions/train"}  # a dataset label imported for review
ON_A_LABEL = [  # a wrong label is the dataset's error, whatever was wrong with it; no model is indicted
    ("delete", LABEL, {**LABEL, "status": "deleted"}, Kind.LABEL),
    ("edit_box", LABEL, {**LABEL, "x2": 160}, Kind.LABEL),
    ("retype", LABEL, {**LABEL, "object_type": "toe_drain", "class_name": "Toe drain"}, Kind.LABEL),
    ("relabel", LABEL, {**LABEL, "class_name": "slope drain blocked"}, Kind.LABEL),
    ("edit_rationale", LABEL, {**LABEL, "rationale": "mine"}, Kind.LABEL),
    ("edit_box", LABEL, {**LABEL, "x2": 111}, Kind.ACCEPT),  # a nudge, as for any box
    ("accept", LABEL, LABEL, Kind.ACCEPT),
    ("note", LABEL, {**LABEL, "note": "n"}, Kind.NOTE),
    ("undo", LABEL, LABEL, Kind.UNDO),
    ("relabel", {**LABEL, "class_name": "slope drain blocked"}, {**LABEL, "class_name": "slope drain damaged"}, Kind.REVISION),
]


@pytest.mark.parametrize("action, before, after, kind", ON_A_LABEL, ids=[f"label {c[0]}->{c[3]}" for c in ON_A_LABEL])
def test_correcting_an_imported_label_indicts_the_dataset(action, before, after, kind):
    assert attribute(action, before, after, model=LABEL) is kind
    assert indicted_stage(kind) is None
    # The same correction on the model's output does indict a model.
    if kind is Kind.LABEL:
        assert indicted_stage(attribute(action, before, after, model={**MODEL, "model_version": "ensemble:abc"})) is not None


@pytest.mark.parametrize("day, week", [("2026-11-28", "2026-W48"), ("2021-01-01", "2020-W53"), ("2024-12-30", "2025-W01")])
def test_dashboard_weeks_are_iso_weeks(day, week):
    from db.progress import iso_week

    assert iso_week(day) == week


def test_unknown_action_is_refused():
    with pytest.raises(ValueError, match="expected a review action"):
        attribute("bless", BOX, BOX)


def test_the_store_records_each_correction_s_kind_and_the_dashboard_counts_them(tmp_path):
    from core.types import Box, Detection, Finding
    from db.store import Store

    store = Store(tmp_path / "review.db")
    store.ensure_user("ana")
    photo, _ = store.add_photo("a" * 64, str(tmp_path / "a.png"), 312, 312, "a.jpg", "ana")
    dets = [Detection(Box(10, 10, 110, 60), "slope_drain", 0.9), Detection(Box(150, 150, 250, 250), "rock_toe", 0.8),
            Detection(Box(10, 150, 100, 300), "rock_toe", 0.7)]
    findings = [Finding(dets[0], "slope drain", {"slope drain": 0.7, "slope drain blocked": 0.2, "slope drain damaged": 0.1}, "", "probe", "v1"),
                Finding(dets[1], "rock toe", {"rock toe": 0.6, "rock toe damaged": 0.4}, "", "probe", "v1"),
                Finding(dets[2], "rock toe", {"rock toe": 0.6, "rock toe damaged": 0.4}, "", "probe", "v1")]
    a, b, nudged = store.add_run(photo.id, findings, "det", "probe:v1", 0.1)
    store.correct(a, 0, "ana", "relabel", class_name="slope drain blocked")
    store.correct(a, 1, "ana", "edit_box", box=Box(10, 10, 200, 60))
    store.correct(nudged, 0, "ana", "edit_box", box=Box(11, 150, 100, 300))  # within the IoU tolerance: the box was right
    store.correct(b, 0, "ana", "delete")
    store.add_missed(photo.id, "ana", Box(20, 200, 60, 240), "Toe drain")
    kinds = [c.kind for f in (a, b, nudged) for c in store.history(f)]
    assert kinds == ["condition_error", "localisation", "detector_false_positive", "accept"]
    d = store.dashboard()["kinds"]
    assert d["total"] == {"condition_error": 1, "localisation": 1, "detector_false_positive": 1, "detector_miss": 1, "accept": 1}
    # Each kind counts against the model it indicts: box kinds against the detector run that made
    # the photo's boxes (a drawn box: the one that missed it), condition kinds against stage 2; a
    # nudged box confirms the detector's box, not the stage-2 class, which is still pending.
    assert d["by_model"]["probe:v1"] == {"condition_error": 1}
    assert d["by_model"]["det"] == {"localisation": 1, "detector_false_positive": 1, "detector_miss": 1, "accept": 1}
    assert len(d["by_week"]) == 1
    # An undone correction no longer indicts anything, and the undo itself is no error of a model.
    store.undo_last(photo.id, "ana")  # the drawn box
    store.undo_last(photo.id, "ana")  # the delete
    assert store.dashboard()["kinds"]["total"] == {"condition_error": 1, "localisation": 1, "accept": 1}


def test_a_box_drawn_moved_and_deleted_again_indicts_nothing(tmp_path):
    """A reviewer who draws a box, moves it, then deletes it changed their own mind: the detector
    neither missed it nor produced a false positive, and no nightly is owed a detector run."""
    import datetime

    from core.attribution import STAGE1
    from core.types import Box
    from db.store import Store

    store = Store(tmp_path / "review.db")
    store.ensure_user("ana")
    photo, _ = store.add_photo("a" * 64, str(tmp_path / "a.png"), 312, 312, "a.jpg", "ana")
    drawn = store.add_missed(photo.id, "ana", Box(20, 200, 60, 240), "Toe drain")
    assert store.dashboard()["kinds"]["total"] == {"detector_miss": 1}
    assert store.corrections_since(0, kinds=STAGE1) == 1
    store.correct(drawn.finding_id, 1, "ana", "edit_box", box=Box(20, 150, 90, 240))
    store.correct(drawn.finding_id, 2, "ana", "delete")
    assert [c.kind for c in store.history(drawn.finding_id)] == ["detector_miss", "revision", "revision"]
    d = store.dashboard()["kinds"]
    assert d["total"] == {"revision": 2}
    assert store.corrections_since(0, kinds=STAGE1) == 0
    # Undoing the delete brings the box, and so the miss, back.
    store.undo_last(photo.id, "ana")
    assert store.dashboard()["kinds"]["total"] == {"detector_miss": 1, "revision": 1}
    year, week, _ = datetime.datetime.now(datetime.timezone.utc).isocalendar()
    assert list(store.dashboard()["kinds"]["by_week"]) == [f"{year}-W{week:02d}"]
