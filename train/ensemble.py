"""``slopewatch train ensemble``: choose how to blend the adapter and the probe, by cross-validation.

Input: the adapter's out-of-fold scores of the train split (``slopewatch train calibration
--scores-out``: fold adapters trained with the shipped recipe, each scoring the photos it did not
see). The probe is scored out-of-fold on the *same* folds, so both components have seen the same
photos when they score one. Each component is calibrated as it is served (temperatures fitted on
its own out-of-fold scores), every rule and weight is tried, and the choice is the highest
balanced accuracy (ties: accuracy, then the smaller probe weight). The blend's calibration and
likely-right band are fitted on the chosen blend's scores. The evaluation split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data import load_dataset
from core.errors import SlopewatchError
from core.evaluation.metrics import classification_metrics
from core.stage2.backends.ensemble import RULES, EnsembleSpec, blend, default_ensemble_dir
from core.stage2.calibration import Scored, confidences, ece, fit_calibration, load_scored
from core.stage2.features import FeatureStore
from core.taxonomy import load_taxonomy
from train.evidence import EVALUATION_SPLITS
from train.probe import encode_split, out_of_fold, row_weights

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # coarse on purpose: 775 objects cannot pick finer without fitting noise


class ScoresMismatch(SlopewatchError):
    """Out-of-fold scores that do not line up with the split's objects."""


@dataclass
class EnsembleTrainConfig:
    """Settings of ``slopewatch train ensemble``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        adapter_scores: the adapter's out-of-fold scores (``train calibration --scores-out``) on ``split``.
        split: split the scores were made on (never the one you report).
        probe_c: the probe's inverse regularisation (the shipped probe's, chosen by 5-fold CV in ``train probe``).
        blocked_weight: extra loss weight of "blocked" objects in the probe (as ``train probe``).
        out: folder for ``ensemble.json`` and the blend's ``calibration.json``.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    adapter_scores: Path
    split: str = "train"
    probe_c: float = 1.0
    blocked_weight: float = 1.5
    out: Path = field(default_factory=default_ensemble_dir)
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        self.data_yaml, self.adapter_scores, self.out = Path(self.data_yaml), Path(self.adapter_scores), Path(self.out)
        if self.split in EVALUATION_SPLITS:
            raise ValueError(f"split: expected a training split (the blend is chosen on it), found {self.split!r}")
        if self.probe_c <= 0 or self.blocked_weight <= 0:
            raise ValueError(f"probe_c and blocked_weight: expected > 0, found {self.probe_c} and {self.blocked_weight}")


def aligned(adapter: list[Scored], probe: list[Scored]) -> list[tuple[Scored, Scored]]:
    """Pairs of one object's two scores: the k-th scored object of a photo in both lists (both
    come in detection order); refuses scores whose objects, types or truths differ."""
    def keyed(rows):
        out, seen = {}, {}
        for s in rows:
            k = seen[s.photo] = seen.get(s.photo, -1) + 1
            out[(s.photo, k)] = s
        return out

    a, b = keyed(adapter), keyed(probe)
    if a.keys() != b.keys():
        raise ScoresMismatch(f"expected the adapter's scores to cover the split's {len(b)} objects, found {len(a)} "
                             f"({len(a.keys() - b.keys())} not in the split, {len(b.keys() - a.keys())} missing)")
    pairs = [(a[k], b[k]) for k in sorted(b)]
    bad = [k for k, (x, y) in zip(sorted(b), pairs) if (x.object_type, x.truth) != (y.object_type, y.truth)]
    if bad:
        raise ScoresMismatch(f"expected the same type and class per object, found {len(bad)} that differ (first: photo {bad[0][0][:12]})")
    return pairs


def figures(scored: list[Scored], taxonomy) -> dict:
    names = {t: [c.name for c in taxonomy.classes_for_type(t)] for t in {s.object_type for s in scored}}
    truth = [names[s.object_type][s.truth] for s in scored]
    pred = [names[s.object_type][int(np.argmax(s.probs))] for s in scored]
    m = classification_metrics(truth, pred, taxonomy.class_names)
    return {"accuracy": round(m["accuracy"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "ece": round(ece(*confidences(scored)), 4)}


def train_ensemble(cfg: EnsembleTrainConfig) -> dict:
    taxonomy = load_taxonomy(cfg.taxonomy)
    adapter_raw, fold_of = load_scored(cfg.adapter_scores)
    x, types, labels, photo_ids = encode_split(load_dataset(cfg.data_yaml, taxonomy), cfg.split, FeatureStore())
    missing = sorted(set(photo_ids) - fold_of.keys())
    if missing:
        raise ScoresMismatch(f"expected a fold for every photo of the {cfg.split} split, found none for {len(missing)} (first {missing[0][:12]})")
    fold = np.array([fold_of[g] for g in photo_ids])
    probe_raw = out_of_fold(x, types, labels, photo_ids, row_weights(labels, taxonomy, cfg.blocked_weight), taxonomy,
                            cfg.probe_c, fold=fold)
    pairs = aligned(adapter_raw, probe_raw)
    # Each component as it is served: calibrated by temperatures fitted on its own out-of-fold scores.
    cal_a = fit_calibration([a for a, _ in pairs], "adapter out-of-fold")
    cal_p = fit_calibration([p for _, p in pairs], "probe out-of-fold")
    comps = [(cal_a.apply(a.probs, a.object_type), cal_p.apply(p.probs, p.object_type), a) for a, p in pairs]

    def blended(w: float, rule: str) -> list[Scored]:
        return [Scored(s.object_type, blend(pa, pp, w, rule), s.truth, s.photo) for pa, pp, s in comps]

    table = [{"rule": rule, "weight": w, **figures(blended(w, rule), taxonomy)} for rule in RULES for w in WEIGHTS
             if not (rule == "log" and w in (0.0, 1.0))]  # at 0 and 1 both rules are one component alone
    best = max(table, key=lambda r: (r["balanced_accuracy"], r["accuracy"], -r["weight"]))
    folds = len(set(fold_of.values()))
    fitted_on = (f"{cfg.split} split of {cfg.data_yaml.parent.name}: adapter and probe each scored {folds}-fold out-of-fold "
                 f"by photo on the same folds ({cfg.adapter_scores.name})")
    chosen = blended(best["weight"], best["rule"])
    cal = fit_calibration(chosen, fitted_on)
    spec = EnsembleSpec(best["weight"], best["rule"], fitted_on, tuple(table))
    spec.save(cfg.out / "ensemble.json")
    cal.save(cfg.out / "calibration.json")
    conf, correct = confidences(chosen, cal)
    band = conf >= cal.likely_right if cal.likely_right is not None else np.zeros(len(conf), bool)
    return {"out": str(cfg.out), "objects": len(pairs), "photos": len(set(photo_ids)), "folds": folds,
            "candidates": table, "chosen": {"rule": best["rule"], "weight": best["weight"]},
            "calibration": {"temperatures": cal.temperatures, "oof_ece_raw": best["ece"], "oof_ece": round(ece(conf, correct), 4),
                            "likely_right": cal.likely_right,
                            "band_coverage": round(float(band.mean()), 4),
                            "band_accuracy": round(float(correct[band].mean()), 4) if band.any() else None}}
