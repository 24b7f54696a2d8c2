"""The Review tab: one photo at a time on a box-annotation canvas, with a side panel for the
selected object: the tab's layout, keys and wiring. The named handlers are
``app.review_handlers.ReviewHandlers``; the rules are in ``app.usecases.review`` and ``db``.

Keys (outside text fields, and not while the class dialog of a drawn box is open; a radio button
just clicked does not hold them): 1–9 the selected object's classes (the key of its current class
accepts it), ``a`` accept it (nothing is written
when it is already your own decision, e.g. right after your relabel) and select the
next pending one, ``Shift+A`` accept every pending object of the photo, ``L`` accept the
objects in the "likely right" band (calibrated confidence at or above the threshold chosen on
train folds for >= 95% accuracy, on a box the detector scored >= ``LIKELY_BOX_SCORE``; the rest
"needs a look", vegetation "check the box"), ``→``/``←`` next or previous photo,
``Ctrl+Z`` undo your last action on this photo, ``Shift+D`` photo done, ``N`` the next photo to
review; ``Escape`` leaves a text field (and a photo opened by its id leaves the keys to the page).
On the canvas itself: drag to
draw, move or resize a box, ``Delete`` (or ``Backspace``) removes the selected box, ``Space`` resets the zoom.
Elsewhere ``Delete`` removes the object selected in the side panel, as its Delete button does, and
``Space`` still resets the canvas's zoom. A number key past the object's classes says so under the status line.
A key or click that would replace an unsaved rationale or note asks first; from such a press to
its answer the two text fields are read-only, and an action key pressed meanwhile waits for the
answer and then acts on what it shows.
"""

import gradio as gr
from gradio_image_annotation import image_annotator

from app.review_handlers import HISTORY_COLUMNS, HISTORY_HEADERS, OBJECT_HEADERS, ReviewHandlers
from app.usecases.canvas import CHOOSE
from db.store import Store

REVIEW_KEYS_JS = """
// Rotation is a view aid the canvas offers, but boxes are stored on the upright photo: hidden.
const swStyle = document.createElement('style');
// A blend's model version is one long token: wrapped, not cut at the panel's edge.
swStyle.textContent = '.sw-hidden{display:none !important} #sw-canvas button[aria-label^="Rotate"]{display:none !important} '
  + '#sw-detail code{word-break:break-all; white-space:normal} '
  // The header, the status line and the hint under it take the same room whether they say
  // something or not: a status appearing after a press pushed the buttons a whole row down, and
  // clearing on the next photo pulled them back up, so a reviewer's Delete, aimed where it was,
  // could land on 'Accept likely right'. A longer text scrolls inside its box.
  + '#sw-header{min-height:5em} #sw-messages{height:7em; overflow-y:auto; flex-wrap:nowrap}';
document.head.appendChild(swStyle);
// The canvas focuses itself on a click, and the browser then scrolls the whole canvas into view:
// where it is taller than the window the photo jumped under the reviewer's mouse mid-drag.
const swFocus = HTMLElement.prototype.focus;
HTMLElement.prototype.focus = function (opts) {
  return swFocus.call(this, this.closest && this.closest('#sw-canvas') ? {...(opts || {}), preventScroll: true} : opts);
};
// A click on a box in the canvas selects that object in the side panel too: the click's place on
// the canvas goes to the server, which picks the box the canvas picks (see ReviewHandlers.pick_at).
let swDown = null, swClicks = 0, swDropped = false, swPicked = false;
// A press on the canvas selects or moves a box, and the answer redraws the side panel: with an
// unsaved rationale or note the page asks first (see swLeaveDraft), and drops the press whatever
// the answer (a press held across the dialog would reach the canvas as a drag nobody made).
const swCanvasPress = (e) => {
  const c = e.target.closest && e.target.closest('#sw-canvas canvas');
  if (e.type === 'pointerdown' && c) {
    swDropped = swDraft.size > 0;
    // Said, or the dropped press read as a click that did nothing.
    swHint(swDropped && swLeaveDraft() ? 'That press only answered the question: press the photo again.' : '');
  }
  if (c && swDropped) { e.preventDefault(); e.stopImmediatePropagation(); }
};
['pointerdown', 'mousedown', 'pointerup', 'mouseup', 'click'].forEach((t) => document.addEventListener(t, swCanvasPress, true));
document.addEventListener('pointerdown', (e) => {
  swDown = e.target.closest && e.target.closest('#sw-canvas canvas') ? [e.clientX, e.clientY] : null;
  swPicked = false;
}, true);
document.addEventListener('pointerup', (e) => {
  const c = e.target.closest && e.target.closest('#sw-canvas canvas');
  const drag = document.querySelector("#sw-canvas button[aria-label='Drag boxes']");
  if (!c || !swDown || !drag || !drag.classList.contains('selected')) return;
  if (Math.abs(e.clientX - swDown[0]) + Math.abs(e.clientY - swDown[1]) > 4) return;
  const r = c.getBoundingClientRect();
  const box = document.querySelector('#sw-click textarea, #sw-click input');
  if (!box) return;
  box.value = [(e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height, r.width, r.height, ++swClicks].join(',');
  box.dispatchEvent(new Event('input', {bubbles: true}));
  swPicked = true;  // its answer (pick_at) is sure to come: held as a press's
}, true);
// After a drawn box is saved the canvas stays in draw mode, so the reviewer's next click on a box
// starts another box instead of selecting it: back to drag/select mode when the add is saved.
// Edge-triggered on a new status line, so pressing C again to draw another box is left alone.
let swLastStatus = '', swWasDialog = false, swPhoto = null, swObject = null;
// The canvas's dialog for a drawn box's class (open: the page's keys are the dialog's).
// (Not offsetParent: the dialog is position: fixed, whose offsetParent is always null.)
const swDialog = () => { const d = document.getElementById('model-box-edit'); return !!(d && d.getClientRects().length); };
const swToDrag = () => {
  const drag = document.querySelector("#sw-canvas button[aria-label='Drag boxes']");
  if (drag && !drag.classList.contains('selected')) drag.click();
};
new MutationObserver(() => {
  // The dialog dismissed (Escape, Cancel) without a class: the drawn box is gone, and the canvas
  // stayed in draw mode, so a click meant to select a box drew another one.
  const dialog = swDialog();
  if (swWasDialog && !dialog) setTimeout(swToDrag, 0);
  swWasDialog = dialog;
  // Another object shown (on this photo or another), by whatever route: its fields replaced the
  // draft, and a mark left on made every later key ask about text no longer there. The photo is
  // kept for a refused photo-id Enter to put back.
  const h = document.querySelector('#sw-header');
  const shown = h && /\*?\*?Photo (\d+)/.exec(h.innerText);
  const picked = document.querySelector('#sw-select input[type=radio]:checked');
  const object = picked ? picked.value : null;
  if (shown) swPhoto = shown[1];
  if (object !== swObject) { swObject = object; swDraft.clear(); }
  const s = document.querySelector('#sw-status');
  const text = s ? s.innerText : '';
  if (text === swLastStatus) return;
  swLastStatus = text;
  if (/rationale saved/.test(text)) swDraft.delete('sw-rationale');
  if (/note saved/.test(text)) swDraft.delete('sw-note');
  // A drawn box refused on a photo that changed meanwhile leaves draw mode too (the photo reloaded).
  if (/Saved: .*added #|Not saved: photo [0-9]+ changed/.test(text)) swToDrag();
}).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['style', 'class']});
// A rationale or note typed and not saved was lost, silently, on the next key or click that moved
// on (a reviewer pressing `a` after typing a rationale took it as saved). Typing marks the field;
// the status line saying it was saved clears the mark (a refused save keeps it); anything that
// would replace the field asks first: here, on the canvas (above), and from the other tabs that
// open a photo. (Saving one field leaves the other as it is: ReviewEdits._spare.)
const swDraft = new Set();
const SW_FIELDS = {'sw-rationale': 'rationale', 'sw-note': 'note'};
// A reload or a closed tab took the draft too, without a word: the browser asks first.
window.addEventListener('beforeunload', (e) => { if (swDraft.size) { e.preventDefault(); e.returnValue = ''; } });
document.addEventListener('input', (e) => {
  const f = e.isTrusted && e.target.closest && e.target.closest('#sw-rationale, #sw-note');  // not the page's own (autosize) events
  if (f) swDraft.add(f.id);
}, true);
const swLeaveDraft = () => {
  const dirty = [...swDraft];
  if (!dirty.length) return true;
  const many = dirty.length > 1;
  const what = dirty.map((id) => SW_FIELDS[id]).join(' and ');
  // Named, as the Review panel numbers it: asked from another tab, "your note" said not whose.
  // (The object shown, not the radio checked: a click on another object's radio checks it before
  // this question is asked.)
  const shown = swObject && document.querySelector(`#sw-select input[type=radio][value="${swObject}"]`);
  const k = shown && shown.closest('label') && /^#\d+/.exec(shown.closest('label').innerText.trim());
  const on = k ? ` on ${k[0]}${swPhoto ? ` (photo ${swPhoto})` : ''}` : '';
  if (!confirm(`Your ${what}${on} ${many ? 'are' : 'is'} not saved. Leave ${many ? 'them' : 'it'} unsaved?`)) return false;
  dirty.forEach((id) => swDraft.delete(id));
  return true;
};
// A press that redraws the side panel replaces both text fields when its answer comes: text typed
// in between (an object clicked, its note begun at once) was lost to it, silently. From the press
// to the answer (every such event ends with swAnswered: RELEASE) the fields are read-only, and
// look it. A press no answer follows (the class the object has, a refused row) frees them anyway.
// Keys pressed meanwhile wait for the answer too (swKeys, below).
let swHoldTimer = null, swBusy = false, swHeldBy = null;
// (The photo id too: the answer replaces it. An id typed into it meanwhile, as the Review tab's
// first photo was still coming, was opened, then overwritten by that late answer.)
const SW_HELD = '#sw-rationale textarea, #sw-note textarea, #sw-note input, #sw-photo input';
const SW_WAIT = 'Wait: what was asked for is still coming; the dimmed fields take typing once it shows.';
const SW_WAIT_CLICK = 'Wait: what was asked for is still coming; click again once it shows.';
const swLock = (on) => {
  document.querySelectorAll(SW_HELD).forEach((t) => { t.readOnly = on; t.style.opacity = on ? '0.55' : ''; });
  const hint = document.getElementById('sw-keyhint');
  if (!on && hint && (hint.textContent === SW_WAIT || hint.textContent === SW_WAIT_CLICK)) hint.textContent = '';
};
const swHold = (on, ms = 10000, by = 'press') => {
  swBusy = on;
  swHeldBy = on ? by : null;
  // Keys still queued keep the fields held: freed between their answers, a note begun at once
  // was typed in part on each photo passed through, and the last kept only its tail.
  swLock(on || swKeys.length > 0);
  clearTimeout(swHoldTimer);
  if (on) swHoldTimer = setTimeout(() => swHold(false), ms);
  else setTimeout(swDrain, 50);  // once the answer is drawn (its panel's classes, its photo)
};
// The canvas reports every new value, a photo or panel just drawn included: its save's answer
// frees only what a press on the canvas held (it freed a key's hold before the key's answer came).
window.swAnswered = (by) => { if (swBusy && (!by || by === swHeldBy)) swHold(false); };
window.swAsked = () => swHold(true, 10000, 'tab');
// What other tabs (Inspect, the Queue, the library map) offer that opens a photo here.
const SW_OTHER_TABS = '#sw-review-this, #sw-map, #sw-queue, #sw-objects';
const SW_MOVES = '#sw-select input, #sw-class input, #sw-prev-photo, #sw-next-photo, #sw-next-queue, #sw-accept, #sw-accept-all, '
  + '#sw-accept-likely, #sw-delete, #sw-undo, #sw-done, #sw-retype, #sw-review-this, #sw-map';
// A table row is picked on mousedown, before any click: asked then, and a refused row's click dropped.
const SW_ROWS = ['#sw-photo-objects', '#sw-queue', '#sw-objects'].map((t) => `${t} [role=gridcell]`).join(', ');
const swGuard = (e) => { if (!swLeaveDraft()) { e.preventDefault(); e.stopImmediatePropagation(); return false; } return true; };
// Keys wait for the answer they follow; a click on the panel did not. An object of the photo being
// left, or Accept, clicked while the next photo was coming, acted on a photo no longer open (an
// accept written there, or a raw "Value: 12 is not in the list of choices"). While a press is being
// answered such a click is refused, and said. (Not after a press on the canvas: a pan is answered
// by nothing, and its hold only times out. Nor from other tabs, where the hint is not seen.)
const swWait = (e) => {
  if (!swBusy || swHeldBy === 'canvas' || e.target.closest(SW_OTHER_TABS)) return false;
  e.preventDefault(); e.stopImmediatePropagation(); swHint(SW_WAIT_CLICK);
  return true;
};
let swRowRefused = false;
document.addEventListener('mousedown', (e) => {
  const row = !!(e.isTrusted && e.target.closest && e.target.closest(SW_ROWS));
  swRowRefused = row && (swWait(e) || !swGuard(e));
  if (row && !swRowRefused) swHold(true);
}, true);
document.addEventListener('click', (e) => {
  if (!e.isTrusted || !e.target.closest) return;  // the key handler's own clicks asked already
  if (e.target.closest(SW_ROWS)) { if (swRowRefused) { e.preventDefault(); e.stopImmediatePropagation(); } return; }
  const move = e.target.closest(SW_MOVES);
  // (A click on the object or class already chosen sends nothing, nor one beside the map's points:
  // no hold. The radio is checked by the time its click is heard, so what it was is taken at the press.)
  const nothing = move && ((move.matches('input[type=radio]') && swPressedChecked)
                           || (move.closest('#sw-map') && !e.target.closest('.sw-pt')));
  if (move && !nothing && swWait(e)) return;
  if (move && swGuard(e) && !nothing) swHold(true);
}, true);
let swPressedChecked = false;
document.addEventListener('pointerdown', (e) => {
  const l = e.target.closest && e.target.closest('label');
  const r = l ? l.querySelector('input[type=radio]') : (e.target.matches && e.target.matches('input[type=radio]') ? e.target : null);
  swPressedChecked = !!(r && r.checked);
}, true);
// A press on the canvas in drag mode, a click or the end of a drag, is answered with the panel of
// its object. A click is always answered (pick_at), so it holds as a press does, panel clicks
// included: Accept clicked 0.4 s after a click on another box accepted the object shown before,
// never looked at, and a class clicked then raised a raw "not in the list of choices". (A drag only
// briefly: one that changed nothing, a pan, is answered by nothing. In draw mode the box's class
// dialog comes first.)
document.addEventListener('pointerup', (e) => {
  const drag = document.querySelector("#sw-canvas button[aria-label='Drag boxes']");
  const onCanvas = e.isTrusted && e.target.closest && e.target.closest('#sw-canvas canvas');
  if (!onCanvas || swDropped || !drag || !drag.classList.contains('selected')) return;
  if (swPicked) swHold(true); else swHold(true, 1500, 'canvas');
}, true);
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (!t.closest) return;
  // Typing into a held field is dropped by the browser: said, not silent.
  if (t.readOnly && t.closest(SW_HELD) && e.key.length === 1 && !(e.ctrlKey || e.metaKey)) swHint(SW_WAIT);
  // Enter in the photo id opens another photo; refused, the box shows the photo still open. Opened,
  // the keys go to the page: the focus stayed in the number, and `a` did nothing and said nothing.
  if (e.key === 'Enter' && t.closest('#sw-photo')) {
    if (swGuard(e)) { swHold(true); setTimeout(() => t.blur(), 0); }
    else if (swPhoto) { t.value = swPhoto; t.dispatchEvent(new Event('input', {bubbles: true})); }
    return;
  }
  // Escape leaves a text field (a draft stays in it), so the keys work again: only Tab did.
  if (e.key === 'Escape' && t.closest('#sw-photo, #sw-rationale, #sw-note')) { t.blur(); return; }
  // The canvas's own Delete saves the canvas, and its answer redraws the panel.
  if ((e.key === 'Delete' || e.key === 'Backspace') && t.closest('#sw-canvas')) swGuard(e);
}, true);
// Clicked into, the photo id is chosen whole, as a page box is: "5" typed after "14" read 145.
// (After the click's own caret placement: selected at the focus, the click collapsed it again.)
document.addEventListener('focusin', (e) => {
  const t = e.target;
  if (t.closest && t.closest('#sw-photo') && t.select) setTimeout(() => { if (document.activeElement === t) t.select(); }, 0);
});
// A key the page cannot act on is answered here, under the status line (the server never hears of it).
const swHint = (text) => {
  let hint = document.getElementById('sw-keyhint');
  const status = document.getElementById('sw-status');
  if (!hint && status) { hint = document.createElement('div'); hint.id = 'sw-keyhint'; hint.style.color = '#b45309'; status.after(hint); }
  // Signed out (app.web.SESSION_JS's bar), no answer will come: "Wait … click again" would mislead.
  if (hint) hint.textContent = document.getElementById('sw-signed-out') ? '' : text;
};
// A key that acts through the side panel takes the keys away from the canvas: the canvas's own
// Delete removes only the box selected on it, and none is after an undo (Delete then did nothing
// and said nothing). Keys then go to this handler, whose Delete removes the panel's object.
const swLeaveCanvas = () => { const a = document.activeElement; if (a && a.closest && a.closest('#sw-canvas')) a.blur(); };
const swPress = (id) => {
  const el = document.getElementById(id);
  if (el && swLeaveDraft()) { swLeaveCanvas(); swHold(true); el.click(); }
};
const swClassKey = (digit) => {
  const options = document.querySelectorAll('#sw-class input[type=radio]');
  const option = options[Number(digit) - 1];
  // A key past the object's classes (vegetation has one) did nothing and said nothing.
  if (!option) {
    const n = options.length;
    return swHint(n ? `Key ${digit}: this object has ${n} class${n > 1 ? 'es' : ''}: key${n > 1 ? `s 1–${n}` : ' 1'}.`
                    : `Key ${digit}: select an object first; the number keys pick its class.`);
  }
  // The key of the class the object already has means "right as it is": accept it. (Clicking
  // the checked option fires no event, so the key used to do nothing and say nothing.)
  if (option.checked) return swPress('sw-accept');
  if (swLeaveDraft()) { swLeaveCanvas(); swHold(true); option.click(); }
};
// What an action key does, looked up when it acts (a queued key's classes are those of the
// object shown by then); null for a key that is no action.
const swAction = (k) => {
  if ((k.ctrlKey || k.metaKey) && k.key.toLowerCase() === 'z') return () => swPress('sw-undo');
  if (k.ctrlKey || k.metaKey || k.altKey) return null;
  if (k.key === 'Delete' || k.key === 'Backspace') return () => swPress('sw-delete');
  if (k.key === 'A' && k.shiftKey) return () => swPress('sw-accept-all');
  if (k.key === 'a') return () => swPress('sw-accept');
  if (k.key === 'l' || k.key === 'L') return () => swPress('sw-accept-likely');
  // A keyboard review ended in eleven Tabs to reach Photo done, and the next photo had no key.
  if (k.key === 'D' && k.shiftKey) return () => swPress('sw-done');
  if (k.key === 'n' || k.key === 'N') return () => swPress('sw-next-queue');
  if (k.key === 'ArrowRight') return () => swPress('sw-next-photo');
  if (k.key === 'ArrowLeft') return () => swPress('sw-prev-photo');
  if (/^[1-9]$/.test(k.key)) return () => swClassKey(k.key);
  return null;
};
// An action key pressed while the last press is still being answered waits for that answer, in
// order, and then acts on what it left on screen. Sent at once, each key named what was shown
// when it was pressed: "→ ←" fast counted both arrows from the photo shown and landed on the one
// before it, where the Shift+A and Shift+D that followed decided a photo nobody had looked at;
// "a a a" accepted two objects of three (the second named the object the first had accepted).
const swKeys = [];
const swDrain = () => {
  while (!swBusy && swKeys.length) { const act = swAction(swKeys.shift()); if (act) act(); }
  if (!swBusy) swLock(false);  // the last queued key held nothing (a hint, a refused draft): the fields are free
};
document.addEventListener('keydown', (e) => {
  const t = e.target;
  // Text entry keeps its keys; a radio button (an object or class picked with the mouse keeps the
  // focus) does not, or every key was dead after a click in the side panel.
  if (t.closest && t.closest('input:not([type=radio]):not([type=checkbox]), textarea, select, [contenteditable=true]')) return;
  if (!document.querySelector('#sw-canvas') || !document.querySelector('#sw-canvas').offsetParent) return;
  swHint('');  // the next key makes the last hint stale
  // A held key repeats: now that keys queue, a held Ctrl+Z walked back a dozen actions, whole
  // bulk accepts included, with no redo. One press, one action.
  if (e.repeat && e.key !== ' ') { e.preventDefault(); return; }
  // While the class dialog of a drawn box is open, Delete went to the side panel's object: a real
  // object behind the dialog was deleted instead of the unsaved box.
  if (swDialog()) return;
  const inCanvas = t.closest && t.closest('#sw-canvas');
  // Backspace is the Mac's delete key; the canvas listens for Delete only.
  if (e.key === 'Backspace' && inCanvas) { e.preventDefault(); t.dispatchEvent(new KeyboardEvent('keydown', {key: 'Delete', bubbles: true})); return; }
  if (e.key === 'Delete' && inCanvas) return;  // the canvas's own
  // Space resets the zoom, a key the canvas hears only while it has the focus: after any panel
  // key (which takes the focus off the canvas) Space scrolled the page away from the photo instead.
  if (e.key === ' ' && !inCanvas && !(t.closest && t.closest('button, a, input, label, [role=button]'))) {
    // The canvas listens on its focusable wrapper, and for keys aimed at that element only.
    const c = document.querySelector('#sw-canvas canvas');
    const w = c && c.closest('[tabindex]');
    if (w) { e.preventDefault(); w.dispatchEvent(new KeyboardEvent('keydown', {key: ' ', bubbles: true})); }
    return;
  }
  // The canvas's own C / D keys work only while it has the focus (after a click on it); from
  // anywhere else on the page they said nothing and did nothing. Its mode buttons are the same.
  // (Caps Lock's C and D too; Shift+D is Photo done.)
  const mode = !(e.ctrlKey || e.metaKey || e.altKey || e.shiftKey) && {c: 'Create box', d: 'Drag boxes'}[e.key.toLowerCase()];
  if (mode) {
    const button = document.querySelector(`#sw-canvas button[aria-label="${mode}"]`);
    if (button && !inCanvas) { e.preventDefault(); button.click(); }
    return;
  }
  const key = {key: e.key, shiftKey: e.shiftKey, ctrlKey: e.ctrlKey, metaKey: e.metaKey, altKey: e.altKey};
  const act = swAction(key);
  if (!act) return;
  e.preventDefault();
  if (swBusy || swKeys.length) { if (swKeys.length < 30) swKeys.push(key); return; }
  act();
});
"""


# Ends every event whose answer redraws the side panel: frees the text fields its press held
# (swHold in REVIEW_KEYS_JS). Run in the page only (no server call).
RELEASE = {"fn": None, "inputs": None, "outputs": None, "js": "() => { if (window.swAnswered) window.swAnswered(); }",
           "api_name": False, "show_progress": "hidden"}
# The canvas's saves free only what a press on the canvas held: the canvas reports every value it
# is given too, and a photo's view set off a save whose answer freed the next key's hold early.
CANVAS_RELEASE = {**RELEASE, "js": "() => { if (window.swAnswered) window.swAnswered('canvas'); }"}
# The Review tab's answer frees only the tab's own hold: with a photo open it holds nothing, and
# its answer, come after a key pressed at once, freed that key's hold early.
TAB_RELEASE = {**RELEASE, "js": "() => { if (window.swAnswered) window.swAnswered('tab'); }"}


def build_review_tab(store: Store, h: ReviewHandlers):
    """The Review tab's components, wired; returns the photo-id input and the view outputs, for
    other tabs that open a photo here."""
    tax = store.taxonomy
    with gr.Tab("Review", id="review") as review_tab:
        with gr.Row():
            photo = gr.Number(label="Photo id (Enter opens it)", precision=0, elem_id="sw-photo", scale=1)
            prev_btn = gr.Button("← Previous photo", elem_id="sw-prev-photo", scale=1)
            next_btn = gr.Button("Next photo →", elem_id="sw-next-photo", scale=1)
            queue_btn = gr.Button("Next photo to review (N)", elem_id="sw-next-queue", scale=1)
        # What the reviewer saw: each object's revision. A visible-to-the-API component, not
        # gr.State, so API clients send it too and a stale save is refused.
        seen = gr.JSON(visible=False, elem_id="sw-seen")
        with gr.Row():
            with gr.Column(scale=3):
                canvas = image_annotator(label="Photo", show_label=False,  # a floating label would cover the photo's corner
                                         label_list=[CHOOSE, *tax.class_names],
                                         label_colors=["#7f7f7f", *(h.colors[tax.condition_key(c)] for c in tax.class_names)],
                                         box_min_size=4, boxes_alpha=0.12, sources=[], show_clear_button=False, show_download_button=False,
                                         image_type="filepath", height=620, elem_id="sw-canvas")
                gr.HTML("".join(f'<span style="color:{c};font-weight:bold">■ {k}</span>&nbsp;&nbsp;' for k, c in sorted(h.colors.items()))
                        + "<br><small>Canvas: drag a box to move it, its handles to resize it; C draws a box (then pick its class) and D "
                          "goes back to moving; Delete (or Backspace) removes the selected object, the wheel zooms, Space resets "
                          "the view. Every change is saved at once. ✓ marks a box already decided.</small>", elem_id="sw-legend")
            with gr.Column(scale=2):
                # Messages live beside the canvas, never above it: a line appearing above the canvas
                # would move the photo under the reviewer's mouse in the middle of a drag.
                header = gr.Markdown(elem_id="sw-header")
                with gr.Column(elem_id="sw-messages"):  # the status and the key hint after it (a fixed height)
                    status = gr.Markdown(elem_id="sw-status")
                # The actions sit right under the status line, so what a press said is read where it
                # was pressed, and Photo done is in view without scrolling past a long object list.
                with gr.Row():
                    accept = gr.Button("Accept (a)", variant="primary", elem_id="sw-accept")
                    accept_all = gr.Button("Accept all pending (Shift+A)", elem_id="sw-accept-all")
                    accept_likely = gr.Button("Accept likely right (L)", elem_id="sw-accept-likely")
                with gr.Row():
                    delete = gr.Button("Delete object", variant="stop", elem_id="sw-delete")
                    undo = gr.Button("Undo (Ctrl+Z)", elem_id="sw-undo")
                    done = gr.Button("Photo done ✓ (Shift+D)", elem_id="sw-done")
                select = gr.Radio(label="Object", choices=[], elem_id="sw-select")
                detail = gr.Markdown(elem_id="sw-detail")
                classes = gr.Radio(label="Class (keys 1–9)", choices=[], elem_id="sw-class")
                revision = gr.Number(visible=False, precision=0, elem_id="sw-revision")
                with gr.Accordion("Change the type", open=False):
                    with gr.Row():
                        new_type = gr.Dropdown(label="Type", choices=tax.type_names, value=None, elem_id="sw-type")
                        type_class = gr.Dropdown(label="Class for that type", choices=[], value=None, elem_id="sw-type-class")
                    retype = gr.Button("Change type and class", elem_id="sw-retype")
                rationale = gr.Textbox(label="Rationale (editable)", lines=3, elem_id="sw-rationale")
                save_rationale = gr.Button("Save rationale", elem_id="sw-save-rationale")
                with gr.Accordion("Similar labelled objects", open=False):
                    compare = gr.Button("Compare with the most similar labelled objects", elem_id="sw-compare")
                    compare_text = gr.Markdown(elem_id="sw-compare-text")
                    compare_gallery = gr.Gallery(label="This object, then its nearest labelled neighbours", columns=3, height=340,
                                                 object_fit="contain", elem_id="sw-compare-gallery")
                note = gr.Textbox(label="Note (replaces the object's note; the object stays as decided or pending)", lines=1, elem_id="sw-note")
                save_note = gr.Button("Save note", elem_id="sw-save-note")
                history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, label="History", wrap=True,
                                       column_widths=[w for _, w in HISTORY_COLUMNS], elem_id="sw-history")
        objects = gr.Dataframe(headers=OBJECT_HEADERS, interactive=False, label="Objects on this photo", elem_id="sw-photo-objects")
        click = gr.Textbox(elem_id="sw-click", elem_classes=["sw-hidden"], container=False, show_label=False)

    # No progress overlay on review events: it would cover the canvas and swallow the reviewer's
    # next click while a save is in flight; the status line says what happened instead.
    view = [canvas, header, select, objects, seen, photo, detail, classes, rationale, note, history, revision, new_type, type_class]
    panel = view[len(ReviewHandlers.VIEW):]
    edit_out = [status, *view]
    quiet = {"show_progress": "hidden"}
    # Edits share one lane, apart from inspections, one at a time: the queue's default of 2 would
    # run a reviewer's queued keys side by side, and "2" then "1" could commit in either order.
    edit = {"concurrency_id": "review", "concurrency_limit": 1, **quiet}
    # A class key, `a` or Ctrl+Z pressed while the last one is still being saved is queued, in
    # order, not dropped (Gradio's default for a click): "2" then "1" to fix a slip saved the slip,
    # silently. (The one-shot actions keep the default: a double-clicked Delete or Accept all is one.)
    keyed = {**edit, "trigger_mode": "multiple"}
    # A new photo, or another object picked by hand: the last message goes ("Saved: #2 …" would
    # read as news about what is now shown), then the view comes. Chained, not side by side: a
    # clear answered late wiped the answer to a key pressed as soon as the photo showed ("Not done
    # yet" after Shift+D). A save that advances keeps its line: it sets no "input".
    clear = {"fn": lambda: "", "inputs": None, "outputs": status, "api_name": False, **quiet}
    photo.submit(**clear).then(h.open_photo, [photo, seen], view, api_name="open_photo", **quiet).then(**RELEASE)
    prev_btn.click(**clear).then(h.prev_photo, photo, view, api_name="prev_photo", **quiet).then(**RELEASE)
    next_btn.click(**clear).then(h.next_photo, photo, view, api_name="next_photo", **quiet).then(**RELEASE)
    queue_btn.click(**clear).then(h.next_in_queue, photo, view, api_name="next_in_queue", **quiet).then(**RELEASE)
    # The tab's first photo holds the panel as a press does: it is answered side by side with a
    # photo id typed at once, and answered last it replaced the photo asked for.
    # (Only with no photo open: with one, nothing comes, and a photo opened from the Queue dimmed again.)
    review_tab.select(h.open_first, photo, view, js="(p) => { if (!p && window.swAsked) window.swAsked(); return p; }",
                      api_name=False, **quiet).then(**TAB_RELEASE)
    select.input(**clear).then(h.select, [photo, select], panel, api_name="select_object", **quiet).then(**RELEASE)
    # A script sets the click's place: no "input".
    click.change(**clear).then(h.pick_at, [photo, click], [select, *panel], api_name="pick_at", **quiet).then(**RELEASE)
    # The pick clears the status line itself: its row comes with the click only (gr.SelectData
    # reaches the select's own function, not a .then after it, which failed on every row).
    objects.select(h.pick_object, None, [status, select], api_name=False, **quiet).then(
        h.select, [photo, select], panel, api_name=False, **quiet).then(**RELEASE)
    # The status line goes in too: the hint about a drawn box waiting for its class is cleared once
    # the box is gone (in order with the save that set it: both are this lane's).
    canvas.change(h.save_canvas, [photo, canvas, seen, status], edit_out, api_name="save_canvas", **edit).then(**CANVAS_RELEASE)
    classes.input(h.set_class, [photo, select, revision, classes], edit_out, api_name="set_class", **keyed).then(**RELEASE)
    new_type.input(lambda t: gr.update(choices=[c.name for c in tax.classes_for_type(t)] if t else [], value=None), new_type, type_class,
                   api_name=False, **quiet)
    retype.click(h.retype, [photo, select, revision, new_type, type_class], edit_out, api_name="retype", **edit).then(**RELEASE)
    accept.click(h.accept, [photo, select, revision], edit_out, api_name="accept", **keyed).then(**RELEASE)
    accept_all.click(h.accept_all, [photo, seen], edit_out, api_name="accept_all", **edit).then(**RELEASE)
    accept_likely.click(h.accept_likely_right, [photo, seen], edit_out, api_name="accept_likely_right", **edit).then(**RELEASE)
    delete.click(h.delete, [photo, select, revision], edit_out, api_name="delete", **edit).then(**RELEASE)
    save_rationale.click(h.edit_rationale, [photo, select, revision, rationale], edit_out, api_name="edit_rationale", **edit)
    save_note.click(h.add_note, [photo, select, revision, note], edit_out, api_name="add_note", **edit)
    # Enter in the one-line note saves it, as the button does (it did nothing while the status line
    # still read the last "Saved: note saved").
    note.submit(h.add_note, [photo, select, revision, note], edit_out, api_name=False, **edit)
    undo.click(h.undo, photo, edit_out, api_name="undo", **keyed).then(**RELEASE)
    compare.click(h.compare_similar, select, [compare_text, compare_gallery], api_name="compare_similar", **quiet)
    # Another object selected: the last comparison no longer applies.
    select.change(lambda _: ("", []), select, [compare_text, compare_gallery], api_name=False, **quiet)
    done.click(h.photo_done, [photo, seen], edit_out, api_name="photo_done", **edit).then(**RELEASE)
    return photo, view, status
