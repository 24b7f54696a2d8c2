"""The nightly job on the production backend: reviewers' corrections in a real SQLite file train a
LoRA on a (tiny, CPU) Qwen2-VL, the gate judges it on the frozen set, a promoted LoRA lands in the
qwen2vl registry, and the served pipeline picks it up: it scores as the candidate, not the base.

The tiny model is random and too small to learn the labels (its class scores stay saturated by
label length), so the gate rightly refuses its candidate; the promotion half of the test then
lets the gate pass to follow a promoted LoRA all the way into ``serve``. The gate's own rules are
tested in test_gate.py."""

import numpy as np
from PIL import Image
from test_qwen2vl import tiny_dir  # noqa: F401  (the fixture)

from core.data import load_dataset
from core.model_registry import ModelRegistry
from core.stage2.backends.qwen2vl import Qwen2VLBackend, Qwen2VLConfig
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.labeled import ground_truth
from core.taxonomy import load_taxonomy
from db.store import Store
from train.nightly import NightlyConfig, nightly

TAX = load_taxonomy()


def _frozen_copy(samples_yaml, root):
    """The sample photos re-encoded (new bytes, so new content hashes) with their labels: the same
    scenes the reviewers corrected, judged without being the training photos themselves."""
    src = samples_yaml.parent / "valid"
    for sub in ("images", "labels"):
        (root / "valid" / sub).mkdir(parents=True)
    for image in sorted((src / "images").glob("*.jpg")):
        Image.open(image).convert("RGB").save(root / "valid" / "images" / image.name, quality=90)
        (root / "valid" / "labels" / f"{image.stem}.txt").write_text((src / "labels" / f"{image.stem}.txt").read_text())
    (root / "data.yaml").write_text((samples_yaml.read_text()))
    return root / "data.yaml"


def test_nightly_on_qwen2vl_promotes_a_lora_that_serve_picks_up(tiny_dir, samples_yaml, tmp_path, monkeypatch):  # noqa: F811
    from app.models import registry_host

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))  # registries of this test only
    base = Qwen2VLBackend(Qwen2VLConfig(model=str(tiny_dir), device="cpu", rationale_tokens=0), TAX)
    store = Store(tmp_path / "review.db", TAX)
    store.ensure_user("ana")
    ds = load_dataset(samples_yaml)
    corrected = 0
    for sample, image, dets, classes, key in ground_truth(ds, "valid"):
        photo, _ = store.add_photo(key, str(sample.image_path), image.width, image.height, sample.image_path.name, "ana")
        findings = ConditionClassifier(base, TAX).classify(image, dets, key)
        for fid, f, truth in zip(store.add_run(photo.id, findings, "ground-truth-boxes", "qwen2vl:base", 0.0), findings, classes):
            state = store.state(fid)
            if f.class_name != truth:
                store.correct(fid, state.revision, "ana", "relabel", class_name=truth)
                corrected += 1
            else:
                store.correct(fid, state.revision, "ana", "accept")
    assert corrected > 0

    frozen = _frozen_copy(samples_yaml, tmp_path / "frozen")
    cfg = NightlyConfig(db=tmp_path / "review.db", frozen_yaml=str(frozen), holdout_percent=0, calibration_percent=0,
                        stages="classifier", backend="qwen2vl", qwen_model=str(tiny_dir), epochs=3, qwen_lr=5e-3)
    refused = nightly(cfg)
    assert refused["backend"] == "qwen2vl" and refused["current"] == f"base:{tiny_dir}"
    assert refused["decision"] == "refused" and "not better on balanced accuracy" in " ".join(refused["reasons"])
    assert refused["counts"]["train_objects"] == 35 and refused["counts"]["frozen_photos"] == 6
    registry = ModelRegistry(stage="qwen2vl")
    assert registry.current() is None and registry.versions() == []

    monkeypatch.setattr("train.gate.decide", lambda candidate, current, gate=None: (True, ["passed by the test"]))
    result = nightly(cfg)
    assert result["decision"] == "promoted" and registry.current() == result["candidate"]
    assert (registry.current_path() / "adapter_model.safetensors").is_file()

    # serve --backend qwen2vl --qwen-model M: the promoted LoRA, on a fresh base.
    host = registry_host("qwen2vl", store, str(tiny_dir))
    host.start()
    assert host.wait(120), host.error
    served = host.pipeline().classifier.backend
    promoted = Qwen2VLBackend(Qwen2VLConfig(model=str(tiny_dir), adapter=registry.current_path(), device="cpu", rationale_tokens=0), TAX)
    _, image, dets, _, key = next(ground_truth(ds, "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if TAX.needs_condition(d.type)]
    # Log-likelihoods of every candidate class: probabilities saturate on this model.
    as_served = np.concatenate(served.log_likelihoods(ctx, targets))
    as_base = np.concatenate(base.log_likelihoods(ctx, targets))
    as_promoted = np.concatenate(promoted.log_likelihoods(ctx, targets))
    assert np.abs(as_served - as_promoted).max() < 1e-4, "serve is not running the promoted LoRA"
    assert np.abs(as_served - as_base).max() > 0.05, "serve scores like the base model: the LoRA did not reach it"

    # Nothing reviewed since: the next night has nothing to do.
    assert nightly(cfg)["decision"] == "nothing-new"
