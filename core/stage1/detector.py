"""Stage 1: the YOLO object detector (ultralytics), returning typed detections.

Ultralytics checkpoints are pickles that can run code when loaded, so a detector opens only the
shipped default after checking its SHA-256 against ``assets/models/manifest.toml``, a version the
nightly job trained and promoted into the detector registry (checked against the hash recorded
when it was added), or a file the caller names explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from core.data import file_sha256
from core.device import torch_threads_kept
from core.errors import WeightsError
from core.paths import assets_dir, models_manifest, ultralytics_config_dir
from core.taxonomy import Taxonomy, load_taxonomy
from core.types import Detection


def ultralytics_to_stderr():
    """Where ultralytics' own output goes while it runs: stderr. Its logger and progress bars write
    to the sys.stdout they find, and our commands print their JSON there (a first run's settings
    lines or a validation bar before the JSON made it unparseable)."""
    return contextlib.redirect_stdout(sys.stderr)


def ultralytics_module():
    """Import ultralytics configured for offline use (no hub calls, settings kept in our data dir)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(ultralytics_config_dir()))
    # Its logger keeps the stream it finds at import: stderr, for good.
    with ultralytics_to_stderr():
        import ultralytics

    return ultralytics


def manifest() -> dict[str, Any]:
    """The pinned-weights manifest shipped in ``assets/models``."""
    path = models_manifest()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"expected the model manifest at {path}, found nothing") from None


def verify_pinned(path: Path, sha256: str) -> Path:
    """Return ``path`` if its SHA-256 equals the pinned hash, else raise WeightsError."""
    if not path.is_file():
        raise WeightsError(f"expected weights file {path}, found nothing")
    found = file_sha256(path)
    if found != sha256:
        raise WeightsError(f"{path}: expected SHA-256 {sha256}, found {found}; refusing to unpickle it")
    return path


def current_detector(root: Path | None = None, version: str | None = None) -> tuple[Path, str]:
    """``(weights, version)`` of the detector to serve: ``version`` of the detector registry, or
    by default the nightly job's promoted version (``slopewatch model list --stage detector``), else
    the shipped one."""
    from core.model_registry import ModelRegistry

    registry = ModelRegistry(root, stage="detector")
    version = version or registry.current()
    if version is None:
        # Named as the nightly job registers it on first use, so stored findings name one version.
        return shipped_detector_path(), "shipped-" + manifest()["detector"]["sha256"][:12]
    folder = registry.path(version)
    recorded = json.loads((folder / "metrics.json").read_text()).get("sha256") if (folder / "metrics.json").is_file() else None
    if not recorded:
        raise WeightsError(f"{folder}: expected metrics.json with the sha256 recorded when it was added, found none")
    return verify_pinned(folder / "detector.pt", recorded), version


def shipped_detector_path() -> Path:
    """The shipped detector, verified against its pinned hash."""
    entry = manifest().get("detector")
    if not entry:
        raise WeightsError(f"{models_manifest()}: expected a [detector] entry, found none")
    return verify_pinned(assets_dir() / "models" / entry["file"], entry["sha256"])


RUNTIMES = ("auto", "torch", "onnx")
# What runtime onnx needs (module and pip package share their names): onnxslim too, because
# ultralytics' export would otherwise try to pip-install it on a live server.
ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxslim")


def resolve_runtime(runtime: str) -> str:
    """``auto`` → ``onnx`` when ONNX Runtime, onnx and onnxslim are importable, else ``torch``."""
    if runtime != "auto":
        return runtime
    import importlib.util

    return "onnx" if all(importlib.util.find_spec(m) for m in ONNX_PACKAGES) else "torch"


def onnx_export(weights: Path, imgsz: int) -> Path:
    """The ONNX export of a checkpoint at one image size, made once and cached by the checkpoint's
    hash (a new nightly version gets its own export)."""
    import shutil
    import tempfile

    from core.paths import data_dir

    for package in ONNX_PACKAGES:
        try:
            __import__(package)
        except ImportError:
            raise WeightsError(f"runtime onnx: expected the {package!r} package, found none; pip install -e '.[onnx]'") from None
    cache = data_dir() / "cache" / "onnx" / f"detector-{file_sha256(weights)[:16]}-{imgsz}.onnx"
    if cache.is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        # ultralytics writes the export beside the checkpoint: export a copy in a private folder.
        copy = Path(tmp) / "detector.pt"
        shutil.copyfile(weights, copy)
        with ultralytics_to_stderr():  # the exporters' own print() calls too
            exported = ultralytics_module().YOLO(str(copy), task="detect").export(format="onnx", imgsz=imgsz, dynamic=True,
                                                                                  simplify=True, verbose=False)
        os.replace(exported, cache)
    return cache


@dataclass(frozen=True)
class DetectorConfig:
    """How to run stage 1.

    Attributes:
        weights: checkpoint path; ``None`` uses the promoted nightly version, else the shipped one
            (both hash-checked).
        conf: minimum detection confidence kept.
        iou: NMS IoU threshold.
        imgsz: inference image size; ``None`` uses the size the checkpoint was trained at.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"`` or ``"auto"``.
        version: a version of the detector registry to load instead of the current one (ignored
            when ``weights`` is given).
        runtime: ``torch`` (the checkpoint itself), ``onnx`` (exported once per checkpoint and
            image size, cached in the data dir, run by ONNX Runtime: ``pip install -e '.[onnx]'``;
            2.5x faster on 2 CPU cores, same boxes), or ``auto``: onnx when ONNX Runtime is
            installed, else torch (``Detector.runtime`` says which ran).
        augment: test-time augmentation (ultralytics ``augment=True``: the photo also flipped and
            rescaled, predictions merged); needs the torch runtime (auto picks it).
    """

    weights: Path | None = None
    conf: float = 0.25
    iou: float = 0.5
    imgsz: int | None = None
    device: str = "auto"
    version: str | None = None
    runtime: str = "auto"
    augment: bool = False

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"DetectorConfig.runtime: expected one of {RUNTIMES}, found {self.runtime!r}")
        if self.augment and self.runtime == "onnx":
            raise ValueError("DetectorConfig.augment: test-time augmentation runs in the torch model; expected runtime torch or auto, found onnx")
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"DetectorConfig.conf: expected a value in [0, 1], found {self.conf}")
        if not 0.0 < self.iou <= 1.0:
            raise ValueError(f"DetectorConfig.iou: expected a value in (0, 1], found {self.iou}")
        if self.imgsz is not None and (self.imgsz < 32 or self.imgsz % 32):
            raise ValueError(f"DetectorConfig.imgsz: expected a multiple of 32 >= 32, found {self.imgsz}")


class Detector:
    """A loaded YOLO detector whose classes are the taxonomy's object types."""

    def __init__(self, config: DetectorConfig | None = None, taxonomy: Taxonomy | None = None):
        from core.device import resolve_device

        self.config = config or DetectorConfig()
        self.taxonomy = taxonomy or load_taxonomy()
        if self.config.weights:
            self.weights, self.version = Path(self.config.weights), Path(self.config.weights).name
        else:
            self.weights, self.version = current_detector(version=self.config.version)
        if not self.weights.is_file():
            raise WeightsError(f"expected detector weights at {self.weights}, found nothing")
        yolo = ultralytics_module().YOLO
        try:
            self.model = yolo(str(self.weights), task="detect")
        except Exception as exc:
            raise WeightsError(f"{self.weights}: expected an ultralytics detection checkpoint, failed to load: {exc}") from exc
        names = [self.model.names[i] for i in sorted(self.model.names)]
        if names != self.taxonomy.type_names:
            raise WeightsError(
                f"{self.weights}: expected a detector over types {self.taxonomy.type_names}, found classes {names}"
            )
        train_args = getattr(self.model, "overrides", {}) or {}
        self.imgsz = self.config.imgsz or int(train_args.get("imgsz") or 320)
        self.device = resolve_device(self.config.device)
        self.calibration = self._load_calibration()
        self.runtime = "torch" if self.config.augment else resolve_runtime(self.config.runtime)
        if self.runtime == "onnx":
            # Names and image size were checked on the checkpoint; the export carries both in its metadata.
            self.model = yolo(str(onnx_export(self.weights, self.imgsz)), task="detect")

    def _load_calibration(self):
        from core.stage1.calibration import BoxCalibration, calibration_path

        path = calibration_path(self.weights)
        try:
            return BoxCalibration.load(path) if path.is_file() else None
        except ValueError as exc:
            raise WeightsError(str(exc)) from None

    def predict(self, image: Image.Image | str | Path) -> list[Detection]:
        """Detect objects in one upright RGB image (or an image path, loaded safely)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: list[Image.Image | str | Path]) -> list[list[Detection]]:
        from core.images import load_image

        pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        with torch_threads_kept():
            results = self.model.predict(
                pil, conf=self.config.conf, iou=self.config.iou, imgsz=self.imgsz, device=self.device, verbose=False,
                augment=self.config.augment,
            )
        out = [Detection.from_ultralytics(r, self.taxonomy) for r in results]
        if self.calibration is None:
            return out
        cal = self.calibration
        return [[Detection(d.box, d.type, d.confidence, cal.p_real(d.type, d.confidence)) for d in dets] for dets in out]
