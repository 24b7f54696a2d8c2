"""Stage 1 learns from reviewers: done photos' boxes → a gated detector fine-tune, versioned."""

import json
import os

import pytest
from conftest import tiny_lm_factory

from core.data import file_sha256, load_dataset
from core.errors import SlopewatchError
from core.model_registry import ModelRegistry
from core.stage1.detector import Detector, DetectorConfig, manifest
from core.taxonomy import load_taxonomy
from core.types import Box, Detection, Finding
from db.store import Store
from train.gate import DetectorGateConfig, decide_detector
from train.holdout import LeakError
from train.nightly import NightlyConfig, nightly
from train.nightly_detector import BoxPhoto, write_yolo

TAX = load_taxonomy()
FALSE_BOX = Box(1, 1, 30, 30)


def _finding(box, type_, conf=0.8):
    cls = TAX.classes_for_type(type_)[0].name
    probs = {c.name: 1.0 / len(TAX.classes_for_type(type_)) for c in TAX.classes_for_type(type_)}
    probs[cls] += 1e-6
    total = sum(probs.values())
    return Finding(Detection(box, type_, conf), cls, {k: v / total for k, v in probs.items()}, "r", "fake", "0")


@pytest.fixture
def world(tmp_path, samples_yaml, monkeypatch):
    """A data dir of its own (its detector registry is what a Detector loads by default), and sample photos inspected by a "detector" that misses each photo's first object and adds one
    false box. Photo 0: fixed and marked done; photo 1: fixed but not done; the rest untouched."""
    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "review.db", TAX)
    store.ensure_user("ana")
    samples = load_dataset(samples_yaml, TAX).samples("valid")
    truth = {}
    for k, s in enumerate(samples[:4]):
        photo, _ = store.add_photo(file_sha256(s.image_path), str(s.image_path), s.width, s.height, s.image_path.name, "ana")
        shown = [_finding(o.box, o.type) for o in s.objects[1:]] + [_finding(FALSE_BOX, "vegetation", 0.3)]
        ids = store.add_run(photo.id, shown, "detector:shipped", "fake:0", 0.1)
        truth[photo.sha256] = sorted((o.type, o.box.xyxy) for o in s.objects)
        if k > 1:
            continue
        for fid, f in zip(ids, shown):
            if f.detection.box == FALSE_BOX:
                store.correct(fid, 0, "ana", "delete")
            else:
                store.correct(fid, 0, "ana", "accept")
        store.add_missed(photo.id, "ana", s.objects[0].box, s.objects[0].class_name)
        if k == 0:
            store.confirm_photo(photo.id, "ana")
    return store, truth, samples, tmp_path


def test_only_done_photos_teach_the_detector_and_with_the_reviewers_boxes(world):
    store, truth, samples, tmp = world
    photos = [BoxPhoto.from_reviewed(p) for p in store.done_photos()]
    assert len(photos) == 1  # the fixed-but-not-done photo and the untouched ones stay out
    p = photos[0]
    assert sorted((t, b.xyxy) for t, b in p.boxes) == truth[p.key]  # the miss added, the false box gone
    data_yaml = write_yolo({"train": photos}, tmp / "ds", TAX)
    labels = next((tmp / "ds" / "train" / "labels").glob("*.txt")).read_text().splitlines()
    assert len(labels) == len(truth[p.key]) and all(line.split()[0] in {"0", "1", "2", "3"} for line in labels)
    # What ultralytics will read: the image link resolves to the stored photo.
    assert os.path.realpath(next((tmp / "ds" / "train" / "images").iterdir())) == os.path.realpath(p.image_path)
    assert "train: train/images" in data_yaml.read_text()


def _frozen_set(tmp, samples, stems):
    """A 9-class YOLO set of some sample photos (links + label copies), as a frozen split."""
    for sub in ("images", "labels"):
        (tmp / "frozen" / "valid" / sub).mkdir(parents=True, exist_ok=True)
    for s in samples:
        if s.stem in stems:
            os.symlink(s.image_path, tmp / "frozen" / "valid" / "images" / s.image_path.name)
            label = s.image_path.parent.parent / "labels" / f"{s.stem}.txt"
            (tmp / "frozen" / "valid" / "labels" / label.name).write_text(label.read_text())
    (tmp / "frozen" / "data.yaml").write_text("valid: valid/images\nnames: " + str(TAX.class_names) + "\n")
    return tmp / "frozen" / "data.yaml"


def _cfg(tmp, frozen, **kw):
    return NightlyConfig(db=tmp / "review.db", stages="detector", holdout_percent=0,
                         detector_frozen_yaml=str(frozen), detector_epochs=1, detector_batch=2, detector_workers=0, **kw)


def test_nightly_fine_tunes_the_detector_gates_and_promotes(world, monkeypatch):
    store, truth, samples, tmp = world
    frozen = _frozen_set(tmp, samples, {s.stem for s in samples[4:]})
    import train.gate

    monkeypatch.setattr(train.gate, "decide_detector", lambda cand, cur, cfg: (True, ["forced by the test"]))
    result = nightly(_cfg(tmp, frozen))
    det = result["detector"]
    assert "decision" not in result  # stage 2 was not asked for
    assert det["decision"] == "promoted", det
    assert det["counts"]["train_photos"] == 1 and det["counts"]["reviewed_train_photos"] == 1
    assert det["counts"]["frozen_photos"] == 2 and det["counts"]["frozen_boxes"] > 0
    for m in (det["current_metrics"], det["candidate_metrics"]):
        assert 0 <= m["map50"] <= 1 and set(m["per_class"]) == set(TAX.type_names)
    reg = ModelRegistry(stage="detector")
    assert reg.current() == det["candidate"]
    assert [v["version"] for v in reg.versions()][0] == det["current"] == "shipped-" + manifest()["detector"]["sha256"][:12]
    promoted = Detector(DetectorConfig(device="cpu"), TAX)  # what serve, inspect and predict load by default
    assert promoted.version == det["candidate"]
    assert file_sha256(promoted.weights) != manifest()["detector"]["sha256"]  # the fine-tuned weights, not a copy
    runs = store.query("SELECT stage, decision, candidate_version FROM training_runs")
    assert runs == [{"stage": "detector", "decision": "promoted", "candidate_version": det["candidate"]}]
    stored = json.loads(store.query("SELECT counts_json FROM training_runs")[0]["counts_json"])
    # Every correction since the shipped detector's cut-off, on photos done or not (two fixed photos).
    assert stored["correction_kinds"] == det["correction_kinds"] == {"accept": stored["correction_kinds"]["accept"],
                                                                     "detector_false_positive": 2, "detector_miss": 2}
    # Nothing new since the promotion: the next night does nothing.
    assert nightly(_cfg(tmp, frozen))["detector"]["decision"] == "nothing-new"
    assert reg.rollback() == det["current"]
    assert Detector(DetectorConfig(device="cpu"), TAX).version == det["current"]


def test_the_real_gate_records_its_reasons_and_a_refusal_keeps_the_current_detector(world):
    store, truth, samples, tmp = world
    frozen = _frozen_set(tmp, samples, {s.stem for s in samples[4:]})
    det = nightly(_cfg(tmp, frozen))["detector"]
    assert det["decision"] in ("promoted", "refused") and det["reasons"][0].startswith("mAP50 ")
    reg = ModelRegistry(stage="detector")
    assert reg.current() == (det["candidate"] if det["decision"] == "promoted" else det["current"])


def test_a_frozen_photo_in_the_training_data_aborts(world):
    store, truth, samples, tmp = world
    done_stem = next(s.stem for s in samples if file_sha256(s.image_path) in {p.photo.sha256 for p in store.done_photos()})
    with pytest.raises(LeakError, match="frozen-evaluation photo"):
        nightly(_cfg(tmp, _frozen_set(tmp, samples, {done_stem})))


def test_box_corrections_on_unfinished_photos_say_why_nothing_trains(tmp_path, samples_yaml):
    store = Store(tmp_path / "review.db", TAX)
    store.ensure_user("ana")
    s = load_dataset(samples_yaml, TAX).samples("valid")[0]
    photo, _ = store.add_photo(file_sha256(s.image_path), str(s.image_path), s.width, s.height, s.image_path.name, "ana")
    fid = store.add_run(photo.id, [_finding(FALSE_BOX, "vegetation")], "detector:shipped", "fake:0", 0.1)[0]
    store.correct(fid, 0, "ana", "delete")
    det = nightly(NightlyConfig(db=tmp_path / "review.db", stages="detector", detector_registry=tmp_path / "d"))["detector"]
    assert det["decision"] == "nothing-new" and "1 box or label correction(s) wait on photos not marked done" in det["message"]


def _scores(map50, map50_95, **ap50):
    per = {t: {"ap50": 0.8, "support": 20} for t in TAX.type_names}
    for t, (ap, n) in ap50.items():
        per[t] = {"ap50": ap, "support": n}
    return {"map50": map50, "map50_95": map50_95, "per_class": per}


@pytest.mark.parametrize("candidate, promote, why", [
    (_scores(0.70, 0.40), True, None),
    (_scores(0.65, 0.40), True, None),  # equal mAP50: not worse
    (_scores(0.649, 0.40), False, "mAP50 dropped"),
    (_scores(0.66, 0.385), False, "mAP50-95 dropped"),
    (_scores(0.66, 0.395), True, None),  # within the mAP50-95 tolerance
    (_scores(0.70, 0.40, vegetation=(0.55, 20)), False, "vegetation AP50"),  # 0.25 of 20 objects: a real loss
    (_scores(0.70, 0.40, vegetation=(0.55, 8)), True, None),  # 0.25 of 8 = 2 objects: noise
    (_scores(0.70, 0.40, vegetation=(0.0, 8)), False, "vegetation AP50"),  # a type no longer found always vetoes
])
def test_detector_gate(candidate, promote, why):
    current = _scores(0.65, 0.40)
    if candidate["per_class"]["vegetation"]["support"] != 20:
        current["per_class"]["vegetation"]["support"] = candidate["per_class"]["vegetation"]["support"]
    ok, reasons = decide_detector(candidate, current, DetectorGateConfig())
    assert ok is promote
    assert why is None or any(why in r for r in reasons)


B = Box(10, 10, 50, 50)


@pytest.mark.parametrize("detected, truth, expected", [
    ([("rock_toe", B)], [("rock_toe", B)], ({0: 0}, [], [])),
    ([("rock_toe", B)], [("toe_drain", B)], ({}, [0], [0])),  # right place, wrong type: delete and draw
    ([("rock_toe", Box(30, 30, 70, 70))], [("rock_toe", B)], ({}, [0], [0])),  # IoU 0.14: not the same object
    ([("rock_toe", Box(12, 12, 52, 52))], [("rock_toe", B)], ({0: 0}, [], [])),  # a small shift is a move
    # Two detections of one object: the better one is kept, the other is a false positive.
    ([("rock_toe", Box(15, 15, 55, 55)), ("rock_toe", Box(11, 11, 51, 51))], [("rock_toe", B)], ({1: 0}, [0], [])),
    ([], [("vegetation", B)], ({}, [], [0])),
])
def test_simulated_reviewer_matches_boxes_one_to_one(detected, truth, expected):
    from core.stage1.calibration import match_boxes

    assert match_boxes(detected, truth) == expected


def test_simulated_box_reviews_end_to_end(tmp_path, samples_yaml, monkeypatch):
    from train.holdout import half
    from train.simulate import SimulateConfig, simulate

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    result = simulate(SimulateConfig(data_yaml=samples_yaml, work=tmp_path / "sim", epochs=1, replay=False, stage="detector"))
    sim = result["simulation"]
    samples = load_dataset(samples_yaml, TAX).samples("valid")
    n_a = sum(half(file_sha256(s.image_path)) == "A" for s in samples)
    assert sim["photos"] == n_a and sim["judge_photos"] == len(samples) - n_a > 0
    # Every true object of half A ends up as a live box: kept (accepted or moved) or drawn.
    n_true = sum(len(s.objects) for s in samples if half(file_sha256(s.image_path)) == "A")
    assert sim["accepted"] + sim["moved"] + sim["drawn"] == n_true
    assert sim["correction_kinds"].get("detector_miss", 0) == sim["drawn"] > 0
    assert result["decision"] in ("promoted", "refused") and result["counts"]["train_photos"] == n_a
    assert result["counts"]["frozen_photos"] == len(samples) - n_a


def test_a_type_the_candidate_no_longer_finds_vetoes_even_on_few_objects():
    current, candidate = _scores(0.65, 0.40, vegetation=(0.5, 3)), _scores(0.70, 0.40, vegetation=(0.0, 3))
    # 0.5 AP50 on 3 objects is 1.5 objects' worth, under the noise margin: only the collapse rule can veto.
    assert decide_detector(candidate, current)[0] is False
    assert decide_detector(_scores(0.70, 0.40, vegetation=(0.05, 3)), current)[0] is True


def test_done_photos_all_held_out_say_so(world):
    store, truth, samples, tmp = world
    det = nightly(NightlyConfig(db=tmp / "review.db", stages="detector", holdout_percent=100))["detector"]
    assert det["decision"] == "nothing-complete" and "held-out evaluation slice" in det["message"]


def test_a_stage_2_failure_does_not_cost_the_detector_its_night(world):
    store, truth, samples, tmp = world
    frozen = _frozen_set(tmp, samples, {s.stem for s in samples[4:]})
    # Stage 2 has no frozen set here (no --frozen-yaml, nothing held out): it fails, after the detector ran.
    cfg = NightlyConfig(db=tmp / "review.db", stages="classifier,detector", holdout_percent=0, registry=tmp / "cls",
                        detector_frozen_yaml=str(frozen), detector_epochs=1, detector_batch=2, detector_workers=0)
    with pytest.raises(SlopewatchError, match="stage 2: expected a frozen evaluation set.*the detector stage ran: (promoted|refused)"):
        nightly(cfg, tiny_lm_factory())
    assert [r["stage"] for r in store.query("SELECT stage FROM training_runs")] == ["detector"]
