"""The canvas diff, table-driven: what a reviewer's edit on the box canvas means."""

from dataclasses import replace

import pytest

from app.usecases.canvas import (
    CHOOSE,
    CanvasError,
    CanvasObject,
    Change,
    canvas_boxes,
    canvas_scale,
    clamp_box,
    diff,
    parse_label,
    rgb,
    waiting,
)
from core.overlay import DEFAULT_COLORS
from core.taxonomy import load_taxonomy
from core.types import Box

TAX = load_taxonomy()
OBJECTS = [CanvasObject(11, 0, Box(10, 10, 50, 100), "slope drain"),
           CanvasObject(12, 1, Box(60, 200, 150, 240), "Toe drain"),
           CanvasObject(13, 2, Box(0, 250, 300, 300), "vegetation")]
SHOWN = canvas_boxes(OBJECTS, DEFAULT_COLORS, TAX)


def edited(**by_index):
    """The shown boxes with some replaced (a dict) or removed (None)."""
    out = []
    for k, b in enumerate(SHOWN):
        new = by_index.get(f"b{k}", b)
        if new is not None:
            out.append({**b, **new})
    return out


CASES = [
    ("nothing changed", SHOWN, []),
    ("rounded by the canvas is not a move", edited(b0={"xmin": 10.4, "xmax": 49.6}), []),
    ("moved", edited(b1={"xmin": 70, "xmax": 160}), [Change("edit_box", 12, box=Box(70, 200, 160, 240))]),
    ("deleted", edited(b2=None), [Change("delete", 13)]),
    ("relabelled, #k kept", edited(b0={"label": "#0 slope drain blocked"}), [Change("relabel", 11, class_name="slope drain blocked")]),
    ("relabelled in the canvas dialog (no #k)", edited(b1={"label": "Toe drain- Damaged"}),
     [Change("relabel", 12, class_name="Toe drain- Damaged")]),
    ("retyped", edited(b2={"label": "#2 rock toe"}), [Change("retype", 13, class_name="rock toe")]),
    ("moved and relabelled", edited(b0={"ymax": 120, "label": "#0 slope drain damaged"}),
     [Change("edit_box", 11, box=Box(10, 10, 50, 120)), Change("relabel", 11, class_name="slope drain damaged")]),
    ("drawn", SHOWN + [{"xmin": 200, "ymin": 20, "xmax": 260, "ymax": 90, "label": "rock toe damaged"}],
     [Change("add", box=Box(200, 20, 260, 90), class_name="rock toe damaged")]),
    ("drawn past the edge is clamped", SHOWN + [{"xmin": 280, "ymin": -5, "xmax": 400, "ymax": 40, "label": "rock toe"}],
     [Change("add", box=Box(280, 0, 312, 40), class_name="rock toe")]),
    ("deleted one, drew another elsewhere", edited(b1=None) + [{"xmin": 200, "ymin": 20, "xmax": 260, "ymax": 90, "label": "Toe drain"}],
     [Change("delete", 12), Change("add", box=Box(200, 20, 260, 90), class_name="Toe drain")]),
    ("order of the returned boxes does not matter", list(reversed(SHOWN)), []),
    ("drawn, class not chosen yet: nothing to save", SHOWN + [{"xmin": 1, "ymin": 1, "xmax": 40, "ymax": 40, "label": CHOOSE}], []),
    ("drawn without any label yet", SHOWN + [{"xmin": 1, "ymin": 1, "xmax": 40, "ymax": 40, "label": ""}], []),
]


@pytest.mark.parametrize("name, boxes, expected", CASES, ids=[c[0] for c in CASES])
def test_diff(name, boxes, expected):
    assert diff(OBJECTS, boxes, TAX, 312, 312) == expected


@pytest.mark.parametrize("boxes, message", [
    ([{**SHOWN[0], "label": "#0 pothole"}, *SHOWN[1:]], "expected a class"),  # a stored object given no class (a new box waits)
    (SHOWN + [{"xmin": 5, "ymin": 5, "xmax": 6, "ymax": 60, "label": "rock toe"}], "at least 2 px"),
    (SHOWN + [{"xmin": 400, "ymin": 5, "xmax": 500, "ymax": 60, "label": "rock toe"}], "at least 2 px"),
    (SHOWN + [{"xmin": float("nan"), "ymin": 5, "xmax": 50, "ymax": 60, "label": "rock toe"}], "finite"),
    (SHOWN + [{"ymin": 5, "xmax": 50, "ymax": 60, "label": "rock toe"}], "numeric"),
])
def test_unsaveable_edits_are_refused(boxes, message):
    with pytest.raises(CanvasError, match=message):
        diff(OBJECTS, boxes, TAX, 312, 312)


@pytest.mark.parametrize("label, parsed", [("#3 Toe drain", (3, "Toe drain")), ("Toe drain", (None, "Toe drain")),
                                           ("#12   slope drain blocked ", (12, "slope drain blocked")), ("", (None, "")),
                                           (None, (None, "")), ("#x rock toe", (None, "#x rock toe")),
                                           ("#4 rock toe damaged · likely right", (4, "rock toe damaged")),
                                           ("rock toe · likely right", (None, "rock toe")), ("#2 rock toe ✓", (2, "rock toe")),
                                           ("#2 slope drain blocked ✓", (2, "slope drain blocked"))])
def test_parse_label(label, parsed):
    assert parse_label(label) == parsed


def test_an_enlarged_canvas_maps_back_to_photo_pixels():
    shown = canvas_boxes(OBJECTS, DEFAULT_COLORS, TAX, scale=2)
    assert shown[0]["xmax"] == 100 and diff(OBJECTS, shown, TAX, 312, 312, scale=2) == []
    moved = [{**shown[0], "xmin": 40, "xmax": 120}, *shown[1:]]
    assert diff(OBJECTS, moved, TAX, 312, 312, scale=2) == [Change("edit_box", 11, box=Box(20, 10, 60, 100))]
    assert [canvas_scale(312, 312), canvas_scale(224, 224), canvas_scale(1280, 960), canvas_scale(4000, 3000)] == [2, 3, 1, 1]


def test_waiting_counts_drawn_boxes_without_a_chosen_class():
    assert waiting(SHOWN) == 0
    assert waiting(SHOWN + [{"label": CHOOSE}, {"label": ""}, {"label": "rock toe"}]) == 2
    # Text typed into the dialog's field is appended to the placeholder: the box waits for a class
    # from the list instead of the save being refused and the box lost.
    typed = [{"xmin": 5, "ymin": 5, "xmax": 40, "ymax": 40, "label": f"{CHOOSE}vege"}]
    assert waiting(SHOWN + typed) == 1 and diff(OBJECTS, SHOWN + typed, TAX, 312, 312) == []
    # A stored box whose label was typed over by hand is not "waiting": that would read as the
    # object gone (a delete) and, once a class is picked, a new drawn object.
    with pytest.raises(CanvasError, match="expected a class"):
        diff(OBJECTS, [{**SHOWN[0], "label": "bl"}, *SHOWN[1:]], TAX, 312, 312)


@pytest.mark.parametrize("label, saved", [
    (f"{CHOOSE}slope drain", "slope drain"),
    ("(choose a classslope drain)", "slope drain"),  # the caret sat before the placeholder's ")" (a walk-through)
    (f"rock toe damaged{CHOOSE}", "rock toe damaged"),
    (f"{CHOOSE}  Toe Drain- blocked ", "Toe drain- Blocked"),  # any case, spaces trimmed
    (f"{CHOOSE}vege", None),  # not a whole class: waits for one from the list
    ("(choose a classvege)", None),
    (CHOOSE, None),
])
def test_a_class_typed_into_the_dialog_is_chosen_when_it_names_one(label, saved):
    drawn = {"xmin": 5, "ymin": 5, "xmax": 40, "ymax": 40, "label": label}
    changes = diff(OBJECTS, SHOWN + [drawn], TAX, 312, 312)
    if saved is None:
        assert changes == [] and waiting(SHOWN + [drawn], TAX) == 1
    else:
        assert changes == [Change("add", box=Box(5, 5, 40, 40), class_name=saved)] and waiting(SHOWN + [drawn], TAX) == 0


def test_shown_boxes_carry_index_labels_and_condition_colours():
    assert [b["label"] for b in SHOWN] == ["#0 slope drain", "#1 Toe drain", "#2 vegetation"]
    assert SHOWN[0]["color"] == rgb(DEFAULT_COLORS["normal"]) == "rgb(44, 160, 44)" and SHOWN[2]["color"] == rgb(DEFAULT_COLORS["none"])
    assert clamp_box({"xmin": 30, "ymin": 40, "xmax": 10, "ymax": 5}, 100, 100) == Box(10, 5, 30, 40)


def test_an_object_in_the_likely_right_band_is_marked_on_the_canvas_and_reads_back_unchanged():
    marked = [replace(o, likely_right=o.index == 0) for o in OBJECTS]
    shown = canvas_boxes(marked, DEFAULT_COLORS, TAX)
    assert [b["label"] for b in shown] == ["#0 slope drain · likely right", "#1 Toe drain", "#2 vegetation"]
    assert diff(marked, shown, TAX, 312, 312) == [] and diff(OBJECTS, shown, TAX, 312, 312) == []
    relabelled = [{**shown[0], "label": "#0 slope drain blocked · likely right"}, *shown[1:]]
    assert diff(marked, relabelled, TAX, 312, 312) == [Change("relabel", OBJECTS[0].finding_id, class_name="slope drain blocked")]
