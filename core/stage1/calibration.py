"""Detector confidence a reviewer can read: "0.6" should mean about six in ten such boxes are real.

YOLO's box score is a ranking, not a probability: on this data the shipped detector's boxes at
0.3 are real far less often than 30%. A :class:`BoxCalibration` maps ``(type, score)`` to the
chance the box is a real object of that type (IoU ≥ 0.5 with one, one-to-one): per-type Platt
scaling, ``sigmoid(a · logit(score) + b)``, which keeps each type's ranking; a type with too few
boxes of either outcome shares one fit over all types.

The map is fitted on photos the detector never trained on, from what reviewers (or ground truth)
say each box was: ``box_outcomes`` matches a photo's detections to its true boxes. It is saved
beside the weights (``<weights stem>.calibration.json``) and applied inside ``Detector``, so every
:class:`~core.types.Detection` carries ``p_real``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.types import Box

MATCH_IOU = 0.5
MIN_PER_OUTCOME = 8  # boxes of each outcome (real, not real) a type needs for a fit of its own
ALL_TYPES = "*"


def match_boxes(detected: list[tuple[str, Box]], truth: list[tuple[str, Box]], iou: float = MATCH_IOU):
    """Greedy one-to-one matching by IoU within a type: ``({detected index: true index}, unmatched
    detected, unmatched true)``. Best pairs first, as COCO-style matching does."""
    pairs = sorted(((d.iou(t), i, j) for i, (dt, d) in enumerate(detected) for j, (tt, t) in enumerate(truth) if dt == tt),
                   reverse=True)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < iou:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched, [i for i in range(len(detected)) if i not in matched], [j for j in range(len(truth)) if j not in used]


def box_outcomes(detections, truth: list[tuple[str, Box]]) -> list[tuple[str, float, bool]]:
    """``(type, score, real)`` per detection of one photo against its true ``(type, box)`` list."""
    matched, _, _ = match_boxes([(d.type, d.box) for d in detections], truth)
    return [(d.type, d.confidence, i in matched) for i, d in enumerate(detections)]


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class BoxCalibration:
    """Per-type Platt parameters ``{type or "*": (a, b)}`` and what they were fitted on."""

    params: dict[str, tuple[float, float]]
    fitted_on: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if ALL_TYPES not in self.params:
            raise ValueError(f"BoxCalibration: expected a shared fit under {ALL_TYPES!r}, found only {sorted(self.params)}")
        for name, (a, b) in self.params.items():
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError(f"BoxCalibration: expected finite parameters for {name!r}, found {(a, b)}")

    def p_real(self, type_: str, score: float) -> float:
        a, b = self.params.get(type_, self.params[ALL_TYPES])
        return float(1.0 / (1.0 + math.exp(-(a * float(_logit(score)) + b))))

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "BoxCalibration":
        try:
            raw = json.loads(Path(path).read_text())
            return cls({k: (float(a), float(b)) for k, (a, b) in raw["params"].items()}, raw.get("fitted_on", ""), raw.get("counts", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: expected a box calibration (params per type), found unreadable JSON: {exc}") from None


def calibration_path(weights: Path) -> Path:
    """Where a detector's calibration lives: beside its weights."""
    return Path(weights).with_name(Path(weights).stem + ".calibration.json")


def _platt(scores: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=100.0, max_iter=1000).fit(_logit(scores).reshape(-1, 1), real.astype(int))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fit_box_calibration(outcomes: list[tuple[str, float, bool]], fitted_on: str) -> BoxCalibration:
    """Fit from ``(type, score, real)`` triples; raises ValueError when both outcomes are not present."""
    types = np.array([t for t, _, _ in outcomes])
    scores = np.array([s for _, s, _ in outcomes], float)
    real = np.array([r for _, _, r in outcomes], bool)
    if real.all() or not real.any():
        raise ValueError(f"box calibration: expected both real and false boxes, found {int(real.sum())} real of {len(real)}")
    params = {ALL_TYPES: _platt(scores, real)}
    counts = {ALL_TYPES: len(real)}
    for t in sorted(set(types)):
        sel = types == t
        if real[sel].sum() >= MIN_PER_OUTCOME and (~real[sel]).sum() >= MIN_PER_OUTCOME:
            params[t] = _platt(scores[sel], real[sel])
        counts[t] = int(sel.sum())
    return BoxCalibration(params, fitted_on, counts)


def box_calibration_report(outcomes: list[tuple[str, float, bool]], calibration: BoxCalibration | None) -> dict:
    """ECE and Brier of the raw scores and, when given, of the calibrated ``p_real`` (10 bins)."""
    from core.stage2.calibration import ece, reliability

    scores = np.array([s for _, s, _ in outcomes], float)
    real = np.array([r for _, _, r in outcomes], float)
    out = {"n": len(outcomes), "real_share": float(real.mean()) if len(real) else 0.0,
           "raw": {"ece": ece(scores, real), "brier": float(np.mean((scores - real) ** 2)) if len(real) else 0.0}}
    if calibration is not None:
        p = np.array([calibration.p_real(t, s) for t, s, _ in outcomes], float)
        out["calibrated"] = {"ece": ece(p, real), "brier": float(np.mean((p - real) ** 2)) if len(real) else 0.0,
                             "reliability": reliability(p, real)}
    return out
