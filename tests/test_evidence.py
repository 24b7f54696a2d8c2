"""Neighbour evidence for rationales: the index, its lookups, the sentence, the checker, the build."""

import numpy as np
import pytest
from PIL import Image

from core.data import file_sha256, load_dataset
from core.paths import datasets_dir
from core.stage2.classifier import ConditionClassifier
from core.stage2.evidence import FEATURE_DIM, Evidence, EvidenceIndex, Evidencer, Example, default_index_path, index_from_photos
from core.stage2.labeled import labeled_photos
from core.stage2.rationale import unfaithful_claims
from core.stage2.spatial import spatial_facts
from core.taxonomy import load_taxonomy
from core.types import Box, Detection
from train.evidence import EvidenceConfig, build_evidence

TAX = load_taxonomy()
RNG = np.random.default_rng(0)
BLOCKED, DAMAGED, NORMAL = RNG.normal(size=(3, FEATURE_DIM)).astype(np.float32)


def _index() -> EvidenceIndex:
    """Toe drains near three prototypes (4 blocked, 2 damaged, 3 normal) and two slope drains at the blocked prototype."""
    rows = ([("toe_drain", "Toe drain- Blocked", BLOCKED)] * 4 + [("toe_drain", "Toe drain- Damaged", DAMAGED)] * 2
            + [("toe_drain", "Toe drain", NORMAL)] * 3 + [("slope_drain", "slope drain", BLOCKED)] * 2)
    feats = np.stack([v + 0.05 * RNG.normal(size=FEATURE_DIM) for _, _, v in rows])
    photos = [f"p{k}" for k in range(len(rows))]
    return EvidenceIndex(feats, [t for t, _, _ in rows], [c for _, c, _ in rows], [f"train/x{k}#0" for k in range(len(rows))], photos,
                         [b""] * len(rows))


def test_nearest_keeps_the_type_ranks_by_similarity_and_skips_the_own_photo():
    index = _index()
    near = index.nearest(BLOCKED, "toe_drain", k=5)
    assert [e.object_type for e in near] == ["toe_drain"] * 5
    assert [e.class_name for e in near[:4]] == ["Toe drain- Blocked"] * 4  # the slope drains at the same spot are not toe drains
    assert all(a.similarity >= b.similarity for a, b in zip(near, near[1:]))
    assert "p0" not in {e.photo for e in index.nearest(BLOCKED, "toe_drain", k=5, skip_photo="p0")}
    assert index.nearest(BLOCKED, "rock_toe") == ()


def test_sentence_counts_the_verdicts_condition():
    near = _index().nearest(BLOCKED, "toe_drain", k=5)
    assert Evidence("toe_drain", "Toe drain- Blocked", near).sentence(TAX) == "4 of the 5 most similar labelled toe drains were blocked"
    # Most of them carry another condition: which, and how many.
    assert Evidence("toe_drain", "Toe drain", near).sentence(TAX) == "0 of the 5 most similar labelled toe drains were normal, 4 blocked"
    assert Evidence("toe_drain", "Toe drain", ()).sentence(TAX) == ""
    assert Evidence("toe_drain", "Toe drain", NEAR).sentence(TAX) == "1 of the 5 most similar labelled toe drains was normal, 3 blocked"
    with pytest.raises(ValueError, match="neighbours of that type"):
        Evidence("rock_toe", "rock toe", near)


def test_save_and_load_keep_every_column(tmp_path):
    index = _index()
    index.thumbs[1] = b"\xff\xd8jpeg"
    loaded = EvidenceIndex.load(index.save(tmp_path / "ix.npz"))
    assert (loaded.types, loaded.classes, loaded.sources, loaded.photos, loaded.thumbs) == \
           (index.types, index.classes, index.sources, index.photos, index.thumbs)
    assert np.allclose(loaded.features, index.features, atol=1e-3)
    with pytest.raises(ValueError, match="one per feature row"):
        EvidenceIndex(index.features, index.types[:-1], index.classes, index.sources, index.photos)


DETS = [Detection(Box(140, 20, 160, 220), "slope_drain", 0.9), Detection(Box(0, 215, 300, 245), "toe_drain", 0.8)]
FACTS = spatial_facts([d.box for d in DETS], 300, 300)
NEAR = tuple(Example(k, "toe_drain", c, f"train/x{k}#0", f"p{k}", 0.9)
             for k, c in enumerate(["Toe drain- Blocked"] * 3 + ["Toe drain", "Toe drain- Damaged"]))
EVIDENCE = Evidence("toe_drain", "Toe drain- Blocked", NEAR)


@pytest.mark.parametrize("text, evidence, problem", [
    ("Toe drain #1; 3 of the 5 most similar labelled toe drains were blocked.", EVIDENCE, None),
    ("Toe drain #1; 1 of the 5 most similar labelled toe drains was normal.", EVIDENCE, None),  # another condition, counted right
    ("Toe drain #1; 1 of the 5 most similar labelled toe drains was normal, 3 blocked.", EVIDENCE, None),
    ("Toe drain #1; 1 of the 5 most similar labelled toe drains was normal, 4 blocked.", EVIDENCE, "3 of the 5 looked up were blocked"),
    ("Toe drain #1; 1 of the 5 most similar labelled toe drains were normal, 1 damaged.", EVIDENCE, None),
    ("Toe drain #1; 4 of the 5 most similar labelled toe drains were blocked.", EVIDENCE, "3 of the 5 looked up were blocked"),
    ("Toe drain #1; 1 of the 5 most similar labelled toe drains was blocked.", EVIDENCE, "3 of the 5 looked up were blocked"),
    ("Toe drain #1; 3 of the 4 most similar labelled toe drains were blocked.", EVIDENCE, "3 of the 5 looked up"),
    ("Toe drain #1; 3 of the 5 most similar labelled slope drains were blocked.", EVIDENCE, "the object is a toe drain"),
    ("Toe drain #1; 3 of the 5 most similar labelled toe drains were blocked.", None, "no similar objects were looked up"),
    ("Toe drain #1 in the bottom band.", None, None),
])
def test_checker_holds_neighbour_claims_to_the_index(text, evidence, problem):
    problems = unfaithful_claims(text, 1, DETS, FACTS, TAX, evidence=evidence)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


class FixedFeatures:
    """A feature store that maps every box to the blocked prototype (no encoder needed)."""

    def object_features(self, image, boxes, key=None):
        return np.stack([BLOCKED] * len(boxes)), np.stack([BLOCKED] * len(boxes))


class Favours:
    name, version = "fake", "0"

    def score(self, ctx, targets):
        return [np.linspace(1, 2, len(TAX.classes_for_type(ctx.detections[i].type))) for i in targets]


def test_classifier_rationales_cite_the_neighbours_faithfully():
    index = _index()
    evidencer = Evidencer(index, FixedFeatures(), k=5)
    image = Image.new("RGB", (300, 300), (90, 90, 90))
    findings = ConditionClassifier(Favours(), TAX, evidencer).classify(image, DETS, "query-photo")
    toe = findings[1]
    assert toe.class_name == "Toe drain- Damaged"  # the fake favours the last class
    expected = Evidence("toe_drain", toe.class_name, index.nearest(BLOCKED, "toe_drain", 5, skip_photo="query-photo"))
    assert expected.sentence(TAX) in toe.rationale
    assert unfaithful_claims(toe.rationale, 1, DETS, FACTS, TAX, toe.probabilities, expected) == []
    # The slope drain's neighbours are the two slope drains, both normal.
    assert "0 of the 2 most similar labelled slope drains were damaged" in findings[0].rationale
    # Without an evidencer nothing is cited.
    assert "most similar" not in ConditionClassifier(Favours(), TAX).classify(image, DETS)[1].rationale


def test_index_is_built_from_labelled_objects_with_a_condition(samples_yaml):
    ds = load_dataset(samples_yaml)
    photos = labeled_photos(ds, "valid")
    index = index_from_photos(((p, f"valid/{k}") for k, p in enumerate(photos)), TAX, FixedFeatures())
    expected = sum(TAX.needs_condition(d.type) for p in photos for d in p.detections)
    assert len(index) == expected > 0 and "vegetation" not in index.types
    assert set(index.photos) <= {p.key for p in photos}
    assert all(Image.open(__import__("io").BytesIO(b)).size[0] <= 96 for b in index.thumbs)


def test_build_refuses_an_evaluation_split(samples_yaml):
    with pytest.raises(ValueError, match="evaluation split"):
        EvidenceConfig(samples_yaml, split="valid")


def test_build_writes_an_index_the_classifier_loads(samples_yaml, tmp_path):
    out = build_evidence(EvidenceConfig(samples_yaml, split="valid", out=tmp_path / "ix.npz", allow_evaluation_split=True))
    index = EvidenceIndex.load(tmp_path / "ix.npz")
    assert out["objects"] == len(index) > 0 and out["split"] == "valid"


def test_shipped_index_never_saw_a_valid_photo():
    real = datasets_dir() / "drainage-conditions" / "data.yaml"
    if not real.is_file():
        pytest.skip(f"expected the real dataset at {real}")
    index = EvidenceIndex.load(default_index_path())
    ds = load_dataset(real)
    train = {file_sha256(s.image_path) for s in ds.samples("train")}
    valid = {file_sha256(s.image_path) for s in ds.samples("valid")}
    assert len(index) > 500 and set(index.photos) <= train and not set(index.photos) & valid
    assert set(index.classes) <= set(TAX.class_names) and all(s.startswith("train/") for s in index.sources)


def test_a_photo_given_by_path_is_never_its_own_evidence(probe_pipeline, samples_yaml, monkeypatch):
    """Indexes key photos by file hash; so does ``Pipeline.run`` for a path, so an object of an
    indexed photo (a training photo run through ``predict``) cannot cite itself."""
    from core.pipeline import Pipeline

    photos = labeled_photos(load_dataset(samples_yaml), "valid")
    features = probe_pipeline.classifier.evidencer.features
    index = index_from_photos(((p, f"valid/{k}") for k, p in enumerate(photos)), TAX, features)
    classifier = ConditionClassifier(probe_pipeline.classifier.backend, TAX, Evidencer(index, features))
    path = sorted((samples_yaml.parent / "valid" / "images").glob("*.jpg"))[0]
    assert file_sha256(path) in index.photos
    cited = []
    original = Evidencer.for_objects

    def spy(self, image, key, objects):
        out = original(self, image, key, objects)
        cited.extend(e for ev in out for e in ev.neighbours)
        return out

    monkeypatch.setattr(Evidencer, "for_objects", spy)
    Pipeline(probe_pipeline.detector, classifier).run(path)
    assert cited and file_sha256(path) not in {e.photo for e in cited}
