"""Calibrations are fitted on out-of-fold scores of the training split only: no evaluation
photo's hash may appear in them (the probe's fit on a small real dataset, and both shipped files
against the real valid split when ../shared/data is present)."""

import json
import shutil
from pathlib import Path

import pytest

from core.data import file_sha256, load_dataset
from core.paths import assets_dir, datasets_dir
from core.stage2.backends.probe import calibration_path
from core.stage2.calibration import Calibration


def split_dataset(samples_yaml: Path, root: Path) -> Path:
    """The six shipped sample photos as a dataset: four in train, two in valid."""
    src = samples_yaml.parent / "valid"
    images = sorted((src / "images").glob("*.jpg"))
    for split, chosen in (("train", images[:4]), ("valid", images[4:])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for im in chosen:
            shutil.copy(im, root / split / "images" / im.name)
            shutil.copy(src / "labels" / f"{im.stem}.txt", root / split / "labels" / f"{im.stem}.txt")
    meta = samples_yaml.read_text()
    (root / "data.yaml").write_text("train: train/images\nvalid: valid/images\n" + "\n".join(
        line for line in meta.splitlines() if line.startswith(("nc", "names"))) + "\n")
    return root / "data.yaml"


def test_probe_calibration_uses_only_its_training_photos(samples_yaml, tmp_path):
    from train.probe import ProbeTrainConfig, train_probe

    data = split_dataset(samples_yaml, tmp_path / "ds")
    result = train_probe(ProbeTrainConfig(data_yaml=data, out=tmp_path / "probe.npz", c=0.3))
    cal = Calibration.load(calibration_path(tmp_path / "probe.npz"))
    ds = load_dataset(data)
    train = {file_sha256(s.image_path) for s in ds.samples("train")}
    valid = {file_sha256(s.image_path) for s in ds.samples("valid")}
    assert set(cal.photos) and set(cal.photos) <= train and not set(cal.photos) & valid
    assert result["calibration"]["temperatures"] == cal.temperatures and "out-of-fold" in cal.fitted_on


@pytest.mark.parametrize("path", [calibration_path(assets_dir() / "models" / "probe" / "drainage-probe.npz"),
                                  assets_dir() / "models" / "adapter" / "calibration.json",
                                  assets_dir() / "models" / "ensemble" / "calibration.json"], ids=["probe", "adapter", "ensemble"])
def test_shipped_calibrations_never_saw_a_valid_photo(path):
    real = datasets_dir() / "drainage-conditions" / "data.yaml"
    if not real.is_file():
        pytest.skip(f"expected the real dataset at {real}")
    cal = Calibration.load(path)
    valid = {file_sha256(s.image_path) for s in load_dataset(real).samples("valid")}
    assert len(cal.photos) > 100 and not set(cal.photos) & valid
    assert json.loads(path.read_text())["fitted_on"].startswith("train split")


def test_named_probe_weights_load_without_reading_the_registry(monkeypatch):
    """``--probe-weights`` names the probe: a registry that cannot be read must not stop it."""
    from core.stage2.backends import probe
    from core.stage2.registry import BackendOptions
    from core.taxonomy import load_taxonomy

    class Unreadable:
        def current_path(self):
            raise RuntimeError("registry unreadable")

    monkeypatch.setattr(probe, "ModelRegistry", Unreadable)
    backend = probe.from_options(BackendOptions(load_taxonomy(), probe_weights=probe.default_probe_path()))
    assert backend.version
    with pytest.raises(RuntimeError, match="registry unreadable"):  # without named weights the registry says which
        probe.from_options(BackendOptions(load_taxonomy()))
