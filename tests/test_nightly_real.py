"""Nightly runs with the real shipped adapter (SmolLM2): minutes of CPU, so marked slow."""

import random

import pytest

from core.data import file_sha256, load_dataset
from core.model_registry import ModelRegistry
from core.paths import datasets_dir
from core.taxonomy import load_taxonomy
from core.types import Detection, Finding
from db.store import Store
from train.nightly import NightlyConfig, nightly

TAX = load_taxonomy()


@pytest.mark.slow
def test_poisoned_corrections_are_refused_and_the_current_model_stays(tmp_path, samples_yaml):
    """Reviewers flip labels at random on real training photos; the gate must refuse."""
    data = datasets_dir() / "drainage-conditions" / "data.yaml"
    if not data.exists():
        pytest.skip(f"real dataset not present at {data}")
    rng = random.Random(0)
    store = Store(tmp_path / "review.db")
    store.ensure_user("vandal")
    for s in load_dataset(data).samples("train")[:15]:
        photo, _ = store.add_photo(file_sha256(s.image_path), str(s.image_path), s.width, s.height, s.image_path.name, "vandal")
        findings = []
        for o in s.objects:
            cands = TAX.classes_for_type(o.type)
            findings.append(Finding(Detection(o.box, o.type, 0.9), cands[0].name, {c.name: 1.0 / len(cands) for c in cands}, "r", "fake", "0"))
        for fid, o in zip(store.add_run(photo.id, findings, "det", "fake:0", 0.1), s.objects):
            if TAX.needs_condition(o.type):
                # Always a different class than the one shown (relabelling to the same class is refused as a no-op).
                wrong = [c.name for c in TAX.classes_for_type(o.type) if c.name != TAX.classes_for_type(o.type)[0].name]
                store.correct(fid, 0, "vandal", "relabel", class_name=rng.choice(wrong))
    registry = ModelRegistry(tmp_path / "registry")
    result = nightly(NightlyConfig(db=tmp_path / "review.db", registry=tmp_path / "registry", stages="classifier", frozen_yaml=str(samples_yaml),
                                   holdout_percent=0, epochs=2))
    assert result["decision"] == "refused", result["reasons"]
    assert registry.current().startswith("shipped-")


@pytest.mark.slow
def test_corrections_teach_the_promoted_model(tmp_path):
    """Reviewers correct the shipped model's mistakes on real photos (half A of valid); the
    nightly model, promoted past the gate on half B, gets many of those objects right."""
    from core.stage2.backends.adapter import AdapterVLM
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import reviewed_photos
    from train.simulate import SimulateConfig, simulate

    data = datasets_dir() / "drainage-conditions" / "data.yaml"
    if not data.exists():
        pytest.skip(f"real dataset not present at {data}")
    # What is asked here is whether the adapter learns, so the gate's other rules are off: the
    # per-class recall rule (single-digit classes refuse on two objects) and the ECE rule (20
    # reviewed photos are too few to refit the temperatures, and the kept ones make this
    # candidate over-confident). Served alone, so what reviewers corrected are the adapter's own
    # mistakes. The real gate's decisions: README, "Measured with simulated reviewers".
    result = simulate(SimulateConfig(data_yaml=data, work=tmp_path, epochs=2, replay=False, max_recall_drop=1.0, max_ece_increase=1.0,
                                     served="adapter"))
    assert result["decision"] == "promoted", result["reasons"]
    assert result["candidate_metrics"]["balanced_accuracy"] > result["current_metrics"]["balanced_accuracy"]

    store = Store(tmp_path / "review.db")
    fixed = {r["finding_id"] for r in store.query("SELECT finding_id FROM corrections WHERE action = 'relabel'")}
    assert fixed, "the simulated reviewers corrected nothing"
    ids = [r["finding_id"] for r in store.query(
        "SELECT s.finding_id FROM finding_state s JOIN findings f ON f.id = s.finding_id WHERE s.status != 'deleted' "
        "ORDER BY f.photo_id, s.finding_id")]
    promoted = AdapterVLM.load(ModelRegistry(tmp_path / "registry").current_path(), TAX)
    promoted.config.rationale_tokens = 0
    classifier = ConditionClassifier(promoted, TAX)
    right = cursor = 0
    for photo in reviewed_photos(store):
        findings = classifier.classify(photo.image, list(photo.detections), photo.key)
        for k, (f, truth) in enumerate(zip(findings, photo.classes)):
            right += ids[cursor + k] in fixed and f.class_name == truth
        cursor += len(findings)
    # Before: every one of these objects was wrong (that is why it was corrected).
    assert right >= len(fixed) // 3, f"promoted model fixed {right} of {len(fixed)} corrected objects"
