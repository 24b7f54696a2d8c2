"""``slopewatch evaluate pipeline``: both stages end to end against ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import load_dataset
from core.evaluation.metrics import classification_metrics
from core.stage1.detector import Detector, DetectorConfig
from core.stage2 import registry
from core.stage2.calibration import ece, risk_coverage
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.evidence import default_evidencer
from core.stage2.labeled import ground_truth
from core.stage2.spatial import spatial_facts
from core.taxonomy import load_taxonomy
from core.types import Detection, LabeledObject


@dataclass(frozen=True)
class PipelineEvalConfig:
    """Settings of ``slopewatch evaluate pipeline``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split to score (report figures on ``valid``).
        backend: stage-2 backend (a live one of ``core.stage2.registry``).
        weights: detector checkpoint; default is the shipped, hash-pinned one.
        conf: detector confidence threshold.
        iou: IoU at or above which a detection matches a ground-truth object of its type.
        json: where to write the metrics JSON.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    split: str = "valid"
    backend: str = registry.DEFAULT
    weights: Path | None = None
    conf: float = 0.25
    iou: float = 0.5
    json: Path | None = None
    device: str = "auto"
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        registry.check(self.backend, live_only=True)
        if not 0.0 < self.iou <= 1.0:
            raise ValueError(f"iou: expected a value in (0, 1], found {self.iou}")


def match(dets: list[Detection], gts: list[LabeledObject], iou: float) -> dict[int, int]:
    """Greedy one-to-one matching, most confident detection first, same type only: ``{det: gt}``."""
    pairs = {}
    taken = set()
    for i in sorted(range(len(dets)), key=lambda k: -dets[k].confidence):
        best, best_iou = None, iou
        for j, g in enumerate(gts):
            if j in taken or g.type != dets[i].type:
                continue
            v = dets[i].box.iou(g.box)
            if v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            pairs[i] = best
            taken.add(best)
    return pairs


def relation_scores(pred_facts, gt_facts, pairs: dict[int, int]) -> tuple[int, int, int]:
    """``(correct, predicted, ground-truth)`` relation triples; a predicted triple counts when both
    its objects matched and the matched ground-truth objects stand in the same relation."""
    gt = {(f.subject, f.predicate, f.object) for f in gt_facts}
    correct = sum(1 for f in pred_facts if f.subject in pairs and f.object in pairs and (pairs[f.subject], f.predicate, pairs[f.object]) in gt)
    return correct, len(pred_facts), len(gt)


def combined_calibration(conf: np.ndarray, correct: np.ndarray) -> dict:
    """How far "detector confidence x class probability" can be read as the chance that a shown
    object is real and rightly labelled: ECE, Brier and the risk-coverage table."""
    return {"n": len(conf), "ece": ece(conf, correct), "brier": float(np.mean((conf - correct) ** 2)) if len(conf) else 0.0,
            "mean_confidence": float(conf.mean()) if len(conf) else 0.0, "share_right": float(correct.mean()) if len(conf) else 0.0,
            "risk_coverage": risk_coverage(conf, correct)}


def evaluate_pipeline(cfg: PipelineEvalConfig) -> dict:
    from tqdm.auto import tqdm

    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    detector = Detector(DetectorConfig(weights=cfg.weights, conf=cfg.conf, device=cfg.device), taxonomy)
    backend = registry.create(cfg.backend, registry.BackendOptions(taxonomy, device=cfg.device))
    classifier = ConditionClassifier(backend, taxonomy, default_evidencer(backend))
    n_det = n_gt = n_match = 0
    y_true, y_pred = [], []
    rel = [0, 0, 0]
    joint, right = [], []  # per detection: P(box real and class right) = detector confidence x class probability
    for sample, image, _, classes, key in tqdm(list(ground_truth(ds, cfg.split)), desc="evaluate pipeline"):
        gts = list(sample.objects)
        dets = detector.predict(image)
        findings = classifier.classify(image, dets, key)
        pairs = match(dets, gts, cfg.iou)
        n_det, n_gt, n_match = n_det + len(dets), n_gt + len(gts), n_match + len(pairs)
        for i, j in pairs.items():
            y_true.append(classes[j])
            y_pred.append(findings[i].class_name)
        for i, (d, f) in enumerate(zip(dets, findings)):
            joint.append(d.confidence * f.confidence)
            right.append(i in pairs and f.class_name == classes[pairs[i]])
        pred_facts = photo_context(image, dets, key).facts
        gt_facts = spatial_facts([g.box for g in gts], image.width, image.height)
        rel = [a + b for a, b in zip(rel, relation_scores(pred_facts, gt_facts, pairs))]
    cond = classification_metrics(y_true, y_pred, taxonomy.class_names)
    rp = rel[0] / rel[1] if rel[1] else 0.0
    rr = rel[0] / rel[2] if rel[2] else 0.0
    return {
        "pipeline": {
            "detection": {"precision": n_match / n_det if n_det else 0.0, "recall": n_match / n_gt if n_gt else 0.0,
                          "detections": n_det, "ground_truth": n_gt, "matched": n_match, "iou": cfg.iou, "conf": cfg.conf},
            "condition_on_matched": {k: cond[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")},
            "box_and_class": combined_calibration(np.array(joint), np.array(right)),
            "relations": {"precision": rp, "recall": rr, "f1": 2 * rp * rr / (rp + rr) if rp + rr else 0.0,
                          "correct": rel[0], "predicted": rel[1], "ground_truth": rel[2]},
            "backend": classifier.backend.name,
            "split": cfg.split,
        }
    }
