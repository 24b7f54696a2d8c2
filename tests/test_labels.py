"""A label-review pass: a dataset's train labels imported as pending findings into a real SQLite
file, on real photos; corrections to them indict the dataset; the detector's boxes no label
covers are added as the model's suggestions; the likely-right band leaves labels alone."""

import re
import shutil
from dataclasses import replace

import pytest
from conftest import db_rows

from core.data import file_sha256, load_dataset
from core.errors import ImageError, SlopewatchError
from core.types import Box, Detection, Finding


@pytest.fixture
def train_set(samples_yaml, tmp_path):
    """Four real photos with their real labels as a train split (the last one's labels emptied:
    the photo shows objects nobody labelled), one as a valid split, which is never imported."""
    root = tmp_path / "reviewed-set"
    photos = sorted((samples_yaml.parent / "valid" / "images").glob("*.jpg"))
    for split, chosen in (("train", photos[:4]), ("valid", photos[4:5])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for p in chosen:
            shutil.copy(p, root / split / "images" / p.name)
            label = samples_yaml.parent / "valid" / "labels" / f"{p.stem}.txt"
            (root / split / "labels" / label.name).write_text(label.read_text())
    (root / "train" / "labels" / f"{photos[3].stem}.txt").write_text("")
    (root / "data.yaml").write_text(samples_yaml.read_text().replace("valid: valid/images", "train: train/images\nvalid: valid/images"))
    return root / "data.yaml"


def test_train_labels_become_pending_findings_and_a_rerun_adds_nothing(train_set, tmp_path):
    from app.usecases.labels import import_labels
    from db.store import Store

    db = tmp_path / "review.db"
    store = Store(db)
    report = import_labels(store, train_set, "ana")
    samples = load_dataset(train_set, store.taxonomy).samples("train")
    assert (report.imported, report.skipped, report.objects, report.failed) == (4, 0, sum(len(s.objects) for s in samples), [])
    assert report.objects > 10
    for s in samples:
        (pid,) = [r[0] for r in db_rows(db, "SELECT id FROM photos WHERE original_name = ?", s.image_path.name)]
        stored = store.photo_findings(pid)
        assert [(f.state.object_type, f.state.class_name) for f in stored] == [(o.type, o.class_name) for o in s.objects]
        for f, o in zip(stored, s.objects):
            assert f.state.box.iou(o.box) > 0.99 and f.state.status.value == "pending" and f.from_labels
            assert f.model_version == "labels:reviewed-set/train"
    # The valid split is the nightly job's frozen evaluation: never imported.
    valid = load_dataset(train_set, store.taxonomy).samples("valid")[0].image_path.name
    assert db_rows(db, "SELECT count(*) FROM photos WHERE original_name = ?", valid) == [(0,)]

    again = import_labels(store, train_set, "ana")  # resumable: photos stored before are left as they are
    assert (again.imported, again.skipped) == (0, 4)
    assert db_rows(db, "SELECT count(*) FROM findings") == [(report.objects,)]


def test_a_corrected_label_indicts_the_dataset_not_a_model(train_set, tmp_path):
    from app.usecases.labels import import_labels
    from db.store import Store

    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana")
    f = next(f for f in store.photo_findings(1) if len(f.probabilities) > 1)
    store.correct(f.finding_id, 0, "ana", "delete")
    assert [c.kind for c in store.history(f.finding_id)] == ["label"]
    assert store.correction_kinds()["by_model"] == {"labels:reviewed-set/train": {"label": 1}}
    # A box drawn where no detector ran (labels only) is the labels' miss, not a detector's.
    drawn = store.add_missed(1, "ana", Box(2, 2, 40, 40), "vegetation")
    assert [c.kind for c in store.history(drawn.finding_id)] == ["label"]
    assert store.correction_kinds()["by_model"] == {"labels:reviewed-set/train": {"label": 2}}
    store.add_run(2, [], "detector:d1", "probe:p1", 0.1)  # --suggest ran there and found nothing new
    drawn = store.add_missed(2, "ana", Box(2, 2, 40, 40), "vegetation")
    assert [c.kind for c in store.history(drawn.finding_id)] == ["detector_miss"]
    assert store.correction_kinds()["by_model"]["detector:d1"] == {"detector_miss": 1}


def test_a_photo_with_a_degenerate_label_is_listed_and_the_rest_imported(train_set, tmp_path):
    from app.usecases.labels import import_labels
    from db.store import Store

    label = next(train_set.parent.glob("train/labels/*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.0 0.1\n")  # no width: no box to review
    store = Store(tmp_path / "review.db")
    report = import_labels(store, train_set, "ana")
    assert report.imported == 3 and [n for n, _ in report.failed] == [f"{label.stem}.jpg"]
    assert "label" in report.failed[0][1] and db_rows(tmp_path / "review.db", "SELECT count(*) FROM photos") == [(3,)]
    assert import_labels(store, train_set, "ana").failed == report.failed  # a rerun says it again, and stores nothing half


def test_a_dataset_labelled_by_type_only_or_without_train_is_refused(tmp_path):
    from conftest import make_dataset

    from app.usecases.labels import import_labels
    from db.store import Store

    types_only = make_dataset(tmp_path / "objects", ["rock_toe", "slope_drain", "toe_drain", "vegetation"], {"a": ["0 0.5 0.5 0.2 0.2"]})
    with pytest.raises(SlopewatchError, match="labelled by type only"):
        import_labels(Store(tmp_path / "review.db"), types_only, "ana")
    valid_only = make_dataset(tmp_path / "cond", ["rock toe", "rock toe damaged"], {"a": ["0 0.5 0.5 0.2 0.2"]}, split="valid")
    with pytest.raises(SlopewatchError, match="expected a 'train' split"):
        import_labels(Store(tmp_path / "review.db"), valid_only, "ana")


def test_labels_cannot_be_placed_on_a_photo_of_another_shape(train_set):
    from app.usecases.labels import label_findings
    from core.taxonomy import load_taxonomy

    tax = load_taxonomy()
    sample = next(s for s in load_dataset(train_set, tax).samples("train") if s.objects)
    half = label_findings(sample, (sample.width // 2, sample.height // 2), tax, "x/train")  # stored shrunk: boxes follow
    assert half[0].detection.box.x2 == pytest.approx(sample.objects[0].box.x2 * (sample.width // 2) / sample.width)
    with pytest.raises(ImageError, match="cannot be placed"):
        label_findings(sample, (sample.width, sample.height // 2), tax, "x/train")


def _finding(box, cls="rock toe", backend="probe"):
    return Finding(Detection(box, "rock_toe", 0.6), cls, {"rock toe": 0.7, "rock toe damaged": 0.3}, "", backend, "v")


def test_a_suggestion_is_a_detection_no_label_covers_whatever_its_type():
    from app.usecases.labels import unlabelled

    label = _finding(Box(0, 0, 100, 100), backend="labels")
    same = Detection(Box(5, 5, 100, 100), "rock_toe", 0.6)  # IoU 0.90: the labelled object
    other_type = Detection(Box(0, 0, 90, 100), "slope_drain", 0.5)  # IoU 0.9, another type: one object still
    elsewhere = Detection(Box(150, 150, 200, 200), "rock_toe", 0.6)
    half_over = Detection(Box(50, 0, 150, 100), "rock_toe", 0.6)  # IoU 0.33
    assert unlabelled([same, other_type, elsewhere, half_over], [label]) == [elsewhere, half_over]
    assert unlabelled([elsewhere], []) == [elsewhere]


def test_suggestions_are_the_models_findings_in_a_run_of_their_own(train_set, probe_pipeline, tmp_path):
    from app.usecases.labels import import_labels
    from db.store import Store

    db = tmp_path / "review.db"
    store = Store(db)
    report = import_labels(store, train_set, "ana", pipeline=probe_pipeline)
    assert report.suggested > 0
    unlabelled_photo = sorted(train_set.parent.glob("train/images/*.jpg"))[3].name  # its labels were emptied
    (pid,) = [r[0] for r in db_rows(db, "SELECT id FROM photos WHERE original_name = ?", unlabelled_photo)]
    _, result = probe_pipeline.run(store.photo(pid).path)
    assert len(store.photo_findings(pid)) == len(result.findings) > 0  # nothing labelled: every detection is a suggestion
    for photo_id in {r[0] for r in db_rows(db, "SELECT id FROM photos")}:
        findings = store.photo_findings(photo_id)
        labels = [f for f in findings if f.from_labels]
        for s in (f for f in findings if not f.from_labels):
            assert s.model_version.split(":")[0] in ("probe", "passthrough")  # vegetation has one class: passed through
            assert all(s.state.box.iou(label.state.box) < 0.5 for label in labels)
    runs = db_rows(db, "SELECT detector_version, count(*) FROM inference_runs GROUP BY detector_version ORDER BY 1")
    assert runs == [(runs[0][0], 4), ("labels:reviewed-set/train", 4)] and runs[0][0].startswith("detector:")
    # A suggestion's rationale numbers the photo's objects as stored (labels first), so every
    # "<type> #k" it cites is object k of the stored photo with that type and that relation.
    from core.stage2.rationale import unfaithful_claims
    from core.stage2.spatial import spatial_facts

    cited = 0
    for photo_id in {r[0] for r in db_rows(db, "SELECT id FROM photos")}:
        photo, findings = store.photo(photo_id), store.photo_findings(photo_id)
        dets = [Detection(f.state.box, f.state.object_type, 1.0) for f in findings]
        facts = spatial_facts([d.box for d in dets], photo.width, photo.height)
        for f in (f for f in findings if not f.from_labels):
            cited += any(int(k) != f.index for k in re.findall(r"#(\d+)", f.model_rationale))
            problems = unfaithful_claims(f.model_rationale, f.index, dets, facts, store.taxonomy, f.probabilities)
            assert [p for p in problems if "similar objects" not in p] == [], f.model_rationale  # the neighbours: not stored
    assert cited > 0  # some cite other objects of the photo


def test_the_likely_right_band_never_holds_an_imported_label(train_set, probe_pipeline, tmp_path):
    """A label is certain by construction (probability 1), not by a measured band: bulk-accepting
    it as "likely right" would skip the look the import is for."""
    from app.models import ModelHost
    from app.review_handlers import ReviewHandlers
    from app.usecases.labels import import_labels
    from db.store import Store

    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana")
    h = ReviewHandlers(store, ModelHost.ready(probe_pipeline))
    findings = [f for pid in range(1, 5) for f in store.photo_findings(pid)]
    assert h.likely_right_threshold() is not None
    assert h.likely_right(findings) == set()
    # The same numbers from a model are in the band: only their source keeps labels out.
    as_model = [replace(f, model_version="probe:x") for f in findings]
    assert h.likely_right(as_model)


def test_the_review_tab_tells_labels_from_the_models_suggestions(train_set, probe_pipeline, tmp_path):
    from app.review_handlers import ReviewHandlers
    from app.usecases.labels import import_labels
    from db.store import Store

    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana", pipeline=probe_pipeline)
    pid = next(p for p in range(1, 5) if any(not f.from_labels for f in store.photo_findings(p))
               and any(f.from_labels for f in store.photo_findings(p)))
    findings = store.photo_findings(pid)
    n_labels = sum(f.from_labels for f in findings)
    canvas, header, select, table, *_ = ReviewHandlers(store).view(pid)
    assert f"Label review: {n_labels} imported label(s) (· label), {len(findings) - n_labels} box(es)" in header
    marked = {fid: text.endswith("· label") for text, fid in select["choices"]}
    assert marked == {f.finding_id: f.from_labels for f in findings}
    from app.usecases.canvas import parse_label

    assert {parse_label(b["label"])[0]: b["label"].endswith("· label") for b in canvas["boxes"]} == {
        f.index: f.from_labels for f in findings}  # (the canvas lists boxes in its click order)
    label = next(f for f in findings if f.from_labels)
    assert ReviewHandlers(store).panel(pid, label.finding_id)[0].split("\n\n")[1].startswith("Imported label: ")
    # The overlay (Inspect, when the photo is uploaded again) gives a label no "100%" score.
    from app.usecases.inspect import overlay_items

    scored = ["%" in item.text() for item in overlay_items(store, findings)]
    assert scored == [not f.from_labels for f in findings]
    # Nor does the object table (confidence, detector), and the Queue names a label-review photo
    # and leaves the labels' 1.0 out of its lowest margin and detector score.
    assert [(row[5] is None, row[6] is None) for row in table] == [(f.from_labels, f.from_labels) for f in findings]
    from app.handlers import Handlers

    row = next(r for r in Handlers(None, store).queue_rows("", "", "", "", "") if r[0] == pid)
    assert row[1].endswith(f" · label review ({n_labels} label(s))")
    pending = [f for f in findings if not f.from_labels]
    assert row[5] == round(min(f.margin for f in pending), 3) and row[6] == round(min(f.detector_confidence for f in pending), 3)
    plain = Store(tmp_path / "labels-only.db")  # no suggestions: nothing any model scored
    import_labels(plain, train_set, "ana")
    assert all(r[5] is None and r[6] is None and "· label review" in r[1] for r in Handlers(None, plain).queue_rows("", "", "", "", ""))


def test_a_reviewed_training_photo_is_cited_once_as_reviewed(train_set, tmp_path, monkeypatch):
    """A label-review photo is in the shipped index (the train split) and, once reviewed, among
    the reviewed objects too: the same object counted twice among "the 5 most similar"."""
    import core.stage2.evidence as evidence
    from app.models import evidence_index
    from app.usecases.labels import import_labels
    from core.stage2.evidence import index_from_photos
    from core.stage2.labeled import labeled_photos
    from db.store import Store

    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana")
    shipped = index_from_photos(((p, f"train/{p.key[:8]}") for p in labeled_photos(load_dataset(train_set, store.taxonomy), "train")),
                                store.taxonomy)
    monkeypatch.setattr(evidence, "load_default_index", lambda: shipped)
    photo = store.photo(1)
    assert photo.sha256 in shipped.photos
    store.accept_pending(1, "ana")
    index = evidence_index(store)
    mine = [s for s, p in zip(index.sources, index.photos) if p == photo.sha256]
    assert mine and all(s.startswith("review:") for s in mine)
    assert len(mine) == shipped.photos.count(photo.sha256)  # the same objects, once
    assert len(index) == len(shipped)  # the other photos' labels are kept


class _Captured(Exception):
    pass


def test_a_done_label_review_photo_replaces_its_dataset_labels_in_the_detectors_training(train_set, tmp_path, monkeypatch):
    """The pass is for the detector: what reviewers left on a done photo is what it trains on, in
    place of the dataset's labels of that photo; the other train photos are replayed as labelled."""
    import train.nightly_detector as nd
    from app.usecases.labels import import_labels
    from db.store import Store
    from train.nightly import NightlyConfig, nightly

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))  # a detector registry of its own
    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana")
    findings = store.photo_findings(1)
    store.correct(findings[0].finding_id, 0, "ana", "delete")  # a wrong label
    missed = Box(2, 2, 40, 40)
    store.add_missed(1, "ana", missed, "vegetation")  # an object nobody labelled
    store.accept_pending(1, "ana")
    store.confirm_photo(1, "ana")
    written = {}

    def capture(weights, det_yaml, work, cfg):
        root = det_yaml.parent / "train"
        for image in (root / "images").iterdir():
            written.setdefault(image.name.split("-")[0], []).append((root / "labels" / f"{image.stem}.txt").read_text().splitlines())
        raise _Captured()

    monkeypatch.setattr(nd, "finetune", capture)
    cfg = NightlyConfig(db=tmp_path / "review.db", stages="detector", holdout_percent=0, detector_train_yaml=str(train_set),
                        detector_frozen_yaml=str(train_set), detector_epochs=1, detector_batch=2, detector_workers=0)
    with pytest.raises(_Captured):
        nightly(cfg)
    key = store.photo(1).sha256[:16]
    assert len(written) == 4 and len(written[key]) == cfg.detector_reviewed_repeat  # every train photo; the reviewed one repeated
    reviewed = written[key][0]
    assert len(reviewed) == len(findings)  # one label gone, one box drawn
    w, h = store.photo(1).width, store.photo(1).height
    assert missed.yolo_line(store.taxonomy.type_id("vegetation"), w, h) in reviewed
    assert findings[0].state.box.yolo_line(store.taxonomy.type_id(findings[0].state.object_type), w, h) not in reviewed


def _split_percent(keys):
    """``(percent, held out, kept)``: a hold-out percentage that holds one of two photos out."""
    from train.holdout import held_out

    for held, kept in (keys, keys[::-1]):
        for p in range(1, 100):
            if held_out(held, p) and not held_out(kept, p):
                return p, held, kept
    pytest.skip("the two photos' hashes fall in the same percentile")


@pytest.mark.parametrize("stage", ["detector", "classifier"])
def test_a_label_review_photo_trains_and_never_judges(stage, train_set, tmp_path, monkeypatch):
    """A reviewed photo of the replayed train split that its hash would hold out: the current
    model learned it, so it trains (under its reviewed labels) instead of judging the gate or
    fitting the calibration on a memorised photo. (It used to be held out and replayed from the
    dataset too, so the leak guard stopped every night.)"""
    from conftest import tiny_lm_factory

    import core.evaluation.classifier as scoring
    import train.nightly_detector as nd
    from app.usecases.labels import import_labels
    from db.store import Store
    from train.nightly import NightlyConfig, nightly

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "review.db")
    if stage == "classifier":  # a current model of the tiny LM's shape, from before the reviews
        from core.model_registry import ModelRegistry
        from core.stage2.backends.adapter import AdapterConfig, AdapterVLM

        reg = ModelRegistry(tmp_path / "registry")
        AdapterVLM(store.taxonomy, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=0),
                   lm_and_tokenizer=tiny_lm_factory()()).save(tmp_path / "v0")
        reg.add(tmp_path / "v0", "v0")
        reg.promote("v0")
    import_labels(store, train_set, "ana")
    for pid in (1, 2):
        store.accept_pending(pid, "ana")
        store.confirm_photo(pid, "ana")
    pct, held, kept = _split_percent([store.photo(1).sha256, store.photo(2).sha256])
    seen = {}

    def capture_detector(weights, det_yaml, work, cfg):
        seen["train"] = [i.name.split("-")[0] for i in (det_yaml.parent / "train" / "images").iterdir()]
        raise _Captured()

    def capture_scoring(classifier, photos, *args, **kw):
        seen["frozen"] = [p.key for p in photos]
        raise _Captured()

    monkeypatch.setattr(nd, "finetune", capture_detector)
    monkeypatch.setattr(scoring, "score_photos", capture_scoring)
    cfg = NightlyConfig(db=tmp_path / "review.db", registry=tmp_path / "registry", stages=stage, holdout_percent=pct,
                        calibration_percent=pct,
                        train_yaml=str(train_set), frozen_yaml=str(train_set), detector_epochs=1, detector_batch=2, detector_workers=0)
    with pytest.raises(_Captured):
        nightly(cfg, tiny_lm_factory())
    valid = {file_sha256(s.image_path) for s in load_dataset(train_set).samples("valid")}
    if stage == "detector":  # both reviewed photos, repeated; the other two as the dataset labels them
        assert seen["train"].count(held[:16]) == seen["train"].count(kept[:16]) == cfg.detector_reviewed_repeat
        assert len(set(seen["train"])) == 4
    else:
        assert set(seen["frozen"]) == valid  # the dataset's valid split only


def test_one_object_reviewed_keeps_the_photos_other_labels_in_stage_2_training(train_set, probe_pipeline, tmp_path):
    """A reviewed photo replaces the dataset's copy of it in the nightly job, so relabelling one
    label of a label-review photo used to drop its other labels (still pending) from stage 2's
    training that night. Pending imported labels keep their class; the model's suggestions do not."""
    from app.usecases.labels import import_labels
    from core.stage2.labeled import reviewed_photos
    from db.store import Store

    store = Store(tmp_path / "review.db")
    import_labels(store, train_set, "ana", pipeline=probe_pipeline)
    pid = next(p for p in store.photo_ids() if any(not f.from_labels for f in store.photo_findings(p))
               and sum(f.from_labels for f in store.photo_findings(p)) >= 2)
    findings = store.photo_findings(pid)
    first = next(f for f in findings if f.from_labels and len(f.probabilities) > 1)
    other = next(c.name for c in store.taxonomy.classes_for_type(first.state.object_type) if c.name != first.state.class_name)
    store.correct(first.finding_id, 0, "ana", "relabel", class_name=other)
    (photo,) = [p for p in reviewed_photos(store) if p.key == store.photo(pid).sha256]
    expected = [other if f.finding_id == first.finding_id else f.state.class_name if f.from_labels else None for f in findings]
    assert list(photo.classes) == expected and expected.count(None) >= 1  # suggestions wait for a reviewer
    # Evidence cites as "reviewed" only what a reviewer decided, and so does a photo that judges or
    # calibrates a model in the nightly job (held out when it is not in the replayed split).
    (decided,) = [p for p in reviewed_photos(store, pending_labels=False) if p.key == photo.key]
    assert [c for c in decided.classes if c is not None] == [other]
    assert photo.decided().classes == decided.classes
