"""The optional CLIP features on a tiny random CLIP built from a config, saved and loaded back
through the folder path users configure."""

from __future__ import annotations

import pytest

from core.data import load_dataset
from core.errors import SlopewatchError, WeightsError
from core.evaluation.classifier import ClassifierEvalConfig, evaluate_classifier
from core.evaluation.mcq import score_mcq
from core.library.photo_search import embed_photos, search_photos
from core.photos import ingest
from core.stage2 import registry
from core.stage2.backends.clip import ClipModel, ClipZeroShot
from core.stage2.classifier import ConditionClassifier
from core.stage2.labeled import labeled_photos
from core.taxonomy import load_taxonomy
from db.store import Store

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,-'":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_zero_shot_backend_scores_each_type_s_classes(clip_dir, samples_yaml):
    backend = registry.create("clip", registry.BackendOptions(TAX, clip_model=clip_dir))
    assert isinstance(backend, ClipZeroShot) and backend.version.startswith("clip:")
    assert backend.class_prompt("Toe drain- Blocked") == "a photo of a blocked toe drain"
    assert backend.class_prompt("vegetation") == "a photo of a vegetation"
    photo = labeled_photos(load_dataset(samples_yaml), "valid")[0]
    findings = ConditionClassifier(backend, TAX).classify(photo.image, list(photo.detections), photo.key)
    scored = [f for f in findings if f.backend == "clip"]
    assert scored and all(abs(sum(f.probabilities.values()) - 1) < 1e-6 for f in scored)
    assert all(f.backend == "passthrough" for f in findings if f.detection.type == "vegetation")


def test_evaluate_and_mcq_score_the_clip_backend(clip_dir, samples_yaml):
    result = evaluate_classifier(ClassifierEvalConfig(data_yaml=samples_yaml, backend="clip", clip_model=clip_dir))
    n_objects = sum(len(s.objects) for s in load_dataset(samples_yaml).samples("valid"))
    assert result["classifier"]["backend"] == "clip" and result["classifier"]["n"] == n_objects
    mcq = score_mcq(registry.create("clip", registry.BackendOptions(TAX, clip_model=clip_dir)), labeled_photos(load_dataset(samples_yaml), "valid"), TAX)
    assert mcq["unparseable_rate"] == 0.0 and mcq["n"] > 0  # a scoring backend always names a letter


def test_text_to_image_search_embeds_photos_once(clip_dir, samples_yaml, tmp_path):
    store = Store(tmp_path / "clip.db", TAX)
    store.ensure_user("ana")
    for s in load_dataset(samples_yaml).samples("valid")[:3]:
        stored = ingest(s.image_path, tmp_path)
        store.add_photo(stored.sha256, str(stored.path), stored.image.width, stored.image.height, s.image_path.name, "ana")
    clip = ClipModel(clip_dir)
    hits = search_photos(store, clip, "a blocked toe drain under vegetation", k=5)
    assert len(hits) == 3 and all(-1.0 <= h["score"] <= 1.0 for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert embed_photos(store, clip) == 0  # already embedded: nothing recomputed
    with pytest.raises(ValueError, match="empty"):
        search_photos(store, clip, " ")


def test_clip_unconfigured_or_missing_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SLOPEWATCH_CLIP_MODEL", raising=False)
    with pytest.raises(SlopewatchError, match="--clip-model"):
        registry.create("clip", registry.BackendOptions(TAX))
    with pytest.raises(WeightsError, match="config.json"):
        ClipModel(tmp_path)


def test_app_offers_photo_search_only_when_clip_is_configured(clip_dir, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from app.web import ServeConfig, build_app

    monkeypatch.delenv("SLOPEWATCH_CLIP_MODEL", raising=False)
    store = Store(tmp_path / "app.db", TAX)

    def api_names(cfg):
        demo = build_app(None, store, cfg)  # building wires handlers only; no model is called
        return {getattr(fn, "api_name", None) for fn in demo.fns.values()}

    assert "photo_search" not in api_names(ServeConfig(no_auth=True))
    assert "photo_search" in api_names(ServeConfig(no_auth=True, clip_model=clip_dir))
