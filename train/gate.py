"""The promotion gate: a candidate replaces the current model only if it is better on the frozen set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateConfig:
    """Promotion rule.

    Attributes:
        max_recall_drop: largest drop in any class's recall (absolute) that is tolerated.
        min_support: classes with fewer frozen-set objects than this are not checked for drops.
        min_objects_lost: a class vetoes only when it also loses more than this many objects: with
            8 rock toes, 2 of them are 25% of the recall but well inside sampling noise, and a
            clearly better candidate was refused on exactly that; a large class still cannot lose
            more than ``max_recall_drop``, and a class the candidate never gets right any more
            always vetoes.
        max_ece_increase: largest rise in expected calibration error (frozen set) tolerated, so a
            candidate cannot buy accuracy with confidences a reviewer can no longer trust.
    """

    max_recall_drop: float = 0.10
    min_support: int = 3
    min_objects_lost: int = 2
    max_ece_increase: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_recall_drop <= 1.0:
            raise ValueError(f"max_recall_drop: expected [0, 1], found {self.max_recall_drop}")
        if self.min_objects_lost < 0 or self.max_ece_increase < 0:
            raise ValueError(f"min_objects_lost and max_ece_increase: expected >= 0, found {self.min_objects_lost}, {self.max_ece_increase}")


def decide(candidate: dict, current: dict | None, cfg: GateConfig = GateConfig()) -> tuple[bool, list[str]]:
    """``(promote, reasons)`` from two metric dicts of ``core.evaluation.metrics.classification_metrics``.

    Promote when balanced accuracy improves, or stays equal while accuracy improves, no class
    with enough support loses more than ``max_recall_drop`` recall *and* more than
    ``min_objects_lost`` objects, and the expected calibration error does not rise by more than
    ``max_ece_increase``. With no current model the candidate is promoted.
    """
    if current is None:
        return True, ["no current model"]
    reasons = []
    cb, pb = candidate["balanced_accuracy"], current["balanced_accuracy"]
    better = cb > pb + 1e-12 or (abs(cb - pb) <= 1e-12 and candidate["accuracy"] > current["accuracy"] + 1e-12)
    reasons.append(f"balanced accuracy {pb:.4f} -> {cb:.4f}, accuracy {current['accuracy']:.4f} -> {candidate['accuracy']:.4f}")
    if not better:
        reasons.append("not better on balanced accuracy (nor equal with better accuracy)")
    drops = []
    for label, stats in current["per_class"].items():
        if stats["support"] < cfg.min_support:
            continue
        drop = stats["recall"] - candidate["per_class"][label]["recall"]
        lost = round(drop * stats["support"])
        collapsed = stats["recall"] > 0 and candidate["per_class"][label]["recall"] == 0  # never right any more: not noise
        if drop > cfg.max_recall_drop + 1e-12 and (lost > cfg.min_objects_lost or collapsed):
            drops.append(f"{label} recall {stats['recall']:.3f} -> {candidate['per_class'][label]['recall']:.3f} ({lost} of {stats['support']})")
    if drops:
        reasons.append("recall dropped beyond the margin: " + "; ".join(drops))
    worse_calibrated = False
    if "calibration" in candidate and "calibration" in current:
        ce, pe = candidate["calibration"]["ece"], current["calibration"]["ece"]
        worse_calibrated = ce > pe + cfg.max_ece_increase + 1e-12
        reasons.append(f"ECE {pe:.4f} -> {ce:.4f}" + (f": worse by more than {cfg.max_ece_increase}" if worse_calibrated else ""))
    return better and not drops and not worse_calibrated, reasons


@dataclass(frozen=True)
class DetectorGateConfig:
    """Promotion rule for a stage-1 candidate.

    Attributes:
        max_map50_95_drop: largest drop in mAP50-95 tolerated (mAP50 itself may not drop at all).
        max_ap50_drop: largest drop in any type's AP50 tolerated.
        min_support: types with fewer frozen-set objects than this are not checked for drops.
        min_objects_lost: a type vetoes only when its AP50 drop times its support (about the objects
            it no longer finds) also exceeds this: the same support-aware rule as stage 2's recall
            check, so 8 vegetation boxes cannot veto on 2 of them, while a type whose AP50 falls to
            zero always vetoes.
    """

    max_map50_95_drop: float = 0.01
    max_ap50_drop: float = 0.10
    min_support: int = 3
    min_objects_lost: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_map50_95_drop <= 1.0 or not 0.0 <= self.max_ap50_drop <= 1.0:
            raise ValueError(f"max_map50_95_drop, max_ap50_drop: expected [0, 1], found {self.max_map50_95_drop}, {self.max_ap50_drop}")
        if self.min_objects_lost < 0 or self.min_support < 0:
            raise ValueError(f"min_objects_lost, min_support: expected >= 0, found {self.min_objects_lost}, {self.min_support}")


def decide_detector(candidate: dict, current: dict | None, cfg: DetectorGateConfig = DetectorGateConfig()) -> tuple[bool, list[str]]:
    """``(promote, reasons)`` from two ``core.evaluation.detector.score_detection_set`` dicts scored
    on the same frozen photos: promote when mAP50 does not drop, mAP50-95 drops by at most
    ``max_map50_95_drop``, and no type with enough support loses more than ``max_ap50_drop`` AP50
    on more than ``min_objects_lost`` objects' worth."""
    if current is None:
        return True, ["no current detector"]
    reasons = [f"mAP50 {current['map50']:.4f} -> {candidate['map50']:.4f}, mAP50-95 {current['map50_95']:.4f} -> {candidate['map50_95']:.4f}"]
    ok = True
    if candidate["map50"] < current["map50"] - 1e-12:
        reasons.append("mAP50 dropped")
        ok = False
    if candidate["map50_95"] < current["map50_95"] - cfg.max_map50_95_drop - 1e-12:
        reasons.append(f"mAP50-95 dropped by more than {cfg.max_map50_95_drop}")
        ok = False
    drops = []
    for name, stats in current["per_class"].items():
        if stats["support"] < cfg.min_support:
            continue
        new = candidate["per_class"][name]["ap50"]
        drop = stats["ap50"] - new
        collapsed = stats["ap50"] > 0 and new == 0
        if drop > cfg.max_ap50_drop + 1e-12 and (drop * stats["support"] > cfg.min_objects_lost or collapsed):
            drops.append(f"{name} AP50 {stats['ap50']:.3f} -> {new:.3f} ({stats['support']} objects)")
    if drops:
        reasons.append("AP50 dropped beyond the margin: " + "; ".join(drops))
        ok = False
    return ok, reasons
