"""Use case: compare a stored object with the most similar labelled objects, side by side.

The rationale says "4 of the 5 most similar labelled toe drains were blocked"; a reviewer who
doubts it opens the five here, next to the object itself, each with its class and where it comes
from (the training set, or a photo reviewers labelled). The neighbours are looked up the way the
rationale's were, in the served model's evidence index, for the object's current box and type.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from core.errors import SlopewatchError
from core.library.search import thumbnail
from core.stage2.evidence import Evidencer
from core.types import Status
from db.store import Store


class NoEvidence(SlopewatchError):
    """The object cannot be compared (deleted, or of a type without conditions)."""


@dataclass(frozen=True)
class Comparison:
    """The object's crop first, then each neighbour's, with captions; and the sentence they make."""

    sentence: str
    tiles: tuple[tuple[Image.Image, str], ...]


def compare_similar(store: Store, evidencer: Evidencer, finding_id: int) -> Comparison:
    """The object's crop and its :data:`~core.stage2.evidence.EVIDENCE_K` nearest labelled objects
    of the same type (its own photo left out), counted against its current class."""
    photo_id = store.photo_of(finding_id)
    found = [f for f in store.photo_findings(photo_id) if f.finding_id == finding_id]
    state = found[0].state
    if state.status is Status.DELETED:
        raise NoEvidence(f"object #{finding_id} is deleted: nothing to compare")
    if not store.taxonomy.needs_condition(state.object_type) or not state.class_name:
        raise NoEvidence(f"a {state.object_type.replace('_', ' ')} has no condition: nothing to compare")
    photo = store.photo(photo_id)
    try:
        image = Image.open(photo.path).convert("RGB")
    except OSError as exc:
        raise NoEvidence(f"photo {photo_id}'s stored file cannot be read ({photo.path}): {exc.strerror or exc}") from None
    evidence = evidencer.for_objects(image, photo.sha256, [(state.box, state.object_type, state.class_name)])[0]
    tiles = [(thumbnail(store, found[0], size=160, image=image), f"this object: {state.class_name} ({state.status})")]
    for e in evidence.neighbours:
        tile = evidencer.index.thumbnail(e.row) or Image.new("RGB", (96, 96), (200, 200, 200))
        origin = "reviewed" if e.source.startswith("review:") else "training set"
        tiles.append((tile, f"{e.class_name} · {origin} · similarity {e.similarity:.2f}"))
    sentence = evidence.sentence(store.taxonomy) or "no labelled object of this type in the index"
    return Comparison(sentence[0].upper() + sentence[1:] + ".", tuple(tiles))
