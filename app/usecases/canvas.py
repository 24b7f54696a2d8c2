"""The review canvas as data: what the box-annotation component shows, and what a reviewer's edit
on it means, as pure functions (tested table-driven in ``tests/test_canvas.py``).

The canvas (``gradio_image_annotation``) returns its boxes as dicts with ``xmin..ymax`` in the
photo's pixel coordinates and a ``label``; it keeps no ids. So every stored object is sent with
the label ``"#k class"`` (``k``: its index on the photo, the same ``#k`` as everywhere else) and in
index order, and a returned box is matched back by that ``#k``. A box whose label lost its ``#k``
(relabelled in the canvas's own dialog) or never had one (newly drawn) is matched to the stored
object it overlaps most (IoU >= 0.5), else it is new. Stored objects left unmatched were deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.taxonomy import Taxonomy
from core.types import Box
from db.checks import InvalidBox, check_box

LABEL = re.compile(r"^#(\d+)\s+(.*)$")
# First entry of the canvas's label list, so a drawn box never starts on a real class: a class
# is saved only when the reviewer picked it.
CHOOSE = "(choose a class)"
# The canvas rounds coordinates to whole pixels, so a box is "moved" only past this many pixels.
MOVE_TOLERANCE_PX = 1.0
SAME_OBJECT_IOU = 0.5
# Appended to the label of an object in the "likely right" band, and of one a reviewer decided,
# so the canvas shows what is left to look at as the object list does; parse_label drops them,
# so a mark never reads as part of a class name.
LIKELY_MARK = "· likely right"
DECIDED_MARK = "✓"
# An imported dataset label (``slopewatch import-labels``), told apart from the model's suggestions.
LABEL_MARK = "· label"


class CanvasError(ValueError):
    """A canvas edit that cannot be saved (a box without a class, a class not in the taxonomy)."""


@dataclass(frozen=True)
class CanvasObject:
    """A stored live object as the canvas shows it."""

    finding_id: int
    index: int
    box: Box
    class_name: str
    likely_right: bool = False
    decided: bool = False  # reviewed: marked ✓ on the canvas
    from_labels: bool = False  # an imported dataset label
    rank: tuple = ()  # its place in the canvas's list (click_rank); none: as given

    @property
    def label(self) -> str:
        return f"#{self.index} {self.class_name}" + (f" {DECIDED_MARK}" if self.decided else "") + (
            f" {LABEL_MARK}" if self.from_labels else "") + (f" {LIKELY_MARK}" if self.likely_right else "")


@dataclass(frozen=True)
class Change:
    """One reviewer change found on the canvas.

    Attributes:
        action: ``edit_box``, ``relabel``, ``retype``, ``delete`` or ``add``.
        finding_id: the changed object (None for ``add``).
        box: the new box (``edit_box``, ``add``).
        class_name: the new class (``relabel``, ``retype``, ``add``).
    """

    action: str
    finding_id: int | None = None
    box: Box | None = None
    class_name: str | None = None


def rgb(hex_color: str) -> str:
    """``"#2ca02c"`` -> ``"rgb(44, 160, 44)"``: the only colour form the canvas both draws (a hex
    string draws black) and parses back (an RGB list comes back unparseable)."""
    return "rgb({}, {}, {})".format(*(int(hex_color[k:k + 2], 16) for k in (1, 3, 5)))


def canvas_scale(width: int, height: int, target: int = 640) -> int:
    """How many times a photo is enlarged on the canvas: drone photos of 224–312 px would show
    as a thumbnail, so they are drawn at 2–3x (boxes are stored in the photo's own pixels)."""
    return max(1, min(3, round(target / max(width, height))))


def click_rank(index: int, drawn: bool, model_box: Box | None) -> tuple:
    """An object's place in the canvas's list, which is the order the component tries boxes under
    a click (the first box of the list holding the click wins). The model's boxes come smallest
    first, so a drain inside a vegetation box can be clicked at all (in ``#k`` order it could not);
    by the box as output, never as it is now, and boxes drawn by reviewers come last, in ``#k``
    order, as the component itself appends them: it keeps its selection by list position across
    redraws, so a list reordered by an edit or an add made its Delete remove another box."""
    return (1, index, 0.0) if drawn or model_box is None else (0, model_box.area, index)


def canvas_boxes(objects: list[CanvasObject], colors: dict[str, str], taxonomy: Taxonomy, scale: int = 1) -> list[dict]:
    """The component's ``boxes`` (in canvas pixels: photo pixels x ``scale``): one per object,
    labelled ``#k class`` (the label, not the list position, names the object), coloured by
    condition, in :func:`click_rank` order."""
    return [{"xmin": o.box.x1 * scale, "ymin": o.box.y1 * scale, "xmax": o.box.x2 * scale, "ymax": o.box.y2 * scale,
             "label": o.label, "color": rgb(colors[taxonomy.condition_key(o.class_name)])} for o in sorted(objects, key=lambda o: o.rank)]


def clamp_box(raw: dict, width: int, height: int, scale: int = 1) -> Box:
    """A canvas box (canvas pixels) in the photo's pixel coordinates, clamped to the photo, at least 2 px a side."""
    try:
        values = [float(raw[k]) / scale for k in ("xmin", "ymin", "xmax", "ymax")]
    except (KeyError, TypeError, ValueError):
        raise CanvasError(f"expected a box with numeric xmin, ymin, xmax, ymax, found {raw!r:.120}") from None
    try:  # the store's one rule for every box (it checks again when saving)
        return check_box(values, width, height)
    except InvalidBox as exc:
        raise CanvasError(str(exc)) from None


def parse_label(label: str | None) -> tuple[int | None, str]:
    """``"#3 Toe drain"`` (or ``"#3 Toe drain ✓"``, ``"#3 Toe drain · likely right"``, ``"#3 Toe drain ✓ · label"``)
    -> ``(3, "Toe drain")``; a bare class name -> ``(None, name)``."""
    text = (label or "").strip()
    for mark in (LIKELY_MARK, LABEL_MARK, DECIDED_MARK):
        text = text[: -len(mark)].strip() if text.endswith(mark) else text
    m = LABEL.match(text)
    return (int(m.group(1)), m.group(2).strip()) if m else (None, text)


def typed(text: str) -> str | None:
    """What was typed into the class dialog's field around its placeholder, wherever the caret
    sat: "(choose a classvege)", "(choose a classslope drain)" (before its ")"), "rock toe(choose
    a class)". None when the placeholder is not there."""
    head = CHOOSE[:-1]
    if text.startswith(CHOOSE):
        return text[len(CHOOSE):]
    if text.startswith(head) and text.endswith(")"):
        return text[len(head):-1]
    if text.endswith(CHOOSE):
        return text[: -len(CHOOSE)]
    return None


def drawn_class(raw, taxonomy: Taxonomy) -> str | None:
    """The class of a drawn box (no ``#k``) whose class was typed into the dialog instead of picked
    from its list: the typed text, when it names one class (any case, spaces trimmed)."""
    index, text = parse_label(raw.get("label") if isinstance(raw, dict) else None)
    words = typed(text) if index is None else None
    if not words:
        return None
    return next((c for c in taxonomy.class_names if c.lower() == " ".join(words.split()).lower()), None)


def unchosen(raw, taxonomy: Taxonomy | None = None) -> bool:
    """A drawn box whose class the reviewer has not chosen yet: no ``#k``, and an empty label or
    the placeholder with whatever was typed into it. Text typed into the dialog's field is added to
    the placeholder ("(choose a classvege)"); a class typed whole is chosen (``drawn_class``,
    given the ``taxonomy``), anything else leaves the box waiting for a class from the list: the
    save refused lost the box. Other text stays an error: it is a stored box's label edited by
    hand, which must not read as that object gone."""
    index, class_name = parse_label(raw.get("label") if isinstance(raw, dict) else None)
    if index is not None or (taxonomy is not None and drawn_class(raw, taxonomy)):
        return False
    return class_name == "" or typed(class_name) is not None


def waiting(boxes: list[dict], taxonomy: Taxonomy | None = None) -> int:
    """Drawn boxes whose class the reviewer has not chosen yet (given the ``taxonomy``, one whose
    class was typed whole is chosen)."""
    return sum(unchosen(b, taxonomy) for b in boxes or [])


def moved(a: Box, b: Box, tolerance: float = MOVE_TOLERANCE_PX) -> bool:
    return max(abs(p - q) for p, q in zip(a.xyxy, b.xyxy)) > tolerance


def diff(objects: list[CanvasObject], boxes: list[dict], taxonomy: Taxonomy, width: int, height: int, scale: int = 1) -> list[Change]:
    """The changes that turn ``objects`` (what was shown) into ``boxes`` (what the canvas returned,
    in canvas pixels: photo pixels x ``scale``).

    Order: deletions, then edits of existing objects (box, then class), then additions, so a
    reviewer who redraws a box sees the old one go before the new one comes.
    """
    by_index = {o.index: o for o in objects}
    parsed = []
    for raw in boxes or []:
        if unchosen(raw, taxonomy):
            continue  # drawn, class not chosen yet: saved once the reviewer picks it (see waiting())
        index, class_name = parse_label(raw.get("label") if isinstance(raw, dict) else None)
        class_name = drawn_class(raw, taxonomy) or class_name
        if class_name not in taxonomy.class_names:
            raise CanvasError(f"expected a class among {taxonomy.class_names}, found {class_name!r}")
        parsed.append((index, class_name, clamp_box(raw, width, height, scale)))

    matched: dict[int, tuple[str, Box]] = {}  # finding_id -> (class, box)
    loose = []
    for index, class_name, box in parsed:
        o = by_index.get(index) if index is not None else None
        if o is not None and o.finding_id not in matched:
            matched[o.finding_id] = (class_name, box)
        else:
            loose.append((class_name, box))
    added = []
    for class_name, box in loose:
        free = [o for o in objects if o.finding_id not in matched]
        best = max(free, key=lambda o: o.box.iou(box), default=None)
        if best is not None and best.box.iou(box) >= SAME_OBJECT_IOU:
            matched[best.finding_id] = (class_name, box)
        else:
            added.append(Change("add", box=box, class_name=class_name))

    changes = [Change("delete", o.finding_id) for o in objects if o.finding_id not in matched]
    for o in objects:
        if o.finding_id not in matched:
            continue
        class_name, box = matched[o.finding_id]
        if moved(o.box, box):
            changes.append(Change("edit_box", o.finding_id, box=box))
        if class_name != o.class_name:
            same_type = taxonomy.get_class(class_name).type == taxonomy.get_class(o.class_name).type
            changes.append(Change("relabel" if same_type else "retype", o.finding_id, class_name=class_name))
    return changes + added
