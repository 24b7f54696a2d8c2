"""Ingest, review queue, dashboard and dataset export (round trip through the dataset reader)."""

import io
import json

import pytest
from PIL import Image

from core.data import load_dataset
from core.errors import ImageError
from core.photos import ingest
from core.taxonomy import load_taxonomy
from core.types import Box, Detection, Finding
from db.export import export
from db.rows import ReviewerActivity
from db.store import Store

TAX = load_taxonomy()


def _jpeg(orientation=None, size=(60, 40)):
    buf = io.BytesIO()
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    Image.new("RGB", size, (10, 200, 10)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_ingest_stores_once_upright(tmp_path):
    a = ingest(_jpeg(orientation=6), tmp_path)
    b = ingest(_jpeg(orientation=6), tmp_path)
    assert a.sha256 == b.sha256 and a.path == b.path and len(list(tmp_path.iterdir())) == 1
    assert Image.open(a.path).size == (40, 60)  # EXIF rotation applied to the stored copy
    with pytest.raises(ImageError, match="at most"):
        ingest(_jpeg(), tmp_path, max_bytes=10)
    with pytest.raises(ImageError, match="empty"):
        ingest(b"", tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # refused uploads leave nothing behind


def _f(type_, cls, probs, box=(0, 0, 10, 10)):
    return Finding(Detection(Box(*box), type_, 0.9), cls, probs, "r", "probe", "v1")


@pytest.fixture
def store(tmp_path):
    store = Store(":memory:")
    store.ensure_user("ana")
    photo = ingest(_jpeg(size=(100, 100)), tmp_path)
    rec, _ = store.add_photo(photo.sha256, str(photo.path), 100, 100, "a.jpg", "ana")
    ids = store.add_run(rec.id, [
        _f("slope_drain", "slope drain", {"slope drain": 0.5, "slope drain blocked": 0.45, "slope drain damaged": 0.05}, (40, 0, 50, 60)),
        _f("rock_toe", "rock toe damaged", {"rock toe": 0.1, "rock toe damaged": 0.9}, (0, 60, 100, 80)),
        _f("vegetation", "vegetation", {"vegetation": 1.0}, (70, 10, 90, 30)),
    ], "det", "probe:v1", 0.1)
    return store, rec, ids


def test_queue_orders_unreviewed_and_uncertain_first_and_filters(store):
    store, rec, (slope, rock, veg) = store
    assert [r.finding_id for r in store.queue()][:2] == [slope, rock]  # margin 0.05 before 0.8
    store.correct(slope, 0, "ana", "accept")
    assert store.queue()[-1].finding_id == slope  # reviewed goes last
    assert [r.finding_id for r in store.queue(condition="damaged")] == [rock]
    assert [r.finding_id for r in store.queue(reviewer="ana")] == [slope]
    assert [r.finding_id for r in store.queue(object_type="vegetation")] == [veg]


def test_dashboard_counts(store):
    store, rec, (slope, rock, veg) = store
    store.correct(rock, 0, "ana", "relabel", class_name="rock toe")
    d = store.dashboard()
    assert d["by_class"] == {"slope drain": 1, "rock toe": 1, "vegetation": 1}
    assert d["by_condition"] == {"normal": 2, "none": 1}
    assert d["status"] == {"pending": 2, "reviewed": 1} and d["corrections_per_reviewer"] == {"ana": ReviewerActivity("ana", 1, 0, 0)}
    # An undone correction is activity, not a standing correction, and the undo is counted apart.
    store.ensure_user("bo")
    store.correct(slope, 0, "bo", "accept")
    store.undo_last(rec.id, "bo")
    d = store.dashboard()["corrections_per_reviewer"]
    assert d == {"ana": ReviewerActivity("ana", 1, 0, 0), "bo": ReviewerActivity("bo", 0, 1, 1)}
    assert (str(d["ana"]), str(d["bo"])) == ("1 standing", "0 standing (1 undone, 1 undo)")
    # Undos are counted as presses: one undo of an accept-all (a row per object) is one.
    assert len(store.accept_pending(rec.id, "bo")) == 2
    assert len(store.undo_last(rec.id, "bo")) == 2
    assert str(store.dashboard()["corrections_per_reviewer"]["bo"]) == "0 standing (3 undone, 2 undos)"


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_export_round_trip(store, tmp_path, fmt):
    store, rec, (slope, rock, veg) = store
    store.correct(slope, 0, "ana", "relabel", class_name="slope drain blocked")
    store.correct(veg, 0, "ana", "delete")
    store.add_missed(rec.id, "ana", Box(0, 85, 100, 95), "Toe drain- Damaged")
    unconfirmed = export(store, tmp_path / "unconfirmed", fmt)  # reviewed objects, but not confirmed
    assert (unconfirmed["photos"], unconfirmed["left_out_not_done"]) == (0, 1)
    store.correct(rock, 0, "ana", "accept")
    store.confirm_photo(rec.id, "ana")
    counts = export(store, tmp_path / "out", fmt)
    assert counts == {"photos": 1, "reviewed_photos": 1, "unreviewed_photos": 0, "left_out_not_done": 0, "objects": 3,
                      "splits": {"train": 1, "valid": 0}, "format": fmt, "out": str(tmp_path / "out")}
    if fmt == "coco":
        coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
        assert sorted(TAX.class_names[a["category_id"]] for a in coco["annotations"]) == ["Toe drain- Damaged", "rock toe damaged", "slope drain blocked"]
        return
    ds = load_dataset(tmp_path / "out" / "data.yaml")
    [sample] = ds.samples("train")
    got = sorted((o.class_name, tuple(round(v) for v in o.box.xyxy)) for o in sample.objects)
    assert got == [("Toe drain- Damaged", (0, 85, 100, 95)), ("rock toe damaged", (0, 60, 100, 80)), ("slope drain blocked", (40, 0, 50, 60))]


def test_export_cli(tmp_path):
    from app.cli import main

    db = tmp_path / "r.db"
    s = Store(db)
    s.ensure_user("ana")
    photo = ingest(_jpeg(size=(50, 50)), tmp_path)
    rec, _ = s.add_photo(photo.sha256, str(photo.path), 50, 50, "x.jpg", "ana")
    [fid] = s.add_run(rec.id, [_f("rock_toe", "rock toe", {"rock toe": 0.6, "rock toe damaged": 0.4})], "det", "p", 0.1)
    s.correct(fid, 0, "ana", "accept")
    s.confirm_photo(rec.id, "ana")
    assert main(["export", str(tmp_path / "ds"), "--db", str(db)]) == 0
    assert len(load_dataset(tmp_path / "ds" / "data.yaml").samples("train")) == 1
