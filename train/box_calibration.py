"""``slopewatch train box-calibration``: fit the detector's box calibration (``core.stage1.calibration``).

The shipped detector trained on every photo of the train split, so its scores there are
in-sample; the only photos it never trained on are the valid split's. The fit therefore uses one
hash half of ``valid`` (``train.holdout.half``, the same halves as the simulated reviews) and
reports ECE and Brier on the other half, raw and calibrated. The map is saved beside the weights
only when it lowers the held-out half's ECE: a map that does not generalise would make the
numbers reviewers see worse, not better, and the raw score then stays what they see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.stage1.calibration import box_calibration_report, box_outcomes, calibration_path, fit_box_calibration


@dataclass
class BoxCalibrationConfig:
    """Settings of ``slopewatch train box-calibration``.

    Attributes:
        data_yaml: a labelled dataset (types or condition classes) the detector never trained on.
        split: its split to use.
        fit_half: photos of this hash half (A or B) fit the map; the other half reports it.
        weights: detector checkpoint (default: the current detector); the map is saved beside it.
        conf: lowest detector score kept (the app's threshold).
        json: where to write the report JSON.
    """

    data_yaml: Path
    split: str = "valid"
    fit_half: str = "A"
    weights: Path | None = None
    conf: float = 0.25
    json: Path | None = None

    def __post_init__(self) -> None:
        if self.fit_half not in ("A", "B"):
            raise ValueError(f"fit_half: expected A or B, found {self.fit_half!r}")
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"conf: expected a value in [0, 1], found {self.conf}")


def photo_outcomes(detector, samples) -> list[tuple[str, list[tuple[str, float, bool]]]]:
    """``(photo hash, [(type, raw score, real)])`` per sample, from the detector's uncalibrated boxes."""
    from tqdm.auto import tqdm

    from core.data import file_sha256
    from core.images import load_image

    out = []
    for s in tqdm(samples, desc="detect"):
        dets = detector.predict(load_image(s.image_path))
        out.append((file_sha256(s.image_path), box_outcomes(dets, [(o.type, o.box) for o in s.objects])))
    return out


def calibrate_detector(cfg: BoxCalibrationConfig) -> dict:
    from core.data import load_dataset
    from core.stage1.detector import Detector, DetectorConfig
    from train.holdout import half

    detector = Detector(DetectorConfig(weights=cfg.weights, conf=cfg.conf))
    ds = load_dataset(cfg.data_yaml, detector.taxonomy)
    per_photo = photo_outcomes(detector, ds.samples(cfg.split))
    fit = [o for key, outs in per_photo if half(key) == cfg.fit_half for o in outs]
    held = [o for key, outs in per_photo if half(key) != cfg.fit_half for o in outs]
    n_fit = sum(half(key) == cfg.fit_half for key, _ in per_photo)
    note = f"{cfg.data_yaml} {cfg.split} half {cfg.fit_half}: {n_fit} photos, {len(fit)} boxes at conf >= {cfg.conf}"
    cal = fit_box_calibration(fit, note)
    report = box_calibration_report(held, cal)
    path = calibration_path(detector.weights)
    helps = report["calibrated"]["ece"] < report["raw"]["ece"]
    if helps:
        cal.save(path)
    return {"saved": str(path) if helps else None,
            "decision": "saved" if helps else "not saved: the map does not lower the held-out half's ECE; the raw score stays",
            "params": cal.params, "counts": cal.counts, "fit": box_calibration_report(fit, cal), "held_out": report,
            "held_out_photos": len(per_photo) - n_fit}

