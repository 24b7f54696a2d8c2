"""``slopewatch train nightly``: fold reviewers' corrections into the model each one indicts, gated.

Condition corrections train the stage-2 adapter (here); box corrections train the detector
(``train.nightly_detector``), both from one snapshot of the DB. For each stage:

1. Nothing reviewed since the last promotion: say so, exit 0.
2. Snapshot the DB (VACUUM INTO + integrity check) and read only the snapshot: reviewers are
   never blocked.
3. Training photos: the dataset's train split (replay) plus reviewed photos; the latest
   reviewed label per object wins. Frozen evaluation photos: a dataset split plus a fixed slice
   of reviewed photos chosen by content hash (held out on first sight, forever). Any photo hash
   in both aborts the run.
4. Fine-tune a copy of the current model; score current and candidate on the frozen set in one
   run, each as it would be served (an adapter inside the default ensemble, unless the server
   runs the adapter alone); promote only past the gate; record everything in ``training_runs``.
A kill at any point leaves the current model untouched: the candidate lives in a temp folder
and promotion is one ``os.replace`` of the pointer file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import SlopewatchError
from core.paths import data_dir
from train.holdout import LeakError, held_out

GATE_ON = ("ensemble", "adapter")


@dataclass
class NightlyConfig:
    """Settings of ``slopewatch train nightly``.

    Attributes:
        db: the review database.
        train_yaml: dataset replayed with the corrections (its ``train`` split); "" for none.
        frozen_yaml: dataset whose ``frozen_split`` is part of the frozen evaluation set; "" for none.
        frozen_split: split of ``frozen_yaml`` used for evaluation.
        holdout_percent: share of reviewed photos held out for evaluation (by content hash).
        calibration_percent: share of the other reviewed photos held out, also by hash and forever,
            to fit each candidate's calibration on photos no model trained on.
        registry: model registry folder (default: data dir).
        epochs: fine-tuning epochs.
        batch: objects per step.
        max_recall_drop: largest per-class recall drop the gate tolerates.
        max_ece_increase: largest rise in expected calibration error on the frozen set the gate tolerates.
        class_weights: inverse-frequency class weights in the loss.
        oversample: oversample rare classes.
        blocked_weight: extra weight for "blocked".
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
        stages: which models to retrain: ``classifier``, ``detector`` or both, comma-separated.
        detector_registry: stage-1 model registry folder (default: data dir).
        detector_train_yaml: dataset replayed for the detector (its ``train`` split; default: train_yaml).
        detector_frozen_yaml: dataset whose ``frozen_split`` scores the detector (default: frozen_yaml).
        detector_epochs: detector fine-tuning epochs.
        detector_batch: detector batch size.
        detector_lr: detector learning rate (AdamW, constant, no warm-up).
        detector_mosaic: mosaic augmentation probability while fine-tuning the detector (the shipped
            detector's last 10 epochs ran without it).
        detector_reviewed_repeat: how many times each reviewed photo is shown per detector epoch
            (the replay photos once).
        detector_freeze: the first N layers of the detector stay frozen while fine-tuning (10: the
            YOLOv8 backbone; 0: none).
        detector_workers: data-loader processes for the detector.
        max_map50_95_drop: largest mAP50-95 drop the detector gate tolerates (mAP50 may not drop).
        max_ap50_drop: largest per-type AP50 drop the detector gate tolerates (support-aware).
        backend: the stage-2 model the nightly fine-tunes: ``adapter`` (the offline default) or
            ``qwen2vl`` (a LoRA on ``qwen_model``: QLoRA on a CUDA GPU, plain LoRA on a CPU; its
            versions live in the ``qwen2vl`` registry, which ``serve --backend qwen2vl`` follows).
        qwen_model: Qwen2-VL / Qwen2.5-VL hub id or folder (backend qwen2vl).
        qwen_lr: learning rate of the Qwen2-VL LoRA.
        gate_on: what the stage-2 gate scores for the adapter backend, as reviewers are served it:
            ``ensemble`` (the default backend: the adapter blended with the probe, the blend's
            calibration refitted for the candidate; with ``train_yaml`` the probe is refitted on
            the same training data too) or ``adapter`` (a server run with ``--backend adapter``).
    """

    db: Path
    train_yaml: str = ""
    frozen_yaml: str = ""
    frozen_split: str = "valid"
    holdout_percent: int = 20
    calibration_percent: int = 15
    registry: Path | None = None
    epochs: int = 2
    batch: int = 8
    max_recall_drop: float = 0.10
    max_ece_increase: float = 0.03
    class_weights: bool = True
    oversample: bool = False
    blocked_weight: float = 1.5
    taxonomy: Path | None = None
    stages: str = "classifier,detector"
    detector_registry: Path | None = None
    detector_train_yaml: str = ""
    detector_frozen_yaml: str = ""
    detector_epochs: int = 3
    detector_batch: int = 16
    detector_lr: float = 2e-5
    detector_mosaic: float = 0.0
    detector_reviewed_repeat: int = 4
    detector_freeze: int = 10
    detector_workers: int = 2
    max_map50_95_drop: float = 0.01
    max_ap50_drop: float = 0.10
    backend: str = field(default="adapter", metadata={"choices": ("adapter", "qwen2vl")})
    qwen_model: str | None = None
    qwen_lr: float = 1e-4
    gate_on: str = field(default="ensemble", metadata={"choices": GATE_ON})

    def __post_init__(self) -> None:
        self.db = Path(self.db)
        if self.gate_on not in GATE_ON:
            raise ValueError(f"gate_on: expected one of {GATE_ON}, found {self.gate_on!r}")
        if self.backend not in ("adapter", "qwen2vl"):
            raise ValueError(f"backend: expected adapter or qwen2vl, found {self.backend!r}")
        if self.backend == "qwen2vl" and not self.qwen_model:
            raise ValueError("qwen_model: the qwen2vl backend needs a model; pass --qwen-model HUB_ID_OR_FOLDER")
        unknown = set(self.stage_list) - {"classifier", "detector"}
        if unknown or not self.stage_list:
            raise ValueError(f"stages: expected classifier, detector or both, found {self.stages!r}")
        if self.detector_reviewed_repeat < 1:
            raise ValueError(f"detector_reviewed_repeat: expected >= 1, found {self.detector_reviewed_repeat}")
        if self.detector_epochs < 1 or self.detector_batch < 1 or not self.detector_lr > 0:
            raise ValueError(f"detector_epochs, detector_batch, detector_lr: expected >= 1, >= 1, > 0, "
                             f"found {self.detector_epochs}, {self.detector_batch}, {self.detector_lr}")
        if not 0 <= self.holdout_percent <= 100 or not 0 <= self.calibration_percent <= 100:
            raise ValueError(f"holdout_percent, calibration_percent: expected 0..100, found {self.holdout_percent}, {self.calibration_percent}")
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, found {self.epochs}")

    @property
    def classifier_stage(self) -> str:
        """The model registry stage-2 versions of this backend live in."""
        return "classifier" if self.backend == "adapter" else "qwen2vl"

    @property
    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]


def ensure_current(registry, taxonomy) -> str:
    """The current version; on first use the shipped adapter becomes version 'shipped-<hash>'."""
    from core.data import file_sha256
    from core.stage2.backends.adapter import default_adapter_dir

    if registry.current():
        return registry.current()
    shipped = default_adapter_dir()
    version = "shipped-" + file_sha256(shipped / "weights.safetensors")[:12]
    if version not in [v["version"] for v in registry.versions()]:
        registry.add(shipped, version)
    registry.promote(version, "bootstrap from the shipped adapter", data_until=0.0)  # it has seen no corrections
    return version


def nightly(cfg: NightlyConfig, lm_factory=None) -> dict:
    """Run one nightly cycle; returns stage 2's record with stage 1's under ``"detector"`` (each
    stage that was not asked for is absent). ``lm_factory`` (tests) builds the base LM."""
    from core.model_registry import ModelRegistry
    from core.taxonomy import load_taxonomy
    from db.store import Store, snapshot
    from train.nightly_detector import nightly_detector

    started = time.time()
    taxonomy = load_taxonomy(cfg.taxonomy)
    live = Store(cfg.db, taxonomy)
    registry = ModelRegistry(cfg.registry, stage=cfg.classifier_stage)
    # One lock for every nightly of this data dir, whichever backend or registry it trains: the
    # runs share the work-folder clean-up below and the detector registry.
    lock_path = data_dir() / "nightly.lock"
    lock = open(lock_path, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SlopewatchError(f"another nightly run holds {lock_path}; not starting a second one") from None
    try:
        # Work folders of runs that were killed: nobody else can be using them while we hold the lock.
        for stale in data_dir().glob("nightly-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="nightly-", dir=data_dir()))
        try:
            snap = Store(snapshot(cfg.db, work / "snapshot.db"), taxonomy)
            result, failed = {}, None
            if "classifier" in cfg.stage_list:
                try:
                    result = _run(cfg, lm_factory, taxonomy, live, snap, registry, started, work)
                except SlopewatchError as exc:  # raised below, once the detector has had its night too
                    failed = exc
            if "detector" in cfg.stage_list:
                result["detector"] = nightly_detector(cfg, taxonomy, live, snap, work, started)
            if failed is not None:
                ran = f"; the detector stage ran: {result['detector']['decision']}" if "detector" in result else ""
                raise type(failed)(f"stage 2: {failed}{ran}") from failed
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.close()


def _run(cfg: NightlyConfig, lm_factory, taxonomy, live, snap, registry, started: float, work: Path) -> dict:
    from core.data import load_dataset
    from core.evaluation.classifier import score_photos
    from core.stage2 import registry as backends
    from core.stage2.backends.ensemble import blend_calibration_path, version_calibration_path, with_probe
    from core.stage2.backends.probe import served_probe_path
    from core.stage2.calibration import Calibrated, calibrated
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import labeled_photos, reviewed_photos
    from train.adapter import AdapterTrainConfig, train_adapter
    from train.candidates import (
        MIN_CALIBRATION_OBJECTS,
        calibrate_candidate,
        candidate_probe,
        labelled_objects,
        qwen_candidate,
        qwen_current,
    )
    from train.gate import GateConfig, decide

    # A Qwen2-VL starts from its base model (no LoRA): version None until the first promotion.
    current = ensure_current(registry, taxonomy) if cfg.backend == "adapter" else registry.current()
    new = live.corrections_since(registry.data_until(current) if current else 0.0)
    if new == 0:
        return {"decision": "nothing-new", "current": current, "message": f"no corrections since the current model ({current}) was promoted"}

    reviewed = list(reviewed_photos(snap))  # the night's training set: in memory together
    replay = labeled_photos(load_dataset(cfg.train_yaml, taxonomy), "train") if cfg.train_yaml else []
    replay_keys = {p.key for p in replay}
    # Judged and calibrated on what reviewers decided only; imported labels still pending train.
    frozen = [p.decided() for p in reviewed if held_out(p.key, cfg.holdout_percent, trained=replay_keys)]
    rest = [p for p in reviewed if not held_out(p.key, cfg.holdout_percent, trained=replay_keys)]
    calibration_slice = [p for p in rest if held_out(p.key, cfg.calibration_percent, "calibrate", trained=replay_keys)]
    calibrate = [p.decided() for p in calibration_slice]
    train = [p for p in rest if not held_out(p.key, cfg.calibration_percent, "calibrate", trained=replay_keys)]
    # Counted as calibrate_candidate will count them: labelled objects whose type has a choice of classes.
    if labelled_objects(calibrate, taxonomy) < MIN_CALIBRATION_OBJECTS:
        # Too few to fit a calibration: those corrections teach the candidate instead of idling.
        train, calibrate = train + calibration_slice, []
    if cfg.frozen_yaml:
        frozen += labeled_photos(load_dataset(cfg.frozen_yaml, taxonomy), cfg.frozen_split)
    # The same photo reviewed and in the dataset: the reviewed labels win.
    reviewed_keys = {p.key for p in reviewed}
    train += [p for p in replay if p.key not in reviewed_keys]
    leak = {p.key for p in train} & ({p.key for p in frozen} | {p.key for p in calibrate})
    if leak:
        raise LeakError(f"{len(leak)} frozen-evaluation or calibration photo(s) also in the training data, e.g. {sorted(leak)[0]}; aborting")
    if not frozen:
        raise SlopewatchError("expected a frozen evaluation set, found none: pass --frozen-yaml or raise --holdout-percent")
    labels = sorted((p.key, i, c) for p in train for i, c in enumerate(p.classes) if c is not None)
    data_hash = hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16]

    if cfg.backend == "qwen2vl":
        current_model = qwen_current(cfg, registry, taxonomy)
        cur_metrics = score_photos(ConditionClassifier(current_model, taxonomy), frozen)
        current_calibration = getattr(current_model, "calibration", None)
        del current_model  # scored: let it go before training loads the base again
        candidate = qwen_candidate(cfg, registry, taxonomy, train, work / "candidate")
    else:
        lm = lm_factory or (lambda: None)

        # Both models come from the backend registry.
        def current_adapter():
            # fp32: the candidate is fine-tuned from this model, and both are scored alike for the gate.
            return backends.create("adapter", backends.BackendOptions(taxonomy, adapter_dir=registry.current_path(), base_lm=lm(),
                                                                      adapter_precision="fp32"))

        current_model = current_adapter()
        current_calibration = getattr(current_model, "calibration", None)
        current_judged = current_model
        current_blend = None
        if cfg.gate_on == "ensemble":
            ensemble = with_probe(current_model, taxonomy, served_probe_path(registry.current_path()))
            current_judged = calibrated(ensemble, blend_calibration_path(registry.current_path(), ensemble))
            # Not getattr: an uncalibrated Ensemble would answer with its adapter's calibration.
            current_blend = current_judged.calibration if isinstance(current_judged, Calibrated) else None
        cur_metrics = score_photos(ConditionClassifier(current_judged, taxonomy), frozen)
        del current_judged, current_model  # scored: the candidate is trained from a fresh copy
        served = current_adapter()
        candidate = getattr(served, "inner", served)  # train the model itself, not its calibration wrapper
        tcfg = AdapterTrainConfig(data_yaml=Path(cfg.train_yaml or "."), out=work / "candidate", epochs=cfg.epochs, batch=cfg.batch,
                                  class_weights=cfg.class_weights, oversample=cfg.oversample, blocked_weight=cfg.blocked_weight,
                                  lr=3e-4, lora_lr=1e-4, val_split="")
        train_adapter(tcfg, candidate, train_photos=train)
    candidate, calibration_note = calibrate_candidate(candidate, calibrate, current_calibration, work / "candidate" / "calibration.json",
                                                      taxonomy)
    if cfg.backend == "adapter":
        # Refitted only where the gate judges the blend; carried over otherwise, so a version
        # promoted under --gate-on adapter does not drop the probe a former night refitted.
        probe, probe_note = candidate_probe(cfg, registry, taxonomy, train, candidate.store, work / "candidate",
                                            refit=cfg.gate_on == "ensemble")
        calibration_note += f"; {probe_note}"
    if cfg.backend == "adapter" and cfg.gate_on == "ensemble":
        # Judged as served: the candidate inside the blend, whose calibration is refitted for it too.
        ensemble = with_probe(candidate, taxonomy, probe)
        candidate, blend_note = calibrate_candidate(ensemble, calibrate, current_blend, version_calibration_path(work / "candidate", ensemble),
                                                    taxonomy)
        calibration_note += f"; blend {blend_note}"
    cand_metrics = score_photos(ConditionClassifier(candidate, taxonomy), frozen)
    # ECE is gated whether the calibration was refitted or kept: kept temperatures are what the
    # candidate would be served with, and an over-confident model fills the likely-right band
    # with wrong labels that a bulk accept then confirms.
    promote, reasons = decide(cand_metrics, cur_metrics, GateConfig(max_recall_drop=cfg.max_recall_drop, max_ece_increase=cfg.max_ece_increase))
    reasons.append(calibration_note)
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + data_hash[:8]
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "n", "per_class", "calibration")
    judged_as = cfg.gate_on if cfg.backend == "adapter" else cfg.backend
    result = {
        "decision": "promoted" if promote else "refused", "reasons": reasons, "new_corrections": new,
        "current": current or f"base:{cfg.qwen_model}", "candidate": version if promote else None, "backend": cfg.backend,
        "correction_kinds": live.correction_kinds(registry.data_until(current))["total"],
        # What the gate scored travels with the run's record and the version's metrics.
        "counts": {"judged_as": judged_as, "train_photos": len(train), "calibration_photos": len(calibrate),
                   "train_objects": labelled_objects(train, taxonomy),
                   "frozen_photos": len(frozen),
                   "frozen_objects": cur_metrics["n"]},
        "current_metrics": {k: cur_metrics[k] for k in keys}, "candidate_metrics": {k: cand_metrics[k] for k in keys},
        "data_hash": data_hash, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    if promote:
        registry.add(work / "candidate", version, {**result["candidate_metrics"], "judged_as": judged_as})
        # Cut at the run's start, before the snapshot: a correction made meanwhile counts as new next time.
        registry.promote(version, "; ".join(reasons), data_until=started)
    result["duration_s"] = round(time.time() - started, 1)
    # The stored record carries the kinds of the corrections made since the current model's cut-off.
    live.record_training_run(started, data_hash, {**result["counts"], "correction_kinds": result["correction_kinds"]},
                             result["candidate_metrics"], result["current_metrics"], result["decision"], version, result["duration_s"],
                             reasons=reasons)
    return result
