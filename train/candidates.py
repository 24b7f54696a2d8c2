"""The stage-2 models a nightly run compares, and their calibrations.

The current model and the fine-tuned candidate of each backend (the Qwen2-VL LoRA here; the
adapter's is fine-tuned in ``train.nightly``), and :func:`calibrate_candidate`, which refits a
candidate's temperatures on the calibration slice: reviewed photos held out by hash that no
model trains on. ``cfg`` is a :class:`train.nightly.NightlyConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

MIN_CALIBRATION_OBJECTS = 20


def labelled_objects(photos, taxonomy) -> int:
    """Objects of ``photos`` with a known class and a type that has a choice of classes."""
    return sum(c is not None and taxonomy.needs_condition(d.type) for p in photos for d, c in zip(p.detections, p.classes))


def calibrate_candidate(model, photos, current, path: Path, taxonomy):
    """The trained candidate wrapped with a calibration refitted on the calibration slice (photos
    no model trained on), written to ``path`` so it is promoted with the weights. With too few
    objects there, the current model's calibration is kept (or none). A refit that chooses no
    likely-right threshold keeps the current one unless the slice contradicts it (enough objects
    in its band, right less often than the target): calibrated confidences mean the same after a
    refit, and dropping the band on too little evidence would leave reviewers nothing to accept
    in bulk. Returns ``(backend, note)``."""
    from core.evaluation.classifier import scored_objects
    from core.stage2.calibration import Calibrated, band_contradicted, confidences, fit_calibration
    from core.stage2.classifier import ConditionClassifier

    scored = scored_objects(ConditionClassifier(model, taxonomy), photos) if photos else []
    if len(scored) >= MIN_CALIBRATION_OBJECTS:
        cal = fit_calibration(scored, f"nightly calibration slice: {len(photos)} reviewed photos held out by hash, {len(scored)} objects")
        note = f"calibration refitted on {len(scored)} held-out objects: temperatures {cal.temperatures}"
        if cal.likely_right is None and current is not None and current.likely_right is not None:
            why = band_contradicted(*confidences(scored, cal), current.likely_right, cal.target)
            if why is None:
                kept = f"likely-right threshold {current.likely_right:.3f} kept from the current calibration (the slice chose none and does not contradict it)"
                cal = replace(cal, likely_right=current.likely_right, fitted_on=f"{cal.fitted_on}; {kept}")
                note += f", {kept}"
            else:
                note += f", no likely-right band: on the slice {why}"
    elif current is not None:
        cal = current
        note = f"calibration kept from the current model ({len(scored)} held-out objects < {MIN_CALIBRATION_OBJECTS})"
    else:
        return model, f"no calibration ({len(scored)} held-out objects < {MIN_CALIBRATION_OBJECTS}, and none before)"
    cal.save(path)
    return Calibrated(model, cal), note


def qwen_config(cfg, adapter: Path | None):
    from core.stage2.backends.qwen2vl import Qwen2VLConfig

    return Qwen2VLConfig(model=cfg.qwen_model, adapter=adapter, rationale_tokens=0)  # the gate judges labels


def qwen_current(cfg, registry, taxonomy):
    """The current Qwen2-VL backend: the base model, or the base with the promoted LoRA and its calibration."""
    from core.stage2.backends.qwen2vl import Qwen2VLBackend
    from core.stage2.calibration import calibrated

    adapter = registry.current_path()
    return calibrated(Qwen2VLBackend(qwen_config(cfg, adapter), taxonomy), adapter / "calibration.json" if adapter else None)


def qwen_candidate(cfg, registry, taxonomy, train: list, out: Path):
    """A LoRA fine-tuned from the current model on ``train``, saved in ``out`` and loaded back from
    there on a fresh base, exactly as ``serve`` will load it. The caller has let go of the current
    model: on a GPU, two copies of the base beside the one training would not fit."""
    import gc

    import torch

    from core.stage2.backends.qwen2vl import Qwen2VLBackend
    from train.qwen2vl import QwenTrainConfig, train_qwen2vl

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model_cfg = qwen_config(cfg, registry.current_path())  # resumed from the promoted LoRA, if any
    # QLoRA where bitsandbytes can run it (CUDA); a plain LoRA elsewhere (tiny models on a CPU).
    train_qwen2vl(model_cfg, QwenTrainConfig(out=out, epochs=cfg.epochs, lr=cfg.qwen_lr, qlora=torch.cuda.is_available(),
                                             class_weights=cfg.class_weights, blocked_weight=cfg.blocked_weight), train, taxonomy)
    gc.collect()
    return Qwen2VLBackend(qwen_config(cfg, out), taxonomy)
