"""The adapter VLM with a tiny randomly initialised Llama (SmolLM2's real tokenizer) on real photos."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from core.data import load_dataset
from core.stage2.backends.adapter import AdapterConfig, AdapterVLM
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.labeled import ground_truth
from core.stage2.lm import load_tokenizer
from core.taxonomy import load_taxonomy
from train.adapter import AdapterTrainConfig, train_adapter

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_candidates_are_single_tokens(tokenizer):
    model = AdapterVLM(TAX, AdapterConfig(rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    assert set(model.cand_ids) == set(TAX.class_names)
    assert len({model.cand_ids[c] for c in ("slope drain", "slope drain blocked", "slope drain damaged")}) == 3


def test_train_moves_only_adapter_weights_and_round_trips(samples_yaml, tmp_path, tokenizer):
    lm = tiny_llama(tokenizer)
    base_before = {k: v.clone() for k, v in lm.state_dict().items()}
    model = AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=4), lm_and_tokenizer=(lm, tokenizer))
    lora_before = {k: v.clone() for k, v in model.trainable_state().items()}
    out = tmp_path / "adapter"
    summary = train_adapter(AdapterTrainConfig(data_yaml=samples_yaml, split="valid", val_split="valid", out=out,
                                               epochs=1, batch=8, lr=1e-2, lora_lr=1e-2, lora_r=4, lora_alpha=8), model)
    assert summary["objects"] == 35 and len(summary["log"]) == 1 and "val_balanced_accuracy" in summary["log"][0]
    after = model.trainable_state()
    moved = [k for k in lora_before if not torch.equal(lora_before[k], after[k])]
    assert any(k.startswith("lora.") and "lora_B" in k for k in moved), "LoRA weights did not move"
    assert any(k.startswith("projector.") for k in moved), "projector did not move"
    base_after = model.lm.get_base_model().state_dict()
    for k, v in base_before.items():
        key = next(n for n in base_after if n.replace("base_layer.", "") == k)
        assert torch.equal(v, base_after[key]), f"base weight {k} changed"

    reloaded = AdapterVLM.load(out, TAX, lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    ds = load_dataset(samples_yaml)
    _, image, dets, _, key = next(ground_truth(ds, "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if TAX.needs_condition(d.type)]
    a, b = model.score(ctx, targets), reloaded.score(ctx, targets)
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
    assert all(abs(p.sum() - 1) < 1e-5 for p in a)

    findings = ConditionClassifier(reloaded, TAX).classify(image, dets, key)
    assert len(findings) == len(dets)
    assert all(f.rationale for f in findings)
    assert {f.backend for f in findings} <= {"adapter", "passthrough"}


def test_loading_a_missing_adapter_is_a_named_error(tmp_path):
    from core.errors import WeightsError

    with pytest.raises(WeightsError, match="adapter.json"):
        AdapterVLM.load(tmp_path, TAX)


def test_dynamic_int8_quantisation_shrinks_the_lm_and_keeps_scoring(samples_yaml, tokenizer):
    from core.stage2.backends.qwen2vl import BackendUnavailable

    model = AdapterVLM(TAX, AdapterConfig(rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    ds = load_dataset(samples_yaml)
    _, image, dets, _, key = next(ground_truth(ds, "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if TAX.needs_condition(d.type)]
    before = model.lm_size_bytes()
    model.quantize("int8")
    assert model.lm_size_bytes() < before
    linears = [m for m in model.lm.model.modules() if type(m) is torch.nn.Linear]
    assert not linears, "every decoder linear layer should be quantised"
    assert model.version.endswith("+int8")
    assert all(abs(p.sum() - 1) < 1e-5 for p in model.score(ctx, targets))
    with pytest.raises(BackendUnavailable, match="int4"):
        model.quantize("int4")


def test_mcq_answers_are_generated_after_the_visual_tokens(samples_yaml, tokenizer):
    from core.evaluation.mcq import score_mcq
    from core.stage2.labeled import labeled_photos

    model = AdapterVLM(TAX, AdapterConfig(rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    photo = labeled_photos(load_dataset(samples_yaml), "valid")[0]
    ctx = photo_context(photo.image, list(photo.detections), photo.key)
    targets = [i for i, d in enumerate(photo.detections) if TAX.needs_condition(d.type)]
    answers = model.answer_mcq(ctx, targets, TAX, max_tokens=3)
    assert len(answers) == len(targets)
    assert all(isinstance(a.text, str) and len(a.scores) == len(TAX.classes_for_type(photo.detections[i].type))
               for a, i in zip(answers, targets))
    result = score_mcq(model, [photo], TAX)
    assert result["n"] == len(targets) and 0.0 <= result["unparseable_rate"] <= 1.0
