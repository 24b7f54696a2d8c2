"""Optional CLIP features: a zero-shot stage-2 backend and text-to-image search over photos.

CLIP is used only when a checkpoint folder is configured (``--clip-model`` or
``SLOPEWATCH_CLIP_MODEL``); no CLIP weights ship with slopewatch and none are downloaded. The
folder is anything transformers' ``CLIPModel`` / ``AutoProcessor`` load with
``from_pretrained`` (open_clip checkpoints must be converted first).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.classifier import PhotoContext
from core.errors import WeightsError
from core.features import crop
from core.rationale import human

PROMPT = "a photo of a {condition} {type}"


class ClipModel:
    """A CLIP checkpoint from a local folder; embeddings are unit vectors."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoProcessor, CLIPModel

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise WeightsError(f"expected a CLIP checkpoint folder with config.json, found {self.folder}")
        try:
            self.model = CLIPModel.from_pretrained(str(self.folder)).eval().to(device)
            self.processor = AutoProcessor.from_pretrained(str(self.folder))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"expected a transformers CLIP checkpoint in {self.folder}: {exc}") from exc
        self.device = device
        weights = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()[:12] if weights else "noweights"
        self.model_id = f"clip:{self.folder.name}:{digest}"

    @staticmethod
    def _unit(features) -> np.ndarray:
        import torch

        t = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(t.float(), dim=-1).cpu().numpy()

    def embed_images(self, images: Sequence, batch: int = 16) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(images), batch):
            pixels = self.processor(images=[im.convert("RGB") for im in images[start:start + batch]], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out.append(self._unit(self.model.get_image_features(pixel_values=pixels.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        enc = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self._unit(self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


class ClipZeroShot:
    """Stage-2 backend: each candidate class as a text prompt, the object's crop as the image."""

    name = "clip"

    def __init__(self, clip: ClipModel, taxonomy, prompt: str = PROMPT):
        self.clip, self.taxonomy, self.prompt = clip, taxonomy, prompt
        self.version = clip.model_id
        self._text: dict[str, np.ndarray] = {}

    def class_prompt(self, class_name: str) -> str:
        c = self.taxonomy.get_class(class_name)
        return self.prompt.format(condition=c.condition or "", type=human(c.type)).replace("  ", " ")

    def _class_vectors(self, object_type: str) -> np.ndarray:
        if object_type not in self._text:
            self._text[object_type] = self.clip.embed_texts([self.class_prompt(c.name) for c in self.taxonomy.classes_for_type(object_type)])
        return self._text[object_type]

    def score(self, ctx: PhotoContext, targets: Sequence[int], with_context: bool = True) -> list[np.ndarray]:
        # with_context is accepted for the ablation wrapper; CLIP reads no spatial text. The crop is
        # 1.5x the box so the surroundings (slope, vegetation) are in view.
        images = self.clip.embed_images([crop(ctx.image, ctx.detections[i].box, 1.5) for i in targets])
        out = []
        for k, i in enumerate(targets):
            z = self.clip.logit_scale * (self._class_vectors(ctx.detections[i].type) @ images[k])
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        return out


def embed_photos(store, clip: ClipModel, progress: Callable | None = None) -> int:
    """CLIP vectors for photos not embedded yet under this checkpoint; returns how many."""
    from core.embeddings import save_vectors, stored_hashes
    from core.images import load_image

    done = stored_hashes(store, "photo", clip.model_id)
    todo = [p for p in store.query("SELECT id, sha256, path FROM photos ORDER BY id") if done.get(p["id"]) != p["sha256"]]
    n = 0
    for p in (progress or (lambda x, **_: x))(todo, desc="CLIP-embedding photos"):
        n += save_vectors(store, "photo", clip.model_id, [(p["id"], p["sha256"], clip.embed_images([load_image(p["path"])])[0])])
    return n


def search_photos(store, clip: ClipModel, query: str, k: int = 12) -> list[dict]:
    """Photos ranked by CLIP similarity to ``query`` (after embedding any new ones)."""
    from core.embeddings import load_vectors
    from core.search import cosine_top_k

    if not query.strip():
        raise ValueError("expected a search text, found an empty one")
    embed_photos(store, clip)
    ids, matrix = load_vectors(store, "photo", clip.model_id)
    hits = cosine_top_k(matrix, clip.embed_texts([query])[0], k)
    return [{"photo_id": ids[i], "score": s, "path": store.photo(ids[i]).path} for i, s in hits]
