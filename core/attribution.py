"""Which model a reviewer's correction indicts: every correction gets a kind, derived from what it
changed (never typed by hand), and each kind trains the stage it blames.

* ``detector_miss`` — a box the detector did not find was drawn (stage 1);
* ``detector_false_positive`` — a box that is not an object was deleted (stage 1);
* ``localisation`` — a box was moved or resized beyond a small IoU change (stage 1);
* ``type_error`` — the object's type was changed (stage 1: the detector names the type);
* ``condition_error`` — the class changed within the type (stage 2);
* ``rationale`` — the rationale was edited (stage 2's text);
* ``accept`` — the model was right (an accept: both stages, for the record; a box nudged within
  IoU 0.9: the detector's box, while the class stays pending until accepted);
* ``revision`` — a reviewer changed what a reviewer decided: a box a reviewer drew (moved,
  retyped, relabelled, re-explained or deleted), or a label, box or rationale a reviewer had
  already changed (the model's error, if any, was counted by that first change; counting the
  second too would charge one wrong answer twice): it indicts no model;
* ``label`` — a dataset's label imported for review (``slopewatch import-labels``) was deleted,
  moved, retyped, relabelled or re-explained: the dataset was wrong, not a model (what the done
  photo then holds trains both models, as any done photo does);
* ``note``, ``undo`` and ``repair`` (a stored box clamped by ``slopewatch repair``) indict nothing.
"""

from __future__ import annotations

from enum import StrEnum

from core.types import Box, is_labels_version

# A move that keeps IoU at or above this is a nudge (the canvas rounds to whole pixels), not a
# localisation error of the detector.
NUDGE_IOU = 0.9


class Kind(StrEnum):
    DETECTOR_MISS = "detector_miss"
    DETECTOR_FALSE_POSITIVE = "detector_false_positive"
    LOCALISATION = "localisation"
    TYPE_ERROR = "type_error"
    CONDITION_ERROR = "condition_error"
    RATIONALE = "rationale"
    ACCEPT = "accept"
    REVISION = "revision"
    NOTE = "note"
    UNDO = "undo"
    REPAIR = "repair"
    LABEL = "label"


STAGE1 = frozenset({Kind.DETECTOR_MISS, Kind.DETECTOR_FALSE_POSITIVE, Kind.LOCALISATION, Kind.TYPE_ERROR})
STAGE2 = frozenset({Kind.CONDITION_ERROR, Kind.RATIONALE})


def _box(state: dict) -> Box | None:
    try:
        return Box(*(float(state[k]) for k in ("x1", "y1", "x2", "y2")))
    except (KeyError, TypeError, ValueError):
        return None


# Actions whose kind follows from the action alone.
_BY_ACTION = {"add": Kind.DETECTOR_MISS, "delete": Kind.DETECTOR_FALSE_POSITIVE, "undo": Kind.UNDO, "note": Kind.NOTE,
              "repair": Kind.REPAIR, "edit_rationale": Kind.RATIONALE, "accept": Kind.ACCEPT}


# What a reviewer may do again to a box a reviewer drew; none of it is a model's error.
_REVISIONS = frozenset({"delete", "edit_box", "retype", "relabel", "edit_rationale"})


def _reviewers_own(action: str, before: dict, model: dict) -> bool:
    """The part of the object ``action`` changes no longer holds what the model output (``model``)."""
    if action in ("retype", "relabel"):
        return (before.get("object_type"), before.get("class_name")) != (model.get("object_type"), model.get("class_name"))
    if action == "edit_box":
        a, b = _box(before), _box(model)
        return a is not None and b is not None and a.iou(b) < NUDGE_IOU
    if action == "edit_rationale":
        return (before.get("rationale") or "") != (model.get("rationale") or "")
    return False


def attribute(action: str, before: dict, after: dict, drawn: bool = False, model: dict | None = None) -> Kind:
    """The kind of one correction from its action and its before/after states; ``drawn``: the
    box was drawn by a reviewer (``add``), not output by a model; ``model``: what the model
    output for this object (its type, class, box, rationale and ``model_version``), when known."""
    kind = _attribute(action, before, after, drawn, model)
    from_labels = model is not None and is_labels_version(model.get("model_version"))
    return Kind.LABEL if from_labels and kind in STAGE1 | STAGE2 else kind


def _attribute(action: str, before: dict, after: dict, drawn: bool, model: dict | None) -> Kind:
    if drawn and action in _REVISIONS:
        return Kind.REVISION
    if model is not None and _reviewers_own(action, before, model):
        return Kind.REVISION
    if action in _BY_ACTION:
        return _BY_ACTION[action]
    if action in ("retype", "relabel"):
        if "object_type" in after and before.get("object_type") != after["object_type"]:
            return Kind.TYPE_ERROR
        return Kind.CONDITION_ERROR
    if action == "edit_box":
        a, b = _box(before), _box(after)
        return Kind.LOCALISATION if a is None or b is None or a.iou(b) < NUDGE_IOU else Kind.ACCEPT
    raise ValueError(f"expected a review action, found {action!r}")


def indicted_stage(kind: Kind) -> str | None:
    """``"detector"``, ``"classifier"`` or None: which model a kind of correction trains."""
    return "detector" if kind in STAGE1 else "classifier" if kind in STAGE2 else None
