import pytest

from core.evaluation.metrics import classification_metrics


def test_known_values():
    m = classification_metrics(["a", "a", "a", "b"], ["a", "a", "b", "b"], ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # c is absent: not averaged
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal lengths"):
        classification_metrics(["a"], [], ["a"])
    with pytest.raises(ValueError, match="not in the label set"):
        classification_metrics(["a"], ["z"], ["a"])
    assert classification_metrics([], [], ["a"])["accuracy"] == 0.0
