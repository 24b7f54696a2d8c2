"""The Review tab's edit handlers (:class:`ReviewEdits`): every change a reviewer makes, each
written through ``app.usecases.review`` and answered with a status line and the new view.
Mixed into ``app.review_handlers.ReviewHandlers``, which supplies ``store``, ``view()``,
``_after()``, ``likely_right()`` and the ``VIEW`` / ``PANEL`` names."""

# No `from __future__ import annotations`: Gradio reads the gr.Request annotation.
import gradio as gr

from app.handlers import reviewer
from app.usecases import review
from app.usecases.canvas import CanvasError
from core.types import Status
from db.checks import AlreadyDecided, AlreadyDone, InvalidEdit, StaleEdit, StillPending

# The status line after a reviewer's own action (what another reviewer's did: review.BY_OTHERS).
DONE = {"accept": "accepted", "relabel": "relabelled → {cls}", "retype": "retyped → {cls}", "delete": "deleted",
        "edit_box": "moved/resized", "edit_rationale": "rationale saved", "note": "note saved"}

WAITING = "A drawn box waits for its class:"
# What an undo took back, told as "Undone: your relabel of #3 (back to …)".
UNDID = {"accept": "accept of", "relabel": "relabel of", "retype": "type change of", "delete": "delete of", "edit_box": "box move on",
         "edit_rationale": "rationale edit on", "note": "note on", "add": "drawn box"}
UNDID_RESULT = {"accept": "pending again", "relabel": "back to {cls}", "retype": "back to {cls}", "delete": "restored",
                "edit_box": "box back where it was", "edit_rationale": "the earlier rationale is back", "note": "the earlier note is back",
                "add": "removed"}


def listed(marks: list[str]) -> str:
    """``#0``, ``#0 and #1``, ``#0, #1 and #2``: objects named in a status line."""
    return f"{', '.join(marks[:-1])} and {marks[-1]}" if len(marks) > 1 else marks[0]


class ReviewEdits:
    """The Review tab's edits (see the module docstring)."""

    def _edit(self, photo_id, selected, work, request, draft: tuple[str, str] | None = None, advance: bool = False):
        """Run ``work(reviewer)`` (returns the status line) and answer with the view. ``selected``
        (or what it returns, called after the work: the object the work touched) stays selected,
        except after a save with ``advance``: then the next pending object after it is, if any."""
        if photo_id is None:
            return self._after(None, None, "Open a photo first.")
        if isinstance(photo_id, int):
            self.presence.saw(reviewer(request), photo_id)  # an edit keeps her on the photo (see app.presence)
        chosen = selected if callable(selected) else lambda: selected
        try:
            message = work(reviewer(request))
        except StaleEdit as exc:
            return self._keep_draft(self._after(photo_id, chosen(), f"⚠ Not saved: {self._changed_since(exc.current)}. The photo has "
                                                                    "been reloaded; check it and try again."), draft)
        except review.StalePhoto as exc:
            keep = exc.touched if exc.touched is not None else chosen()  # the refused edit's object: the one to look at again
            return self._keep_draft(self._after(photo_id, keep, f"⚠ Not saved: {exc}. The photo has been reloaded; check it and "
                                                                "try again."), draft)
        except CanvasError as exc:  # the canvas shows an edit that was not saved: redraw it as stored
            return self._after(photo_id, chosen(), f"⚠ Not saved: {exc}. The photo has been redrawn as it is stored.")
        except (InvalidEdit, ValueError) as exc:
            return (f"⚠ Not saved: {exc}", *(gr.skip() for _ in self.VIEW + self.PANEL))
        nxt = self._next_pending(int(photo_id), chosen()) if advance else None
        return self._after(photo_id, nxt if nxt is not None else chosen(), message)  # nothing pending: stay on it

    def _next_pending(self, photo_id: int, current) -> int | None:
        """The pending object after ``current`` in ``#k`` order, wrapping round (None: none pending),
        so ``a`` walks the photo instead of jumping back to #0."""
        findings = self.store.photo_findings(photo_id)
        at = next((f.index for f in findings if f.finding_id == current), -1)
        pending = [f for f in findings if f.state.status is Status.PENDING]
        nxt = next((f for f in pending if f.index > at), pending[0] if pending else None)
        return nxt.finding_id if nxt is not None else None

    def save_canvas(self, photo_id, canvas, seen, request: gr.Request, shown: str | None = None):
        """Every canvas change (draw, move, resize, delete, relabel in the box dialog) is saved at once.
        The canvas also reports the value the server just drew; that diff is empty and changes nothing.
        The box just drawn, moved or relabelled is selected next. (The selected object is no input:
        the canvas reports its value while the object list is being redrawn, and Gradio would
        refuse a selection outside the list it holds at that moment.)"""
        if photo_id is None or not canvas:
            return (gr.skip(), *(gr.skip() for _ in self.VIEW + self.PANEL))
        saved = []

        def work(user):
            if canvas.get("orientation"):  # rotation is not a labelling operation: boxes would be stored rotated
                raise CanvasError("the canvas was rotated; boxes are edited on the upright photo only")
            saved.append(review.save_canvas(self.store, int(photo_id), canvas.get("boxes") or [], seen or {}, user))
            if not saved[0].changed:
                return ""
            others = f" Also changed by others since you loaded the photo (kept): {'; '.join(saved[0].others)}." if saved[0].others else ""
            return "Saved: " + "; ".join(saved[0].lines) + "." + others

        out = self._edit(photo_id, lambda: saved[0].touched if saved else None, work, request)
        if saved and not saved[0].changed:  # nothing new: keep the last status line and the view as they are
            if saved[0].waiting:
                hint = (f"{WAITING} pick it from the list in the box's dialog (typed text is no class), or select the grey box and "
                        "use the canvas's Edit label button (Delete removes it).")
            else:  # ... except the hint about a drawn box, once it is gone (the dialog dismissed with Escape or Cancel)
                hint = "" if (shown or "").startswith(WAITING) else gr.skip()
            return (hint, *(gr.skip() for _ in self.VIEW + self.PANEL))
        return out

    def set_class(self, photo_id, finding_id, revision, class_name, request: gr.Request):
        if finding_id is None or not class_name:
            return self._after(photo_id, finding_id, self._no_object(photo_id, "Select an object, then its class."))
        return self._edit(photo_id, finding_id, lambda user: self._apply(finding_id, revision, user, "relabel", class_name=class_name), request)

    def retype(self, photo_id, finding_id, revision, object_type, class_name, request: gr.Request):
        if finding_id is None or not object_type:
            return self._after(photo_id, finding_id, self._no_object(photo_id, "Select an object and the type it really is."))
        return self._edit(photo_id, finding_id, lambda user: self._apply(finding_id, revision, user, "retype", object_type=object_type,
                                                                          class_name=class_name or None), request)

    def accept(self, photo_id, finding_id, revision, request: gr.Request):
        if finding_id is None:
            return self._after(photo_id, None, self._no_object(photo_id, "Select an object first."))

        def work(user):
            try:
                return self._apply(finding_id, revision, user, "accept")
            except AlreadyDecided:
                # `a` right after the reviewer's own relabel means "done with it, next":
                # nothing to write, so move on instead of recording the same decision twice.
                if self._next_pending(int(photo_id), finding_id) is None:
                    return f"#{self._index(finding_id)} is already decided by you, and nothing on this photo is pending."
                return f"#{self._index(finding_id)} is already decided by you; next object selected."

        # Saved: the next pending object is selected; refused: the same one stays, so the reviewer sees nothing was saved.
        return self._edit(photo_id, finding_id, work, request, advance=True)

    def accept_likely_right(self, photo_id, seen, request: gr.Request):
        def work(user):
            # The band as the reviewer was shown it: one another reviewer moved out of it since is
            # named ("#0: bo moved its box"), not silently dropped.
            done = review.accept_some(self.store, int(photo_id), user, self.likely_right, seen or {})
            if not done.states and not done.left:
                return "Nothing saved: no pending object on this photo is in the likely-right band."
            return self._accepted(photo_id, done, "likely-right object(s)")

        return self._edit(photo_id, None, work, request)

    def accept_all(self, photo_id, seen, request: gr.Request):
        return self._edit(photo_id, None, lambda user: self._accepted(photo_id, review.accept_all(self.store, int(photo_id), user,
                                                                                                 seen or {})), request)

    def _accepted(self, photo_id, done: review.Accepted, what: str = "object(s)") -> str:
        """The status line of a bulk accept: how many, and what others changed that was left for a look."""
        others = f" Left as others changed them since you loaded the photo (check them): {'; '.join(done.left)}." if done.left else ""
        if done.states:
            return f"Saved: accepted {len(done.states)} {what}." + others
        if others:
            return "Nothing saved." + others
        if any(f.state.status is Status.PENDING for f in self.store.photo_findings(int(photo_id))):
            return "Nothing saved: what you were shown of this photo is out of date. It has been reloaded; press again."
        return "Nothing saved: no object on this photo is pending."

    def delete(self, photo_id, finding_id, revision, request: gr.Request):
        if finding_id is None:
            return self._after(photo_id, None, self._no_object(photo_id, "Select an object first."))
        deleted = []

        def work(user):
            message = self._apply(finding_id, revision, user, "delete")
            deleted.append(finding_id)
            return message

        # Refused, the object stays selected: the message says "try again", and a second Delete
        # with #0 selected instead deleted #0 (a walk-through: bo's Delete on #2, relabelled by ana).
        return self._edit(photo_id, lambda: None if deleted else int(finding_id), work, request)

    def edit_rationale(self, photo_id, finding_id, revision, text, request: gr.Request):
        if not (text or "").strip():
            out = self._after(photo_id, finding_id, "Write the rationale first (an empty one is not saved).")
        else:
            out = self._edit(photo_id, finding_id, lambda user: self._apply(finding_id, revision, user, "edit_rationale", rationale=text),
                             request, draft=("rationale", text))
        return self._spare(out, "note", finding_id)

    def add_note(self, photo_id, finding_id, revision, text, request: gr.Request):
        if not (text or "").strip():
            out = self._after(photo_id, finding_id, "Write the note first (an empty one is not saved).")
        else:
            out = self._edit(photo_id, finding_id, lambda user: self._apply(finding_id, revision, user, "note", note=text), request,
                             draft=("note", text))
        return self._spare(out, "rationale", finding_id)

    def undo(self, photo_id, request: gr.Request):
        """Take back the reviewer's last action on the photo; the object it restored is shown."""
        undone = []

        def work(user):
            try:
                done = review.undo(self.store, int(photo_id), user)
            except StaleEdit as exc:  # retrying cannot help: the other reviewer's change stands until they undo it
                undone.append(exc.current.finding_id)  # the object the refusal is about stays selected
                # (Every later Ctrl+Z says the same: undoing an older action past this one would
                # leave the reviewer unsure which of hers still stand.)
                return (f"⚠ Not undone: {self._changed_since(exc.current, 'your last action on it')}. That action can no longer "
                        "be undone; change the object directly instead.")
            if not done.states:
                return "Nothing of yours to undo on this photo."
            undone.append(done.states[-1].finding_id)
            index = {f.finding_id: f.index for f in self.store.photo_findings(int(photo_id))}  # one read for a whole batch
            # A batch is one action ("Accept all"): its rows share the action and the outcome.
            restored = sorted(index[st.finding_id] for st in done.states)
            action, state = done.undid[-1].action, done.states[-1]
            what = UNDID.get(action, f"{action} of")
            back = UNDID_RESULT.get(action, "")
            if action == "accept" and state.status is not Status.PENDING:
                back = ""  # a re-accept of a decided object: it is as it was, nothing to say
            back = back.format(cls=state.class_name or state.object_type)
            return f"Undone: your {what} {listed([f'#{k}' for k in restored])}{f' ({back})' if back else ''}."

        return self._edit(photo_id, lambda: undone[0] if undone else None, work, request)

    def photo_done(self, photo_id, seen, request: gr.Request):
        """Mark the photo reviewed as the reviewer was shown it (``seen``); while objects are
        pending, say which, and show the first."""
        def work(user):
            try:
                review.confirm(self.store, int(photo_id), user, seen or {})
            except AlreadyDone:
                return "Nothing saved: this photo is already done ✓ and nothing changed since."
            except StillPending as exc:
                several = len(exc.pending) > 1
                return (f"⚠ Not done yet: {listed([f'#{i}' for i in exc.pending])} {'are' if several else 'is'} still pending. "
                        f"Decide {'them' if several else 'it'} (a accepts the selected object, Shift+A every pending one), then press "
                        "Photo done (Shift+D).")
            return "Saved: photo reviewed ✓."

        return self._edit(photo_id, None, work, request)

    @staticmethod
    def _no_object(photo_id, message: str) -> str:
        """What to say when no object is selected: with no photo open, to open one first."""
        return "Open a photo first." if photo_id is None else message

    def _apply(self, finding_id, revision, user, action, **changes) -> str:
        if revision is None:
            raise ValueError("expected the revision you saw; reload the photo")
        before = self.store.state(int(finding_id))
        state = review.apply(self.store, review.ReviewAction(int(finding_id), int(revision), user, action, changes))
        said = DONE[action].format(cls=state.class_name)
        # A rationale edit decides a pending object and a note does not: say which, as neither is obvious.
        decided = (" (it now counts as reviewed)" if action == "edit_rationale" else " (the object is still pending: a note decides "
                   "nothing)" if action == "note" else "") if before.status is Status.PENDING else ""
        # A relabel empties the rationale field (the text argued for the old class): said, or the
        # empty field read as text lost. The panel still shows what the model said.
        if action in ("relabel", "retype") and (before.rationale or "").strip() and not (state.rationale or "").strip():
            decided += f" (the rationale, which argued for {before.class_name}, is cleared: write yours if it helps)"
        return f"Saved: #{self._index(state.finding_id)} {said}{decided}."

    def _changed_since(self, now, since: str = "you loaded it") -> str:
        """What another reviewer did to an object since ``since`` (when it was loaded, or the
        reviewer's last action on it), from its latest correction."""
        last = self.store.history(now.finding_id)[-1:]
        what = review.by_other(last[0], now) if last else f"it was edited (now {now.class_name or now.object_type})"
        if last and last[0].action in ("edit_rationale", "note"):  # their words, so the reviewer sees what a save would replace
            field = "rationale" if last[0].action == "edit_rationale" else "note"
            text = (getattr(now, field) or "").strip()
            what += f": “{text[:120]}{'…' if len(text) > 120 else ''}”"
        return f"#{self._index(now.finding_id)} changed since {since}: {what}"

    def _keep_draft(self, out: tuple, draft: tuple[str, str] | None) -> tuple:
        """A stale edit reloads the panel; the reviewer's unsaved text (``draft``: the panel field
        and its text) stays in its box instead of being replaced by the other reviewer's."""
        if draft is None:
            return out
        field, text = draft
        k = self._slot(field)
        return (f"{out[0]} Your {field} is still in its box: save it again to replace theirs.", *out[1:k], gr.update(value=text),
                *out[k + 1:])

    def _spare(self, out: tuple, field: str, finding_id) -> tuple:
        """The answer to saving one text field of the panel, with the other (``field``) left as the
        reviewer has it: the answer redrew both, so a note typed while the rationale was being
        saved was replaced by the stored one, unsaved and unasked. Only while the answer shows the
        same object (one deleted meanwhile is replaced by another, whose field is redrawn)."""
        shown = out[1 + self.VIEW.index("select")]
        if finding_id is None or not isinstance(shown, dict) or shown.get("value") is None or int(shown["value"]) != int(finding_id):
            return out
        k = self._slot(field)
        return (*out[:k], gr.skip(), *out[k + 1:])

    def _slot(self, field: str) -> int:
        """Where a panel field sits in an edit's answer (the status line, the view, the panel)."""
        return 1 + len(self.VIEW) + self.PANEL.index(field)

    def _index(self, finding_id: int) -> int:
        return self.store.finding(finding_id).index
