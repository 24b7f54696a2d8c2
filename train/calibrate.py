"""``slopewatch train calibration``: fit a stage-2 backend's calibration on out-of-fold scores.

Each photo of the train split is scored by a model trained without it (folds by photo): for the
adapter, ``folds`` adapters are trained on the other folds, with the shipped recipe (shorter, with
``epochs``) or with every step of the recipe an adapter folder records (``recipe_of``); the
temperatures fitted on their scores are saved beside the shipped model and applied to it
(cross-validated calibration, as scikit-learn's ``CalibratedClassifierCV`` with ``ensemble=False``
does). The evaluation split is never read.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.data import load_dataset
from core.stage2.calibration import confidences, ece, fit_calibration, save_scored
from core.taxonomy import load_taxonomy

BACKENDS = ("adapter",)  # the probe's calibration is fitted by `slopewatch train probe` itself


@dataclass
class CalibrateConfig:
    """Settings of ``slopewatch train calibration``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split whose out-of-fold scores are used (never the one you report).
        backend: backend to calibrate (adapter; the probe calibrates in ``train probe``).
        folds: folds by photo; each trains one model on the others.
        epochs: training epochs of each fold model (not used with recipe_of).
        recipe_of: train each fold model by the recipe recorded in this adapter folder instead (every
            step of it in turn, e.g. the recipe and then its lettered-question fine-tune), so the
            calibration is fitted on models made the way that adapter was.
        out: calibration JSON to write (default: ``calibration.json`` in the shipped adapter folder).
        scores_out: also write the out-of-fold scores here (JSON), for ``train ensemble``.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    split: str = "train"
    backend: str = "adapter"
    folds: int = 2
    epochs: int = 3
    recipe_of: Path | None = None
    out: Path | None = None
    scores_out: Path | None = None
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, found {self.backend!r}")
        if self.folds < 2 or self.epochs < 1:
            raise ValueError(f"folds and epochs: expected >= 2 and >= 1, found {self.folds} and {self.epochs}")
        if self.recipe_of is not None and not (Path(self.recipe_of) / "adapter.json").is_file():
            raise ValueError(f"recipe_of: expected an adapter folder (with adapter.json), found {self.recipe_of}")


# what a fold model takes from a recorded step: its data, output and start are the fold's own
_NOT_REPLAYED = {"data_yaml", "split", "val_split", "out", "init", "taxonomy"}


def fold_steps(cfg: CalibrateConfig) -> list[dict]:
    """The training settings of each step of a fold model, oldest first."""
    from dataclasses import fields

    from train.adapter import AdapterTrainConfig, recorded_recipe

    if cfg.recipe_of is None:
        return [{"epochs": cfg.epochs}]
    known = {f.name for f in fields(AdapterTrainConfig)} - _NOT_REPLAYED
    return [{k: v for k, v in step.items() if k in known} for step in recorded_recipe(cfg.recipe_of)]


def _described(steps: list[dict]) -> str:
    said = [f"{s['epochs']} epoch(s)" + (f" with lettered questions (share {s['mcq_share']})" if s.get("mcq_share") else "")
            for s in steps]
    return "adapter recipe with " + ", then ".join(said) + " per fold"


def calibrate(cfg: CalibrateConfig) -> dict:
    from core.evaluation.classifier import scored_objects
    from core.stage2.backends.adapter import AdapterVLM, default_adapter_dir
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import labeled_photos
    from train.adapter import AdapterTrainConfig, train_adapter
    from train.probe import folds_by_photo

    taxonomy = load_taxonomy(cfg.taxonomy)
    photos = labeled_photos(load_dataset(cfg.data_yaml, taxonomy), cfg.split)
    fold = folds_by_photo([p.key for p in photos], cfg.folds)
    steps = fold_steps(cfg)
    work = Path(tempfile.mkdtemp(prefix="calibrate-"))
    scored, per_fold = [], []
    try:
        for k in range(cfg.folds):
            train = [p for p, f in zip(photos, fold) if f != k]
            held = [p for p, f in zip(photos, fold) if f == k]
            made = None
            for i, step in enumerate(steps):
                tcfg = AdapterTrainConfig(data_yaml=Path(cfg.data_yaml), out=work / f"fold{k}-step{i}", val_split="", init=made,
                                          taxonomy=cfg.taxonomy, **step)
                train_adapter(tcfg, train_photos=train)
                made = tcfg.out
            model = AdapterVLM.load(made, taxonomy)
            model.config.rationale_tokens = 0  # only the scores matter here
            rows = scored_objects(ConditionClassifier(model, taxonomy), held)
            scored += rows
            per_fold.append({"fold": k, "train_photos": len(train), "scored_photos": len(held), "objects": len(rows)})
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cal = fit_calibration(scored, f"{cfg.split} split of {Path(cfg.data_yaml).parent.name}, {cfg.folds}-fold out-of-fold by photo, "
                                  + _described(steps))
    out = Path(cfg.out or default_adapter_dir() / "calibration.json")
    cal.save(out)
    if cfg.scores_out:
        save_scored(scored, cfg.scores_out, {p.key: int(f) for p, f in zip(photos, fold)})
    return {"calibration": str(out), "scores": str(cfg.scores_out or ""), "temperatures": cal.temperatures, "likely_right": cal.likely_right, "folds": per_fold,
            "oof_ece_raw": ece(*confidences(scored)), "oof_ece": ece(*confidences(scored, cal)), "objects": len(scored)}
