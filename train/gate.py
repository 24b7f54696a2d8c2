"""The promotion gate: a candidate replaces the current model only if it is better on the frozen set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateConfig:
    """Promotion rule.

    Attributes:
        max_recall_drop: largest drop in any class's recall (absolute) that is tolerated.
        min_support: classes with fewer frozen-set objects than this are not checked for drops.
    """

    max_recall_drop: float = 0.10
    min_support: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_recall_drop <= 1.0:
            raise ValueError(f"max_recall_drop: expected [0, 1], found {self.max_recall_drop}")


def decide(candidate: dict, current: dict | None, cfg: GateConfig = GateConfig()) -> tuple[bool, list[str]]:
    """``(promote, reasons)`` from two metric dicts of ``core.evaluation.metrics.classification_metrics``.

    Promote when balanced accuracy improves, or stays equal while accuracy improves, and no
    class with enough support loses more than ``max_recall_drop`` recall. With no current
    model the candidate is promoted.
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
        if drop > cfg.max_recall_drop + 1e-12:
            drops.append(f"{label} recall {stats['recall']:.3f} -> {candidate['per_class'][label]['recall']:.3f}")
    if drops:
        reasons.append("recall dropped beyond the margin: " + "; ".join(drops))
    return better and not drops, reasons
