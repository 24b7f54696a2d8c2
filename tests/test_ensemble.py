"""The adapter + probe ensemble: the blend rules (table-driven), the backend, and the
cross-validated choice of rule and weight on out-of-fold scores (never the evaluation split)."""

from types import SimpleNamespace

import numpy as np
import pytest

from core.data import file_sha256, load_dataset
from core.stage2.backends.ensemble import Ensemble, EnsembleSpec, blend
from core.stage2.calibration import Calibration, Scored, save_scored
from core.stage2.classifier import ConditionClassifier
from core.taxonomy import load_taxonomy
from core.types import Box, Detection
from tests.test_probe_calibration import split_dataset

CASES = [
    # (adapter, probe, probe weight, rule, expected)
    ([0.8, 0.2], [0.2, 0.8], 0.0, "linear", [0.8, 0.2]),
    ([0.8, 0.2], [0.2, 0.8], 1.0, "linear", [0.2, 0.8]),
    ([0.8, 0.2], [0.4, 0.6], 0.25, "linear", [0.7, 0.3]),
    ([0.9, 0.1], [0.1, 0.9], 0.5, "log", [0.5, 0.5]),
    ([0.5, 0.25, 0.25], [0.5, 0.25, 0.25], 0.5, "log", [0.5, 0.25, 0.25]),
    ([0.8, 0.2], [0.5, 0.5], 0.5, "log", [2 / 3, 1 / 3]),  # sqrt(.8*.5) : sqrt(.2*.5) = 2 : 1
    ([1.0, 0.0], [0.0, 1.0], 0.5, "log", [0.5, 0.5]),  # zeros are clipped, never NaN
]


@pytest.mark.parametrize("a, b, w, rule, expected", CASES)
def test_blend(a, b, w, rule, expected):
    out = blend(np.array(a), np.array(b), w, rule)
    assert out == pytest.approx(expected, abs=1e-6) and out.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("a, b, rule, match", [([0.5, 0.5], [1.0], "linear", "one shape"), ([0.5, 0.5], [0.5, 0.5], "max", "rule")])
def test_blend_refuses(a, b, rule, match):
    with pytest.raises(ValueError, match=match):
        blend(np.array(a), np.array(b), 0.5, rule)


@pytest.mark.parametrize("weight, rule", [(1.5, "linear"), (-0.1, "log"), (float("nan"), "log"), (0.5, "vote")])
def test_spec_validates(weight, rule):
    with pytest.raises(ValueError, match="EnsembleSpec"):
        EnsembleSpec(weight, rule)


def test_spec_round_trip(tmp_path):
    spec = EnsembleSpec(0.25, "linear", "test", ({"rule": "linear", "weight": 0.25, "accuracy": 0.8},))
    assert EnsembleSpec.load(spec.save(tmp_path / "ensemble.json")) == spec


class Fixed:
    """A component that gives every target the same probabilities."""

    def __init__(self, name, probs):
        self.name, self.version, self.probs = name, name, probs
        self.calls = []

    def score(self, ctx, targets, **kwargs):
        self.calls.append(kwargs)
        return [np.array(self.probs) for _ in targets]


def test_ensemble_scores_through_the_classifier_and_passes_ablation_to_the_adapter():
    tax = load_taxonomy()
    adapter, probe = Fixed("A", [0.6, 0.4]), Fixed("P", [0.0, 1.0])
    model = Ensemble(adapter, probe, EnsembleSpec(0.5, "linear"))
    dets = [Detection(Box(10, 10, 40, 60), "rock_toe", 0.9)]
    from PIL import Image

    [finding] = ConditionClassifier(model, tax).classify(Image.new("RGB", (100, 100)), dets, "k")
    names = [c.name for c in tax.classes_for_type("rock_toe")]
    assert finding.probabilities == pytest.approx(dict(zip(names, [0.3, 0.7])))
    assert finding.class_name == names[1] and finding.backend == "ensemble" and model.version == "A+P+linear0.5"
    model.score(SimpleNamespace(detections=dets), [0], with_context=False)
    assert adapter.calls[-1] == {"with_context": False} and probe.calls[-1] == {}


def _planted(probe_rows, correct: bool) -> list[Scored]:
    """Adapter scores at 0.9 on the true class (or on a wrong one) for the probe's objects."""
    out = []
    for s in probe_rows:
        k = s.truth if correct else (s.truth + 1) % len(s.probs)
        p = np.full(len(s.probs), 0.1 / (len(s.probs) - 1))
        p[k] = 0.9
        out.append(Scored(s.object_type, p, s.truth, s.photo))
    return out


@pytest.fixture
def split(samples_yaml, tmp_path):
    from core.stage2.features import FeatureStore
    from train.probe import encode_split, out_of_fold, row_weights

    data = split_dataset(samples_yaml, tmp_path / "ds")
    tax = load_taxonomy()
    x, types, labels, photos = encode_split(load_dataset(data, tax), "train", FeatureStore())
    fold_of = dict(zip(sorted(set(photos)), [0, 1] * len(photos)))
    rows = out_of_fold(x, types, labels, photos, row_weights(labels, tax, 1.5), tax, 1.0, fold=[fold_of[p] for p in photos])
    return SimpleNamespace(data=data, rows=rows, fold_of=fold_of)


@pytest.mark.parametrize("adapter_right", [True, False], ids=["adapter right", "adapter wrong"])
def test_train_ensemble_follows_the_out_of_fold_evidence(split, tmp_path, adapter_right):
    from train.ensemble import EnsembleTrainConfig, train_ensemble

    scores = save_scored(_planted(split.rows, adapter_right), tmp_path / "oof.json", split.fold_of)
    result = train_ensemble(EnsembleTrainConfig(split.data, scores, out=tmp_path / "ens"))
    spec = EnsembleSpec.load(tmp_path / "ens" / "ensemble.json")
    assert (spec.weight, spec.rule) == (result["chosen"]["weight"], result["chosen"]["rule"])
    alone = {(r["rule"], r["weight"]): r for r in result["candidates"]}
    assert alone[("linear", 0.0)]["accuracy"] == (1.0 if adapter_right else 0.0)
    if adapter_right:
        assert spec.weight == 0.0  # nothing beats a perfect adapter; ties go to the smaller probe weight
    else:
        assert spec.weight > 0 and len(result["candidates"]) == 8  # 5 linear weights, 3 log (the ends are one component)
    cal = Calibration.load(tmp_path / "ens" / "calibration.json")
    valid = {file_sha256(s.image_path) for s in load_dataset(split.data).samples("valid")}
    assert set(cal.photos) == set(split.fold_of) and not set(cal.photos) & valid


def test_train_ensemble_refuses_scores_of_other_photos(split, tmp_path):
    from train.ensemble import EnsembleTrainConfig, ScoresMismatch, train_ensemble

    rows = _planted(split.rows, True)
    dropped = rows[0].photo
    scores = save_scored([s for s in rows if s.photo != dropped], tmp_path / "oof.json", split.fold_of)
    with pytest.raises(ScoresMismatch, match="missing"):
        train_ensemble(EnsembleTrainConfig(split.data, scores, out=tmp_path / "ens"))
    scores = save_scored(rows, tmp_path / "oof.json", {k: v for k, v in split.fold_of.items() if k != dropped})
    with pytest.raises(ScoresMismatch, match="fold"):
        train_ensemble(EnsembleTrainConfig(split.data, scores, out=tmp_path / "ens"))


def test_a_new_feature_store_reaches_both_models_under_their_calibration():
    # bench swaps in a store that does not persist; a store set on a wrapper would leave the models on the cached one
    from core.stage2.calibration import Calibrated

    adapter, probe = Fixed("A", [0.5, 0.5]), Fixed("P", [0.5, 0.5])
    adapter.store = probe.store = "cached"
    model = Ensemble(Calibrated(adapter, Calibration({})), Calibrated(probe, Calibration({})), EnsembleSpec(0.5, "linear"))
    model.store = "fresh"
    assert (adapter.store, probe.store, model.store) == ("fresh", "fresh", "fresh")


def test_the_registry_builds_the_shipped_blend_of_the_served_adapter_and_probe(samples_yaml, tmp_path):
    """``--backend ensemble``: the adapter (here a tiny one) and the shipped probe, each as served,
    blended and calibrated as the shipped ``ensemble.json`` / ``calibration.json`` say; one feature store."""
    from conftest import tiny_llama

    from core.stage2 import registry
    from core.stage2.backends.adapter import AdapterConfig, AdapterVLM
    from core.stage2.backends.ensemble import default_ensemble_dir
    from core.stage2.classifier import photo_context
    from core.stage2.labeled import ground_truth
    from core.stage2.lm import load_tokenizer

    tax, tokenizer = load_taxonomy(), load_tokenizer()
    AdapterVLM(tax, AdapterConfig(rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer)).save(tmp_path / "adapter")

    def options():  # each model on its own copy of the (seeded) base LM, as separate loads would be
        return registry.BackendOptions(tax, adapter_dir=tmp_path / "adapter", base_lm=(tiny_llama(tokenizer), tokenizer), adapter_precision="fp32")

    model = registry.create("ensemble", options())
    adapter, probe = registry.create("adapter", options()), registry.create("probe", options())
    spec = EnsembleSpec.load(default_ensemble_dir() / "ensemble.json")
    cal = Calibration.load(default_ensemble_dir() / "calibration.json")
    unwrapped = [getattr(part, "inner", part) for part in (model.inner.adapter, model.inner.probe)]  # under any calibration
    assert model.name == "ensemble" and model.calibration == cal and unwrapped[0].store is unwrapped[1].store

    _, image, dets, _, key = next(ground_truth(load_dataset(samples_yaml), "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if tax.needs_condition(d.type)]
    expected = [cal.apply(blend(a, p, spec.weight, spec.rule), dets[i].type)
                for a, p, i in zip(adapter.score(ctx, targets), probe.score(ctx, targets), targets)]
    assert all(np.allclose(x, y) for x, y in zip(model.score(ctx, targets), expected))


def test_the_shipped_blend_was_chosen_on_train_folds():
    from core.stage2.backends.ensemble import default_ensemble_dir

    spec = EnsembleSpec.load(default_ensemble_dir() / "ensemble.json")
    assert spec.fitted_on.startswith("train split") and "out-of-fold" in spec.fitted_on
    chosen = next(r for r in spec.candidates if (r["rule"], r["weight"]) == (spec.rule, spec.weight))
    assert chosen["balanced_accuracy"] == max(r["balanced_accuracy"] for r in spec.candidates)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_train_ensemble_refuses_an_evaluation_split(split, tmp_path):
    from train.ensemble import EnsembleTrainConfig

    with pytest.raises(ValueError, match="training split"):
        EnsembleTrainConfig(tmp_path / "data.yaml", tmp_path / "oof.json", split=split)
