"""Evidence for a verdict: the most similar labelled objects in the frozen encoder's space.

A reviewer asks "why blocked?". The spatial facts say where the object is; this says what it
looks like: among the labelled objects of the same type whose crops are nearest to this one in
EfficientNet-Lite0's feature space (the encoder every backend already runs), how many carry the
verdict's condition ("4 of the 5 most similar labelled toe drains were blocked"). The count is
read off the index, so it is true by construction, and ``unfaithful_claims`` checks any text that
cites one against the index.

The shipped index holds the dataset's train split only (so evaluating on ``valid`` never looks
itself up); the app adds the objects reviewers have confirmed. Each row keeps a small JPEG
thumbnail of its crop (training photos are not shipped) so the app can show the neighbours side
by side with the object.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from core.errors import WeightsError
from core.paths import assets_dir
from core.stage2.features import ENCODER_ID, FEATURE_DIM, FeatureStore, object_thumbnail
from core.taxonomy import Taxonomy

EVIDENCE_K = 5
THUMB_PX = 96


@dataclass(frozen=True)
class Example:
    """One labelled object of the index, as a neighbour of a query.

    Attributes:
        row: its row in the index.
        object_type: its type.
        class_name: its (reviewed or dataset) class.
        source: where it comes from: ``"<split>/<image stem>#<k>"`` or ``"review:<photo hash[:12]>#<k>"``
            (k: the object's index on its photo).
        photo: content hash of its photo.
        similarity: cosine similarity to the query's crop features.
    """

    row: int
    object_type: str
    class_name: str
    source: str
    photo: str
    similarity: float


@dataclass(frozen=True)
class Evidence:
    """The ``k`` nearest labelled objects of one object's type, and the class the claim counts."""

    object_type: str
    class_name: str
    neighbours: tuple[Example, ...]

    def __post_init__(self) -> None:
        strays = [e.source for e in self.neighbours if e.object_type != self.object_type]
        if strays:
            raise ValueError(f"Evidence for a {self.object_type}: expected neighbours of that type, found {strays}")

    @property
    def agreeing(self) -> int:
        return sum(e.class_name == self.class_name for e in self.neighbours)

    @property
    def outvoting(self) -> tuple[str, int] | None:
        """The class most neighbours carry and how many, when it is not the verdict's and they
        outnumber the verdict's (ties go to the more similar neighbour); else None."""
        counts = Counter(e.class_name for e in self.neighbours if e.class_name != self.class_name)
        if not counts:
            return None
        name, n = counts.most_common(1)[0]
        return (name, n) if n > self.agreeing else None

    def sentence(self, taxonomy: Taxonomy) -> str:
        """``"4 of the 5 most similar labelled toe drains were blocked"``, and when most of them
        carry another condition, which and how many (``"1 of the 5 ... were blocked, 3 normal"``:
        "1 of 5" alone left the reviewer to guess what the other four were). Empty without neighbours."""
        if not self.neighbours:
            return ""
        other = self.outvoting
        verb = "was" if self.agreeing == 1 else "were"
        return (f"{self.agreeing} of the {len(self.neighbours)} most similar labelled {plural(self.object_type)} "
                f"{verb} {condition_word(taxonomy, self.class_name)}" + (f", {other[1]} {condition_word(taxonomy, other[0])}" if other else ""))


def plural(type_name: str) -> str:
    return type_name.replace("_", " ") + "s"


def condition_word(taxonomy: Taxonomy, class_name: str) -> str:
    """The word a claim uses for a class: its condition (``blocked``), else its name."""
    return taxonomy.get_class(class_name).condition or class_name.lower()


def thumbnail_bytes(image: Image.Image, box) -> bytes:
    """A small JPEG of the object's crop (with a margin), for showing a neighbour."""
    im = object_thumbnail(image, box, THUMB_PX)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class EvidenceIndex:
    """Labelled object crops as unit vectors, with type, class, source, photo hash and thumbnail."""

    def __init__(self, features: np.ndarray, types: Sequence[str], classes: Sequence[str], sources: Sequence[str],
                 photos: Sequence[str], thumbs: Sequence[bytes] | None = None):
        features = np.asarray(features, np.float32).reshape(-1, FEATURE_DIM)
        n = len(features)
        lengths = {"types": len(types), "classes": len(classes), "sources": len(sources), "photos": len(photos)}
        if thumbs is not None:
            lengths["thumbs"] = len(thumbs)
        if any(v != n for v in lengths.values()):
            raise ValueError(f"EvidenceIndex: expected {n} of each column (one per feature row), found {lengths}")
        self.features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        self.types, self.classes = list(types), list(classes)
        self.sources, self.photos = list(sources), list(photos)
        self.thumbs = list(thumbs) if thumbs is not None else [b""] * n

    def __len__(self) -> int:
        return len(self.features)

    def without_photos(self, keys: set[str]) -> "EvidenceIndex":
        """This index less every object of the photos ``keys`` (content hashes)."""
        rows = [i for i, p in enumerate(self.photos) if p not in keys]
        return EvidenceIndex(self.features[rows], [self.types[i] for i in rows],
                             [self.classes[i] for i in rows], [self.sources[i] for i in rows], [self.photos[i] for i in rows],
                             [self.thumbs[i] for i in rows])

    def extend(self, other: "EvidenceIndex") -> "EvidenceIndex":
        return EvidenceIndex(np.concatenate([self.features, other.features]), self.types + other.types,
                             self.classes + other.classes, self.sources + other.sources, self.photos + other.photos,
                             self.thumbs + other.thumbs)

    def nearest(self, feature: np.ndarray, object_type: str, k: int = EVIDENCE_K, skip_photo: str | None = None) -> tuple[Example, ...]:
        """The ``k`` most similar objects of ``object_type``, best first; ``skip_photo`` leaves out
        the query's own photo (an object must not be its own evidence)."""
        q = np.asarray(feature, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        rows = [i for i, t in enumerate(self.types) if t == object_type and self.photos[i] != skip_photo]
        if not rows:
            return ()
        scores = self.features[rows] @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return tuple(Example(rows[j], self.types[rows[j]], self.classes[rows[j]], self.sources[rows[j]], self.photos[rows[j]],
                             float(scores[j])) for j in order)

    def thumbnail(self, row: int) -> Image.Image | None:
        data = self.thumbs[row]
        return Image.open(io.BytesIO(data)).convert("RGB") if data else None

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        # float16 halves the file; cosine rankings do not change at that precision.
        np.savez_compressed(tmp, features=self.features.astype(np.float16), types=np.array(self.types), classes=np.array(self.classes),
                            sources=np.array(self.sources), photos=np.array(self.photos), encoder=np.array(ENCODER_ID),
                            thumb_lengths=np.array([len(b) for b in self.thumbs]), thumb_bytes=np.frombuffer(b"".join(self.thumbs), np.uint8))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "EvidenceIndex":
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"expected an evidence index at {path} (build one with `slopewatch train evidence DATA_YAML`), found none")
        z = np.load(path, allow_pickle=False)
        if str(z["encoder"]) != ENCODER_ID:
            raise WeightsError(f"{path}: index built with encoder {z['encoder']}, expected {ENCODER_ID}")
        blob, ends = z["thumb_bytes"].tobytes(), np.cumsum(z["thumb_lengths"])
        thumbs = [blob[e - n:e] for e, n in zip(ends, z["thumb_lengths"])]
        return cls(z["features"].astype(np.float32), [str(t) for t in z["types"]], [str(c) for c in z["classes"]],
                   [str(s) for s in z["sources"]], [str(p) for p in z["photos"]], thumbs)


def default_index_path() -> Path:
    return assets_dir() / "models" / "evidence" / "drainage-train.npz"


def load_default_index() -> EvidenceIndex:
    """The shipped index (the dataset's train split)."""
    return EvidenceIndex.load(default_index_path())


class Evidencer:
    """Looks up evidence for a photo's findings: crop features from ``features`` (the backend's
    own feature store when it has one, so nothing is encoded twice), neighbours from ``index``."""

    def __init__(self, index: EvidenceIndex, features: FeatureStore | None = None, k: int = EVIDENCE_K):
        if k < 1:
            raise ValueError(f"k: expected >= 1, found {k}")
        self.index, self.features, self.k = index, features or FeatureStore(), k

    def for_findings(self, ctx, findings, targets: Sequence[int]) -> dict[int, Evidence]:
        """Evidence for each target finding (index into ``findings``), its own photo left out."""
        return dict(zip(targets, self.for_objects(ctx.image, ctx.image_key, [(ctx.detections[i].box, ctx.detections[i].type,
                                                                               findings[i].class_name) for i in targets])))

    def for_objects(self, image: Image.Image, photo_key: str, objects: Sequence[tuple]) -> list[Evidence]:
        """Evidence for ``(box, type, class)`` objects of one photo (``photo_key``: its content
        hash, so its own objects are never their evidence), their crops encoded in one batch."""
        if not objects:
            return []
        crops, _ = self.features.object_features(image, [box for box, _, _ in objects], photo_key)
        return [Evidence(t, c, self.index.nearest(f, t, self.k, skip_photo=photo_key)) for (_, t, c), f in zip(objects, crops)]


def index_from_photos(named_photos, taxonomy: Taxonomy, features: FeatureStore | None = None, progress=None) -> EvidenceIndex:
    """An index of every labelled object (class known, type with a condition) of ``named_photos``:
    ``(LabeledPhoto, source)`` pairs, read one at a time, the source naming the photo
    (``"train/<stem>"``, ``"review:<photo hash[:12]>"``); each object's source adds ``#<index>``."""
    features = features or FeatureStore()
    feats, types, classes, names, keys, thumbs = [], [], [], [], [], []
    for photo, source in (progress or (lambda x, **_: x))(named_photos, desc="Evidence index"):
        keep = [i for i, (d, c) in enumerate(zip(photo.detections, photo.classes)) if c is not None and taxonomy.needs_condition(d.type)]
        if not keep:
            continue
        crops, _ = features.object_features(photo.image, [photo.detections[i].box for i in keep], photo.key)
        for i, f in zip(keep, crops):
            feats.append(f)
            types.append(photo.detections[i].type)
            classes.append(photo.classes[i])
            names.append(f"{source}#{i}")
            keys.append(photo.key)
            thumbs.append(thumbnail_bytes(photo.image, photo.detections[i].box))
    return EvidenceIndex(np.asarray(feats, np.float32).reshape(-1, FEATURE_DIM), types, classes, names, keys, thumbs)


def default_evidencer(backend, index: EvidenceIndex | None = None) -> Evidencer:
    """Evidence from ``index`` (default: the shipped one) over ``backend``'s own feature store
    when it has one (adapter, probe: their crops are encoded once for both), else a new one."""
    return Evidencer(index or load_default_index(), getattr(backend, "store", None))
