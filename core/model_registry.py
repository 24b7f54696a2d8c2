"""Versioned models of each stage with an atomically swapped ``CURRENT`` pointer and rollback.

One registry per stage, under ``data_dir()/models/<stage>`` by default::

    versions/<id>/          one folder per model: stage 2 ``adapter.json`` + ``weights.safetensors``,
                            stage 1 ``detector.pt``; both with ``metrics.json``
    CURRENT                 the current version id; replaced with os.replace, so a reader sees
                            the old or the new id, never a torn file, even if the job is killed
    promotions.jsonl        every promotion and rollback, appended
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from core.errors import SlopewatchError
from core.paths import data_dir


class RegistryError(SlopewatchError):
    """The model registry cannot do what was asked (no such version, nothing to roll back to)."""


# The file whose presence makes a version folder complete (``add`` renames the folder into place
# only after copying, so an interrupted add never shows it).
# Stage 2 has one registry per trainable backend: the adapter's, and the Qwen2-VL LoRA's (peft folders).
STAGES = {"classifier": "adapter.json", "qwen2vl": "adapter_config.json", "detector": "detector.pt"}


class ModelRegistry:
    """Versions of one stage's model. ``stage``: ``classifier`` (stage 2) or ``detector`` (stage 1)."""

    def __init__(self, root: Path | None = None, stage: str = "classifier"):
        if stage not in STAGES:
            raise RegistryError(f"expected a stage among {sorted(STAGES)}, found {stage!r}")
        self.stage, self.marker = stage, STAGES[stage]
        self.root = Path(root or data_dir() / "models" / stage)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def current(self) -> str | None:
        pointer = self.root / "CURRENT"
        return pointer.read_text().strip() or None if pointer.exists() else None

    def path(self, version: str) -> Path:
        folder = self.root / "versions" / version
        if not (folder / self.marker).is_file():
            raise RegistryError(f"expected {self.stage} model version {version!r} at {folder}, found none")
        return folder

    def current_path(self) -> Path | None:
        version = self.current()
        return self.path(version) if version else None

    def versions(self) -> list[dict]:
        """All complete versions, oldest first, with their metrics and which one is current."""
        current = self.current()
        out = []
        for folder in sorted((self.root / "versions").iterdir(), key=lambda p: p.stat().st_mtime):
            if folder.name.startswith(".") or not (folder / self.marker).is_file():
                continue  # an interrupted add leaves only a hidden temp folder
            metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
            out.append({"version": folder.name, "current": folder.name == current, "created": folder.stat().st_mtime, "metrics": metrics})
        return out

    def promotions(self) -> list[dict]:
        log = self.root / "promotions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []

    def data_until(self, version: str) -> float:
        """Corrections after this time are new to ``version``: its latest promotion's data
        cut-off, or the time it was made current again by a rollback; 0 if never current."""
        entries = [p for p in self.promotions() if p["version"] == version]
        return entries[-1].get("data_until", entries[-1]["at"]) if entries else 0.0

    # --- writing ---------------------------------------------------------------------------
    def add(self, source: Path, version: str, metrics: dict | None = None) -> Path:
        """Copy a trained model folder in as ``version`` (complete or not at all)."""
        final = self.root / "versions" / version
        if final.exists():
            raise RegistryError(f"model version {version!r} already exists at {final}")
        tmp = self.root / "versions" / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tmp.rename(final)
        return final

    def promote(self, version: str, reason: str = "", data_until: float | None = None) -> None:
        """Make ``version`` current. ``data_until``: the newest correction time its training data
        could hold (0 for a model that saw none), so the next nightly knows what is new."""
        self.path(version)
        previous = self.current()
        self._point(version)
        self._log({"at": time.time(), "action": "promote", "version": version, "previous": previous, "reason": reason,
                   "data_until": time.time() if data_until is None else data_until})

    def rollback(self) -> str:
        """Make the version that was current before the present one current again; returns it."""
        current = self.current()
        history = [p for p in self.promotions() if p["action"] == "promote" and p["version"] == current and p.get("previous")]
        if not history:
            raise RegistryError(f"no earlier version to roll back to from {current!r}")
        target = history[-1]["previous"]
        self.path(target)
        self._point(target)
        self._log({"at": time.time(), "action": "rollback", "version": target, "previous": current})
        return target

    def _point(self, version: str) -> None:
        tmp = self.root / "CURRENT.tmp"
        with open(tmp, "w") as f:
            f.write(version)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "CURRENT")

    def _log(self, entry: dict) -> None:
        with open(self.root / "promotions.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
