"""Use case: review. Apply a reviewer's action to a finding, or save the whole photo's canvas, and
return the new state.

One entry point for every edit the Review tab (and any script) makes, so the rules live in one
place: the reviewer is registered, the revision the reviewer saw is checked (a stale edit raises
``StaleEdit`` and writes nothing), and each change appends exactly one correction row.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from app.usecases.canvas import CanvasObject, canvas_scale, click_rank, diff, parse_label, waiting
from core.errors import SlopewatchError
from core.paths import data_dir
from core.types import Status
from db.checks import InvalidEdit
from db.corrections import ACTIONS
from db.rows import Correction, FindingState, StoredFinding
from db.store import Store


@dataclass(frozen=True)
class ReviewAction:
    """One reviewer action on one finding.

    Attributes:
        finding_id: the finding acted on.
        revision: the revision the reviewer saw.
        reviewer: who acts.
        action: one of ``db.corrections.ACTIONS`` except ``add`` (see :func:`add_missed`).
        changes: ``class_name``, ``object_type``, ``box``, ``rationale`` or ``note``, as the action needs.
    """

    finding_id: int
    revision: int
    reviewer: str
    action: str
    changes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.action == "add":
            raise InvalidEdit(f"expected an action among {[a for a in ACTIONS if a != 'add']}, found {self.action!r}")


def apply(store: Store, action: ReviewAction) -> FindingState:
    """Apply one action; returns the finding's new state. Stale only when someone else changed the
    object since the revision seen (see :func:`caught_up`)."""
    store.ensure_user(action.reviewer)
    revision = caught_up(store, action.finding_id, action.revision, action.reviewer, action.action)
    return store.correct(action.finding_id, revision, action.reviewer, action.action, **action.changes)


def caught_up(store: Store, finding_id: int, seen: int, reviewer: str, action: str) -> int:
    """The revision to write ``action`` against: ``seen``, or the current one when every
    correction since ``seen`` is the reviewer's own change to the same object. Keys pressed
    faster than the page redraws (``2`` then ``1`` to fix a slip) carry the revision from before
    her previous key: that change is no news to her, and refusing the second key as stale left the
    slip saved. Not over her delete (an edit would bring the box back) nor over her accept, after
    which the page moves on: a key pressed meanwhile may be meant for the next object, so only a
    repeated accept is caught up. A revision never stored, or another reviewer's change in
    between, stays stale."""
    current = store.state(finding_id).revision
    if not 0 <= seen < current:
        return seen
    later = [c for c in store.history(finding_id) if c.revision > seen]
    own = bool(later) and all(c.reviewer == reviewer and c.action != "delete" for c in later)
    moved_on = any(c.action == "accept" for c in later) and action != "accept"
    return current if own and not moved_on else seen


@dataclass(frozen=True)
class Saved:
    """What one save of the canvas wrote: a line per correction (``#k relabel → class``)."""

    lines: tuple[str, ...]
    waiting: int = 0  # drawn boxes still waiting for the reviewer to choose their class
    touched: int | None = None  # the last object drawn, moved or relabelled (not deleted): the one to show next
    others: tuple[str, ...] = ()  # what other reviewers changed on the photo since it was loaded (kept)

    @property
    def changed(self) -> bool:
        return bool(self.lines)


def canvas_objects(findings: list[StoredFinding], likely_right: frozenset[int] | set[int] = frozenset()) -> list[CanvasObject]:
    """The photo's live objects as the canvas shows them (in ``#k`` order; ``likely_right``: ids marked as in the band)."""
    return [CanvasObject(f.finding_id, f.index, f.state.box, f.state.class_name or f.state.object_type, f.finding_id in likely_right,
                         f.state.status is Status.REVIEWED, f.from_labels, click_rank(f.index, f.drawn, f.model_box))
            for f in findings if f.state.status is not Status.DELETED]


# What another reviewer's latest action did to an object, as a reviewer is told it.
BY_OTHERS = {"accept": "accepted it", "relabel": "relabelled it", "retype": "changed its type", "delete": "deleted it",
             "edit_box": "moved its box", "edit_rationale": "edited its rationale", "note": "added a note", "undo": "undid a change",
             "repair": "repaired it", "add": "drew it"}


class StalePhoto(SlopewatchError):
    """The photo changed since the reviewer loaded it (another reviewer); nothing was written.
    ``touched``: the object the refused edit was on, to stay selected when the photo reloads."""

    def __init__(self, message: str, touched: int | None = None):
        super().__init__(message)
        self.touched = touched


def photo_changes(store: Store, findings: list[StoredFinding], seen: dict, but: str | None = None) -> list[str]:
    """What changed on a photo since a reviewer saw ``seen`` (``{finding id: revision}``); ``but``:
    leave out what that reviewer changed (her own edits, answered after the view she acted on)."""
    revisions = {int(k): int(v) for k, v in (seen or {}).items()}
    out = []
    for f in findings:
        s = f.state
        if f.finding_id not in revisions:
            if s.status is not Status.DELETED and (but is None or s.updated_by != but):
                out.append(f"#{f.index} added by {s.updated_by or 'the model'}")
        elif s.revision != revisions[f.finding_id]:
            history = store.history(f.finding_id)
            if but is None or not only_hers(history, revisions[f.finding_id], but):
                out.append(f"#{f.index}: {by_other(history[-1], s)}")
    return out


def only_hers(history, since: int, reviewer: str) -> bool:
    """Every correction in ``history`` after revision ``since`` is ``reviewer``'s own: no news to
    her (a box she moved a moment ago, whose reply has not come back yet; another tab of hers)."""
    return all(c.reviewer == reviewer for c in history if c.revision > since)


def by_other(last, now: FindingState) -> str:
    """What another reviewer's ``last`` correction did, e.g. "bo relabelled it (now blocked)".
    The class is named only where the action can change it: "moved its box (now blocked)" would
    read as a relabel."""
    did = f"{last.reviewer} {BY_OTHERS.get(last.action, last.action)}"
    relabels = last.action in ("relabel", "retype", "undo", "repair") and now.status is not Status.DELETED
    return did + (f" (now {now.class_name or now.object_type})" if relabels else "")


def save_canvas(store: Store, photo_id: int, boxes: list[dict], seen: dict, reviewer: str) -> Saved:
    """Diff the returned canvas against the photo as the reviewer loaded it and write one
    correction per change.

    ``seen`` maps each finding id shown to the revision the reviewer saw. The canvas is compared
    with the objects as they were at those revisions (what the reviewer's canvas started from),
    so another reviewer's change to an object this reviewer did not touch is neither undone nor
    a reason to refuse: it is listed in ``Saved.others``. When a change touches an object that
    changed since, nothing is written and :class:`StalePhoto` says what changed.
    """
    photo = store.photo(photo_id)
    findings = store.photo_findings(photo_id)
    revisions = {f.finding_id: f.state.revision for f in findings}
    seen_at = {int(k): int(v) for k, v in (seen or {}).items()}
    as_seen = canvas_objects(seen_findings(store, findings, seen_at))
    scale = canvas_scale(photo.width, photo.height)
    changes = diff(as_seen, boxes, store.taxonomy, photo.width, photo.height, scale)
    if not changes:
        return Saved((), waiting(boxes, store.taxonomy))
    others = photo_changes(store, findings, seen_at)
    shown = {o.index for o in as_seen}
    stale = (any(c.finding_id is not None and revisions[c.finding_id] != seen_at.get(c.finding_id) for c in changes)
             # A box labelled "#k" for an object the reviewer was not shown (``seen`` missing or older
             # than the canvas) would otherwise be saved as a new object: a duplicate of one that exists.
             or any(k is not None and k not in shown for k in (parse_label(b.get("label"))[0] for b in boxes or [] if isinstance(b, dict))))
    if stale and not diff(canvas_objects(findings), boxes, store.taxonomy, photo.width, photo.height, scale):
        # The canvas shows the photo exactly as stored: no edit, only a report of a freshly drawn
        # photo that reached the server before the ``seen`` it came with (a photo opened from the
        # Queue). Nothing to save and nothing to warn about.
        return Saved((), waiting(boxes, store.taxonomy))
    if stale and waiting(boxes, store.taxonomy):
        # The canvas's class dialog is open on a drawn box. Reloading the photo now would leave
        # the dialog on whichever box takes that place in the reloaded list, and the class the
        # reviewer picks next would relabel that object. Refused once the class is chosen instead.
        return Saved((), waiting(boxes, store.taxonomy))
    if stale:
        touched = next((c.finding_id for c in changes if c.finding_id is not None), None)
        raise StalePhoto(f"photo {photo_id} changed since you loaded it: {'; '.join(others)}", touched)
    index = {f.finding_id: f.index for f in findings}
    store.ensure_user(reviewer)
    lines = []
    touched = None
    for c in changes:
        if c.action == "add":
            state = store.add_missed(photo_id, reviewer, c.box, c.class_name)
            lines.append(f"added #{len(index)} {c.class_name}")
            index[state.finding_id] = len(index)
            touched = state.finding_id
            continue
        if c.action == "edit_box":
            changes_kw = {"box": c.box}
        elif c.class_name:
            changes_kw = {"class_name": c.class_name, "object_type": store.taxonomy.get_class(c.class_name).type}
        else:
            changes_kw = {}
        state = store.correct(c.finding_id, revisions[c.finding_id], reviewer, c.action, **changes_kw)
        revisions[c.finding_id] = state.revision
        what = {"edit_box": "moved/resized", "delete": "deleted"}.get(c.action, f"{c.action} → {c.class_name}")
        if c.action == "edit_box" and state.status is Status.PENDING:
            what += f" (its class, {state.class_name}, is still pending: a accepts it)"
        lines.append(f"#{index[c.finding_id]} {what}")
        touched = touched if c.action == "delete" else c.finding_id
    return Saved(tuple(lines), waiting(boxes, store.taxonomy), touched, tuple(others))


def seen_findings(store: Store, findings: list[StoredFinding], seen: dict[int, int]) -> list[StoredFinding]:
    """The photo's findings as the reviewer was shown them: each at the revision seen (its state
    before the next correction), objects added since left out."""
    shown = []
    for f in findings:
        if f.finding_id not in seen:
            continue
        if f.state.revision != seen[f.finding_id]:
            later = [c for c in store.history(f.finding_id) if c.revision == seen[f.finding_id] + 1]
            # (A revision never stored is compared with the state now: a change to it is then stale.)
            f = replace(f, state=FindingState.from_row({**later[0].before, "finding_id": f.finding_id})) if later else f
        shown.append(f)
    return shown


def canvas_image(photo, scale: int) -> str:
    """The photo enlarged ``scale`` times for the canvas, written once per content and scale
    (to a temporary name, then renamed, so a concurrent reader never sees half a file)."""
    if scale == 1:
        return photo.path
    path = data_dir() / "canvas" / f"{photo.sha256}-{scale}x.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(photo.path).convert("RGB")
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
        os.close(fd)
        image.resize((image.width * scale, image.height * scale), Image.BICUBIC).save(tmp, "PNG")
        os.replace(tmp, path)
    return str(path)


@dataclass(frozen=True)
class Accepted:
    """What one bulk accept wrote, and what it left because others changed it since it was shown."""

    states: tuple[FindingState, ...]
    left: tuple[str, ...] = ()  # "#2: bo moved its box": shown as pending, changed since, so not accepted unseen


def accept_all(store: Store, photo_id: int, reviewer: str, seen: dict) -> Accepted:
    """Accept every pending object of the photo as the reviewer was shown it: one ``accept`` correction each."""
    return accept_some(store, photo_id, reviewer, lambda shown: {f.finding_id for f in shown if f.state.status is Status.PENDING}, seen)


def accept_some(store: Store, photo_id: int, reviewer: str, choose: Callable[[list[StoredFinding]], set[int]], seen: dict) -> Accepted:
    """Accept the objects ``choose(findings as shown)`` picks among the photo as the reviewer was
    shown it (``seen``: ``{finding id: revision}``): one ``accept`` correction each, written
    together and undone together. Only those still pending at the revision shown are accepted:
    "Accept all" must not decide a box another reviewer moved since, unseen; those are listed in
    ``Accepted.left`` with what was done to them."""
    store.ensure_user(reviewer)
    seen_at = {int(k): int(v) for k, v in (seen or {}).items()}
    findings = store.photo_findings(photo_id)
    # The reviewer's own changes since are no news to her: she knows those objects as they are now.
    for f in findings:
        if f.finding_id in seen_at and f.state.revision != seen_at[f.finding_id] and only_hers(
                store.history(f.finding_id), seen_at[f.finding_id], reviewer):
            seen_at[f.finding_id] = f.state.revision
    chosen = choose(seen_findings(store, findings, seen_at))
    left = tuple(f"#{f.index}: {by_other(store.history(f.finding_id)[-1], f.state)}" for f in findings
                 if f.finding_id in chosen and f.state.revision != seen_at[f.finding_id])
    return Accepted(tuple(store.accept_pending(photo_id, reviewer, chosen, seen_at)), left)


@dataclass(frozen=True)
class Undone:
    """What one undo took back: the restored objects' states and, in the same order, the
    corrections undone (so the reviewer is told which action went, not only which object)."""

    states: tuple[FindingState, ...]
    undid: tuple[Correction, ...]

    def __post_init__(self) -> None:
        if len(self.states) != len(self.undid) or any(s.finding_id != c.finding_id for s, c in zip(self.states, self.undid)):
            raise ValueError("expected one undone correction per restored state, on the same finding")


def undo(store: Store, photo_id: int, reviewer: str) -> Undone:
    """Undo the reviewer's last action on this photo (each undone correction gets its own undo
    row); nothing in the result when there is nothing to undo."""
    states = store.undo_last(photo_id, reviewer)
    undid = []
    for state in states:
        rows = store.history(state.finding_id)
        # Her newest undo on it is the one just written (her undos run one at a time, in the review lane).
        mine = max((c for c in rows if c.action == "undo" and c.reviewer == reviewer), key=lambda c: c.id)
        undid.append(next(c for c in rows if c.id == mine.undoes))
    return Undone(tuple(states), tuple(undid))


def confirm(store: Store, photo_id: int, reviewer: str, seen: dict):
    """Mark the photo reviewed: every object decided, confirmed by this reviewer as she was shown
    it (``seen``: ``{finding id: revision}``).

    Raises:
        StalePhoto: another reviewer changed the photo since (what changed is named); nothing is
            written. Photo done confirmed a label its reviewer never saw (a walk-through: bo's
            Shift+D on a photo ana had just relabelled saved "photo reviewed ✓").
    """
    store.ensure_user(reviewer)
    changed = photo_changes(store, store.photo_findings(photo_id), seen, but=reviewer)
    if changed:
        raise StalePhoto(f"the photo changed since you loaded it ({'; '.join(changed)})")
    return store.confirm_photo(photo_id, reviewer)
