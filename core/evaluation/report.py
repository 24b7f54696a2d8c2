"""Rendering of a dataset analysis: PNG plots, a sample grid and a Markdown report."""

from __future__ import annotations

import math
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.data import YoloDataset  # noqa: E402
from core.images import load_image  # noqa: E402
from core.overlay import draw_boxes, tile, type_colors  # noqa: E402
from core.stage2.spatial import PAIRWISE  # noqa: E402


def write_plots(ds: YoloDataset, result: dict, out: Path) -> None:
    """class_distribution.png, y_position.png and cooccurrence.png."""
    splits = result["splits"]
    key = "class" if ds.label_space == "classes" else "type"
    labels = ds.names

    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4))
    width = 0.8 / max(len(splits), 1)
    for k, (split, data) in enumerate(splits.items()):
        counts = [data["counts"][key][n] for n in labels]
        ax.bar(np.arange(len(labels)) + k * width, counts, width, label=split)
    ax.set_xticks(np.arange(len(labels)) + width * (len(splits) - 1) / 2, labels, rotation=30, ha="right")
    ax.set_ylabel("objects")
    ax.set_title(f"{key} distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "class_distribution.png", dpi=100)
    plt.close(fig)

    types = ds.taxonomy.type_names
    fig, axes = plt.subplots(1, len(types), figsize=(3 * len(types), 3), sharey=True, squeeze=False)
    ys = {t: [] for t in types}
    for split in ds.splits:
        for s in ds.samples(split):
            for o in s.objects:
                ys[o.type].append(o.box.cy / s.height)
    for ax, t in zip(axes[0], types):
        ax.hist(ys[t], bins=np.linspace(0, 1, 11), orientation="horizontal", color="#1f77b4")
        ax.set_title(t)
        ax.set_ylim(1, 0)  # image coordinates: top of the photo at the top of the plot
        ax.set_xlabel("objects")
    axes[0][0].set_ylabel("box centre y (0 = top)")
    fig.tight_layout()
    fig.savefig(out / "y_position.png", dpi=100)
    plt.close(fig)

    total = sum(np.array(d["cooccurrence"]["images_with_both"]) for d in splits.values())
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(total, cmap="Blues")
    ax.set_xticks(range(len(types)), types, rotation=30, ha="right")
    ax.set_yticks(range(len(types)), types)
    for i in range(len(types)):
        for j in range(len(types)):
            ax.text(j, i, int(total[i, j]), ha="center", va="center", color="black")
    ax.set_title("images containing both types")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "cooccurrence.png", dpi=100)
    plt.close(fig)


def write_sample_grid(ds: YoloDataset, path: Path, n: int, seed: int = 0) -> None:
    """A grid of ``n`` images (deterministic pick) with their ground-truth boxes drawn."""
    pool = [s for split in ds.splits for s in ds.samples(split) if s.objects]
    picks = random.Random(seed).sample(pool, min(n, len(pool)))
    tiles, colors = [], type_colors(ds.taxonomy.type_names)
    for s in picks:
        image = load_image(s.image_path)
        labels = [o.class_name or o.type for o in s.objects]
        tiles.append(draw_boxes(image, [o.box for o in s.objects], labels, [o.type for o in s.objects], colors))
    if tiles:
        tile(tiles, columns=4).save(path)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """A readable report of an analysis result."""
    parts = [
        f"# Dataset analysis: {result['dataset']}",
        f"Taxonomy `{result['taxonomy']}`, labels are {result['label_space']}: {', '.join(result['labels'])}.",
        "Plots: `class_distribution.png`, `y_position.png`, `cooccurrence.png`; ground truth drawn in `samples.png`.",
    ]
    for split, d in result["splits"].items():
        parts.append(f"## Split `{split}`: {d['images']} images, {d['objects']} objects ({d['empty_images']} without objects)")
        for kind in ("class", "type", "condition"):
            counts = d["counts"][kind]
            if counts:
                total = sum(counts.values()) or 1
                rows = [[k, v, 100.0 * v / total] + ([d["class_weights"].get(k)] if kind == "class" or (kind == "type" and not d["counts"]["class"]) else ["-"])
                        for k, v in counts.items()]
                parts.append(f"### Objects per {kind}\n\n" + _table([kind, "count", "%", "inverse-frequency weight"], rows))
        parts.append(
            f"Imbalance ratio (max/min count): labels {fmt(d['imbalance_ratio']['label'])}, types {fmt(d['imbalance_ratio']['type'])}."
        )
        opi = d["objects_per_image"]
        parts.append(f"Objects per image: mean {opi['mean']:.2f}, std {opi['std']:.2f}, min {opi['min']:.0f}, max {opi['max']:.0f}.")
        rows = [
            [k, s["n"], s["area"]["mean"], s["width"]["mean"], s["height"]["mean"], s["y_mean"], *(s["bands"][b] for b in ("top", "middle", "bottom"))]
            for k, s in d["box_stats"].items()
        ]
        parts.append("### Box statistics (fractions of the image)\n\n"
                     + _table(["label", "n", "area", "width", "height", "mean y", "top", "middle", "bottom"], rows))
        rows = [[pair.replace("|", " → "), *(f"{r[x]['count']} ({r[x]['pct']:.0f}%)" for x in PAIRWISE)] for pair, r in d["relations"].items()]
        parts.append("### Spatial relations between types (row object relative to column object)\n\n"
                     + _table(["A → B", *PAIRWISE], rows))
        types = d["cooccurrence"]["types"]
        m = d["cooccurrence"]["images_with_both"]
        parts.append("### Co-occurrence (images containing both)\n\n" + _table(["", *types], [[t, *m[i]] for i, t in enumerate(types)]))
        sus = d["suspicious"]
        parts.append(f"### Suspicious labels: {len(sus)}\n\n" + (_table(["image", "issue", "detail"], [[s["image"], s["issue"], s["detail"]] for s in sus]) if sus else "None found."))
    return "\n\n".join(parts) + "\n"


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return str(value)
