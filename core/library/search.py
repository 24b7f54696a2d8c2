"""Search over the library's stored embeddings: similar objects, text search, bulk relabel.

All ranking is cosine similarity over the vectors :mod:`core.library.embeddings` stored; nothing here
encodes images, so a search costs one matrix product.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.errors import SlopewatchError
from core.library.embeddings import IMAGE_MODEL, TEXT_MODEL
from core.types import Status


class NotEmbedded(SlopewatchError):
    """The object or library has no stored embedding yet (run ``slopewatch embed``)."""


def cosine_top_k(matrix: np.ndarray, query: np.ndarray, k: int, exclude: set[int] | None = None) -> list[tuple[int, float]]:
    """Row indices of ``matrix`` most similar to ``query``, best first, as ``(index, cosine)``."""
    if matrix.size == 0:
        return []
    m = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query, np.float32) / max(float(np.linalg.norm(query)), 1e-12)
    scores = m @ q
    order = [int(i) for i in np.argsort(-scores, kind="stable") if not exclude or int(i) not in exclude]
    return [(i, float(scores[i])) for i in order[:k]]


@dataclass(frozen=True)
class Hit:
    """A search result: the finding (a ``db.rows.StoredFinding``) and its cosine similarity."""

    finding: object
    score: float


def similar_findings(store, finding_id: int, k: int = 8) -> list[Hit]:
    """The ``k`` live objects whose crops look most like ``finding_id``'s, best first."""
    ids, matrix = store.load_vectors("finding", IMAGE_MODEL)
    if finding_id not in ids:
        raise NotEmbedded(f"expected an embedding for object #{finding_id}, found none; run `slopewatch embed` (or Embed in the app)")
    rows = store.live_findings()
    dead = {i for i, fid in enumerate(ids) if fid not in rows}
    hits = cosine_top_k(matrix, matrix[ids.index(finding_id)], k, dead | {ids.index(finding_id)})
    return [Hit(rows[ids[i]], s) for i, s in hits]


@dataclass(frozen=True)
class SearchFilters:
    """Filters combined with text search.

    Attributes:
        class_name: only findings currently of this class.
        status: only ``pending`` or ``reviewed`` findings.
        since: only findings updated at or after this Unix time.
        until: only findings updated before this Unix time.
    """

    class_name: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.status not in (None, Status.PENDING, Status.REVIEWED):
            raise ValueError(f"status: expected pending or reviewed, found {self.status!r}")

    def keep(self, state) -> bool:
        """Whether a ``FindingState`` passes every filter."""
        return (state.status is not Status.DELETED
                and (self.class_name is None or state.class_name == self.class_name)
                and (self.status is None or state.status == self.status)
                and (self.since is None or state.updated_at >= self.since)
                and (self.until is None or state.updated_at < self.until))


def text_search(store, encoder, query: str, k: int = 20, filters: SearchFilters | None = None) -> list[Hit]:
    """Findings whose class, rationale and note read most like ``query``, best first."""
    if not query.strip():
        raise ValueError("expected a search text, found an empty one")
    ids, matrix = store.load_vectors("finding_text", TEXT_MODEL)
    if not ids:
        raise NotEmbedded("expected text embeddings of findings, found none; run `slopewatch embed` (or Embed in the app)")
    rows = store.live_findings()
    filters = filters or SearchFilters()
    drop = {i for i, fid in enumerate(ids) if fid not in rows or not filters.keep(rows[fid].state)}
    hits = cosine_top_k(matrix, encoder.embed([query])[0], k, drop)
    return [Hit(rows[ids[i]], s) for i, s in hits]


def apply_class(store, reviewer: str, finding_ids: list[int], class_name: str) -> list:
    """Give every listed finding ``class_name``: one correction row each, at its current revision;
    returns the new states of the findings written.

    Objects of another type are retyped, since a class fixes its type. One that already has the
    class is accepted while pending (the reviewer agrees with the model) and left alone once
    reviewed: the store refuses a relabel that changes nothing.
    """
    from core.types import Status

    target_type = store.taxonomy.get_class(class_name).type
    store.ensure_user(reviewer)
    out = []
    for fid in finding_ids:
        state = store.state(int(fid))
        if (state.object_type, state.class_name) == (target_type, class_name):
            if state.status is Status.PENDING:
                out.append(store.correct(int(fid), state.revision, reviewer, "accept"))
            continue
        action = "relabel" if state.object_type == target_type else "retype"
        out.append(store.correct(int(fid), state.revision, reviewer, action, object_type=target_type, class_name=class_name))
    return out


def thumbnail(store, finding, size: int = 96, image: Image.Image | None = None) -> Image.Image:
    """A ``StoredFinding``'s crop (with a little margin) from its stored photo (or ``image``, when
    the caller already opened it), at most ``size`` px."""
    from core.stage2.features import object_thumbnail

    image = image or Image.open(store.photo(finding.photo_id).path).convert("RGB")
    return object_thumbnail(image, finding.state.box, size)


def since_days(days: float | None) -> float | None:
    return None if not days else time.time() - days * 86400
