"""The promotion gate's rules, table-driven: support-aware per-class recall and calibration."""

import pytest

from train.gate import GateConfig, decide


def metrics(bal, acc, recalls: dict, ece=None):
    out = {"balanced_accuracy": bal, "accuracy": acc,
           "per_class": {k: {"recall": r, "support": n} for k, (r, n) in recalls.items()}}
    if ece is not None:
        out["calibration"] = {"ece": ece}
    return out


CASES = [
    ("better, nothing dropped", metrics(0.80, 0.80, {"a": (0.9, 50)}), metrics(0.75, 0.75, {"a": (0.9, 50)}), True),
    ("not better", metrics(0.70, 0.80, {"a": (0.9, 50)}), metrics(0.75, 0.75, {"a": (0.9, 50)}), False),
    # 8 rock toes, 2 of them lost: 25% of the recall but only 2 objects: noise, no veto.
    ("small class loses 2 objects", metrics(0.82, 0.82, {"rock": (0.625, 8)}), metrics(0.79, 0.78, {"rock": (0.875, 8)}), True),
    ("small class loses 3 objects", metrics(0.82, 0.82, {"rock": (0.5, 8)}), metrics(0.79, 0.78, {"rock": (0.875, 8)}), False),
    ("large class loses 12% (6 objects)", metrics(0.82, 0.82, {"a": (0.78, 50)}), metrics(0.79, 0.78, {"a": (0.90, 50)}), False),
    ("a small class collapses to zero recall", metrics(0.82, 0.82, {"c": (0.0, 3)}), metrics(0.79, 0.78, {"c": (0.67, 3)}), False),
    ("large class loses 8%", metrics(0.82, 0.82, {"a": (0.82, 50)}), metrics(0.79, 0.78, {"a": (0.90, 50)}), True),
    ("better but worse calibrated", metrics(0.82, 0.82, {"a": (0.9, 50)}, ece=0.12), metrics(0.79, 0.78, {"a": (0.9, 50)}, ece=0.05), False),
    ("better, calibration within tolerance", metrics(0.82, 0.82, {"a": (0.9, 50)}, ece=0.07), metrics(0.79, 0.78, {"a": (0.9, 50)}, ece=0.05), True),
]


@pytest.mark.parametrize("name, candidate, current, promote", CASES, ids=[c[0] for c in CASES])
def test_gate(name, candidate, current, promote):
    decision, reasons = decide(candidate, current, GateConfig())
    assert decision is promote, reasons


def test_reasons_say_why():
    _, reasons = decide(metrics(0.82, 0.82, {"rock": (0.5, 8)}, ece=0.2), metrics(0.79, 0.78, {"rock": (0.875, 8)}, ece=0.05))
    assert any("rock recall 0.875 -> 0.500 (3 of 8)" in r for r in reasons) and any("ECE 0.0500 -> 0.2000" in r for r in reasons)
