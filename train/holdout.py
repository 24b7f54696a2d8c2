"""The frozen slices of reviewed photos, shared by both stages' nightly jobs: a photo is held out
by its content hash, so it stays held out forever and for both models alike."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Collection

from core.errors import SlopewatchError


class LeakError(SlopewatchError):
    """A frozen-evaluation photo appears in the training data."""


def held_out(photo_sha: str, percent: int, purpose: str = "frozen", trained: Collection[str] = frozenset()) -> bool:
    """Whether a reviewed photo belongs to a held-out slice (``frozen`` evaluation, or
    ``calibrate``): fixed by its hash, so it never moves. A photo in ``trained`` (the replayed
    train split's hashes: the current models learned it, as in a label-review pass) is never held
    out: it would judge or calibrate them on a memorised photo."""
    if photo_sha in trained:
        return False
    return int(hashlib.sha256(f"{purpose}:{photo_sha}".encode()).hexdigest()[:8], 16) % 100 < percent


def half(key: str) -> str:
    """``A`` or ``B``: the hash half of a dataset photo in the simulations and the box calibration
    (one half is reviewed or fitted on, the other judges)."""
    return "A" if int(hashlib.sha256(("half:" + key).encode()).hexdigest()[:8], 16) % 2 == 0 else "B"


def write_judge_set(samples, out: Path, class_names: list[str]) -> Path:
    """The judged half of a simulation as a YOLO set with one ``valid`` split: images linked, label
    files copied (empty for a photo without one), the dataset's own class names; returns its
    ``data.yaml`` (the nightly job's frozen set)."""
    import yaml

    for sub in ("images", "labels"):
        (out / "valid" / sub).mkdir(parents=True, exist_ok=True)
    for s in samples:
        link = out / "valid" / "images" / s.image_path.name
        if not link.exists():
            os.symlink(s.image_path.resolve(), link)
        label = s.image_path.parent.parent / "labels" / f"{s.stem}.txt"
        (out / "valid" / "labels" / label.name).write_text(label.read_text() if label.exists() else "")
    (out / "data.yaml").write_text(yaml.safe_dump({"valid": "valid/images", "names": list(class_names)}, sort_keys=False))
    return out / "data.yaml"
