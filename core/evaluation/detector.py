"""Evaluation of stage 1 against a labelled dataset (either taxonomy label space)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.data import load_dataset
from core.evaluation.label_sheet import label_sheet
from core.paths import data_dir
from core.stage1.detector import Detector, DetectorConfig, ultralytics_to_stderr
from core.taxonomy import load_taxonomy


@dataclass(frozen=True)
class DetectorEvalConfig:
    """Settings of ``slopewatch evaluate detector``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's types or classes.
        split: dataset split to score (report figures on ``valid``).
        weights: detector checkpoint; default: the promoted nightly version, else the shipped one.
        json: where to write the metrics JSON.
        imgsz: evaluation image size; default is the checkpoint's training size.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
        runtime: ``auto``, ``torch`` or ``onnx`` (ONNX Runtime on the exported checkpoint).
        augment: score with test-time augmentation (flips and scales; torch runtime).
        sheet: also draw a contact sheet PNG of ``sheet_type``'s labels against the detector's
            boxes on the split (how the type is boxed, and where labels and detections disagree).
        sheet_type: the object type the sheet draws.
    """

    data_yaml: Path
    split: str = "valid"
    weights: Path | None = None
    json: Path | None = None
    imgsz: int | None = None
    device: str = "auto"
    taxonomy: Path | None = None
    runtime: str = "auto"
    augment: bool = False
    sheet: Path | None = None
    sheet_type: str = "vegetation"

    def __post_init__(self) -> None:
        if self.split not in ("train", "valid", "test"):
            raise ValueError(f"split: expected train, valid or test, found {self.split!r}")


def evaluate_detector(cfg: DetectorEvalConfig) -> dict:
    """mAP50, mAP50-95, precision, recall and per-type AP50 (ultralytics' COCO-style matcher).

    The dataset is first rewritten as a type-labelled set through the taxonomy, so a 9-class
    condition export is scored as the 4-type detection problem it contains.
    """
    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    detector = Detector(DetectorConfig(weights=cfg.weights, imgsz=cfg.imgsz, device=cfg.device, runtime=cfg.runtime,
                                       augment=cfg.augment), taxonomy)
    if cfg.sheet is not None and cfg.sheet_type not in taxonomy.type_names:
        raise ValueError(f"sheet_type: expected one of {taxonomy.type_names}, found {cfg.sheet_type!r}")
    with tempfile.TemporaryDirectory(prefix="eval-", dir=data_dir()) as tmp:
        result = _score(cfg, ds, detector, Path(tmp))
    if cfg.sheet is not None:
        result["sheet"] = label_sheet(detector, ds.samples(cfg.split), cfg.sheet_type, Path(cfg.sheet)).to_json()
    return result


def _score(cfg: DetectorEvalConfig, ds, detector: Detector, work: Path) -> dict:
    det_yaml = ds.write_detection_dataset(work / "dataset", splits=(cfg.split,))
    support = {t: 0 for t in ds.taxonomy.type_names}
    for s in ds.samples(cfg.split):
        for o in s.objects:
            support[o.type] += 1
    scores = score_detection_set(detector, det_yaml, "val" if cfg.split == "valid" else cfg.split, support, work)
    return {"detector": {**scores, "split": cfg.split, "images": len(ds.samples(cfg.split))}}


def score_detection_set(detector: Detector, det_yaml: Path, split: str, support: dict[str, int], work: Path) -> dict:
    """mAP50, mAP50-95, precision, recall and per-type AP50 with its support, of ``detector`` on one
    split of a type-labelled YOLO dataset (``evaluate detector`` and the nightly gate both use it)."""
    with ultralytics_to_stderr():  # its validation progress bars
        metrics = detector.model.val(
            data=str(det_yaml), split=split, imgsz=detector.imgsz, batch=16, device=detector.device,
            conf=0.001, iou=0.7, plots=False, project=str(work), name="val", exist_ok=True, verbose=False,
            augment=detector.config.augment,
        )
    box = metrics.box
    per_class = {t: {"ap50": 0.0, "support": support.get(t, 0)} for t in detector.taxonomy.type_names}
    for k, cls_id in enumerate(box.ap_class_index):
        per_class[detector.taxonomy.type_names[int(cls_id)]]["ap50"] = float(box.ap50[k])
    return {
        "map50": float(box.map50),
        "map50_95": float(box.map),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "per_class": per_class,
        "weights": str(detector.weights),
        "imgsz": detector.imgsz,
    }
