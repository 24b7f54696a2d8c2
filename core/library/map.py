"""A 2-D map of the library's object embeddings: UMAP, or PCA for very small libraries.

The same points feed the static plot (``slopewatch map``, ``app.usecases.library``) and the app's interactive map (an
SVG whose points carry their finding id and a thumbnail for hovering).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.library.embeddings import IMAGE_MODEL
from core.overlay import DEFAULT_COLORS
from core.types import Status, object_name

COLOR_BY = ("class", "condition", "status", "disagreement")
MIN_UMAP_POINTS = 15  # below this UMAP's neighbour graph is degenerate; PCA is honest there
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def layout(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates in [0, 1] per row, and the method used (``umap`` or ``pca``)."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2)), "none"
    if n >= MIN_UMAP_POINTS:
        import umap

        xy = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed, metric="cosine").fit_transform(vectors)
        method = "umap"
    else:
        centred = vectors - vectors.mean(0)
        if n > 1 and np.abs(centred).max() > 0:
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            xy = centred @ vt[:2].T
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        else:
            xy = np.zeros((n, 2))
        method = "pca"
    span = np.ptp(xy, axis=0)
    return (xy - xy.min(0)) / np.where(span > 0, span, 1.0), method


def color_key(finding, color_by: str, taxonomy) -> str:
    """The key a ``StoredFinding``'s point is coloured by."""
    state = finding.state
    if color_by == "class":
        return state.class_name or state.object_type
    if color_by == "condition":
        return taxonomy.condition_key(state.class_name)
    if color_by == "status":
        return str(state.status)
    if state.status is not Status.REVIEWED:
        return "not reviewed"
    return "model agrees" if finding.model_class == state.class_name else "model disagrees"


@dataclass(frozen=True)
class MapPoint:
    finding_id: int
    photo_id: int
    index: int  # the object's #k on its photo
    x: float
    y: float
    key: str
    class_name: str


def map_points(store, color_by: str = "class", seed: int = 0) -> tuple[list[MapPoint], str]:
    """One point per live, embedded object, and the layout method."""
    ids, matrix = store.load_vectors("finding", IMAGE_MODEL)
    rows = store.live_findings()
    keep = [i for i, fid in enumerate(ids) if fid in rows]
    xy, method = layout(matrix[keep] if keep else np.zeros((0, 1)), seed)
    points = []
    for (x, y), i in zip(xy, keep):
        r = rows[ids[i]]
        points.append(MapPoint(r.finding_id, r.photo_id, r.index, float(x), float(y), color_key(r, color_by, store.taxonomy),
                               r.state.class_name or r.state.object_type))
    return points, method


def colors(points: list[MapPoint]) -> dict[str, str]:
    """One colour per key. Coloured by condition, the overlay's and the Review canvas's colours (a
    map colouring "normal" red read as damage); any other keys, the palette in turn."""
    keys = sorted({p.key for p in points})
    if all(k in DEFAULT_COLORS for k in keys):
        return {k: DEFAULT_COLORS[k] for k in keys}
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def plot_map(points: list[MapPoint], out: Path, title: str) -> Path:
    """The map as a static PNG, one colour per key, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    for key, color in colors(points).items():
        pts = [p for p in points if p.key == key]
        ax.scatter([p.x for p in pts], [1 - p.y for p in pts], s=28, c=color, label=f"{key} ({len(pts)})", alpha=0.85)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    if points:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def map_svg(points: list[MapPoint], thumbnails: dict[int, str], size: int = 560) -> str:
    """The interactive map's markup: each point carries ``data-fid``, its label and thumbnail."""
    pad, palette = 12, colors(points)
    legend = "".join(f'<span style="color:{c}">&#9679; {html.escape(k)}</span> ' for k, c in palette.items())
    dots = "".join(
        f'<circle cx="{pad + p.x * (size - 2 * pad):.1f}" cy="{pad + p.y * (size - 2 * pad):.1f}" r="6" fill="{palette[p.key]}" '
        f'data-fid="{p.finding_id}" data-label="{object_name(p.photo_id, p.index, p.finding_id)} {html.escape(p.class_name)} '
        f'({html.escape(p.key)})" data-thumb="{thumbnails.get(p.finding_id, "")}" class="sw-pt">'
        f'<title>{object_name(p.photo_id, p.index, p.finding_id)} {html.escape(p.class_name)}</title></circle>'
        for p in points)
    return (f'<div class="sw-map"><div>{legend}</div><svg width="{size}" height="{size}" style="background:#fafafa;border:1px solid #ddd">'
            f'{dots}</svg><div class="sw-tip" style="display:none"></div></div>')
