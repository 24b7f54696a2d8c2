"""Speed benchmarks (``slopewatch bench``). Timings live here, never in tests."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import IMAGE_SUFFIXES
from core.detector import Detector, DetectorConfig
from core.images import load_image
from core.paths import samples_dir


@dataclass(frozen=True)
class DetectorBenchConfig:
    """Settings of ``slopewatch bench detector``.

    Attributes:
        photos: folder of photos to time (searched recursively); default: the shipped samples.
        weights: detector checkpoint; default is the shipped, hash-pinned one.
        repeats: timed passes over all photos.
        warmup: untimed predictions before timing.
        imgsz: inference size; default is the checkpoint's training size.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: where to write the results JSON.
    """

    photos: Path | None = None
    weights: Path | None = None
    repeats: int = 5
    warmup: int = 3
    imgsz: int | None = None
    device: str = "auto"
    json: Path | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats: expected >= 1, found {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, found {self.warmup}")


def find_photos(folder: Path) -> list[Path]:
    photos = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise FileNotFoundError(f"expected photos ({', '.join(IMAGE_SUFFIXES)}) under {folder}, found none")
    return photos


def bench_detector(cfg: DetectorBenchConfig) -> dict:
    """Median/p95 latency per photo and photos/s of stage 1 on decoded, in-memory photos."""
    import torch
    from tqdm.auto import tqdm

    detector = Detector(DetectorConfig(weights=cfg.weights, imgsz=cfg.imgsz, device=cfg.device))
    images = [load_image(p) for p in find_photos(cfg.photos or samples_dir())]
    for k in range(cfg.warmup):
        detector.predict(images[k % len(images)])
    times = []
    for _ in tqdm(range(cfg.repeats), desc="bench detector"):
        for im in images:
            t0 = time.perf_counter()
            detector.predict(im)
            times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return {
        "bench": "detector",
        "photos": len(images),
        "timed_predictions": len(times),
        "median_s": float(np.median(arr)),
        "p95_s": float(np.percentile(arr, 95)),
        "photos_per_s": float(len(arr) / arr.sum()),
        "imgsz": detector.imgsz,
        "device": detector.device,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "weights": str(detector.weights),
    }
