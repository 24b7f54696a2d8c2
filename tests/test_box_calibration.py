"""Detector box calibration: the fit, its use inside the Detector, and the rule that keeps it off when it does not help."""

import shutil

import numpy as np
import pytest

from core.errors import WeightsError
from core.paths import samples_dir
from core.stage1.calibration import ALL_TYPES, BoxCalibration, box_calibration_report, box_outcomes, calibration_path, fit_box_calibration
from core.stage1.detector import Detector, DetectorConfig, shipped_detector_path
from core.types import Box, Detection


def _synthetic(n, seed, power):
    """Scores whose real chance is score**power (power > 1: an over-confident detector)."""
    rng = np.random.default_rng(seed)
    types = rng.choice(["rock_toe", "slope_drain"], n)
    scores = rng.uniform(0.25, 1.0, n)
    return [(t, float(s), bool(rng.random() < s ** power)) for t, s in zip(types, scores)]


def test_an_over_confident_detector_is_corrected_on_held_out_boxes():
    cal = fit_box_calibration(_synthetic(4000, 0, 3.0), "synthetic")
    report = box_calibration_report(_synthetic(4000, 1, 3.0), cal)
    assert report["raw"]["ece"] > 0.15 and report["calibrated"]["ece"] < 0.03
    assert report["calibrated"]["brier"] < report["raw"]["brier"]
    assert set(cal.params) == {ALL_TYPES, "rock_toe", "slope_drain"}


def test_a_calibrated_detector_is_left_about_as_it_is():
    cal = fit_box_calibration(_synthetic(4000, 2, 1.0), "synthetic")
    for t in ("rock_toe", "slope_drain"):
        for s in (0.3, 0.6, 0.9):
            assert cal.p_real(t, s) == pytest.approx(s, abs=0.05)


def test_a_fit_needs_both_outcomes():
    with pytest.raises(ValueError, match="both real and false boxes"):
        fit_box_calibration([("rock_toe", 0.9, True)] * 20, "all real")


def test_box_outcomes_match_one_to_one_within_a_type():
    dets = [Detection(Box(0, 0, 10, 10), "rock_toe", 0.9), Detection(Box(1, 1, 11, 11), "rock_toe", 0.8),
            Detection(Box(0, 0, 10, 10), "toe_drain", 0.7)]
    assert box_outcomes(dets, [("rock_toe", Box(0, 0, 10, 10))]) == [("rock_toe", 0.9, True), ("rock_toe", 0.8, False),
                                                                     ("toe_drain", 0.7, False)]


def test_the_detector_applies_the_calibration_saved_beside_its_weights(tmp_path):
    weights = tmp_path / "det.pt"
    shutil.copy(shipped_detector_path(), weights)
    photo = next((samples_dir() / "valid" / "images").iterdir())
    raw = Detector(DetectorConfig(weights=weights, device="cpu")).predict(photo)
    assert raw and all(d.p_real is None for d in raw)
    cal = BoxCalibration({ALL_TYPES: (1.0, -1.0), "rock_toe": (0.5, 0.0)})
    cal.save(calibration_path(weights))
    calibrated = Detector(DetectorConfig(weights=weights, device="cpu")).predict(photo)
    assert [d.confidence for d in calibrated] == [d.confidence for d in raw]  # the ranking score is kept
    assert [d.p_real for d in calibrated] == pytest.approx([cal.p_real(d.type, d.confidence) for d in raw])
    calibration_path(weights).write_text("{not json")
    with pytest.raises(WeightsError, match="box calibration"):
        Detector(DetectorConfig(weights=weights, device="cpu"))
