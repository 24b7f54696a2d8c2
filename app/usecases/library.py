"""Use case: the photo library from the command line (``slopewatch embed`` and ``slopewatch map``).

The library's logic is ``core.library``; this module opens the store and reports counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.library.embeddings import TextEncoder, embed_library
from core.library.map import COLOR_BY, map_points, plot_map
from core.library.search import NotEmbedded
from db.store import Store


@dataclass
class EmbedConfig:
    """Settings of ``slopewatch embed``.

    Attributes:
        db: review database (default: in the data dir).
        no_text: skip the finding-text vectors (text search then finds nothing new).
    """

    db: Path | None = None
    no_text: bool = False


def run_embed(cfg: EmbedConfig) -> dict:
    """``slopewatch embed``: embed what is new in the store, with a progress bar."""
    from tqdm.auto import tqdm

    store = Store(cfg.db)
    counts = embed_library(store, text=None if cfg.no_text else TextEncoder(), progress=tqdm)
    return {"db": str(store.path), "new_photos": counts.photos, "new_objects": counts.findings, "new_texts": counts.texts}


@dataclass
class MapConfig:
    """Settings of ``slopewatch map``.

    Attributes:
        db: review database (default: in the data dir).
        out: PNG to write.
        color_by: colour points by class, condition, status or disagreement (model vs reviewer).
        embed: first embed anything new in the store.
    """

    out: Path
    db: Path | None = None
    color_by: str = "class"
    embed: bool = False

    def __post_init__(self) -> None:
        if self.color_by not in COLOR_BY:
            raise ValueError(f"color_by: expected one of {COLOR_BY}, found {self.color_by!r}")


def make_map(cfg: MapConfig) -> dict:
    """``slopewatch map``: the library map as a PNG."""
    store = Store(cfg.db)
    if cfg.embed:
        from tqdm.auto import tqdm

        embed_library(store, progress=tqdm)
    points, method = map_points(store, cfg.color_by)
    if not points:
        raise NotEmbedded(f"expected embedded objects in {store.path}, found none; run `slopewatch embed --db {store.path}` or pass --embed")
    plot_map(points, cfg.out, f"{len(points)} objects ({method}), coloured by {cfg.color_by}")
    return {"out": str(cfg.out), "points": len(points), "method": method}
