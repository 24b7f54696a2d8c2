"""Calibrated stage-2 probabilities: temperature scaling per object type.

A backend's probabilities over one object type's classes are re-tempered,
``p_i ∝ p_i ** (1 / T_type)``: one number per type, fitted by minimising the negative
log-likelihood on *out-of-fold* scores of the train split (each object scored by a model that did
not train on its photo), never on the evaluation split. Temperature keeps the ranking, so
accuracy is unchanged; only the confidence moves. Per type because the types differ in how
over-confident a model is (rock toe has two classes, drains three). A type with too few objects
gets the temperature fitted on all objects together.

The "likely right" threshold is chosen on the same out-of-fold scores: the lowest calibrated
confidence at or above which the objects are right at least ``target`` of the time.

:class:`Calibrated` wraps any backend, so ``predict``, the app, the queue and the nightly gate
all see the calibrated numbers. Metrics (ECE, Brier, risk–coverage) are at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import WeightsError
from core.jsonfile import load_record, save_record

MIN_OBJECTS_PER_TYPE = 30
LIKELY_RIGHT_TARGET = 0.95


@dataclass(frozen=True)
class Scored:
    """One out-of-fold scored object: its type, the model's probabilities over its type's
    classes, the index of the true class among them, and its photo's content hash."""

    object_type: str
    probs: np.ndarray
    truth: int
    photo: str


@dataclass(frozen=True)
class Calibration:
    """Temperatures per object type, and the "likely right" confidence threshold.

    Attributes:
        temperatures: ``T`` per object type (1.0 leaves a type unchanged).
        likely_right: calibrated confidence at or above which objects were right >= ``target`` of the time (None: never).
        target: the accuracy the likely-right band was chosen for.
        fitted_on: how the scores were made (split, folds, backend).
        n: objects per type the temperatures were fitted on.
        photos: content hashes of the photos whose scores were used (tests check none is an evaluation photo).
    """

    temperatures: dict[str, float]
    likely_right: float | None = None
    target: float = LIKELY_RIGHT_TARGET
    fitted_on: str = ""
    n: dict[str, int] = field(default_factory=dict)
    photos: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = {t: v for t, v in self.temperatures.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"Calibration: expected positive finite temperatures, found {bad}")

    def apply(self, probs: np.ndarray, object_type: str) -> np.ndarray:
        return temper(probs, self.temperatures.get(object_type, 1.0))

    @property
    def version(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.temperatures.items())).encode()).hexdigest()[:8]

    def save(self, path: Path) -> Path:
        return save_record(self, path)

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        return load_record(cls, path, ("photos",), "a calibration JSON")


def save_scored(scored: Sequence[Scored], path: Path, fold_of: dict[str, int] | None = None) -> Path:
    """Out-of-fold scores as JSON (with each photo's fold), so later fits (an ensemble weight, a
    band) reuse them instead of re-training the fold models."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"type": s.object_type, "probs": [float(v) for v in s.probs], "truth": s.truth, "photo": s.photo} for s in scored]
    path.write_text(json.dumps({"fold_of": fold_of or {}, "scores": rows}))
    return path


def load_scored(path: Path) -> tuple[list[Scored], dict[str, int]]:
    """The scores and the fold of each photo written by :func:`save_scored`."""
    try:
        data = json.loads(Path(path).read_text())
        rows = [Scored(r["type"], np.array(r["probs"], float), int(r["truth"]), r["photo"]) for r in data["scores"]]
        return rows, {k: int(v) for k, v in data["fold_of"].items()}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"expected out-of-fold scores (JSON with fold_of and scores) at {path}: {exc}") from None


def temper(probs: np.ndarray, t: float) -> np.ndarray:
    """``p ** (1/t)`` renormalised, computed in log space (a 1e-20 probability stays finite)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) / t
    e = np.exp(logp - logp.max())
    return e / e.sum()


def nll(scored: Sequence[Scored], t: float) -> float:
    return -float(np.mean([math.log(max(temper(s.probs, t)[s.truth], 1e-12)) for s in scored]))


def fit_temperature(scored: Sequence[Scored]) -> float:
    """The temperature minimising the NLL: golden-section search on log T in [1/20, 20]."""
    if not scored:
        return 1.0
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(scored, math.exp(a)), nll(scored, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(scored, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(scored, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)


def fit_calibration(scored: Sequence[Scored], fitted_on: str, target: float = LIKELY_RIGHT_TARGET,
                    min_objects: int = MIN_OBJECTS_PER_TYPE) -> Calibration:
    """Temperatures per type (pooled for types with fewer than ``min_objects``) and the likely-right threshold."""
    scored = [s for s in scored if len(s.probs) > 1]  # a type with one class has nothing to calibrate
    pooled = fit_temperature(scored)
    temps, counts = {}, {}
    for t in sorted({s.object_type for s in scored}):
        rows = [s for s in scored if s.object_type == t]
        counts[t] = len(rows)
        temps[t] = fit_temperature(rows) if len(rows) >= min_objects else pooled
    cal = Calibration(temps, None, target, fitted_on, counts, tuple(sorted({s.photo for s in scored})))
    conf, correct = confidences(scored, cal)
    return Calibration(temps, likely_right_threshold(conf, correct, target), target, fitted_on, counts, cal.photos)


def confidences(scored: Sequence[Scored], cal: Calibration | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence (calibrated when ``cal`` is given) and whether top-1 is the true class."""
    probs = [cal.apply(s.probs, s.object_type) if cal else np.asarray(s.probs, float) for s in scored]
    return (np.array([p.max() for p in probs]), np.array([int(np.argmax(p)) == s.truth for p, s in zip(probs, scored)]))


def likely_right_threshold(conf: np.ndarray, correct: np.ndarray, target: float, min_objects: int = 20) -> float | None:
    """The lowest confidence ``c`` whose band ``conf >= c`` holds >= ``min_objects`` objects and is right >= ``target``."""
    for c in np.unique(conf):
        band = conf >= c
        if band.sum() >= min_objects and correct[band].mean() >= target:
            return float(c)
    return None


def band_contradicted(conf: np.ndarray, correct: np.ndarray, threshold: float, target: float, min_objects: int = 20) -> str | None:
    """Why the band ``conf >= threshold`` fails ``target`` on these objects, or None when it does
    not: it holds enough of them (>= ``min_objects``, as a threshold is chosen) and they are right
    less often than ``target``. Fewer objects than that say nothing either way."""
    band = np.asarray(conf, float) >= threshold
    n = int(band.sum())
    if n < min_objects:
        return None
    accuracy = float(np.asarray(correct, float)[band].mean())
    return None if accuracy >= target else f"{n} objects at >= {threshold:.3f} were right {accuracy:.1%} (< {target:.0%})"


class Calibrated:
    """A backend whose scores are re-tempered per object type (name unchanged, version marked)."""

    def __init__(self, backend, calibration: Calibration):
        self.inner, self.calibration = backend, calibration
        self.name = backend.name
        self.version = f"{backend.version}+T{calibration.version}"

    def score(self, ctx, targets, **kwargs):
        raw = self.inner.score(ctx, targets, **kwargs)
        return [self.calibration.apply(p, ctx.detections[i].type) for p, i in zip(raw, targets)]

    def __getattr__(self, name):  # rationales, answer_mcq, quantize, store... are the inner backend's
        return getattr(self.inner, name)


def calibrated(backend, path: Path | None):
    """``backend`` wrapped with the calibration at ``path`` when that file exists, else as it is."""
    return Calibrated(backend, Calibration.load(path)) if path is not None and Path(path).is_file() else backend


# --- metrics ---------------------------------------------------------------------------------
def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the |accuracy - confidence| gap of equal-width bins, weighted by size."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    if not len(conf):
        return 0.0
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean() for b in range(bins) if (idx == b).any()))


def brier(probs: Sequence[np.ndarray], truth: Sequence[int]) -> float:
    """Mean squared error of the probability vector against the one-hot truth (over each object's own classes)."""
    if not len(probs):
        return 0.0
    return float(np.mean([np.sum((np.asarray(p, float) - np.eye(len(p))[t]) ** 2) for p, t in zip(probs, truth)]))


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Per bin: its range, object count, mean confidence and accuracy (the reliability diagram's data)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return [{"from": b / bins, "to": (b + 1) / bins, "n": int((idx == b).sum()),
             "confidence": float(conf[idx == b].mean()) if (idx == b).any() else None,
             "accuracy": float(correct[idx == b].mean()) if (idx == b).any() else None} for b in range(bins)]


def risk_coverage(conf: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> list[dict]:
    """Accuracy of the objects at or above each confidence threshold, and the share of objects above it."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    return [{"threshold": t, "coverage": float((conf >= t).mean()) if len(conf) else 0.0,
             "accuracy": float(correct[conf >= t].mean()) if (conf >= t).any() else None} for t in thresholds]
