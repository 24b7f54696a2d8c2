"""The ``probe`` backend: logistic regression on frozen features, one model per object type.

It is the honesty baseline a vision-language backend must beat. Weights are stored as a
plain ``.npz`` (no pickle), so loading a probe can never run code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import WeightsError
from core.model_registry import ModelRegistry
from core.paths import assets_dir
from core.stage2.calibration import calibrated
from core.stage2.classifier import PhotoContext
from core.stage2.features import FeatureStore, position_features
from core.stage2.registry import BackendOptions
from core.taxonomy import Taxonomy


def probe_inputs(store: FeatureStore, ctx: PhotoContext, targets: Sequence[int]) -> np.ndarray:
    """``[crop features | context features | position]`` per target."""
    boxes = [ctx.detections[i].box for i in targets]
    crop_f, ctx_f = store.object_features(ctx.image, boxes, ctx.image_key)
    pos = np.stack([position_features(b, ctx.image.width, ctx.image.height) for b in boxes]) if boxes else np.zeros((0, 7))
    return np.concatenate([crop_f, ctx_f, pos], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Probe:
    """Per-type multinomial logistic regression over standardised features."""

    name = "probe"

    def __init__(self, params: dict[str, np.ndarray], taxonomy: Taxonomy, store: FeatureStore | None = None):
        self.params = params
        self.taxonomy = taxonomy
        self.store = store or FeatureStore()
        digest = hashlib.sha256()
        for k in sorted(params):
            digest.update(k.encode() + np.ascontiguousarray(params[k]).tobytes())
        self.version = digest.hexdigest()[:12]

    @classmethod
    def load(cls, path: Path, taxonomy: Taxonomy, store: FeatureStore | None = None) -> "Probe":
        if not Path(path).is_file():
            raise WeightsError(f"expected probe weights at {path}, found nothing")
        with np.load(path, allow_pickle=False) as data:
            params = {k: data[k] for k in data.files}
        for t in taxonomy.type_names:
            if taxonomy.needs_condition(t) and f"{t}/coef" not in params:
                raise WeightsError(f"{path}: expected weights for type {t!r}, found keys {sorted(params)}")
        return cls(params, taxonomy, store)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.params)
        tmp.replace(path)

    def score(self, ctx: PhotoContext, targets: Sequence[int]) -> list[np.ndarray]:
        return self.proba_rows(probe_inputs(self.store, ctx, targets), [ctx.detections[i].type for i in targets])

    def proba_rows(self, x: np.ndarray, types: Sequence[str]) -> list[np.ndarray]:
        """Class probabilities (over each row's type's candidates) for precomputed probe inputs."""
        out = []
        for row, t in zip(x, types):
            z = (row - self.params[f"{t}/mean"]) / self.params[f"{t}/scale"]
            out.append(_softmax(self.params[f"{t}/coef"] @ z + self.params[f"{t}/intercept"]))
        return out


def fit_probe(x: np.ndarray, types: Sequence[str], labels: Sequence[str], taxonomy: Taxonomy, c: float = 0.5,
              sample_weight: np.ndarray | None = None, store: FeatureStore | None = None) -> Probe:
    """Fit one multinomial model per type with class-balanced weights.

    Args:
        x: ``(n, d)`` probe inputs.
        types: object type per row.
        labels: class name per row.
        taxonomy: decides the candidate classes (and their order) per type.
        c: inverse regularisation strength.
        sample_weight: extra per-row weights (e.g. for the rare "blocked" condition).
    """
    from sklearn.linear_model import LogisticRegression

    types, labels = np.asarray(types), np.asarray(labels)
    weights = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    params = {}
    for t in taxonomy.type_names:
        if not taxonomy.needs_condition(t):
            continue
        cands = [cl.name for cl in taxonomy.classes_for_type(t)]
        rows = types == t
        if not rows.any():
            continue  # no data, no weights: Probe.load refuses such a probe for this taxonomy
        xt, yt = x[rows], np.array([cands.index(y) for y in labels[rows]])
        mean, scale = xt.mean(0), xt.std(0) + 1e-6
        # Inverse-frequency class weights, multiplied into any per-row weights.
        counts = np.bincount(yt, minlength=len(cands)).astype(float)
        cw = np.where(counts > 0, len(yt) / (len(cands) * np.maximum(counts, 1)), 0.0)
        coef = np.zeros((len(cands), x.shape[1]))
        intercept = np.full(len(cands), -30.0)  # a class never seen in training gets ~0 probability
        if len(set(yt.tolist())) == 1:
            # One class seen (a small fold): nothing to separate, so that class, whatever the input.
            intercept[yt[0]] = 0.0
            params.update({f"{t}/mean": mean, f"{t}/scale": scale, f"{t}/coef": coef, f"{t}/intercept": intercept})
            continue
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit((xt - mean) / scale, yt, sample_weight=cw[yt] * weights[rows])
        if len(model.classes_) == 2:
            # sklearn's binary model is one logit; split it symmetrically for a softmax.
            coef[model.classes_[1]], coef[model.classes_[0]] = model.coef_[0] / 2, -model.coef_[0] / 2
            intercept[model.classes_[1]], intercept[model.classes_[0]] = model.intercept_[0] / 2, -model.intercept_[0] / 2
        else:
            coef[model.classes_] = model.coef_
            intercept[model.classes_] = model.intercept_
        params.update({f"{t}/mean": mean, f"{t}/scale": scale, f"{t}/coef": coef, f"{t}/intercept": intercept})
    return Probe(params, taxonomy, store)


def default_probe_path() -> Path:
    return assets_dir() / "models" / "probe" / "drainage-probe.npz"


def calibration_path(weights: Path) -> Path:
    """The probe's calibration file, beside its weights (``drainage-probe.calibration.json``)."""
    return Path(weights).with_suffix(".calibration.json")


def version_probe_path(adapter_folder: Path) -> Path:
    """Where a nightly writes the probe it refitted, with its calibration, beside the adapter
    version in ``adapter_folder`` (the probe learns from the same corrections)."""
    return Path(adapter_folder) / "probe" / "drainage-probe.npz"


def served_probe_path(adapter_folder: Path | None, probe_weights: Path | None = None) -> Path:
    """The probe served with the stage-2 version in ``adapter_folder``: ``probe_weights`` when
    given, else the one a nightly refitted with that version, else the shipped probe."""
    if probe_weights:
        return Path(probe_weights)
    own = version_probe_path(adapter_folder) if adapter_folder else None
    return own if own is not None and own.is_file() else default_probe_path()


def from_options(options: BackendOptions):
    """The served probe (the one refitted with the promoted stage-2 version when a nightly refitted
    one, so ``--backend probe`` learns from reviews as the blend does), calibrated when its
    calibration file exists (``slopewatch train probe`` and the nightly write both)."""
    # Named weights need no registry read (a broken registry must not stop an explicit probe).
    folder = None if options.probe_weights else options.adapter_dir or ModelRegistry().current_path()
    path = served_probe_path(folder, options.probe_weights)
    return calibrated(Probe.load(path, options.taxonomy), calibration_path(path))
