"""``slopewatch train probe``: fit the frozen-feature probe on a condition-labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data import load_dataset
from core.stage2.backends.probe import calibration_path, default_probe_path, fit_probe, probe_inputs
from core.stage2.calibration import Scored, confidences, ece, fit_calibration
from core.stage2.classifier import photo_context
from core.stage2.features import FeatureStore
from core.stage2.labeled import ground_truth
from core.taxonomy import load_taxonomy

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class ProbeTrainConfig:
    """Settings of ``slopewatch train probe``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split to train on (never the one you report).
        out: where to write the probe ``.npz``.
        c: inverse L2 regularisation strength; unset picks it by 5-fold cross-validation on the
            training split (folds by photo), so the reported split is never used for tuning.
        blocked_weight: extra loss weight for objects whose condition is "blocked" (the rare one).
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    split: str = "train"
    out: Path = field(default_factory=default_probe_path)
    c: float | None = None
    blocked_weight: float = 1.5
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        self.data_yaml, self.out = Path(self.data_yaml), Path(self.out)
        if self.c is not None and self.c <= 0:
            raise ValueError(f"c: expected > 0, found {self.c}")
        if self.blocked_weight <= 0:
            raise ValueError(f"blocked_weight: expected > 0, found {self.blocked_weight}")


def train_probe(cfg: ProbeTrainConfig) -> dict:
    taxonomy = load_taxonomy(cfg.taxonomy)
    rows = encode_split(load_dataset(cfg.data_yaml, taxonomy), cfg.split, FeatureStore())
    return fit_and_save(rows, taxonomy, cfg.out, f"{cfg.split} split of {cfg.data_yaml.parent.name}", cfg.blocked_weight, cfg.c)


def fit_and_save(rows, taxonomy, out: Path, source: str, blocked_weight: float = 1.5, c: float | None = None) -> dict:
    """Fit the probe on ``rows`` (``encode_split``/``encode_photos``: inputs, types, classes, photo
    hashes), C chosen by 5-fold CV by photo unless given, and save it with its calibration."""
    x, types, labels, photo_ids = rows
    weights = row_weights(labels, taxonomy, blocked_weight)
    cv = None
    if c is None:
        cv = {str(k): v for k, v in cross_validate_c(x, types, labels, photo_ids, weights, taxonomy).items()}
        c = float(max(cv, key=lambda k: cv[k]))
    probe = fit_probe(x, types, labels, taxonomy, c=c, sample_weight=weights)
    probe.save(out)
    # Calibration from out-of-fold scores at the chosen C: every object scored by a probe that
    # never saw its photo, so the temperatures correct the confidence the probe has on new photos.
    scored = out_of_fold(x, types, labels, photo_ids, weights, taxonomy, c)
    cal = fit_calibration(scored, f"{source}, 5-fold out-of-fold by photo, probe C={c}")
    cal.save(calibration_path(out))
    raw, after = confidences(scored), confidences(scored, cal)
    return {"weights": str(out), "objects": len(labels), "photos": len(set(photo_ids)), "c": c, "cv_balanced_accuracy": cv,
            "version": probe.version,
            "calibration": {"file": str(calibration_path(out)), "temperatures": cal.temperatures, "likely_right": cal.likely_right,
                            "oof_ece_raw": ece(*raw), "oof_ece": ece(*after)}}


def encode_split(ds, split: str, store: FeatureStore) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Probe inputs, type, class and photo hash of every object of ``split`` that has a condition
    (in photo order, then detection order: the order out-of-fold scores of any backend come in)."""
    return encode_photos(((image, dets, classes, key) for _, image, dets, classes, key in ground_truth(ds, split)), ds.taxonomy, store)


def encode_photos(photos, taxonomy, store: FeatureStore) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """As ``encode_split``, for ``(image, detections, classes, key)`` per photo; objects whose
    class is None (on a reviewed photo: not reviewed yet) are left out."""
    from tqdm.auto import tqdm

    rows, types, labels, photo_ids = [], [], [], []
    for image, dets, classes, key in tqdm(list(photos), desc="encode objects"):
        targets = [i for i, d in enumerate(dets) if classes[i] is not None and taxonomy.needs_condition(d.type)]
        if not targets:
            continue
        rows.append(probe_inputs(store, photo_context(image, dets, key), targets))
        types += [dets[i].type for i in targets]
        labels += [classes[i] for i in targets]
        photo_ids += [key] * len(targets)
    return np.concatenate(rows), types, labels, photo_ids


def row_weights(labels, taxonomy, blocked_weight: float) -> np.ndarray:
    return np.array([blocked_weight if taxonomy.get_class(y).condition == "blocked" else 1.0 for y in labels])


def folds_by_photo(groups, folds: int = 5) -> np.ndarray:
    """A fold number per row; all rows of one photo share a fold."""
    groups = np.asarray(groups)
    fold_of = {g: k % folds for k, g in enumerate(np.random.default_rng(0).permutation(np.unique(groups)))}
    return np.array([fold_of[g] for g in groups])


def out_of_fold(x, types, labels, groups, weights, taxonomy, c: float, folds: int = 5, fold: np.ndarray | None = None) -> list[Scored]:
    """Each row scored by a probe fitted on the other folds (``fold``: a given fold per row, e.g.
    the folds another backend's out-of-fold scores were made on)."""
    fold = folds_by_photo(groups, folds) if fold is None else np.asarray(fold)
    types, labels, groups = np.asarray(types), np.asarray(labels), np.asarray(groups)
    out = [None] * len(labels)
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        probe = fit_probe(x[tr], types[tr], labels[tr], taxonomy, c=c, sample_weight=weights[tr])
        for j, p in zip(np.flatnonzero(te), probe.proba_rows(x[te], types[te])):
            names = [cl.name for cl in taxonomy.classes_for_type(types[j])]
            out[j] = Scored(str(types[j]), p, names.index(labels[j]), str(groups[j]))
    return out


def cross_validate_c(x, types, labels, groups, weights, taxonomy, grid=C_GRID, folds: int = 5) -> dict[float, float]:
    """Balanced accuracy of each C over photo-grouped folds of the training rows."""
    from core.evaluation.metrics import classification_metrics

    fold = folds_by_photo(groups, folds)
    types, labels = np.asarray(types), np.asarray(labels)
    scores = {}
    for c in grid:
        pred = np.empty(len(labels), dtype=object)
        for k in range(folds):
            tr, te = fold != k, fold == k
            probe = fit_probe(x[tr], types[tr], labels[tr], taxonomy, c=c, sample_weight=weights[tr])
            for j, p in zip(np.flatnonzero(te), probe.proba_rows(x[te], types[te])):
                pred[j] = taxonomy.classes_for_type(types[j])[int(np.argmax(p))].name
        scores[c] = classification_metrics(list(labels), list(pred), taxonomy.class_names)["balanced_accuracy"]
    return scores
