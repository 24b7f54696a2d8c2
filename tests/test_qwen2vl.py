"""The qwen2vl backend on a tiny random Qwen2-VL built from a config, saved, and loaded back
through the same from_pretrained path users take. Its tokenizer is a small byte-level one
built here with Qwen's special tokens."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.stage2.backends.qwen2vl import BackendUnavailable, Qwen2VLBackend, Qwen2VLConfig, load_qwen2vl
from core.stage2.classifier import ConditionClassifier, photo_context
from core.taxonomy import load_taxonomy
from core.types import Box, Detection

TAX = load_taxonomy()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<|box_start|>", "<|box_end|>"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers import Qwen2VLConfig as HFConfig

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {s: fast.convert_tokens_to_ids(s) for s in SPECIALS}
    torch.manual_seed(0)
    config = HFConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(fast), rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112), tokenizer=fast,
                                 video_processor=Qwen2VLVideoProcessor())
    folder = tmp_path_factory.mktemp("tiny-qwen2vl")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return Qwen2VLBackend(Qwen2VLConfig(model=str(tiny_dir), device="cpu", max_pixels=112 * 112, rationale_tokens=6), TAX,
                          hints={"toe_drain": {"top": 0.1, "middle": 0.2, "bottom": 0.7}})


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
DETS = [
    Detection(Box(50, 5, 60, 80), "slope_drain", 0.9),
    Detection(Box(0, 78, 112, 95), "toe_drain", 0.8),
    Detection(Box(70, 30, 90, 50), "vegetation", 0.7),
]


def test_prompt_marks_the_object_with_grounding_and_facts(backend):
    ctx = photo_context(IMAGE, DETS)
    text = backend.object_text(ctx, 1)
    assert "<|box_start|>(0,696),(1000,848)<|box_end|>" in text
    assert "at the lower end of slope drain #0" in text
    assert "70% of labelled photos" in text
    assert "Toe drain, Toe drain- Blocked, Toe drain- Damaged" in text
    assert "toe drain #1 (bottom)" in backend.prefix_text(ctx)
    assert "slope drain #0" not in backend.object_text(ctx, 1, with_context=False)


def test_shared_prefix_scores_equal_full_forward(backend):
    """Branching from the shared prefill must give the same likelihoods as encoding each
    (photo, question, answer) sequence from scratch."""
    ctx = photo_context(IMAGE, DETS)
    probs = backend.score(ctx, [0, 1])
    assert [p.shape for p in probs] == [(3,), (3,)]
    assert all(abs(p.sum() - 1) < 1e-5 for p in probs)

    tok = backend.tok
    for p, i in zip(probs, [0, 1]):
        totals = []
        for c in TAX.classes_for_type(DETS[i].type):
            q_text = backend.prefix_text(ctx) + backend.object_text(ctx, i)
            inputs = backend.processor(text=[q_text + c.name + "<|im_end|>"], images=[IMAGE], return_tensors="pt")
            n_answer = len(tok.encode(c.name, add_special_tokens=False)) + 1
            with torch.inference_mode():
                logits = backend.model(**inputs).logits.float()
            logp = torch.log_softmax(logits[0], -1)
            ids = inputs["input_ids"][0]
            L = ids.shape[0]
            totals.append(float(logp[L - n_answer - 1 : L - 1].gather(-1, ids[L - n_answer :, None]).sum()))
        expected = torch.softmax(torch.tensor(totals), -1).numpy()
        assert np.allclose(p, expected, atol=1e-4), (p, expected)


def test_findings_and_bounded_rationales(backend):
    findings = ConditionClassifier(backend, TAX).classify(IMAGE, DETS)
    assert [f.backend for f in findings] == ["qwen2vl", "qwen2vl", "passthrough"]
    assert findings[0].version == backend.version and str(backend.cfg.model) in backend.version
    for f in findings[:2]:
        assert f.rationale  # generated (random weights: any text) or the template when empty
        assert len(backend.tok.encode(f.rationale)) <= 60


def test_quantisation_needs_cuda(tiny_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        load_qwen2vl(Qwen2VLConfig(model=str(tiny_dir), precision="int4", device="cpu"))


def test_missing_checkpoint_is_a_named_error(tmp_path):
    from core.errors import WeightsError

    with pytest.raises(WeightsError, match="expected a Qwen2-VL checkpoint"):
        load_qwen2vl(Qwen2VLConfig(model=str(tmp_path / "nothing"), device="cpu"))


def test_config_validation():
    with pytest.raises(ValueError, match="precision"):
        Qwen2VLConfig(model="x", precision="int3")


def test_lora_moves_adapter_not_base_and_reloads_identically(tiny_dir, tmp_path):
    """LoRA on the tiny Qwen2-VL: adapter weights move, base weights do not, and the saved
    adapter loads back (through Qwen2VLConfig.adapter) to identical predictions."""
    from core.stage2.labeled import LabeledPhoto
    from train.qwen2vl import QwenTrainConfig, prepare_model, train_qwen2vl

    model_cfg = Qwen2VLConfig(model=str(tiny_dir), device="cpu", max_pixels=112 * 112, rationale_tokens=0)
    cfg = QwenTrainConfig(out=tmp_path / "lora", epochs=2, lr=5e-3, lora_r=4, lora_alpha=8)
    loaded = load_qwen2vl(model_cfg)
    base_before = {k: v.clone() for k, v in loaded[0].state_dict().items()}
    peft_model, processor, device = prepare_model(model_cfg, cfg, loaded)
    lora_before = {k: v.clone() for k, v in peft_model.named_parameters() if "lora_" in k}
    assert lora_before and not any("visual" in k for k in lora_before)
    photo = LabeledPhoto(IMAGE, tuple(DETS), ("slope drain blocked", "Toe drain- Damaged", "vegetation"), "k" * 64)
    summary = train_qwen2vl(model_cfg, cfg, [photo], TAX, loaded=(peft_model, processor, device))
    assert summary["steps"] == 4
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in lora_before.items()), "LoRA weights did not move"
    base_after = peft_model.get_base_model().state_dict()
    for k, v in base_before.items():
        key = next(n for n in base_after if n.replace("base_layer.", "") == k)
        assert torch.equal(v, base_after[key]), f"base weight {k} changed"

    ctx = photo_context(IMAGE, DETS)
    trained = Qwen2VLBackend(model_cfg, TAX, loaded=(peft_model, processor, device)).score(ctx, [0, 1])
    reloaded = Qwen2VLBackend(Qwen2VLConfig(model=str(tiny_dir), adapter=cfg.out, device="cpu", max_pixels=112 * 112), TAX)
    assert "+" in reloaded.version  # the adapter hash is part of the version
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(trained, reloaded.score(ctx, [0, 1])))


def test_qlora_needs_cuda(tiny_dir, tmp_path):
    from train.qwen2vl import QwenTrainConfig, train_qwen2vl

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable, match="QLoRA needs a CUDA GPU"):
        train_qwen2vl(Qwen2VLConfig(model=str(tiny_dir), device="cpu"), QwenTrainConfig(out=tmp_path, qlora=True), [], TAX)


def test_mcq_answers_are_generated_and_counted(backend):
    """The random tiny model babbles: its answers must be read without raising, and counted."""
    from core.evaluation.mcq import score_mcq
    from core.stage2.labeled import LabeledPhoto

    ctx = photo_context(IMAGE, DETS)
    answers = backend.answer_mcq(ctx, [0, 1], TAX, max_tokens=3)
    assert len(answers) == 2 and all(isinstance(a.text, str) and a.scores.shape == (3,) for a in answers)
    assert all(np.isfinite(a.scores).all() for a in answers)
    photo = LabeledPhoto(IMAGE, tuple(DETS), ("slope drain blocked", "Toe drain", "vegetation"), "q" * 64)
    result = score_mcq(backend, [photo], TAX)
    assert result["n"] == 2 and 0.0 <= result["unparseable_rate"] <= 1.0 and 0.0 <= result["top2_accuracy"] <= 1.0
