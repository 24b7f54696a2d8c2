"""The shipped stage-1 detector on real photos, and the pickle-safety rules around checkpoints."""

import json
import shutil

import pytest
from PIL import Image

from core.errors import WeightsError
from core.evaluation.detector import DetectorEvalConfig, evaluate_detector
from core.paths import samples_dir
from core.pipeline import Pipeline
from core.stage1.detector import Detector, DetectorConfig, manifest, shipped_detector_path
from core.stage2.spatial import PREDICATES
from core.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def detector():
    return Detector(DetectorConfig(device="cpu"))


def test_shipped_detector_is_pinned_and_matches_taxonomy(detector):
    assert shipped_detector_path().name == manifest()["detector"]["file"].split("/")[-1]
    assert [detector.model.names[i] for i in sorted(detector.model.names)] == load_taxonomy().type_names
    assert detector.imgsz == manifest()["detector"]["imgsz"]


def test_tampered_default_is_refused(tmp_path, monkeypatch):
    fake_assets = tmp_path / "assets"
    shutil.copytree(samples_dir().parent / "models", fake_assets / "models", ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(samples_dir().parent / "taxonomy", fake_assets / "taxonomy")
    (fake_assets / "models" / manifest()["detector"]["file"]).parent.mkdir(parents=True, exist_ok=True)
    (fake_assets / "models" / manifest()["detector"]["file"]).write_bytes(b"not the pinned checkpoint")
    monkeypatch.setenv("SLOPEWATCH_ASSETS", str(fake_assets))
    with pytest.raises(WeightsError, match="expected SHA-256"):
        Detector(DetectorConfig(device="cpu"))


def test_explicit_missing_weights_is_a_named_error(tmp_path):
    with pytest.raises(WeightsError, match="found nothing"):
        Detector(DetectorConfig(weights=tmp_path / "none.pt"))


def test_config_validation():
    with pytest.raises(ValueError, match="conf"):
        DetectorConfig(conf=1.5)
    with pytest.raises(ValueError, match="imgsz"):
        DetectorConfig(imgsz=300)


def test_evaluate_on_shipped_real_photos(samples_yaml):
    """Detector evaluation on the six real photos in assets/ (a 9-class export, scored as 4 types)."""
    result = evaluate_detector(DetectorEvalConfig(data_yaml=samples_yaml, device="cpu"))["detector"]
    assert set(result["per_class"]) == set(load_taxonomy().type_names)
    assert sum(c["support"] for c in result["per_class"].values()) == 40
    for key in ("map50", "map50_95", "precision", "recall"):
        assert 0.0 <= result[key] <= 1.0
    assert result["map50_95"] <= result["map50"]
    # A trained detector finds these objects; a broken pipeline (wrong classes, wrong boxes) scores ~0.
    assert result["map50"] > 0.4
    assert result["per_class"]["slope_drain"]["ap50"] > 0.5


def test_pipeline_on_a_real_photo(detector):
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[0]
    image, result = Pipeline(detector).run(photo)
    assert result.detections, "the shipped detector should find objects in a sample photo"
    assert all(0 <= d.box.x1 <= d.box.x2 <= image.width and 0 <= d.box.y2 <= image.height for d in result.detections)
    assert all(f.predicate in PREDICATES for f in result.facts)
    data = result.to_json()
    assert len(data["objects"]) == len(result.detections)
    assert {o["band"] for o in data["objects"]} <= {"top", "middle", "bottom"}
    overlay = Pipeline(detector).overlay(image, result)
    # Small photos are drawn at 2x so labels stay legible.
    assert overlay.size in (image.size, (2 * image.width, 2 * image.height))
    assert overlay.resize(image.size).tobytes() != image.tobytes()


def test_a_registry_detector_is_checked_against_the_hash_recorded_when_it_was_added(tmp_path, monkeypatch):
    from core.data import file_sha256
    from core.model_registry import ModelRegistry

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "v1").mkdir()
    shutil.copy(shipped_detector_path(), tmp_path / "v1" / "detector.pt")
    registry = ModelRegistry(stage="detector")
    registry.add(tmp_path / "v1", "v1", {"sha256": file_sha256(tmp_path / "v1" / "detector.pt")})
    registry.promote("v1")
    assert Detector(DetectorConfig(device="cpu")).version == "v1"
    with open(registry.path("v1") / "detector.pt", "ab") as f:
        f.write(b"\0")  # changed after it was added
    with pytest.raises(WeightsError, match="expected SHA-256"):
        Detector(DetectorConfig(device="cpu"))


def test_the_onnx_runtime_finds_the_same_boxes_as_torch(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    photos = sorted((samples_dir() / "valid" / "images").iterdir())[:3]
    torch_dets = Detector(DetectorConfig(device="cpu", runtime="torch")).predict_batch(photos)
    onnx = Detector(DetectorConfig(device="cpu"))  # auto: ONNX Runtime is installed
    assert onnx.runtime == "onnx"
    assert list((tmp_path / "data" / "cache" / "onnx").glob("detector-*-320.onnx"))  # exported once, cached
    onnx_dets = onnx.predict_batch(photos)
    assert onnx.model.predictor.model.format == "onnx"  # ONNX Runtime ran, not torch
    for a, b in zip(torch_dets, onnx_dets):
        assert [d.type for d in a] == [d.type for d in b]
        for da, db in zip(a, b):
            assert da.box.iou(db.box) > 0.99 and abs(da.confidence - db.confidence) < 0.01


def test_auto_runtime_falls_back_to_torch_without_onnx_runtime(monkeypatch):
    import importlib.util

    from core.stage1.detector import resolve_runtime

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert resolve_runtime("auto") == "torch" and resolve_runtime("onnx") == "onnx"
    with pytest.raises(ValueError, match="runtime"):
        DetectorConfig(runtime="tensorrt")


def test_predicting_leaves_torch_threads_as_they_were():
    """Ultralytics sets torch's threads to cores - 1 when it picks the CPU (on its first predict,
    hence a detector of its own here); stage 2 runs after the detector in the same process and must
    keep the threads it was given."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        Detector(DetectorConfig(device="cpu", runtime="torch")).predict(Image.new("RGB", (320, 320), (100, 100, 100)))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_test_time_augmentation_runs_in_torch_and_is_refused_on_onnx(samples_yaml):
    with pytest.raises(ValueError, match="augment"):
        DetectorConfig(augment=True, runtime="onnx")
    detector = Detector(DetectorConfig(augment=True, device="cpu"))
    assert detector.runtime == "torch"
    photo = sorted((samples_yaml.parent / "valid" / "images").glob("*.jpg"))[0]
    assert detector.predict(photo)  # the real photo's objects, found with flips and scales merged


def test_ultralytics_logs_to_stderr_so_commands_print_clean_json_on_stdout(tmp_path):
    """A walk-through's find: the first `slopewatch inspect` printed ultralytics' settings and
    ONNX-export lines ahead of its JSON report on stdout, which then did not parse."""
    import os
    import subprocess
    import sys

    code = ("from core.stage1.detector import ultralytics_module; ultralytics_module(); "
            "from ultralytics.utils import LOGGER; LOGGER.info('a progress line')")
    env = {**os.environ, "SLOPEWATCH_DATA_DIR": str(tmp_path)}  # a first run: ultralytics creates its settings file
    env.pop("YOLO_CONFIG_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == "" and "a progress line" in done.stderr and "Ultralytics Settings" in done.stderr
    # Validation's progress bars too: `evaluate detector` prints its JSON alone on stdout.
    done = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "detector", str(samples_dir() / "data.yaml"),
                           "--device", "cpu", "--runtime", "torch"], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(done.stdout)["detector"]["images"] > 0 and "Scanning" in done.stderr


def test_an_overlay_shows_the_box_score_where_the_type_has_one_class():
    """Vegetation has one class, so its class probability is always 1: the overlay shows the
    detector's box score instead, named as such; other types show their class probability."""
    from core.overlay import OverlayItem
    from core.types import Box

    box = Box(0, 0, 10, 10)
    assert OverlayItem.from_scores(0, box, "vegetation", "vegetation", {"vegetation": 1.0}, 1.0, 0.42).text() == "#0 vegetation box 42%"
    item = OverlayItem.from_scores(1, box, "toe drain blocked", "blocked", {"toe drain blocked": 0.7, "toe drain": 0.3}, 0.7, 0.9,
                                   reviewed=True)
    assert item.text() == "#1 toe drain blocked 70% ✓"
