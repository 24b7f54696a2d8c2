"""Ingesting a whole flight: folders and zips, resumable by content hash, bad files listed."""

import zipfile

import pytest

from app.usecases.flight import ingest_flight, photo_sources
from core.paths import samples_dir
from core.types import Box, Detection
from db.store import Store

PHOTOS = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))


class FakeDetector:
    """Stage 1 stand-in: one rock toe per photo (the flight logic is under test, not the models;
    stage 2 is the type-majority baseline)."""

    weights = "fake.pt"
    version = "fake-1"

    def predict(self, image):
        return [Detection(Box(1, 1, 20, 20), "rock_toe", 0.9)]


@pytest.fixture
def pipeline():
    from core.pipeline import Pipeline
    from core.stage2.backends.type_majority import TypeMajority
    from core.stage2.classifier import ConditionClassifier
    from core.taxonomy import load_taxonomy

    detector, tax = FakeDetector(), load_taxonomy()
    detector.taxonomy = tax
    return Pipeline(detector, ConditionClassifier(TypeMajority(tax, {"rock toe": 3}), tax))


def test_folder_and_zip_resumable_with_bad_files_listed(pipeline, tmp_path):
    folder = tmp_path / "flight"
    folder.mkdir()
    for p in PHOTOS[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "DJI_0001.SRT").write_text("a drone's flight log, beside its photos")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in PHOTOS[3:5]:
            z.write(p, f"sub/{p.name}")
        z.writestr("../../escape.jpg", PHOTOS[0].read_bytes())  # a member that tries to leave: read, never extracted
        z.writestr("readme.txt", "ignored")
    store = Store(tmp_path / "review.db")
    seen = []

    def progress(items, total, **kw):
        seen.append(total)
        return items

    report = ingest_flight(pipeline, store, [folder, archive, tmp_path / "missing.jpg"], "ana", progress)
    assert seen == [8]  # 4 in the folder, 3 image members, 1 missing path
    assert report.inspected == 5 and report.skipped == 1 and report.objects == 5  # escape.jpg has photo 0's bytes: stored once
    assert sorted(n for n, _ in report.failed) == ["flight/notes.jpg", "missing.jpg"]
    assert all(why.startswith("expected") for _, why in report.failed)  # the name is said once, not repeated in the reason
    assert report.left_out == ["flight/DJI_0001.SRT", "more.zip:readme.txt"]  # not photos: named, not dropped without a word
    assert not (tmp_path.parent / "escape.jpg").exists()
    assert [p.original_name for p in store.photos()] == [p.name for p in PHOTOS[:3]] + [p.name for p in PHOTOS[3:5]]
    again = ingest_flight(pipeline, store, [folder, archive], "ana")  # a second run resumes: nothing new
    assert again.inspected == 0 and again.skipped == 6 and len(store.photos()) == 5
    assert again.photos_per_s == 0 and report.photos_per_s == pytest.approx(5 / report.seconds)  # skipped photos are no speed


def test_a_photo_without_detections_is_not_inspected_again(tmp_path):
    from core.pipeline import Pipeline

    class Nothing(FakeDetector):
        def predict(self, image):
            return []

    from core.taxonomy import load_taxonomy

    detector = Nothing()
    detector.taxonomy = load_taxonomy()
    store = Store(tmp_path / "review.db")
    first = ingest_flight(Pipeline(detector), store, [PHOTOS[0]], "ana")
    again = ingest_flight(Pipeline(detector), store, [PHOTOS[0]], "ana")
    assert (first.inspected, again.inspected, again.skipped) == (1, 0, 1)


def test_sources_of_a_bad_zip_are_reported(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 nothing")
    [(name, source)] = list(photo_sources([bad]))
    assert name == "broken.zip" and "expected a zip archive" in str(source)


def test_a_zip_member_larger_than_an_upload_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import zipfile

    import app.usecases.flight as flight

    archive = tmp_path / "f.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.jpg", b"\0" * 5000)  # compresses to a few bytes: only the unpacked size tells
        z.writestr("small.jpg", b"\0" * 10)
    monkeypatch.setattr(flight, "MAX_UPLOAD_BYTES", 1000)
    out = dict(flight.photo_sources([archive]))
    assert isinstance(out["f.zip:big.jpg"], flight.ImageError) and "unpacked" in str(out["f.zip:big.jpg"])
    assert out["f.zip:small.jpg"] == b"\0" * 10
