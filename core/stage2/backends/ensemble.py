"""The ``ensemble`` backend: the adapter VLM and the probe, their calibrated probabilities blended.

The adapter reads the spatial prompt, the probe reads the same frozen crop features through a
linear model; they err on different objects, so a blend is right more often than either. How
they are blended (``rule``: a weighted mean of the probabilities, or of the log-probabilities)
and the probe's ``weight`` are chosen by ``slopewatch train ensemble`` on out-of-fold scores of
the train split — each component scored by a model trained without the photo, both on the same
folds — never on the split that is reported. The blend is then calibrated on those same scores
(``calibration.json`` beside ``ensemble.json``), so the queue and the likely-right band read
calibrated numbers.

The components are the served ones: the registry's current adapter (a promoted nightly version
included) and the probe that version carries (a nightly refits it on the same corrections, when
it replays the train split: ``probe/`` in the version folder), else the shipped probe, each with
its own calibration, sharing one feature store so a photo's crops are encoded once. A nightly
version carries the blend's calibration refitted for it (``ensemble-calibration-<blend id>.json``
in its folder), since the shipped one was fitted for the shipped adapter. The blend id names the
probe and the rule and weight it was fitted with, so a later ``train ensemble`` or ``train
probe`` does not inherit temperatures fitted for another blend: a version without a file for the
current blend (and the shipped adapter) uses the shipped blend calibration.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from core.jsonfile import load_record, save_record
from core.paths import assets_dir
from core.stage2.calibration import calibrated
from core.stage2.registry import BackendOptions

RULES = ("linear", "log")


def blend(p_adapter: np.ndarray, p_probe: np.ndarray, weight: float, rule: str) -> np.ndarray:
    """The probe at ``weight`` and the adapter at ``1 - weight``: ``linear`` averages the
    probabilities, ``log`` the log-probabilities (a product of experts, renormalised)."""
    a, b = np.asarray(p_adapter, float), np.asarray(p_probe, float)
    if a.shape != b.shape:
        raise ValueError(f"blend: expected two probability vectors of one shape, found {a.shape} and {b.shape}")
    if rule == "linear":
        p = (1 - weight) * a + weight * b
    elif rule == "log":
        logp = (1 - weight) * np.log(np.clip(a, 1e-12, 1.0)) + weight * np.log(np.clip(b, 1e-12, 1.0))
        p = np.exp(logp - logp.max())
    else:
        raise ValueError(f"blend rule: expected one of {RULES}, found {rule!r}")
    return p / p.sum()


@dataclass(frozen=True)
class EnsembleSpec:
    """How the two components are blended, and how that was chosen.

    Attributes:
        weight: the probe's weight in the blend (the adapter's is ``1 - weight``).
        rule: ``linear`` (mean of probabilities) or ``log`` (mean of log-probabilities).
        fitted_on: the out-of-fold scores the choice was made on.
        candidates: every rule and weight tried, with its out-of-fold figures.
    """

    weight: float
    rule: str
    fitted_on: str = ""
    candidates: tuple[dict, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise ValueError(f"EnsembleSpec.weight: expected a number in [0, 1], found {self.weight}")
        if self.rule not in RULES:
            raise ValueError(f"EnsembleSpec.rule: expected one of {RULES}, found {self.rule!r}")

    def save(self, path: Path) -> Path:
        return save_record(self, path)

    @classmethod
    def load(cls, path: Path) -> "EnsembleSpec":
        return load_record(cls, path, ("candidates",), "an ensemble spec (weight, rule)", "make one with `slopewatch train ensemble`")


class Ensemble:
    """Scores with both components and blends; everything else (rationales, MCQ answers, the
    feature store, quantisation) is the adapter's."""

    name = "ensemble"

    def __init__(self, adapter, probe, spec: EnsembleSpec):
        self.adapter, self.probe, self.spec = adapter, probe, spec
        self.version = f"{adapter.version}+{probe.version}+{spec.rule}{spec.weight:g}"

    @property
    def blend_id(self) -> str:
        """What the blend's calibration depends on besides the adapter: the probe (with its
        calibration), the rule and the weight."""
        return hashlib.sha256(f"{self.probe.version}|{self.spec.rule}|{self.spec.weight!r}".encode()).hexdigest()[:10]

    def score(self, ctx, targets: Sequence[int], **kwargs) -> list[np.ndarray]:
        a = self.adapter.score(ctx, targets, **kwargs)
        b = self.probe.score(ctx, targets)
        return [blend(x, y, self.spec.weight, self.spec.rule) for x, y in zip(a, b)]

    @property
    def store(self):
        return self.adapter.store

    @store.setter
    def store(self, value) -> None:
        # Both components read one store (a benchmark swaps in one that does not persist); set it
        # on the models themselves, under any calibration wrapper.
        for part in (self.adapter, self.probe):
            getattr(part, "inner", part).store = value

    def __getattr__(self, name):
        return getattr(self.adapter, name)


def default_ensemble_dir() -> Path:
    return assets_dir() / "models" / "ensemble"


def version_calibration_path(adapter_folder: Path, ensemble: Ensemble) -> Path:
    """Where a nightly writes the blend calibration it refitted for the adapter version in ``adapter_folder``."""
    return Path(adapter_folder) / f"ensemble-calibration-{ensemble.blend_id}.json"


def blend_calibration_path(adapter_folder: Path | None, ensemble: Ensemble) -> Path:
    """The blend calibration for ``ensemble`` over the adapter version in ``adapter_folder``: the
    one a nightly refitted for that version and this blend, else the shipped one."""
    own = version_calibration_path(adapter_folder, ensemble) if adapter_folder else None
    return own if own is not None and own.is_file() else default_ensemble_dir() / "calibration.json"


def with_probe(adapter, taxonomy, probe_weights: Path | None = None) -> Ensemble:
    """``adapter`` (as served: calibrated when it has a calibration) blended with the calibrated
    probe on the adapter's feature store, as ``ensemble.json`` says; the blend itself uncalibrated."""
    from core.stage2.backends.probe import Probe, calibration_path, default_probe_path

    weights = probe_weights or default_probe_path()
    probe = calibrated(Probe.load(weights, taxonomy, store=adapter.store), calibration_path(weights))
    return Ensemble(adapter, probe, EnsembleSpec.load(default_ensemble_dir() / "ensemble.json"))


def from_options(options: BackendOptions):
    """The served adapter and probe (each calibrated; the probe refitted with that adapter version
    when a nightly refitted one), blended as ``ensemble.json`` says, with the blend calibration of
    that adapter version."""
    from core.stage2.backends import adapter_serving as adapter_backend
    from core.stage2.backends.probe import served_probe_path

    folder = Path(options.adapter_dir or adapter_backend.current_adapter_dir())
    adapter = adapter_backend.from_options(replace(options, adapter_dir=folder))
    ensemble = with_probe(adapter, options.taxonomy, served_probe_path(folder, options.probe_weights))
    return calibrated(ensemble, blend_calibration_path(folder, ensemble))
