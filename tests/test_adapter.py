"""The adapter VLM with a tiny randomly initialised Llama (SmolLM2's real tokenizer) on real photos."""

import os
import time

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


def test_lora_weights_that_fit_no_module_are_refused(tmp_path, tokenizer):
    """peft loads LoRA keys that match no module without a word (the LoRA stays zero: the base
    LM served as the adapter); ``load`` refuses them. Here the layers are renamed as a
    transformers release could."""
    from safetensors.torch import load_file, save_file

    from core.errors import WeightsError

    AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer)).save(tmp_path)
    file = tmp_path / "weights.safetensors"
    save_file({k.replace(".model.layers.", ".model.language_model.layers."): v for k, v in load_file(file).items()}, file)
    with pytest.raises(WeightsError, match="LoRA weights do not fit"):
        AdapterVLM.load(tmp_path, TAX, lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_lower_precision_shrinks_the_lm_and_keeps_scoring(samples_yaml, tokenizer, mode):
    """int8 and bf16 keep the adapter's scores, LoRA included: the LoRA here is not zero (as a
    trained one is not), so a lowered model that lost it would score like the base LM. Compared on
    log-probabilities against the fp32 model and against the same model without its LoRA."""
    from core.stage2.backends.qwen2vl import BackendUnavailable

    model = AdapterVLM(TAX, AdapterConfig(rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    ds = load_dataset(samples_yaml)
    _, image, dets, _, key = next(ground_truth(ds, "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if TAX.needs_condition(d.type)]

    def log_probs():
        probs = model.score(ctx, targets)
        assert all(abs(p.sum() - 1) < 1e-5 for p in probs)
        probs = np.concatenate(probs)
        assert probs.min() > 1e-6, "saturated probabilities cannot tell models apart"
        return np.log(probs)

    fp32 = log_probs()
    with model.lm.disable_adapter():
        lora_effect = float(np.abs(log_probs() - fp32).max())
    before = model.lm_size_bytes()
    model.quantize(mode)
    assert model.lm_size_bytes() < before
    if mode == "int8":
        linears = [m for m in model.lm.model.modules() if type(m) is torch.nn.Linear]
        assert not linears, "every decoder linear layer should be quantised"
    else:
        assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    assert model.version.endswith(f"+{mode}")
    error = float(np.abs(log_probs() - fp32).max())
    # Here: the LoRA moves log-probabilities by 0.19, int8 by 0.007.
    assert lora_effect > 0.05, f"the LoRA barely matters ({lora_effect}): the test could not see it dropped"
    assert error < lora_effect / 5, f"{mode} moved log-probabilities by {error}, dropping the LoRA moves them by {lora_effect}"
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


def test_base_lm_loads_from_its_fp32_cache_as_saved(tmp_path, tokenizer):
    """The cache written on first use (weights without the tied head, config, tokenizer) loads
    back to the same logits, the output head tied to the embeddings."""
    from safetensors.torch import save_model

    from core.stage2.lm import load_base_lm

    lm = tiny_llama(tokenizer)
    save_model(lm, str(tmp_path / "model.safetensors"))
    lm.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_base_lm(tmp_path)
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.allclose(lm(ids).logits, loaded(ids).logits, atol=1e-6)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_bf16_adapter_is_cached_merged_and_scores_as_when_first_lowered(samples_yaml, tmp_path, tokenizer):
    """The first bf16 load merges the LoRA and writes the bf16 LM; every load reads only that file
    (no LoRA modules, no fp32 weights) and scores like the fp32 model, not like the base LM."""
    from core.stage2.backends.adapter_serving import load_lowered, lowered_cache_dir

    model = AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.save(tmp_path / "adapter")
    ds = load_dataset(samples_yaml)
    _, image, dets, _, key = next(ground_truth(ds, "valid"))
    ctx = photo_context(image, dets, key)
    targets = [i for i, d in enumerate(dets) if TAX.needs_condition(d.type)]

    cache = lowered_cache_dir(tmp_path / "adapter", "bf16", tiny_llama(tokenizer))
    assert not cache.exists() and cache != lowered_cache_dir(tmp_path / "adapter", "bf16")  # keyed by the base LM too
    cache.parent.mkdir(parents=True, exist_ok=True)
    stale = [cache.parent / f"stale-{k}-bf16" for k in range(3)]  # merged LMs of versions nobody served for a month
    for k, d in enumerate(stale):
        d.mkdir(exist_ok=True)
        os.utime(d, (time.time() - (30 + k) * 86400,) * 2)
    first = load_lowered(tmp_path / "adapter", TAX, "bf16", (tiny_llama(tokenizer), tokenizer))
    assert (cache / "model.safetensors").is_file() and not [p for p in cache.parent.iterdir() if p.name.startswith(".")]
    assert not stale[-1].exists()  # writing a new one pruned the least recently used
    second = load_lowered(tmp_path / "adapter", TAX, "bf16", (tiny_llama(tokenizer), tokenizer))
    assert {p.dtype for p in second.lm.parameters()} == {torch.bfloat16}
    assert not [n for n, _ in second.lm.named_parameters() if "lora_" in n]
    assert first.version == second.version and second.version.endswith("+bf16")
    def log_probs(m):
        return np.log(np.concatenate(m.score(ctx, targets)))

    fp32, a, b = log_probs(model), log_probs(first), log_probs(second)
    with model.lm.disable_adapter():
        base = log_probs(model)
    lora_effect = np.abs(fp32 - base).max()
    assert np.abs(a - b).max() < 1e-6, "the first load and a cached load score differently"
    assert lora_effect > 0.05 and np.abs(fp32 - b).max() < lora_effect / 5, "the cached LM lost the LoRA or drifted from fp32"



def test_mcq_share_trains_the_letter_answer(samples_yaml, tmp_path, tokenizer):
    # With a share of lettered questions in each batch the right letter (then end of text) after
    # " Answer:" becomes likelier; trained on labels alone it does not. (The tiny LM moves too
    # little to generate letters: on the real adapter see the README's MCQ table.)
    from core.stage2.labeled import labeled_photos
    from train.adapter import build_examples, mcq_loss

    moved = {}
    for share in (0.0, 1.0):
        torch.manual_seed(0)
        model = AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
        examples = build_examples(labeled_photos(load_dataset(samples_yaml), "valid"), TAX, model.store)
        with torch.no_grad():
            before = float(mcq_loss(model, examples, TAX, tokenizer.eos_token_id))
        train_adapter(AdapterTrainConfig(data_yaml=samples_yaml, split="valid", val_split="", out=tmp_path / f"a{share}", epochs=3,
                                         batch=8, lr=1e-2, lora_lr=1e-2, lora_r=4, lora_alpha=8, mcq_share=share), model)
        model.eval()
        with torch.no_grad():
            moved[share] = before - float(mcq_loss(model, examples, TAX, tokenizer.eos_token_id))
    assert moved[1.0] > 0.2 and moved[0.0] < 0.1, moved


def test_a_continued_fine_tune_records_the_whole_recipe_and_calibration_replays_it(samples_yaml, tmp_path, tokenizer):
    # The shipped adapter is made in two steps (the recipe, then lettered questions); its
    # calibration must be fitted on fold models made the same two steps, so the record must
    # reach back to the fresh start.
    import json

    from train.adapter import recorded_recipe
    from train.calibrate import CalibrateConfig, fold_steps

    model = AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=0), lm_and_tokenizer=(tiny_llama(tokenizer), tokenizer))
    small = dict(data_yaml=samples_yaml, split="valid", val_split="", batch=8, lora_r=4, lora_alpha=8)
    train_adapter(AdapterTrainConfig(out=tmp_path / "a", epochs=2, lr=1e-2, lora_lr=1e-2, **small), model)
    # (2 epochs of 5 batches: 10 steps, whose one-step warm-up once divided by zero in torch's OneCycleLR)
    train_adapter(AdapterTrainConfig(out=tmp_path / "b", epochs=1, lr=2e-4, lora_lr=1e-4, mcq_share=0.5, init=tmp_path / "a",
                                     **small), model)
    steps = recorded_recipe(tmp_path / "b")
    assert [(s["epochs"], s["lr"], s["mcq_share"]) for s in steps] == [(2, 1e-2, 0.0), (1, 2e-4, 0.5)]
    replayed = fold_steps(CalibrateConfig(data_yaml=samples_yaml, recipe_of=tmp_path / "b"))
    assert [(s["epochs"], s["lora_lr"], s["mcq_share"]) for s in replayed] == [(2, 1e-2, 0.0), (1, 1e-4, 0.5)]
    assert not {"data_yaml", "out", "init", "val_split"} & {k for s in replayed for k in s}, "a fold takes its own data and start"
    assert fold_steps(CalibrateConfig(data_yaml=samples_yaml, epochs=4)) == [{"epochs": 4}]
    # a record that stops at a continued fine-tune cannot be replayed from scratch: refused, not half-replayed
    meta = json.loads((tmp_path / "b" / "adapter.json").read_text())
    del meta["training"]["init_training"]
    (tmp_path / "b" / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fresh start"):
        recorded_recipe(tmp_path / "b")


@pytest.mark.parametrize("field, value", [("mcq_share", 1.5), ("mcq_share", -0.1), ("init", "/nonexistent/adapter")])
def test_train_config_refuses(samples_yaml, field, value):
    with pytest.raises(ValueError, match=field):
        AdapterTrainConfig(data_yaml=samples_yaml, **{field: value})


@pytest.mark.parametrize("ages_days, removed", [
    ([0, 1, 2, 8, 9, 10], [8, 9, 10]),  # beyond the 3 most recent and idle for over a week
    ([0, 1, 2, 3, 8], [8]),  # 3 days idle: maybe still read by another process, kept
    ([20, 30], []),  # never fewer than 3
])
def test_merged_lm_caches_are_pruned_to_the_most_recently_used(tmp_path, ages_days, removed):
    from core.stage2.backends.adapter_serving import prune_lowered

    now = time.time()
    for age in ages_days:
        (tmp_path / f"v{age}-bf16").mkdir()
        os.utime(tmp_path / f"v{age}-bf16", (now - age * 86400,) * 2)
    (tmp_path / ".lowered-being-written").mkdir()
    os.utime(tmp_path / ".lowered-being-written", (now - 40 * 86400,) * 2)
    assert sorted(p.name for p in prune_lowered(tmp_path)) == sorted(f"v{age}-bf16" for age in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lowered-being-written"] + [f"v{a}-bf16" for a in ages_days if a not in removed])
