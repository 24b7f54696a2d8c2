"""Dataset export: only confirmed photos by default, upload names kept, hash splits, round trips
through the YOLO reader and COCO, and refusal of boxes that cannot be written."""

import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from core.data import load_dataset
from core.photos import ingest
from core.taxonomy import load_taxonomy
from core.types import Box, Detection, Finding
from db.export import ExportConfig, ExportError, export, run_export
from db.store import Store

TAX = load_taxonomy()
ROCK = {"rock toe": 0.6, "rock toe damaged": 0.4}
SLOPE = {"slope drain": 0.5, "slope drain blocked": 0.45, "slope drain damaged": 0.05}


def _f(type_, cls, probs, box):
    return Finding(Detection(Box(*box), type_, 0.9), cls, probs, "r", "probe", "v1")


def _photo(store, tmp_path, name, size=(160, 90), color=(10, 200, 10), findings=()):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    (tmp_path / "photos").mkdir(exist_ok=True)
    stored = ingest(buf.getvalue(), tmp_path / "photos")
    rec, _ = store.add_photo(stored.sha256, str(stored.path), *size, name, "ana")
    ids = store.add_run(rec.id, list(findings), "det", "probe:v1", 0.1) if findings else []
    return rec, ids


def _accept(store, ids):
    for fid in ids:
        store.correct(fid, store.state(fid).revision, "ana", "accept")


@pytest.fixture
def three(tmp_path):
    """done.png: confirmed; half.png: one object reviewed, one pending; raw.png: untouched."""
    store = Store(tmp_path / "r.db")
    store.ensure_user("ana")
    done, d_ids = _photo(store, tmp_path, "done.png", (160, 90), (1, 2, 3),
                         [_f("rock_toe", "rock toe", ROCK, (3.25, 40.5, 150.75, 70.125)), _f("slope_drain", "slope drain", SLOPE, (60, 0, 71.5, 89.9))])
    store.correct(d_ids[0], 0, "ana", "relabel", class_name="rock toe damaged")
    store.correct(d_ids[1], 0, "ana", "accept")
    store.add_missed(done.id, "ana", Box(0.5, 80, 159.5, 89), "Toe drain- Damaged")
    store.confirm_photo(done.id, "ana")
    half, h_ids = _photo(store, tmp_path, "half.png", (73, 41), (4, 5, 6),
                         [_f("rock_toe", "rock toe", ROCK, (1, 1, 30, 20)), _f("slope_drain", "slope drain", SLOPE, (40, 2, 50, 40))])
    store.correct(h_ids[0], 0, "ana", "accept")
    raw, _ = _photo(store, tmp_path, "raw.png", (100, 100), (7, 8, 9), [_f("vegetation", "vegetation", {"vegetation": 1.0}, (10, 10, 30, 30))])
    return store, {"done": done, "half": half, "raw": raw}


def _manifest(out):
    return {e["original_name"]: e for e in json.loads((out / "manifest.json").read_text())["images"]}


def test_default_export_writes_only_confirmed_photos(three, tmp_path):
    store, p = three
    counts = export(store, tmp_path / "out")
    assert counts == {"photos": 1, "reviewed_photos": 1, "unreviewed_photos": 0, "left_out_not_done": 2, "objects": 3,
                      "splits": {"train": 1, "valid": 0}, "format": "yolo", "out": str(tmp_path / "out")}
    assert _manifest(tmp_path / "out") == {"done.png": {"file_name": "train/images/done.png", "split": "train", "sha256": p["done"].sha256,
                                                        "original_name": "done.png", "reviewed": True, "n_objects": 3}}
    assert sorted(f.name for f in (tmp_path / "out" / "train" / "images").iterdir()) == ["done.png"]


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_include_unreviewed_marks_them(three, tmp_path, fmt):
    store, p = three
    out = tmp_path / "out"
    counts = export(store, out, fmt, include_unreviewed=True)
    assert (counts["photos"], counts["reviewed_photos"], counts["unreviewed_photos"], counts["objects"]) == (3, 1, 2, 6)
    manifest = _manifest(out)
    assert {n: (e["reviewed"], e["n_objects"]) for n, e in manifest.items()} == {
        "done.png": (True, 3), "half.png": (False, 2), "raw.png": (False, 1)}
    if fmt == "coco":
        coco = json.loads((out / "annotations.json").read_text())
        assert {i["file_name"]: i["reviewed"] for i in coco["images"]} == {
            "train/images/done.png": True, "train/images/half.png": False, "train/images/raw.png": False}
        return
    # The pending object of an unconfirmed photo is written with the model's current label.
    [half] = [s for s in load_dataset(out / "data.yaml").samples("train") if s.image_path.name == "half.png"]
    assert sorted(o.class_name for o in half.objects) == ["rock toe", "slope drain"]


def test_upload_names_kept_made_unique_and_kept_inside_out(tmp_path):
    store = Store(tmp_path / "r.db")
    store.ensure_user("ana")
    box = [_f("rock_toe", "rock toe", ROCK, (1, 1, 20, 20))]
    specs = [("IMG_1.png", "IMG_1.png"), ("img_1.PNG", "img_1-{sha}.PNG"), ("IMG_1.png", "IMG_1-{sha}.png"),
             ("../../escape.png", "escape.png"), ("C:\\Users\\ana\\site.png", "site.png"), ("drone.JPG", "drone.png"),
             ("..", "{sha64}.png"), (None, "{sha64}.png")]
    expected = {}
    for k, (name, want) in enumerate(specs):
        rec, ids = _photo(store, tmp_path, name, (40, 40), (k, 0, 0), box)
        _accept(store, ids)
        store.confirm_photo(rec.id, "ana")
        expected[rec.sha256] = want.format(sha=rec.sha256[:8], sha64=rec.sha256)
    out = tmp_path / "deep" / "out"
    counts = export(store, out)
    got = {e["sha256"]: e["file_name"].removeprefix("train/images/") for e in json.loads((out / "manifest.json").read_text())["images"]}
    assert got == expected and counts["photos"] == len(specs)
    assert sorted(f.name for f in (out / "train" / "images").iterdir()) == sorted(expected.values())
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "deep" / "escape.png").exists()
    assert len(load_dataset(out / "data.yaml").samples("train")) == len(specs)  # every image paired with its own labels


def _expected_split(sha, percent):
    return "valid" if int(hashlib.sha256(("split:" + sha).encode()).hexdigest()[:8], 16) % 100 < percent else "train"


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_valid_percent_splits_by_photo_hash(tmp_path, fmt):
    store = Store(tmp_path / "r.db")
    store.ensure_user("ana")
    for k in range(10):
        rec, ids = _photo(store, tmp_path, f"p{k}.png", (50, 50), (k, k, 0), [_f("rock_toe", "rock toe", ROCK, (1, 1, 20, 20))])
        _accept(store, ids)
        store.confirm_photo(rec.id, "ana")
    expected = {p.sha256: _expected_split(p.sha256, 50) for p in store.photos()}
    assert set(expected.values()) == {"train", "valid"}, "the fixture must give both splits"
    first = export(store, tmp_path / "a", fmt, valid_percent=50)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())["images"]
    assert {e["sha256"]: e["split"] for e in manifest} == expected
    assert all(e["file_name"].startswith(f"{e['split']}/images/") and (tmp_path / "a" / e["file_name"]).is_file() for e in manifest)
    n_valid = list(expected.values()).count("valid")
    assert first["splits"] == {"train": 10 - n_valid, "valid": n_valid}
    assert export(store, tmp_path / "b", fmt, valid_percent=50)["splits"] == first["splits"]  # same photos, same split
    assert json.loads((tmp_path / "b" / "manifest.json").read_text()) == {"images": manifest}
    if fmt == "yolo":
        spec = yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())
        # "val" is the key ultralytics reads; slopewatch's own reader maps it to the valid split.
        assert (spec["train"], spec["val"], spec["nc"], spec["names"]) == ("train/images", "valid/images", 9, TAX.class_names)
        ds = load_dataset(tmp_path / "a" / "data.yaml")
        assert (len(ds.samples("train")), len(ds.samples("valid"))) == (10 - n_valid, n_valid)


@pytest.mark.parametrize("percent, keys, folders", [(0, {"train", "val"}, {"train"}), (100, {"val"}, {"valid"})])
def test_data_yaml_lists_only_present_splits(three, tmp_path, percent, keys, folders):
    store, _ = three
    export(store, tmp_path / "out", valid_percent=percent, include_unreviewed=True)
    spec = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert set(spec) - {"nc", "names"} == keys
    assert {p.name for p in (tmp_path / "out").iterdir()} == folders | {"data.yaml", "manifest.json"}
    assert set(load_dataset(tmp_path / "out" / "data.yaml").split_dirs) == {"train" if f == "train" else "valid" for f in folders}


def test_the_default_export_is_a_data_yaml_ultralytics_reads(three, tmp_path):
    """Nothing held out by default, and ultralytics refused the file: "'val:' key missing". val
    lists the train photos, the file says so, and slopewatch's own reader sees no valid split."""
    check_det_dataset = pytest.importorskip("ultralytics.data.utils").check_det_dataset
    store, _ = three
    export(store, tmp_path / "out", include_unreviewed=True)
    text = (tmp_path / "out" / "data.yaml").read_text()
    assert text.startswith("# No photo is held out")
    spec = check_det_dataset(str(tmp_path / "out" / "data.yaml"), autodownload=False)
    assert Path(spec["train"]) == Path(spec["val"]) == (tmp_path / "out" / "train" / "images").resolve()
    assert list(load_dataset(tmp_path / "out" / "data.yaml").split_dirs) == ["train"]


def test_yolo_round_trip_gives_back_boxes_and_classes(three, tmp_path):
    store, p = three
    out = tmp_path / "out"
    export(store, out, include_unreviewed=True)
    by_name = {e["file_name"].rsplit("/", 1)[1]: e["sha256"] for e in json.loads((out / "manifest.json").read_text())["images"]}
    labels = {entry.photo.sha256: entry for entry, _ in store.labelled_photos()}
    samples = load_dataset(out / "data.yaml").samples("train")
    assert len(samples) == 3
    for sample in samples:
        entry = labels[by_name[sample.image_path.name]]
        assert (sample.width, sample.height) == (entry.photo.width, entry.photo.height)
        want = sorted((f.class_name, f.box.xyxy) for f in entry.findings)
        got = sorted((o.class_name, o.box.xyxy) for o in sample.objects)
        assert [c for c, _ in got] == [c for c, _ in want]
        for (_, g), (_, w) in zip(got, want):
            assert g == pytest.approx(w, rel=1e-3, abs=1e-3 * max(entry.photo.width, entry.photo.height))


def test_coco_round_trip_gives_back_boxes_and_categories(three, tmp_path):
    store, p = three
    out = tmp_path / "out"
    counts = export(store, out, "coco", include_unreviewed=True)
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == TAX.class_names
    images = {i["id"]: i for i in coco["images"]}
    assert all((out / i["file_name"]).is_file() for i in images.values())
    got = sorted((a["image_id"], TAX.class_names[a["category_id"]], tuple(a["bbox"]), a["area"]) for a in coco["annotations"])
    want = sorted((e.photo.id, f.class_name, (f.x1, f.y1, f.x2 - f.x1, f.y2 - f.y1), f.box.area)
                  for e, _ in store.labelled_photos() for f in e.findings)
    assert got == want
    assert len(got) == counts["objects"] == 6
    assert {(i["width"], i["height"]) for i in images.values()} == {(160, 90), (73, 41), (100, 100)}


def _legacy_box(store, photo_id, box, class_name="rock toe"):
    """A reviewer-drawn finding written as the store wrote them before it checked boxes (raw SQL:
    the store itself now refuses such a box, see tests/test_hazards.py)."""
    import sqlite3
    import time

    con = sqlite3.connect(store.path, isolation_level=None)
    try:
        fid = con.execute("INSERT INTO findings(photo_id, object_type, class_name, x1, y1, x2, y2, source, created_at) "
                          "VALUES (?, 'rock_toe', ?, ?, ?, ?, ?, 'reviewer', ?)", (photo_id, class_name, *box, time.time())).lastrowid
        con.execute("INSERT INTO finding_state VALUES (?, 'rock_toe', ?, ?, ?, ?, ?, '', NULL, 'reviewed', 1, ?, 'ana')",
                    (fid, class_name, *box, time.time()))
    finally:
        con.close()
    return fid


@pytest.mark.parametrize("box, message", [
    ((200, 10, 300, 30), r"expected a box with area inside the 100x100 photo, found \(200, 10, 300, 30\) -> \(100, 10, 100, 30\)"),
    ((10, 40, 60, 40), r"found \(10, 40, 60, 40\) -> \(10, 40, 60, 40\) after clamping"),  # zero height
    ((-50, -50, -1, 20), r"found \(-50, -50, -1, 20\) -> \(0, 0, 0, 20\)"),
])
def test_box_outside_the_photo_is_refused_and_nothing_written(tmp_path, box, message):
    store = Store(tmp_path / "r.db")
    store.ensure_user("ana")
    rec, ids = _photo(store, tmp_path, "a.png", (100, 100), findings=[_f("rock_toe", "rock toe", ROCK, (1, 1, 20, 20))])
    _accept(store, ids)
    bad = _legacy_box(store, rec.id, box)
    store.confirm_photo(rec.id, "ana")
    with pytest.raises(ExportError, match=message) as info:
        export(store, tmp_path / "out")
    assert f"finding {bad}" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_stored_photo_is_refused_before_writing(three, tmp_path):
    store, p = three
    Path(p["half"].path).unlink()
    assert export(store, tmp_path / "reviewed")["photos"] == 1  # only the confirmed photo is needed
    with pytest.raises(ExportError, match=f"photo {p['half'].id}: expected its stored file at .*, found nothing"):
        export(store, tmp_path / "out", include_unreviewed=True)
    assert not (tmp_path / "out").exists()


def test_box_partly_outside_is_clamped(tmp_path):
    store = Store(tmp_path / "r.db")
    store.ensure_user("ana")
    rec, _ = _photo(store, tmp_path, "a.png", (100, 80))
    store.add_missed(rec.id, "ana", Box(-5, 70, 40, 95), "rock toe")
    store.confirm_photo(rec.id, "ana")
    export(store, tmp_path / "out")
    [sample] = load_dataset(tmp_path / "out" / "data.yaml").samples("train")
    assert sample.objects[0].box.xyxy == pytest.approx((0, 70, 40, 80), abs=1e-3)


def test_refuses_a_non_empty_folder_and_bad_options(three, tmp_path):
    store, _ = three
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(ExportError, match="expected a new or empty folder, found 1 entries"):
        export(store, tmp_path / "out")
    for bad in (-1, 101, True, 5.5):
        with pytest.raises(ValueError, match="valid_percent: expected an integer in 0..100"):
            export(store, tmp_path / "fresh", valid_percent=bad)
        with pytest.raises(ValueError, match="valid_percent"):
            ExportConfig(tmp_path / "fresh", valid_percent=bad)
    with pytest.raises(ValueError, match="format"):
        export(store, tmp_path / "fresh", "voc")
    assert not (tmp_path / "fresh").exists()


def test_empty_store_exports_an_empty_dataset(tmp_path):
    counts = export(Store(tmp_path / "r.db"), tmp_path / "out")
    assert (counts["photos"], counts["objects"], counts["splits"]) == (0, 0, {"train": 0, "valid": 0})
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == {"images": []}


def test_run_export_and_cli_options(three, tmp_path, capsys):
    from app.cli import main

    store, _ = three
    counts = run_export(ExportConfig(tmp_path / "a", tmp_path / "r.db", "coco", include_unreviewed=True, valid_percent=100))
    assert (counts["photos"], counts["splits"]) == (3, {"train": 0, "valid": 3})
    assert main(["export", str(tmp_path / "b"), "--db", str(tmp_path / "r.db"), "--include-unreviewed", "--valid-percent", "100"]) == 0
    assert len(load_dataset(tmp_path / "b" / "data.yaml").samples("valid")) == 3
    capsys.readouterr()
    assert main(["export", str(tmp_path / "c"), "--db", str(tmp_path / "r.db")]) == 0
    assert len(load_dataset(tmp_path / "c" / "data.yaml").samples("train")) == 1
    # The photos not done are not silently missing: the CLI says how many and how to include them.
    assert "2 stored photo(s) are not done yet and were left out" in capsys.readouterr().err
