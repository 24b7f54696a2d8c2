"""Optional CLIP: the checkpoint loader and the zero-shot stage-2 backend (photo search over it is
``core.library.photo_search``).

CLIP is used only when a checkpoint folder is configured (``--clip-model`` or
``SLOPEWATCH_CLIP_MODEL``); no CLIP weights ship with slopewatch and none are downloaded. The
folder is anything transformers' ``CLIPModel`` / ``AutoProcessor`` load with
``from_pretrained`` (open_clip checkpoints must be converted first).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import SlopewatchError, WeightsError
from core.paths import clip_model_dir
from core.stage2.classifier import PhotoContext
from core.stage2.features import crop
from core.stage2.rationale import human
from core.stage2.registry import BackendOptions

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


def from_options(options: BackendOptions) -> ClipZeroShot:
    folder = options.clip_model or clip_model_dir()
    if folder is None:
        raise SlopewatchError("backend clip needs a checkpoint: pass --clip-model FOLDER or set SLOPEWATCH_CLIP_MODEL")
    return ClipZeroShot(ClipModel(folder), options.taxonomy)
