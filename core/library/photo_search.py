"""Text-to-photo search with an optional CLIP checkpoint (only when one is configured).

Photo vectors live in the store's embeddings table under the checkpoint's id, computed
incrementally like the library's other embeddings.
"""

from __future__ import annotations

from typing import Callable

from core.images import load_image
from core.library.search import cosine_top_k
from core.stage2.backends.clip import ClipModel


def embed_photos(store, clip: ClipModel, progress: Callable | None = None) -> int:
    """CLIP vectors for photos not embedded yet under this checkpoint; returns how many."""
    done = store.vector_hashes("photo", clip.model_id)
    todo = [p for p in store.photos() if done.get(p.id) != p.sha256]
    n = 0
    for p in (progress or (lambda x, **_: x))(todo, desc="CLIP-embedding photos"):
        n += store.save_vectors("photo", clip.model_id, [(p.id, p.sha256, clip.embed_images([load_image(p.path)])[0])])
    return n


def search_photos(store, clip: ClipModel, query: str, k: int = 12) -> list[dict]:
    """Photos ranked by CLIP similarity to ``query`` (after embedding any new ones)."""
    if not query.strip():
        raise ValueError("expected a search text, found an empty one")
    embed_photos(store, clip)
    ids, matrix = store.load_vectors("photo", clip.model_id)
    hits = cosine_top_k(matrix, clip.embed_texts([query])[0], k)
    return [{"photo_id": ids[i], "score": s, "path": store.photo(ids[i]).path} for i, s in hits]
