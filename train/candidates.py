"""The stage-2 models a nightly run compares, and their calibrations.

The current model and the fine-tuned candidate of each backend (the Qwen2-VL LoRA here; the
adapter's is fine-tuned in ``train.nightly``), the probe blended with a candidate adapter
(:func:`candidate_probe`), and :func:`calibrate_candidate`, which refits a candidate's
temperatures on the calibration slice: reviewed photos held out by hash that no model trains on.
``cfg`` is a :class:`train.nightly.NightlyConfig`.
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


def candidate_probe(cfg, registry, taxonomy, train: list, store, folder: Path, refit: bool = True) -> tuple[Path, str]:
    """The probe blended with the candidate adapter, in the candidate's ``folder``: with ``refit``,
    refitted on the night's training photos when they replay the train split (``cfg.train_yaml``;
    C by 5-fold CV and temperatures out of fold, as ``slopewatch train probe`` does), since
    reviewers' labels teach the whole blend they are served; else the current version's probe,
    carried over. A few reviewed objects alone would make a worse probe than the one they
    replace. Returns ``(weights, note)``."""
    import shutil

    from core.stage2.backends.probe import calibration_path, default_probe_path, served_probe_path, version_probe_path
    from train.probe import encode_photos, fit_and_save

    out = version_probe_path(folder)
    if refit and cfg.train_yaml:
        rows = encode_photos(((p.image, p.detections, p.classes, p.key) for p in train), taxonomy, store)
        fit = fit_and_save(rows, taxonomy, out, f"nightly: {len(train)} training photos (train split and reviewed)", cfg.blocked_weight)
        return out, f"probe refitted on {fit['objects']} objects of {fit['photos']} photos (C={fit['c']:g} by 5-fold CV)"
    current = served_probe_path(registry.current_path())
    why = "refitted only with --train-yaml" if refit else "refitted only when the gate judges the blend"
    if current == default_probe_path():
        return current, f"shipped probe kept ({why})"
    out.parent.mkdir(parents=True, exist_ok=True)
    for source, target in ((current, out), (calibration_path(current), calibration_path(out))):
        if source.is_file():  # a probe may have no calibration file
            shutil.copyfile(source, target)
    return out, f"probe carried over from the current model {registry.current()} ({why})"


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
