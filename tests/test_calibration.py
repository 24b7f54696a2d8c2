"""Temperature scaling: an over-confident scorer is corrected on held-out data, a calibrated one
is left alone, and the likely-right band is honest."""

import numpy as np
import pytest

from core.stage2.calibration import (
    Calibrated,
    Calibration,
    Scored,
    brier,
    confidences,
    ece,
    fit_calibration,
    fit_temperature,
    likely_right_threshold,
    risk_coverage,
    temper,
)


def synthetic(n: int, sharpness: float, seed: int, k: int = 3) -> list[Scored]:
    """Objects whose true class is drawn from calibrated probabilities ``softmax(z)``; the scorer
    reports ``softmax(sharpness * z)``: over-confident when sharpness > 1."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        z = rng.normal(0, 1.5, k)
        p = np.exp(z) / np.exp(z).sum()
        truth = int(rng.choice(k, p=p))
        shown = np.exp(sharpness * z) / np.exp(sharpness * z).sum()
        out.append(Scored("slope_drain" if j % 2 else "toe_drain", shown, truth, f"photo{j % 50}"))
    return out


def test_an_over_confident_scorer_is_corrected_on_held_out_data():
    fit, held_out = synthetic(3000, 3.0, seed=0), synthetic(3000, 3.0, seed=1)
    cal = fit_calibration(fit, "synthetic")
    assert all(2.5 < t < 3.5 for t in cal.temperatures.values())  # it undoes the sharpening
    raw = ece(*confidences(held_out))
    after = ece(*confidences(held_out, cal))
    assert raw > 0.10 and after < 0.03


def test_a_calibrated_scorer_is_left_unchanged():
    cal = fit_calibration(synthetic(3000, 1.0, seed=2), "synthetic")
    assert all(0.85 < t < 1.15 for t in cal.temperatures.values())


def test_temperature_keeps_the_ranking_and_stays_finite_on_saturated_scores():
    p = np.array([1.0, 1e-20, 0.0])
    for t in (0.3, 1.0, 7.0):
        q = temper(p, t)
        assert np.isfinite(q).all() and abs(q.sum() - 1) < 1e-9 and int(np.argmax(q)) == 0
    assert temper(np.array([0.7, 0.2, 0.1]), 2.0)[0] < 0.7  # T > 1 softens


def test_likely_right_band_meets_its_target_or_is_empty():
    conf = np.array([0.99] * 30 + [0.8] * 30 + [0.6] * 30)
    correct = np.array([1] * 30 + [1] * 27 + [0] * 3 + [1] * 15 + [0] * 15)
    t = likely_right_threshold(conf, correct, 0.95)
    assert t == 0.8 and correct[conf >= t].mean() >= 0.95  # 57/60 = 0.95
    assert likely_right_threshold(conf, np.zeros(90), 0.95) is None


@pytest.mark.parametrize("conf, correct, expected", [
    ([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0], 0.15),
    ([0.55, 0.95], [1, 1], (0.45 + 0.05) / 2),
    ([], [], 0.0),
])
def test_ece_table(conf, correct, expected):
    assert ece(np.array(conf), np.array(correct)) == pytest.approx(expected)


def test_brier_and_risk_coverage():
    assert brier([np.array([1.0, 0.0]), np.array([0.5, 0.5])], [0, 1]) == pytest.approx((0 + 0.5) / 2)
    rows = risk_coverage(np.array([0.95, 0.7, 0.4]), np.array([1, 0, 1]), thresholds=(0.5, 0.9))
    assert rows == [{"threshold": 0.5, "coverage": pytest.approx(2 / 3), "accuracy": 0.5},
                    {"threshold": 0.9, "coverage": pytest.approx(1 / 3), "accuracy": 1.0}]


def test_calibrated_backend_and_file_round_trip(tmp_path):
    from types import SimpleNamespace

    cal = Calibration({"slope_drain": 2.0}, likely_right=0.9, fitted_on="test", n={"slope_drain": 40}, photos=("a" * 64,))
    assert Calibration.load(cal.save(tmp_path / "calibration.json")) == cal

    class Sharp:
        name, version = "sharp", "1"

        def score(self, ctx, targets):
            return [np.array([0.9, 0.05, 0.05]) for _ in targets]

    ctx = SimpleNamespace(detections=[SimpleNamespace(type="slope_drain"), SimpleNamespace(type="toe_drain")])
    softened, untouched = Calibrated(Sharp(), cal).score(ctx, [0, 1])
    assert softened[0] < 0.9 and untouched[0] == pytest.approx(0.9)  # a type without a temperature is unchanged
    assert Calibrated(Sharp(), cal).version == f"1+T{cal.version}" and fit_temperature([]) == 1.0


@pytest.mark.parametrize("n_band, n_right, expected", [
    (30, 27, "30 objects at >= 0.900 were right 90.0% (< 95%)"),  # enough objects, too often wrong: refuted
    (30, 29, None),  # right 96.7%: holds
    (10, 0, None),  # too few objects in the band to say anything
    (0, 0, None),
])
def test_a_band_is_contradicted_only_by_enough_objects_right_too_rarely(n_band, n_right, expected):
    from core.stage2.calibration import band_contradicted

    conf = np.array([0.95] * n_band + [0.5] * 40)
    correct = np.array([1] * n_right + [0] * (n_band - n_right) + [1] * 40)
    assert band_contradicted(conf, correct, 0.9, 0.95) == expected
