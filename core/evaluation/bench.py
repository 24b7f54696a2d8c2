"""Speed benchmarks (``slopewatch bench``). Timings live here, never in tests."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import IMAGE_SUFFIXES, file_sha256
from core.images import load_image
from core.paths import samples_dir
from core.stage1.detector import Detector, DetectorConfig
from core.stage2 import registry


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
        runtime: ``auto``, ``torch`` or ``onnx`` (ONNX Runtime on the exported checkpoint).
        augment: time test-time augmentation (torch runtime).
    """

    photos: Path | None = None
    weights: Path | None = None
    repeats: int = 5
    warmup: int = 3
    imgsz: int | None = None
    device: str = "auto"
    json: Path | None = None
    runtime: str = "auto"
    augment: bool = False

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

    detector = Detector(DetectorConfig(weights=cfg.weights, imgsz=cfg.imgsz, device=cfg.device, runtime=cfg.runtime,
                                       augment=cfg.augment))
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
        "runtime": detector.runtime,
        "cpu": platform.processor() or platform.machine(),
        "weights": str(detector.weights),
    }


@dataclass(frozen=True)
class PipelineBenchConfig:
    """Settings of ``slopewatch bench pipeline``.

    Attributes:
        photos: folder of photos to time (searched recursively); default: the shipped samples.
        backend: stage-2 backend (a live one of ``core.stage2.registry``; qwen2vl needs --qwen-model).
        qwen_model: Qwen2-VL hub id or folder, for the qwen2vl backend.
        qwen_precision: qwen2vl precision: auto, fp32, fp16, bf16, int8 or int4.
        repeats: timed passes over all photos.
        naive: also time the naive path: every object scored and explained in its own call.
        precision: the adapter LM's precision: auto (bf16 on a CPU with native bf16, else fp32),
            fp32, bf16 or int8; for qwen2vl use qwen_precision.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: where to write the results JSON.
        rationale_tokens: tokens the VLM generates per rationale (default: the model's setting;
            24 times the adapter as it ran before rationales became facts + evidence).
    """

    photos: Path | None = None
    backend: str = registry.DEFAULT
    qwen_model: str | None = None
    qwen_precision: str = "auto"
    repeats: int = 1
    naive: bool = True
    precision: str = "auto"
    device: str = "auto"
    json: Path | None = None
    rationale_tokens: int | None = None

    def __post_init__(self) -> None:
        registry.check(self.backend, live_only=True)
        if self.repeats < 1:
            raise ValueError(f"repeats: expected >= 1, found {self.repeats}")
        if self.precision not in registry.ADAPTER_PRECISIONS:
            raise ValueError(f"precision: expected one of {registry.ADAPTER_PRECISIONS}, found {self.precision!r}")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _OneAtATime:
    """The naive path: the same backend, called once per object (no shared prefill, no batching)."""

    def __init__(self, backend):
        self.inner, self.name, self.version = backend, backend.name, backend.version

    def score(self, ctx, targets):
        return [self.inner.score(ctx, [i])[0] for i in targets]

    def rationales(self, ctx, findings):
        writer = getattr(self.inner, "rationales", None)
        if writer is None:
            return [None] * len(findings)
        out = []
        for k in range(len(findings)):
            alone = [g if j == k else _Skipped(g) for j, g in enumerate(findings)]
            out.append(writer(ctx, alone)[k])
        return out


class _Skipped:
    """A finding hidden from a rationale writer (its backend name matches no real backend)."""

    def __init__(self, finding):
        self.backend, self.class_name = "skipped", finding.class_name


def bench_pipeline(cfg: PipelineBenchConfig) -> dict:
    """Seconds per photo and per object, photos/s and peak RSS for both stages, and the
    speed-up of the shared/batched path over the naive one-call-per-object path."""
    import torch
    from tqdm.auto import tqdm

    from core.pipeline import Pipeline
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.evidence import Evidencer, load_default_index
    from core.stage2.features import FeatureStore

    detector = Detector(DetectorConfig(device=cfg.device))
    backend = registry.create(cfg.backend, registry.BackendOptions(detector.taxonomy, qwen_model=cfg.qwen_model,
                                                                   qwen_precision=cfg.qwen_precision, device=cfg.device,
                                                                   rationale_tokens=cfg.rationale_tokens,
                                                                   adapter_precision=cfg.precision))
    model = getattr(backend, "inner", backend)  # a calibrated backend wraps the model that holds the feature store
    features = FeatureStore(model.store.encoder if hasattr(model, "store") else None, persist=False)
    if hasattr(model, "store"):
        model.store = features
    evidencer = Evidencer(load_default_index(), features)  # what serving runs: every rationale cites its neighbours
    paths = find_photos(cfg.photos or samples_dir())
    images, keys = [load_image(p) for p in paths], [file_sha256(p) for p in paths]
    result = {"bench": "pipeline", "backend": backend.name, "version": backend.version, "photos": len(images),
              "rationale_tokens": getattr(getattr(model, "config", None), "rationale_tokens", None),
              "lm_dtype": str(getattr(getattr(model, "lm", None), "dtype", "")) or None,
              "device": detector.device, "torch_threads": torch.get_num_threads()}
    modes = [("shared", backend)] + ([("naive", _OneAtATime(backend))] if cfg.naive else [])
    for mode, b in modes:
        pipeline = Pipeline(detector, ConditionClassifier(b, detector.taxonomy, evidencer))
        pipeline.run(images[0])  # warm-up: first-call allocations are not what users wait for
        features.forget()  # ... and the warm-up photo's features are not a head start
        times, objects = [], 0
        for _ in tqdm(range(cfg.repeats), desc=f"bench pipeline ({mode})"):
            for im, key in zip(images, keys):
                t0 = time.perf_counter()
                _, res = pipeline.run(im, key=key)
                features.forget()  # a repeat must encode again, as a new photo would
                times.append(time.perf_counter() - t0)
                objects += len(res.detections)
        arr = np.asarray(times)
        result[mode] = {"median_s_per_photo": float(np.median(arr)), "p95_s_per_photo": float(np.percentile(arr, 95)),
                        "photos_per_s": float(len(arr) / arr.sum()), "s_per_object": float(arr.sum() / max(objects, 1)),
                        "objects": objects}
    if cfg.naive:
        result["naive_over_shared"] = result["naive"]["median_s_per_photo"] / result["shared"]["median_s_per_photo"]
    result["peak_rss_mb"] = _peak_rss_mb()
    return result
