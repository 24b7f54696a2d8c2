"""The hazard suite (issue 15): what a careless or hostile user will eventually send, each case
asserting the message the user sees, that nothing was stored that should not be, and that the
handler (or the server) still answers afterwards.

Handlers are called by name where no server is needed (``Handlers``, ``ReviewHandlers``, the
probe pipeline on the real detector); logins, file routes, upload caps and fairness are checked
against a real server on the loopback interface launched with ``launch_options`` (the settings
``slopewatch serve`` uses), driven by ``gradio_client`` and ``httpx``. Faults run in child
processes killed with SIGKILL.
"""

import hashlib
import html
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from conftest import db_rows  # noqa: E402

from app.auth import Authenticator, LoginThrottle, LoginThrottled, hash_password, parse_users, verify_password, write_user  # noqa: E402
from app.handlers import Handlers, InspectLane, LaneFull  # noqa: E402
from app.models import ModelHost  # noqa: E402
from core.paths import samples_dir  # noqa: E402
from core.photos import photos_dir  # noqa: E402
from core.types import Box, Detection, Finding  # noqa: E402
from db.checks import MAX_TEXT_CHARS, InvalidBox, InvalidEdit, NotFound, TextTooLong  # noqa: E402
from db.store import Store, snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANA, BO = SimpleNamespace(username="ana"), SimpleNamespace(username="bo")
# The Inspect tab's closing line for one photo (its time and counts vary).
SUMMARY = r"Inspected 1 photo\(s\) at \d\d:\d\d:\d\d: \d+ object\(s\), \d+ to review\."
PHOTOS = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))
ROCK = {"rock toe": 0.6, "rock toe damaged": 0.4}
PASSWORDS = {"ana": "ana-password-1", "bo": "bo-password-2", "cy": "cy-password-3"}


class NoProgress:
    def tqdm(self, items, desc=None, total=None):
        return items


def count(db, sql, *args) -> int:
    return db_rows(db, sql, *args)[0][0]


def inspect(app, *paths, user=ANA):
    return app.h.inspect([str(p) for p in paths], user, NoProgress())


def seeded(tmp_path, size=(312, 312)):
    """A file store with reviewers ana and bo and one model finding on a ``size`` photo."""
    store = Store(tmp_path / "seed.db")
    for user in ("ana", "bo"):
        store.ensure_user(user)
    photo, _ = store.add_photo("a" * 64, "/photos/a.png", *size, "a.jpg", "ana")
    [fid] = store.add_run(photo.id, [Finding(Detection(Box(10, 10, 60, 80), "rock_toe", 0.9), "rock toe", ROCK, "why", "probe", "v1")],
                          "det:1", "probe:v1", 0.1)
    return store, photo, fid


# --- 1. boxes and ids: one rule where they are stored ---------------------------------------------

@pytest.mark.parametrize("box, stored", [
    ((-1e9, -1e9, 1e12, 1e12), (0, 0, 312, 312)),  # the issue's "Move box": now the whole photo, not 1e12
    ((300, -5, 400, 40), (300, 0, 312, 40)),  # drawn a little past the edge: clamped
])
def test_moved_box_is_stored_clamped_to_the_photo(tmp_path, box, stored):
    store, photo, fid = seeded(tmp_path)
    state = store.correct(fid, 0, "ana", "edit_box", box=box)
    assert state.box.xyxy == stored and store.state(fid).box.xyxy == stored
    assert len(store.history(fid)) == 1


@pytest.mark.parametrize("action, box, message", [
    ("edit_box", (500, 500, 900, 900), r"at least 2 px a side inside the 312x312 photo, found \(500, 500, 900, 900\) -> "
                                       r"\(312, 312, 312, 312\) after clamping, 0x0 px"),
    ("edit_box", (-40, 10, -1, 50), r"found \(-40, 10, -1, 50\) -> \(0, 10, 0, 50\)"),
    ("edit_box", (10, 10, 10, 10), "0x0 px"),  # zero area
    ("edit_box", (10, 10, 11.5, 90), "1.5x80 px"),  # thinner than 2 px
    ("edit_box", (float("nan"), 0, 50, 50), "expected finite box coordinates"),
    ("edit_box", (0, 0, float("inf"), 50), "expected finite box coordinates"),
    ("edit_box", "x", "expected a box of four numbers"),
    ("add", (10, 10, 10, 10), "at least 2 px a side"),
    ("add", (1e12, 1e12, 2e12, 2e12), r"-> \(312, 312, 312, 312\)"),
])
def test_bad_box_is_refused_with_its_numbers_and_nothing_written(tmp_path, action, box, message):
    store, photo, fid = seeded(tmp_path)
    n_findings, before = count(store.path, "SELECT count(*) FROM findings"), store.state(fid)
    with pytest.raises(InvalidBox, match=message):
        if action == "add":
            store.add_missed(photo.id, "ana", box if isinstance(box, Box) else Box(*box), "rock toe")
        else:
            store.correct(fid, 0, "ana", "edit_box", box=box)
    assert store.state(fid) == before and store.history(fid) == []
    assert count(store.path, "SELECT count(*) FROM findings") == n_findings
    assert store.correct(fid, 0, "ana", "accept").revision == 1  # still answers


def test_model_output_outside_the_photo_is_refused_whole(tmp_path):
    store, photo, _ = seeded(tmp_path)
    runs = count(store.path, "SELECT count(*) FROM inference_runs")
    good = Finding(Detection(Box(1, 1, 50, 50), "rock_toe", 0.9), "rock toe", ROCK, "why", "probe", "v1")
    bad = Finding(Detection(Box(400, 400, 500, 500), "rock_toe", 0.8), "rock toe", ROCK, "why", "probe", "v1")
    with pytest.raises(InvalidBox, match=f"photo {photo.id} detection 1 \\(rock_toe\\): expected a box at least 2 px"):
        store.add_run(photo.id, [good, bad], "det:1", "probe:v1", 0.1)
    assert count(store.path, "SELECT count(*) FROM inference_runs") == runs  # not even the good one: #k would shift
    assert count(store.path, "SELECT count(*) FROM findings") == 1


@pytest.mark.parametrize("call", [
    lambda s, p, f: s.state(10**30),
    lambda s, p, f: s.correct(10**30, 0, "ana", "accept"),
    lambda s, p, f: s.photo(10**30),
    lambda s, p, f: s.photo_of(-(2**63) - 1),
    lambda s, p, f: s.add_missed(10**30, "ana", Box(1, 1, 20, 20), "rock toe"),
    lambda s, p, f: s.confirm_photo(10**30, "ana"),
    lambda s, p, f: s.undo_last(2**63, "ana"),
    lambda s, p, f: s.history(10**30),
])
def test_an_id_beyond_sqlite_integers_is_no_such_object(tmp_path, call):
    store, photo, fid = seeded(tmp_path)
    with pytest.raises(NotFound, match=r"no (finding|photo) with id -?\d+ \(ids are integers below 2\*\*63\)"):
        call(store, photo, fid)
    assert store.state(fid).revision == 0


@pytest.mark.parametrize("bad", [True, 1.5, "7", None])
def test_an_id_that_is_not_an_integer_is_refused(tmp_path, bad):
    store, _, _ = seeded(tmp_path)
    with pytest.raises(InvalidEdit, match="expected an integer finding id"):
        store.correct(bad, 0, "ana", "accept")


def test_huge_ids_through_the_review_handlers_say_so(app, tmp_path):
    *_, photo_id = inspect(app, PHOTOS[0])
    out = app.r.open_finding(10**30)
    assert out[0] is None and out[1] == "⚠ no finding with id 1000000000000000000000000000000 (ids are integers below 2**63)"
    saved = app.r.set_class(photo_id, 10**30, 0, "rock toe damaged", ANA)
    assert saved[0].startswith("⚠ Not saved: no finding with id 10000")
    assert app.r.open_photo(10**30)[1].startswith("⚠ no photo with id")
    assert count(app.db, "SELECT count(*) FROM corrections") == 0
    assert app.r.open_photo(photo_id)[5] == photo_id  # still answers


def test_an_absurd_canvas_box_is_refused_and_the_photo_still_opens(app):
    *_, photo_id = inspect(app, PHOTOS[1])
    view = app.r.open_photo(photo_id)
    canvas, seen = view[0], view[4]
    boxes = canvas["boxes"] + [{"xmin": 1.2e9, "ymin": 1.2e9, "xmax": 1e12, "ymax": 1e12, "label": "rock toe"}]
    out = app.r.save_canvas(photo_id, {"boxes": boxes}, seen, ANA)
    assert out[0].startswith("⚠ Not saved: expected a box at least 2 px a side inside the")
    assert count(app.db, "SELECT count(*) FROM corrections") == 0
    again = app.r.open_photo(photo_id)
    assert len(again[0]["boxes"]) == len(canvas["boxes"])  # every object still loads


# --- 2. text limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("handler, size, accepted", [
    ("add_note", 5 * 2**20, False),  # the issue's 5 MB note
    ("add_note", MAX_TEXT_CHARS + 1, False),
    ("add_note", MAX_TEXT_CHARS, True),
    ("edit_rationale", MAX_TEXT_CHARS + 1, False),
    ("edit_rationale", 100_000, False),
])
def test_notes_and_rationales_are_capped(app, handler, size, accepted):
    *_, photo_id = inspect(app, PHOTOS[2])
    fid = app.r.open_photo(photo_id)[2]["value"]
    rev = app.store.state(fid).revision
    out = getattr(app.r, handler)(photo_id, fid, rev, "x" * size, ANA)
    if accepted:
        assert out[0].startswith("Saved") and count(app.db, "SELECT count(*) FROM corrections") == 1
    else:
        what = "note" if handler == "add_note" else "rationale"
        assert out[0] == f"⚠ Not saved: {what}: expected at most {MAX_TEXT_CHARS:,} characters, found {size:,}"
        assert count(app.db, "SELECT count(*) FROM corrections") == 0 and app.store.state(fid).revision == rev
    # Still answers: another reviewer's accept is written (ana's own would be her decision again).
    assert app.r.accept(photo_id, fid, app.store.state(fid).revision, BO)[0].startswith("Saved")


def test_history_grows_linearly_with_capped_texts(tmp_path):
    store, _, fid = seeded(tmp_path)
    store.correct(fid, 0, "ana", "note", note="n" * MAX_TEXT_CHARS)
    with pytest.raises(TextTooLong):
        store.correct(fid, 1, "ana", "edit_rationale", rationale="r" * (MAX_TEXT_CHARS + 1))
    store.correct(fid, 1, "ana", "edit_rationale", rationale="r" * MAX_TEXT_CHARS)
    for k in range(2, 42):  # reviewers take turns: an accept of one's own decision writes nothing
        store.correct(fid, k, "ana" if k % 2 else "bo", "accept")
    sizes = [len(json.dumps(c.before)) + len(json.dumps(c.after)) for c in store.history(fid)]
    # Each row carries the two capped texts twice at most (before and after): bounded, whatever came before.
    assert max(sizes) < 4 * MAX_TEXT_CHARS + 2000 and len(sizes) == 42


# --- 3. the one-off repair --------------------------------------------------------------------------

def test_repair_clamps_deletes_and_cuts_rows_stored_before_the_rules(tmp_path, capsys):
    from app.cli import main

    store, photo, fid = seeded(tmp_path)
    ok = store.add_missed(photo.id, "ana", Box(100, 100, 150, 150), "rock toe").finding_id
    con = sqlite3.connect(store.path, isolation_level=None)
    bad = {}
    for name, box in (("far", (-1e9, -1e9, 1e12, 1e12)), ("outside", (400, 400, 500, 500)), ("flat", (10, 10, 10, 10)),
                      ("edge", (300, 5, 330, 40)), ("inf", (0, 0, float("inf"), 20))):
        cur = con.execute("INSERT INTO findings(photo_id, object_type, class_name, x1, y1, x2, y2, source, created_at) "
                          "VALUES (?, 'rock_toe', 'rock toe', ?, ?, ?, ?, 'reviewer', 1.0)", (photo.id, *box))
        bad[name] = cur.lastrowid
        con.execute("INSERT INTO finding_state VALUES (?, 'rock_toe', 'rock toe', ?, ?, ?, ?, '', NULL, 'reviewed', 1, 1.0, 'ana')",
                    (cur.lastrowid, *box))
    con.execute("UPDATE finding_state SET note = ? WHERE finding_id = ?", ("n" * (5 * 2**20), ok))
    con.close()
    assert store.needs_repair() == 6
    assert main(["repair", "--db", store.path, "--dry-run"]) == 0 and '"would_repair": 6' in capsys.readouterr().out
    assert main(["repair", "--db", store.path]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["repaired"], report["clamped"], report["deleted"], report["texts_cut"]) == (6, 2, 3, 1)
    assert store.state(bad["far"]).box.xyxy == (0, 0, 312, 312) and store.state(bad["edge"]).box.xyxy == (300, 5, 312, 40)
    assert {store.state(bad[k]).status for k in ("outside", "flat", "inf")} == {"deleted"}
    assert len(store.state(ok).note) == MAX_TEXT_CHARS and store.state(ok).box.xyxy == (100, 100, 150, 150)
    last = store.history(bad["far"])[-1]
    assert (last.action, last.reviewer, last.before["x2"], last.after["x2"]) == ("repair", "slopewatch-repair", 1e12, 312)
    assert store.repair() == [] and store.needs_repair() == 0  # once is enough
    assert store.state(fid).revision == 0 and store.integrity_ok()  # untouched rows stay untouched


# --- 4. bad uploads through the Inspect handler ------------------------------------------------------

def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _sample(size=None) -> Image.Image:
    image = Image.open(PHOTOS[0]).convert("RGB")
    return image.resize(size) if size else image


def _bomb() -> bytes:
    return _encoded(Image.new("1", (20_000, 20_000)), "PNG")  # 400 MP, ~50 kB


BAD_UPLOADS = [
    ("empty.jpg", lambda: b"", "empty.jpg: expected an image, found an empty (0-byte) file"),
    ("notes.jpg", lambda: b"meeting notes, not a photo\n" * 20, "notes.jpg: expected a JPEG, PNG, WebP, TIFF, BMP or HEIC photo, found text"),
    ("cut.jpg", lambda: _encoded(_sample(), "JPEG")[:3000], "cut.jpg: image is damaged or truncated"),
    ("bomb.png", _bomb, "bomb.png: expected a photo of at most 100 MP, found 400 MP"),
    ("anim.gif", lambda: _encoded(_sample(), "GIF"), "anim.gif: GIF is not supported for inspection photos"),
    ("x.svg.jpg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
     "x.svg.jpg: expected a JPEG, PNG, WebP, TIFF, BMP or HEIC photo, found an SVG drawing (SVG can carry scripts"),
    ("page.jpg", lambda: b"<!DOCTYPE html><html><script>fetch('/x')</script></html>", "found an HTML page"),
    ("dot.png", lambda: _encoded(Image.new("RGB", (1, 1)), "PNG"), "dot.png: expected a photo at least 32x32 px, found 1x1"),
    ("strip.png", lambda: _encoded(Image.new("RGB", (400, 20)), "PNG"), "found 400x20"),
    ("sliver.png", lambda: _encoded(Image.new("L", (60_000, 40)), "PNG"), "keeps 32 px when shrunk to 4096 px, found 60000x40 -> 4096x3"),
    ("huge.jpg", lambda: b"\xff\xd8" + b"\x00" * (51 * 2**20), "huge.jpg: expected an upload of at most 50 MB, found 51.0 MB"),
]


@pytest.mark.parametrize("name, payload, message", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_upload_is_named_and_refused_and_the_others_go_through(app, tmp_path, name, payload, message):
    bad = tmp_path / name
    bad.write_bytes(payload())
    _, rows, text, last = inspect(app, bad, PHOTOS[0])
    problem = html.unescape(text.split("\n\n")[0])  # as the Markdown shows it
    assert problem.startswith(f"✗ {name}: ") and message in problem and "Inspected 1 photo(s) at " in text
    assert count(app.db, "SELECT count(*) FROM photos") == 1 and rows and all(r[0] == last for r in rows)
    assert not (photos_dir() / f"{hashlib.sha256(bad.read_bytes()).hexdigest()}.png").exists()  # nothing of it stored
    assert Path(app.store.photo(last).path).is_file()


@pytest.mark.parametrize("name, image, fmt, kw", [
    ("cmyk.jpg", lambda: _sample().convert("CMYK"), "JPEG", {}),
    ("deep.png", lambda: Image.fromarray((np.asarray(_sample().convert("L"), np.uint16) * 257)), "PNG", {}),  # 16-bit
    ("alpha.png", lambda: _sample().convert("RGBA"), "PNG", {}),
    ("palette.png", lambda: _sample().convert("P"), "PNG", {}),
])
def test_odd_but_honest_photos_are_accepted_as_rgb(app, tmp_path, name, image, fmt, kw):
    src = image()
    path = tmp_path / name
    src.save(path, fmt, **kw)
    if name == "deep.png":
        assert Image.open(path).mode.startswith("I;16")  # really a 16-bit file
    gallery, rows, text, last = inspect(app, path)
    assert re.fullmatch(SUMMARY, text) and len(gallery) == 1
    photo = app.store.photo(last)
    stored = Image.open(photo.path)
    assert stored.mode == "RGB" and stored.size == src.size == (photo.width, photo.height)
    assert photo.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_exif_rotated_photo_is_stored_upright_with_upright_boxes(app, tmp_path):
    upright = _sample().crop((0, 0, 312, 200))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the file holds the photo turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif.tobytes())
    *_, a = inspect(app, tmp_path / "upright.png")
    *_, b = inspect(app, tmp_path / "phone.png")
    assert a != b and (app.store.photo(b).width, app.store.photo(b).height) == (312, 200)

    def boxes(photo_id):
        return [(f.state.object_type, f.state.box.xyxy) for f in app.store.photo_findings(photo_id)]

    assert boxes(a) and boxes(b) == boxes(a)  # the same objects at the same upright places
    assert all(x2 <= 312 and y2 <= 200 for _, (_, _, x2, y2) in boxes(b))


def test_a_61_megapixel_photo_is_shrunk_to_the_working_size_not_refused(app, tmp_path):
    path = tmp_path / "camera.jpg"
    _sample().resize((9504, 6336), Image.NEAREST).save(path, "JPEG", quality=85)  # 60.2 MP, like a 61 MP full-frame camera
    gallery, rows, text, last = inspect(app, path)
    assert re.fullmatch(SUMMARY, text) and "MP" not in text
    photo = app.store.photo(last)
    assert (photo.width, photo.height) == (4096, 2731) and (photo.original_width, photo.original_height) == (9504, 6336)
    assert photo.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and Image.open(photo.path).size == (4096, 2731)
    live = [f.state.box for f in app.store.photo_findings(last)]
    assert live and all(0 <= b.x1 < b.x2 <= 4096 and 0 <= b.y1 < b.y2 <= 2731 for b in live)  # in the stored image's pixels


def test_a_duplicate_upload_is_reported_once(app, tmp_path):
    copy = tmp_path / "copy-of-first.jpg"
    copy.write_bytes(PHOTOS[0].read_bytes())
    gallery, rows, text, last = inspect(app, PHOTOS[0], copy)
    assert len(gallery) == 1 and count(app.db, "SELECT count(*) FROM photos") == 1
    assert f"= copy-of-first.jpg is the same photo as {PHOTOS[0].name} (shown once)" in text
    assert re.search(SUMMARY + "$", text)  # not "1 had been inspected before"
    again = inspect(app, copy)[2]
    assert re.fullmatch(SUMMARY + r" 1 had been inspected before \(same content\)\.", again)


def test_a_traversal_name_stays_a_name(app, tmp_path):
    from db.export import export

    odd = tmp_path / "..\\..\\evil.jpg"  # a legal file name on Linux; a path on Windows
    odd.write_bytes(PHOTOS[3].read_bytes())
    *_, last = inspect(app, odd)
    app.r.accept_all(last, {str(f.finding_id): f.state.revision for f in app.store.photo_findings(last)}, ANA)
    app.r.photo_done(last, {str(f.finding_id): f.state.revision for f in app.store.photo_findings(last)}, ANA)
    out = tmp_path / "export"
    export(app.store, out)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*evil*"))
    assert written == ["train/images/evil.png", "train/labels/evil.txt"]
    assert {p.name for p in tmp_path.rglob("*evil*")} == {odd.name, "evil.png", "evil.txt"}  # nothing written outside the export


def test_rejected_uploads_do_not_linger_in_gradios_upload_folder(app, tmp_path):
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / f"hazard-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    bad, good, outside = folder / "bad.jpg", folder / "good.jpg", tmp_path / "bad-elsewhere.jpg"
    bad.write_bytes(b"not a photo at all")
    outside.write_bytes(b"not a photo either")
    good.write_bytes(PHOTOS[4].read_bytes())
    text = inspect(app, bad, good, outside)[2]
    assert "✗ bad.jpg" in text and "✗ bad-elsewhere.jpg" in text and "Inspected 1 photo(s) at " in text
    assert not bad.exists() and good.exists()  # the refused upload is gone; a good one stays for Gradio's own cleanup
    assert outside.exists()  # a file outside the upload folder is never deleted
    good.unlink()
    folder.rmdir()


def test_gradios_cache_is_emptied_on_a_schedule(app):
    from app.web import ServeConfig, build_app

    demo = build_app(ModelHost.ready(None), app.store, ServeConfig(no_auth=True, cache_minutes=20))
    assert demo.delete_cache == (300, 1200)  # checked every 5 minutes, files older than 20 deleted


def test_overlays_are_unique_files_that_never_change_once_written(app):
    from app.handlers import overlay_file

    *_, photo_id = inspect(app, PHOTOS[2])
    paths, errors = [], []

    def load():
        try:
            paths.append(overlay_file(app.store, photo_id))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]  # eight reviewers open the same photo at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(paths)) == 1
    first = Path(paths[0])
    content = first.read_bytes()
    Image.open(first).load()  # whole, not cut
    fid = app.r.open_photo(photo_id)[2]["value"]
    app.store.correct(fid, app.store.state(fid).revision, "ana", "delete")
    second = overlay_file(app.store, photo_id)
    assert second != str(first) and first.read_bytes() == content  # a new state is a new file; the old one is untouched


def test_an_overlay_handed_out_again_is_not_swept_from_under_the_gallery(app, tmp_path, monkeypatch):
    """Gradio serves overlays from their folder, not from a copy: one swept while a gallery shows it
    is a blank tile (a 403). A photo inspected again with the same findings reuses its old file."""
    from app.handlers import overlay_file

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))  # only this test's overlays

    *_, photo_id = inspect(app, PHOTOS[2])
    reused = Path(overlay_file(app.store, photo_id))
    stale = reused.with_name("0" * 32 + "-" + "0" * 16 + ".jpg")
    stale.write_bytes(reused.read_bytes())
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (reused, stale):
        os.utime(path, (two_days_ago, two_days_ago))  # both written two days ago
    assert overlay_file(app.store, photo_id) == str(reused)  # handed out again today
    fid = app.r.open_photo(photo_id)[2]["value"]
    app.store.correct(fid, app.store.state(fid).revision, "ana", "delete")
    overlay_file(app.store, photo_id)  # a new overlay is written: the sweep runs
    assert reused.exists() and not stale.exists()


def test_one_reviewers_inspections_are_capped_and_the_count_never_leaks(probe_pipeline):
    lane, release, inside = InspectLane(per_user=2), threading.Event(), threading.Semaphore(0)

    def hold(user):
        with lane.admit(user):
            inside.release()
            release.wait(30)

    held = [threading.Thread(target=hold, args=("ana",)) for _ in range(2)] + [threading.Thread(target=hold, args=("bo",))]
    for t in held:
        t.start()
    assert inside.acquire(timeout=30)  # one runs, the other two wait their turn, counted
    deadline = time.time() + 30
    while (lane.in_flight("ana"), lane.in_flight("bo")) != (2, 1) and time.time() < deadline:
        time.sleep(0.01)
    try:
        with pytest.raises(LaneFull, match=r"you already have 2 inspection\(s\) waiting or running \(at most 2 per reviewer\)"):
            with lane.admit("ana"):
                pass
        assert (lane.in_flight("ana"), lane.in_flight("bo")) == (2, 1)  # the refusal took no place
    finally:
        release.set()
        for t in held:
            t.join(30)
    assert lane.in_flight("ana") == lane.in_flight("bo") == 0
    with pytest.raises(RuntimeError):
        with lane.admit("ana"):
            raise RuntimeError("the model crashed")
    assert lane.in_flight("ana") == 0  # a failed inspection gives its place back

    class Broken:
        def __getattr__(self, name):
            return getattr(probe_pipeline, name)

        def run(self, image, name=None, key=None):
            raise RuntimeError("boom")

    store = Store(":memory:")
    h = Handlers(ModelHost.ready(Broken()), store, InspectLane(per_user=1))
    with pytest.raises(RuntimeError):
        h.inspect([str(PHOTOS[0])], ANA, NoProgress())
    assert h.lane.in_flight("ana") == 0 and "Choose" in h.inspect([], ANA, NoProgress())[2]


# --- 5. logins ---------------------------------------------------------------------------------------

def test_login_backoff_doubles_per_failure_and_forgets(tmp_path):
    now = [0.0]
    t = LoginThrottle(free=3, base_s=1, max_s=8, forget_s=100, clock=lambda: now[0])
    assert [t.failed("k")[1] for _ in range(3)] == [0, 0, 0]
    assert t.failed("k") == (4, 1) and t.locked_for("k") == 1
    now[0] += 1
    assert [t.failed("k")[1] for _ in range(4)] == [2, 4, 8, 8]  # doubling, capped
    now[0] += 200  # no failure for longer than forget_s: a fresh start
    assert t.failed("k") == (1, 0) and t.locked_for("k") == 0
    t.failed("k")
    t.succeeded("k")
    assert t.failed("k") == (1, 0)


def test_authenticator_locks_a_user_and_an_address(caplog):
    users = parse_users([f"ana:{PASSWORDS['ana']}", f"bo:{hash_password(PASSWORDS['bo'])}"], "test")
    auth = Authenticator(users, LoginThrottle(free=2, base_s=60), LoginThrottle(free=4, base_s=60))
    assert auth.verify("bo", PASSWORDS["bo"], "10.0.0.1") and auth.verify("ana", PASSWORDS["ana"], "10.0.0.1")
    assert not auth.verify("ana", "guess1", "10.0.0.2") and not auth.verify("ana", "guess2", "10.0.0.2")
    with caplog.at_level("WARNING", logger="slopewatch.auth"):
        assert not auth.verify("ana", "guess3", "10.0.0.2")  # the third failure locks ana
        with pytest.raises(LoginThrottled, match=r"too many failed logins for user 'ana': try again in 60 s"):
            auth.verify("ana", PASSWORDS["ana"], "10.0.0.9")  # even the right password, from anywhere, while locked
    assert any("failed login for user 'ana' from 10.0.0.2" in r.message and "locked" in r.message for r in caplog.records)
    assert auth.verify("bo", PASSWORDS["bo"], "10.0.0.2")  # another user is not locked out by ana's guesser...
    for name in ("x1", "x2"):
        auth.verify(name, "guess", "10.0.0.2")  # ...but a fifth failure from one address locks the address,
    with pytest.raises(LoginThrottled, match="10.0.0.2"):
        auth.verify("bo", PASSWORDS["bo"], "10.0.0.2")  # whoever it tries next
    assert auth.verify("bo", PASSWORDS["bo"], "10.0.0.3")


def test_user_add_writes_a_salted_scrypt_hash_and_never_the_password(tmp_path, monkeypatch, capsys):
    from app.cli import main

    file = tmp_path / "reviewers.txt"
    file.write_text("# reviewers\nana:plain-password\n")
    for password in ("first-password", "second-password"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        assert main(["user", "add", "dee", "--auth-file", str(file)]) == 0
    text = file.read_text()
    assert "password" not in text.replace("ana:plain-password", "") and oct(file.stat().st_mode & 0o777) == "0o600"
    users = dict(parse_users(text.splitlines(), str(file)))
    assert users["dee"].startswith("scrypt$") and text.count("dee:") == 1
    assert verify_password("second-password", users["dee"]) and not verify_password("first-password", users["dee"])
    assert verify_password("plain-password", users["ana"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["user", "add", "eve", "--auth-file", str(file)]) == 2 and "eve" not in file.read_text()
    assert "at least 8 characters" in capsys.readouterr().err


# --- 6. a real server: auth, file routes, upload cap, fairness --------------------------------------

class Gated:
    """The probe pipeline, held at ``gate`` while the test wants inspections in flight."""

    def __init__(self, inner):
        self.inner, self.gate, self.started = inner, threading.Event(), threading.Semaphore(0)
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, image, name=None, key=None):
        self.started.release()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.run(image, name)


@pytest.fixture(scope="module")
def server(probe_pipeline, free_port, tmp_path_factory):
    from app.web import ServeConfig, build_app, launch_options, page_head

    root = tmp_path_factory.mktemp("hazard-server")
    auth_file = root / "reviewers.txt"
    write_user(auth_file, "cy", PASSWORDS["cy"])
    cfg = ServeConfig(auth=f"ana:{PASSWORDS['ana']},bo:{PASSWORDS['bo']}", auth_file=auth_file, port=free_port(), max_upload_mb=5)
    store = Store(root / "review.db")
    gated = Gated(probe_pipeline)
    # A photo with findings for bo to review while ana's inspections are held.
    seed = Handlers(ModelHost.ready(probe_pipeline), store).inspect([str(PHOTOS[5])], BO, NoProgress())[3]
    demo = build_app(ModelHost.ready(gated), store, cfg)
    demo.launch(**launch_options(cfg), prevent_thread_lock=True, head=page_head(), quiet=True, show_error=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{cfg.port}", store=store, gated=gated, photo=seed, db=root / "review.db")
    demo.close()


def client(server, user):
    from gradio_client import Client

    return Client(server.url + "/", auth=(user, PASSWORDS[user]), verbose=False)


def test_nothing_is_served_without_a_login(server):
    import httpx

    photo = server.store.photo(server.photo).path
    for method, path in [("GET", "/config"), ("GET", "/gradio_api/info"), ("POST", "/gradio_api/queue/join"),
                         ("POST", "/gradio_api/upload"), ("GET", f"/gradio_api/file={photo}"), ("GET", f"/gradio_api/file={server.db}"),
                         ("GET", "/gradio_api/file=/etc/passwd")]:
        r = httpx.request(method, server.url + path, json={} if method == "POST" else None)
        assert r.status_code == 401 and "Not authenticated" in r.text, (path, r.status_code)
    r = httpx.get(server.url + "/gradio_api/file=../../../../etc/passwd")
    assert r.status_code in (401, 403, 404) and "root:" not in r.text
    assert httpx.get(server.url + "/").status_code == 200  # the login page


def test_a_logged_in_reviewer_gets_photos_but_never_the_database(server):
    import httpx

    with httpx.Client(base_url=server.url) as web:
        assert web.post("/login", data={"username": "cy", "password": PASSWORDS["cy"]}).status_code == 200  # a scrypt-hashed user
        assert web.get(f"/gradio_api/file={server.store.photo(server.photo).path}").status_code == 200
        for path in (server.db, "/etc/passwd", ROOT / "assets" / "models" / "manifest.toml"):
            assert web.get(f"/gradio_api/file={path}").status_code == 403, path
        # A traversal name in an upload stays inside Gradio's upload folder, as its last part.
        r = web.post("/gradio_api/upload", files={"files": ("../../hazard-evil.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
        [stored] = r.json()
        from gradio.utils import get_upload_folder, is_in_or_equal

        assert is_in_or_equal(stored, get_upload_folder()) and Path(stored).name == "hazard-evil.jpg"
        assert not (Path(get_upload_folder()).parent.parent / "hazard-evil.jpg").exists()


def test_repeated_wrong_passwords_are_throttled_with_a_log_line(server, caplog):
    import httpx

    codes = []
    with caplog.at_level("WARNING", logger="slopewatch.auth"):
        # The lock after the 6th failure is 1 s and doubles with each failure past it, so a 429
        # comes within a few tries however slow this machine is (and well before the address's 20).
        while 429 not in codes and len(codes) < 12:
            r = httpx.post(server.url + "/login", data={"username": "mallory", "password": f"guess{len(codes)}"})
            codes.append(r.status_code)
    assert codes[:5] == [400] * 5 and codes[-1] == 429, codes
    assert "too many failed logins for user 'mallory'" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    assert any("failed login for user 'mallory' from 127.0.0.1" in rec.getMessage() for rec in caplog.records)
    assert httpx.post(server.url + "/login", data={"username": "bo", "password": PASSWORDS["bo"]}).status_code == 200


def test_an_upload_over_the_cap_is_refused_and_the_server_still_answers(server, tmp_path):
    import httpx

    with httpx.Client(base_url=server.url) as web:
        web.post("/login", data={"username": "cy", "password": PASSWORDS["cy"]})
        big = b"\xff\xd8" + os.urandom(6 * 2**20)  # 6 MB against a 5 MB cap
        r = web.post("/gradio_api/upload", files={"files": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and "5" in r.text
    assert "Findings by class" in client(server, "cy").predict(api_name="/dashboard")


def test_one_reviewers_uploads_do_not_starve_anothers_review(server):
    ana, bo = client(server, "ana"), client(server, "bo")
    from gradio_client import handle_file

    gated = server.gated
    gated.gate.clear()
    try:
        jobs = [ana.submit([handle_file(str(PHOTOS[k]))], api_name="/inspect") for k in range(4)]
        assert gated.started.acquire(timeout=60)  # one of ana's inspections is running (and held)
        deadline = time.time() + 60
        while sum(j.done() for j in jobs) < 2 and time.time() < deadline:
            time.sleep(0.05)
        refused = [j.result() for j in jobs if j.done()]
        assert len(refused) == 2 and all("you already have 2 inspection(s) waiting or running" in r[2] for r in refused)
        # While ana's two inspections hold the models, bo opens, annotates and counts.
        picked = bo.predict(server.photo, api_name="/open_photo")[2]
        fid = picked["value"] if isinstance(picked, dict) else picked
        status = bo.predict(server.photo, fid, server.store.state(fid).revision, "checked on site", api_name="/add_note")[0]
        assert status.startswith("Saved") and "Findings by class" in bo.predict(api_name="/dashboard")
        assert sum(j.done() for j in jobs) == 2  # ana's admitted inspections are still held
    finally:
        gated.gate.set()
    done = [j.result(timeout=60) for j in jobs]
    assert sum(r[2].startswith("Inspected 1 photo(s)") for r in done) == 2
    assert server.store.history(fid)[-1].reviewer == "bo"


# --- 7. concurrency and faults -----------------------------------------------------------------------

def test_eight_reviewers_on_one_object(app):
    *_, photo_id = inspect(app, PHOTOS[3])
    fid = app.r.open_photo(photo_id)[2]["value"]
    acknowledged, refused, errors = [], [], []

    def reviewer(k):
        who = SimpleNamespace(username=f"reviewer{k}")
        for i in range(12):
            try:
                seen = app.store.state(fid).revision
                out = app.r.add_note(photo_id, fid, seen, f"r{k}-{i}", who)[0]
            except Exception as exc:  # noqa: BLE001 - any crash is a failure of the case
                errors.append(exc)
                return
            (acknowledged if out.startswith("Saved") else refused).append((k, i, out))

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    rows = {(c.reviewer, c.after["note"]) for c in app.store.history(fid)}
    assert rows == {(f"reviewer{k}", f"r{k}-{i}") for k, i, _ in acknowledged}  # acknowledged = rows, exactly
    assert app.store.state(fid).revision == len(acknowledged) and len(acknowledged) + len(refused) == 96
    assert refused and all(out.startswith("⚠ Not saved") and "changed" in out for *_, out in refused)
    assert app.store.integrity_ok()


CHILD_CORRECTIONS = """
import sys
from db.store import Store
store, fid = Store(sys.argv[1]), int(sys.argv[2])
for i in range(100000):
    s = store.correct(fid, store.state(fid).revision, "ana", "note", note=f"note {i}")
    print(s.revision, flush=True)
"""

CHILD_UPLOADS = """
import sys
from PIL import Image
import io
from core.photos import ingest
from db.store import Store
store = Store(sys.argv[1])
store.ensure_user("ana")
for i in range(100000):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 7)).save(buf, "PNG")
    p = ingest(buf.getvalue(), name=f"p{i}.png")
    store.add_photo(p.sha256, str(p.path), 64, 48, f"p{i}.png", "ana")
    print(p.sha256, flush=True)
"""


def _kill_after(code: str, args: list[str], acknowledgements: int, data: Path) -> list[str]:
    """Run ``code`` in a child (data dir ``data``), read its acknowledgement lines, SIGKILL it
    mid-stream; returns every line it wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLOPEWATCH_DATA_DIR": str(data)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    lines = []
    try:
        while len(lines) < acknowledgements:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return lines + [line for line in rest.split("\n") if line.strip()]  # written before the kill: acknowledged too


def test_kill_9_during_corrections_loses_nothing_acknowledged(tmp_path):
    store, _, fid = seeded(tmp_path)
    acknowledged = [int(x) for x in _kill_after(CHILD_CORRECTIONS, [store.path, str(fid)], 40, tmp_path / "data")]
    after = Store(store.path)
    assert after.integrity_ok()
    stored = {c.revision for c in after.history(fid)}
    assert set(acknowledged) <= stored and after.state(fid).revision == max(stored) >= max(acknowledged)
    assert after.correct(fid, after.state(fid).revision, "bo", "accept")  # the store goes on


def test_kill_9_during_uploads_leaves_only_whole_photos(tmp_path):
    db = tmp_path / "uploads.db"
    acknowledged = _kill_after(CHILD_UPLOADS, [str(db)], 25, tmp_path / "data")
    store = Store(db)
    assert store.integrity_ok()
    photos = {p.sha256: p for p in store.photos()}
    assert set(acknowledged) <= set(photos)
    for p in photos.values():  # every stored row points at a whole photo
        assert Image.open(p.path).size == (64, 48)


def test_nightly_snapshot_while_reviewers_write(tmp_path):
    store = Store(tmp_path / "live.db")
    store.ensure_user("ana")
    photo, _ = store.add_photo("b" * 64, "/photos/b.png", 312, 312, "b.jpg", "ana")
    ids = store.add_run(photo.id, [Finding(Detection(Box(10 * k, 10, 10 * k + 8, 80), "rock_toe", 0.9), "rock toe", ROCK, "why",
                                           "probe", "v1") for k in range(1, 5)], "det:1", "probe:v1", 0.1)
    written, errors, stop = [], [], threading.Event()

    def reviewer(fid):
        local = Store(store.path)
        while not stop.is_set():
            try:
                local.correct(fid, local.state(fid).revision, "ana", "note", note=f"{time.time()}")
                written.append(fid)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=reviewer, args=(fid,)) for fid in ids]
    for t in threads:
        t.start()
    counts = []
    try:
        deadline = time.time() + 30
        while not written and not errors and time.time() < deadline:  # the reviewers are at work
            time.sleep(0.01)
        for k in range(3):
            time.sleep(0.3)
            out = snapshot(store.path, tmp_path / f"nightly-{k}.db")
            con = sqlite3.connect(out)
            counts.append(con.execute("SELECT count(*) FROM corrections").fetchone()[0])
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            con.close()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and counts == sorted(counts) and counts[-1] > 0
    assert count(store.path, "SELECT count(*) FROM corrections") == len(written) >= counts[-1]
