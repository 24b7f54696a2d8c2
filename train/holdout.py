"""The frozen slices of reviewed photos, shared by both stages' nightly jobs: a photo is held out
by its content hash, so it stays held out forever and for both models alike."""

from __future__ import annotations

import hashlib

from core.errors import SlopewatchError


class LeakError(SlopewatchError):
    """A frozen-evaluation photo appears in the training data."""


def held_out(photo_sha: str, percent: int, purpose: str = "frozen") -> bool:
    """Whether a reviewed photo belongs to a held-out slice (``frozen`` evaluation, or
    ``calibrate``): fixed by its hash, so it never moves."""
    return int(hashlib.sha256(f"{purpose}:{photo_sha}".encode()).hexdigest()[:8], 16) % 100 < percent


def half(key: str) -> str:
    """``A`` or ``B``: the hash half of a dataset photo in the simulations and the box calibration
    (one half is reviewed or fitted on, the other judges)."""
    return "A" if int(hashlib.sha256(("half:" + key).encode()).hexdigest()[:8], 16) % 2 == 0 else "B"
