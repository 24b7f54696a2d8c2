"""Dataset analysis: counts, imbalance, box statistics, spatial relations, co-occurrence,
suspicious labels; written as ``analysis.json``, ``report.md``, PNG plots and a sample grid.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import Sample, YoloDataset
from core.stage2.spatial import BANDS, PAIRWISE, band, direction, overlaps


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of ``slopewatch analyze``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` to analyse.
        out: output folder for analysis.json, report.md and the PNGs.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
        samples: number of images in the sample grid.
        duplicate_iou: IoU at or above which two boxes of one image count as duplicates.
        min_box_px: boxes with width or height under this many pixels count as zero-area.
    """

    data_yaml: Path
    out: Path
    taxonomy: Path | None = None
    samples: int = 12
    duplicate_iou: float = 0.9
    min_box_px: float = 1.0

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"samples: expected >= 0, found {self.samples}")
        if not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou: expected a value in (0, 1], found {self.duplicate_iou}")


def _label(o, ds: YoloDataset) -> str:
    return o.class_name if ds.label_space == "classes" else o.type


def _condition(o, ds: YoloDataset) -> str:
    if ds.label_space != "classes":
        return "unknown"
    return ds.taxonomy.get_class(o.class_name).condition_key


def inverse_frequency_weights(counts: dict[str, int]) -> dict[str, float]:
    """``w_c = N / (K * n_c)`` over the labels present (mean weight 1 when balanced); absent labels get 0."""
    present = {k: v for k, v in counts.items() if v > 0}
    total, k = sum(present.values()), len(present)
    return {c: (total / (k * n) if n else 0.0) for c, n in counts.items()}


def imbalance_ratio(counts: dict[str, int]) -> float | None:
    """max/min count over labels present; None when fewer than one label is present."""
    present = [v for v in counts.values() if v > 0]
    return max(present) / min(present) if present else None


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if not arr.size:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}


def analyze_split(ds: YoloDataset, samples: list[Sample], cfg: AnalyzeConfig) -> dict:
    """All statistics of one split, as JSON-ready data."""
    tax = ds.taxonomy
    labels = ds.names
    class_counts = Counter({n: 0 for n in labels})
    type_counts = Counter({t: 0 for t in tax.type_names})
    cond_counts = Counter({c: 0 for c in (*tax.conditions, "none")})
    per_label: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    relations: dict[tuple[str, str], Counter] = defaultdict(Counter)
    cooc = np.zeros((len(tax.type_names), len(tax.type_names)), dtype=int)
    per_image, suspicious = [], []

    for s in samples:
        per_image.append(len(s.objects))
        present = set()
        for o in s.objects:
            lab = _label(o, ds)
            class_counts[lab] += 1
            type_counts[o.type] += 1
            cond_counts[_condition(o, ds)] += 1
            present.add(o.type)
            for key in {lab, f"type:{o.type}"}:
                d = per_label[key]
                d["area"].append(o.box.area / (s.width * s.height))
                d["width"].append(o.box.width / s.width)
                d["height"].append(o.box.height / s.height)
                d["y"].append(o.box.cy / s.height)
                d["band"].append(band(o.box, s.height))
            if o.box.width < cfg.min_box_px or o.box.height < cfg.min_box_px:
                suspicious.append({"image": s.image_path.name, "issue": "zero_area_box", "detail": f"{lab} {tuple(round(v, 1) for v in o.box.xyxy)}"})
        for t in present:
            for u in present:
                cooc[tax.type_id(t), tax.type_id(u)] += 1
        for i, a in enumerate(s.objects):
            for j, b in enumerate(s.objects):
                if i == j:
                    continue
                rel = "overlaps" if overlaps(a.box, b.box) else direction(a.box, b.box)
                relations[(a.type, b.type)][rel] += 1
                if j > i and a.box.iou(b.box) >= cfg.duplicate_iou:
                    same = _label(a, ds) == _label(b, ds)
                    suspicious.append({
                        "image": s.image_path.name,
                        "issue": "duplicate_box" if same else "conflicting_duplicate",
                        "detail": f"{_label(a, ds)} / {_label(b, ds)} IoU {a.box.iou(b.box):.2f}",
                    })

    weights_on = dict(class_counts)
    box_stats = {}
    for key, d in sorted(per_label.items()):
        bands = Counter(d["band"])
        box_stats[key] = {
            "n": len(d["area"]),
            "area": _stats(d["area"]),
            "width": _stats(d["width"]),
            "height": _stats(d["height"]),
            "y_mean": float(np.mean(d["y"])),
            "bands": {b: bands[b] / len(d["band"]) for b in BANDS},
        }
    rel_out = {}
    for (a, b), counter in sorted(relations.items()):
        total = sum(counter.values())
        rel_out[f"{a}|{b}"] = {r: {"count": counter[r], "pct": 100.0 * counter[r] / total} for r in PAIRWISE}
    return {
        "images": len(samples),
        "objects": int(sum(per_image)),
        "counts": {
            "class": dict(class_counts) if ds.label_space == "classes" else None,
            "type": dict(type_counts),
            "condition": dict(cond_counts) if ds.label_space == "classes" else None,
        },
        "imbalance_ratio": {"label": imbalance_ratio(weights_on), "type": imbalance_ratio(dict(type_counts))},
        "class_weights": inverse_frequency_weights(weights_on),
        "box_stats": box_stats,
        "relations": rel_out,
        "cooccurrence": {"types": tax.type_names, "images_with_both": cooc.tolist()},
        "objects_per_image": _stats(per_image),
        "empty_images": sum(1 for n in per_image if n == 0),
        "suspicious": suspicious,
    }


def analyze(ds: YoloDataset, cfg: AnalyzeConfig, progress=None) -> dict:
    """Analyse every split and write all outputs into ``cfg.out``. Returns the JSON data."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": str(ds.yaml_path),
        "taxonomy": ds.taxonomy.name,
        "label_space": ds.label_space,
        "labels": ds.names,
        "splits": {},
    }
    for split in tqdm(ds.splits, desc="analyse splits", disable=progress is False):
        result["splits"][split] = analyze_split(ds, ds.samples(split), cfg)
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    from core.evaluation import report  # matplotlib: imported only when a report is written

    report.write_plots(ds, result, out)
    if cfg.samples:
        report.write_sample_grid(ds, out / "samples.png", cfg.samples)
    (out / "report.md").write_text(report.markdown(result))
    return result


def band_share(result: dict, split: str, type_name: str, band_name: str) -> float | None:
    """Share of one type's boxes in one band (the data-driven hint stage 2 cites)."""
    stats = result["splits"][split]["box_stats"].get(f"type:{type_name}")
    return None if stats is None else stats["bands"][band_name]
