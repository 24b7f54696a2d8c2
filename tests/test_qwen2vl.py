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


def full_forward_log_likelihoods(backend, ctx, i):
    """Each candidate's summed log-likelihood of ``<class name><|im_end|>`` from one full forward
    of the (photo, question, answer) sequence, without any cache."""
    tok, totals = backend.tok, []
    for c in TAX.classes_for_type(ctx.detections[i].type):
        q_text = backend.prefix_text(ctx) + backend.object_text(ctx, i)
        inputs = backend.processor(text=[q_text + c.name + "<|im_end|>"], images=[ctx.image], return_tensors="pt")
        n_answer = len(tok.encode(c.name, add_special_tokens=False)) + 1
        with torch.inference_mode():
            logits = backend.model(**inputs).logits.float()
        logp = torch.log_softmax(logits[0], -1)
        ids = inputs["input_ids"][0]
        L = ids.shape[0]
        totals.append(float(logp[L - n_answer - 1 : L - 1].gather(-1, ids[L - n_answer :, None]).sum()))
    return np.array(totals)


def test_shared_prefix_scores_equal_full_forward(backend):
    """Branching from the shared prefill must give the same likelihoods as encoding each
    (photo, question, answer) sequence from scratch. Compared as log-likelihoods: the random
    tiny model's probabilities saturate (1.0 vs 1e-20), so they cannot tell a wrong branch from
    a right one."""
    ctx = photo_context(IMAGE, DETS)
    probs = backend.score(ctx, [0, 1])
    totals = backend.log_likelihoods(ctx, [0, 1])
    assert [p.shape for p in probs] == [(3,), (3,)] and [t.shape for t in totals] == [(3,), (3,)]
    assert all(abs(p.sum() - 1) < 1e-5 for p in probs)
    for p, t, i in zip(probs, totals, [0, 1]):
        assert np.allclose(p, torch.softmax(torch.tensor(t), -1).numpy(), atol=1e-6)
        expected = full_forward_log_likelihoods(backend, ctx, i)
        # Exactly equal here; a position off by one in the branch moves them by 3e-4 on this model.
        assert np.allclose(t, expected, atol=1e-4, rtol=0), (t, expected)


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


def lora_tensors(model) -> dict:
    """The model's LoRA tensors as peft saves them (adapter name stripped), detached copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """LoRA trained on the tiny Qwen2-VL (4 steps) and saved; with what is needed to compare
    the base, the trained model and what reloads from the saved adapter."""
    from types import SimpleNamespace

    from core.stage2.labeled import LabeledPhoto
    from train.qwen2vl import QwenTrainConfig, prepare_model, train_qwen2vl

    model_cfg = Qwen2VLConfig(model=str(tiny_dir), device="cpu", max_pixels=112 * 112, rationale_tokens=0)
    cfg = QwenTrainConfig(out=tmp_path_factory.mktemp("qwen-lora") / "lora", epochs=2, lr=5e-3, lora_r=4, lora_alpha=8)
    ctx = photo_context(IMAGE, DETS)
    loaded = load_qwen2vl(model_cfg)
    base_ll = Qwen2VLBackend(model_cfg, TAX, loaded=loaded).log_likelihoods(ctx, [0, 1])
    base_before = {k: v.clone() for k, v in loaded[0].state_dict().items()}
    peft_model, processor, device = prepare_model(model_cfg, cfg, loaded)
    lora_before = lora_tensors(peft_model)
    photo = LabeledPhoto(IMAGE, tuple(DETS), ("slope drain blocked", "Toe drain- Damaged", "vegetation"), "k" * 64)
    summary = train_qwen2vl(model_cfg, cfg, [photo], TAX, loaded=(peft_model, processor, device))
    trained_ll = Qwen2VLBackend(model_cfg, TAX, loaded=(peft_model, processor, device)).log_likelihoods(ctx, [0, 1])
    return SimpleNamespace(model_cfg=model_cfg, out=cfg.out, ctx=ctx, summary=summary, model=peft_model, base_before=base_before,
                           lora_before=lora_before, lora_after=lora_tensors(peft_model), base_ll=base_ll, trained_ll=trained_ll)


def max_gap(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def reload(trained, adapter):
    """The backend users get from ``Qwen2VLConfig(adapter=...)``, with the warnings raised while loading."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = Qwen2VLBackend(Qwen2VLConfig(model=trained.model_cfg.model, adapter=adapter, device="cpu", max_pixels=112 * 112,
                                               rationale_tokens=0), TAX)
    return backend, [str(w.message) for w in caught]


def assert_same_lora(model, expected: dict) -> None:
    got = lora_tensors(model)
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))[:4]
    assert sum(float(v.abs().sum()) for k, v in got.items() if "lora_B" in k) > 0, "every lora_B is zero: the adapter did not load"
    for k, v in expected.items():
        assert torch.equal(got[k], v), f"{k} differs from the trained tensor"


def test_lora_moves_adapter_not_base_and_reloads_identically(trained):
    """LoRA on the tiny Qwen2-VL: adapter weights move, base weights do not, the trained model
    scores differently from the base, and the saved adapter loads back (through
    Qwen2VLConfig.adapter, onto a fresh base) as exactly the trained model. Compared on
    log-likelihoods and on the LoRA tensors themselves: the tiny model's probabilities saturate,
    so they cannot tell the trained model from the base."""
    assert trained.summary["steps"] == 4
    assert trained.lora_before and not any("visual" in k for k in trained.lora_before)
    assert any("lora_B" in k and not torch.equal(v, trained.lora_after[k]) for k, v in trained.lora_before.items()), \
        "LoRA weights did not move"
    base_after = trained.model.get_base_model().state_dict()
    for k, v in trained.base_before.items():
        key = next(n for n in base_after if n.replace("base_layer.", "") == k)
        assert torch.equal(v, base_after[key]), f"base weight {k} changed"
    assert max_gap(trained.trained_ll, trained.base_ll) > 0.1, "training did not change the model's log-likelihoods"

    reloaded, warned = reload(trained, trained.out)
    assert not [w for w in warned if "adapter keys" in w or "peft_config" in w or "second time" in w], warned
    assert list(reloaded.model.peft_config) == ["default"]
    assert_same_lora(reloaded.model, trained.lora_after)
    assert "+" in reloaded.version  # the adapter hash is part of the version
    ll = reloaded.log_likelihoods(trained.ctx, [0, 1])
    assert max_gap(ll, trained.trained_ll) < 1e-4, (ll, trained.trained_ll)
    assert max_gap(ll, trained.base_ll) > 0.1, "the reloaded model scores like the base model"


def test_adapter_saved_with_pre_v5_key_names_loads(trained, tmp_path):
    """Adapters saved before transformers moved the decoder under ``model.language_model``
    (most published Qwen2-VL LoRAs) name it ``model.layers``; they must load, not become zeros."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(trained.out, tmp_path / "old")
    file = tmp_path / "old" / "adapter_model.safetensors"
    old = {k.replace("model.model.language_model.", "model.model."): v for k, v in load_file(file).items()}
    assert all(".language_model." not in k for k in old)
    save_file(old, file)
    reloaded, _ = reload(trained, tmp_path / "old")
    assert_same_lora(reloaded.model, trained.lora_after)
    assert max_gap(reloaded.log_likelihoods(trained.ctx, [0, 1]), trained.trained_ll) < 1e-4


def test_adapter_that_fits_no_module_is_refused(trained, tmp_path):
    """peft only warns when an adapter's keys match nothing (and serves the base model); we refuse."""
    import shutil

    from safetensors.torch import load_file, save_file

    from core.errors import WeightsError

    shutil.copytree(trained.out, tmp_path / "bad")
    file = tmp_path / "bad" / "adapter_model.safetensors"
    save_file({k.replace("base_model.model.", "base_model.model.base_model.model."): v for k, v in load_file(file).items()}, file)
    with pytest.raises(WeightsError, match="does not fit"):
        reload(trained, tmp_path / "bad")


def test_a_model_that_already_carries_lora_is_refused(trained):
    """A base gets LoRA injected in place; adding a second adapter to it (or reloading onto it)
    nests adapters whose saved keys fit no fresh model: refused, a fresh base per adapter."""
    from peft import PeftModel

    from core.stage2.backends.qwen2vl import attach_adapter
    from train.qwen2vl import QwenTrainConfig, prepare_model

    used_base = trained.model.get_base_model()  # the base the fixture trained on: it has peft_config now
    assert not isinstance(used_base, PeftModel) and hasattr(used_base, "peft_config")
    with pytest.raises(ValueError, match="fresh base"):
        prepare_model(trained.model_cfg, QwenTrainConfig(out=trained.out), loaded=(used_base, None, "cpu"))
    with pytest.raises(ValueError, match="fresh base"):
        attach_adapter(trained.model, trained.out)


def test_training_resumes_from_a_saved_adapter(trained):
    """``Qwen2VLConfig.adapter`` set when training: that adapter is trained further, as the one adapter."""
    from dataclasses import replace

    from train.qwen2vl import QwenTrainConfig, prepare_model

    model, _, _ = prepare_model(replace(trained.model_cfg, adapter=trained.out), QwenTrainConfig(out=trained.out))
    assert list(model.peft_config) == ["default"]
    assert_same_lora(model, trained.lora_after)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


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
