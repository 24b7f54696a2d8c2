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
]


@pytest.mark.parametrize("action, before, after, kind, stage", CASES, ids=[f"{c[0]}->{c[3]}" for c in CASES])
def test_attribution(action, before, after, kind, stage):
    assert attribute(action, before, after) is kind
    assert indicted_stage(kind) == stage


def test_unknown_action_is_refused():
    with pytest.raises(ValueError, match="expected a review action"):
        attribute("bless", BOX, BOX)
