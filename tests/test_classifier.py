"""Stage-2 orchestration with fake backends, rationales and the faithfulness checker."""

import numpy as np
import pytest
from PIL import Image

from core.stage2.backends.probe import fit_probe
from core.stage2.backends.type_majority import TypeMajority
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.rationale import stale_citations, template_rationale, trim_unfinished, unfaithful_claims, with_verdict
from core.stage2.spatial import spatial_facts
from core.taxonomy import load_taxonomy
from core.types import Box, Detection, Finding

TAX = load_taxonomy()
IMAGE = Image.new("RGB", (300, 300), (90, 90, 90))
DETS = [
    Detection(Box(140, 20, 160, 220), "slope_drain", 0.9),
    Detection(Box(0, 215, 300, 245), "toe_drain", 0.8),
    Detection(Box(165, 100, 200, 140), "vegetation", 0.7),
]
FACTS = spatial_facts([d.box for d in DETS], 300, 300)


class CountingBackend:
    name, version = "fake", "0"

    def __init__(self):
        self.seen = []

    def score(self, ctx, targets):
        self.seen.extend(ctx.detections[i].type for i in targets)
        return [np.arange(1, len(TAX.classes_for_type(ctx.detections[i].type)) + 1, dtype=float) for i in targets]


def test_vegetation_passes_through_without_a_model_call():
    backend = CountingBackend()
    findings = ConditionClassifier(backend, TAX).classify(IMAGE, DETS)
    assert backend.seen == ["slope_drain", "toe_drain"]
    assert [f.class_name for f in findings] == ["slope drain damaged", "Toe drain- Damaged", "vegetation"]
    assert findings[2].backend == "passthrough" and findings[2].probabilities == {"vegetation": 1.0}
    for f in findings:
        assert sum(f.probabilities.values()) == pytest.approx(1.0)
        assert set(f.probabilities) == {c.name for c in TAX.classes_for_type(f.detection.type)}
        assert f.rationale and not unfaithful_claims(f.rationale, findings.index(f), DETS, FACTS, TAX)
    assert findings[0].probabilities["slope drain damaged"] == pytest.approx(3 / 6)
    assert "at the lower end of slope drain #0" in findings[1].rationale


def test_bad_backend_output_is_refused():
    class Broken(CountingBackend):
        def score(self, ctx, targets):
            return [np.array([np.nan, 1.0, 1.0]) for _ in targets]

    with pytest.raises(ValueError, match="finite scores"):
        ConditionClassifier(Broken(), TAX).classify(IMAGE, DETS)


def test_type_majority():
    backend = TypeMajority(TAX, {"slope drain": 5, "slope drain blocked": 9, "Toe drain": 3})
    findings = ConditionClassifier(backend, TAX).classify(IMAGE, DETS)
    assert [f.class_name for f in findings[:2]] == ["slope drain blocked", "Toe drain"]


@pytest.mark.parametrize(
    "rationale, problems",
    [
        ("Toe drain- Blocked: toe drain #1 at the lower end of slope drain #0.", []),
        ("Looks clear; next to vegetation #2.", ["which the spatial facts do not support"]),  # #1 is not next to #2
        ("Blocked by debris from rock toe #3.", ["stage 1 did not find", "mentions a rock toe"]),
        ("Silt washed down from the rock toe above.", ["mentions a rock toe"]),
        ("below slope drain #2", ["stage 1 did not find"]),  # #2 is vegetation
        ("", []),
        ("\x00\x01 garbage ### #99999999", []),
    ],
)
def test_unfaithful_claims_table(rationale, problems):
    found = unfaithful_claims(rationale, 1, DETS, FACTS, TAX)
    assert len(found) == len(problems)
    for text, expected in zip(found, problems):
        assert expected in text


def test_template_rationale_is_faithful_for_every_object():
    for i in range(len(DETS)):
        text = template_rationale({"a": 0.55, "b": 0.45}, i, DETS, FACTS, 300)
        assert "a at 55%, runner-up b at 45%" in text
        assert f"#{i}" in text and not unfaithful_claims(text, i, DETS, FACTS, TAX)


TOE = {"Toe drain": 0.07, "Toe drain- Blocked": 0.52, "Toe drain- Damaged": 0.41}


@pytest.mark.parametrize("rationale, problems", [
    ("Toe drain #1 in the bottom band; Toe drain- Blocked at 52%, runner-up Toe drain- Damaged at 41%.", []),
    ("Toe drain- Blocked at 51%.", ["its probability is 52%"]),  # a margin must match the numbers
    ("Toe drain- Damaged at 52%.", ["gives Toe drain- Damaged 52%, but its probability is 41%"]),
    ("Toe drain at 7%.", []),
    ("slope drain blocked at 52%.", ["not among the candidates"]),  # another type's class
    ("Blocked 52% of the way along.", []),  # no "<class> at NN%" claim
    ("The outlet sits at 40% of the slope's height.", []),  # a number, but not about a class
])
def test_probability_claims_must_match_the_finding(rationale, problems):
    found = unfaithful_claims(rationale, 1, DETS, FACTS, TAX, TOE)
    assert len(found) == len(problems), found
    for text, expected in zip(found, problems):
        assert expected in text


@pytest.mark.parametrize("text, expected", [
    ("Toe drain #1 in the bottom band", "Toe drain #1 in the bottom band. Toe drain- Blocked at 52%, runner-up Toe drain- Damaged at 41%."),
    ("Toe drain #1 in the bottom band.", "Toe drain #1 in the bottom band. Toe drain- Blocked at 52%, runner-up Toe drain- Damaged at 41%."),
])
def test_a_model_written_rationale_gets_the_verdict_and_stays_faithful(text, expected):
    out = with_verdict(text, TOE)
    assert out == expected and not unfaithful_claims(out, 1, DETS, FACTS, TAX, TOE)
    clear = with_verdict(text, {"Toe drain": 0.05, "Toe drain- Blocked": 0.9, "Toe drain- Damaged": 0.05})
    assert clear.endswith("Toe drain- Blocked at 90%.")  # no runner-up named when the call is clear


def test_finding_validates_itself():
    d = DETS[0]
    ok = Finding(d, "slope drain", {"slope drain": 0.7, "slope drain blocked": 0.2, "slope drain damaged": 0.1}, "r", "b", "1")
    assert ok.margin == pytest.approx(0.5)
    with pytest.raises(ValueError, match="summing to 1"):
        Finding(d, "slope drain", {"slope drain": 0.7, "slope drain blocked": 0.1}, "r", "b", "1")
    with pytest.raises(ValueError, match="most probable"):
        Finding(d, "slope drain", {"slope drain": 0.3, "slope drain blocked": 0.7}, "r", "b", "1")
    with pytest.raises(ValueError, match="not among"):
        Finding(d, "vegetation", {"slope drain": 1.0}, "r", "b", "1")


def test_probe_learns_a_planted_signal():
    rng = np.random.default_rng(0)
    n = 120
    types = ["slope_drain"] * n + ["rock_toe"] * n
    labels = [["slope drain", "slope drain blocked", "slope drain damaged"][k % 3] for k in range(n)] + [["rock toe", "rock toe damaged"][k % 2] for k in range(n)]
    x = rng.normal(size=(2 * n, 8))
    for k, label in enumerate(labels):
        x[k, TAX.class_id(label) % 8] += 3.0  # one informative feature per class
    probe = fit_probe(x, types, labels, TAX, c=1.0)
    probs = probe.proba_rows(x, types)
    pred = [TAX.classes_for_type(t)[int(np.argmax(p))].name for t, p in zip(types, probs)]
    assert np.mean([p == y for p, y in zip(pred, labels)]) > 0.9
    assert all(p.sum() == pytest.approx(1.0) for p in probs)


def test_probe_of_a_type_seen_with_one_class_predicts_that_class():
    # a small fold can hold one class of a type; the probe must still fit and say that class
    x = np.random.default_rng(1).normal(size=(6, 4))
    probe = fit_probe(x, ["rock_toe"] * 3 + ["slope_drain"] * 3, ["rock toe damaged"] * 3 + ["slope drain", "slope drain blocked"] * 1 + ["slope drain"],
                      TAX, c=1.0)
    [p] = probe.proba_rows(x[:1], ["rock_toe"])
    assert [c.name for c in TAX.classes_for_type("rock_toe")][int(np.argmax(p))] == "rock toe damaged" and p.max() > 0.99


def test_photo_context_facts_match_spatial_module():
    ctx = photo_context(IMAGE, DETS)
    assert list(ctx.facts) == FACTS and len(ctx.image_key) == 64


@pytest.mark.parametrize("text, expected", [
    ("slope drain #0 in the top band.", "slope drain #0 in the top band."),
    ("slope drain #0 in the top band, next to toe drain #1", "slope drain #0 in the top band."),
    ("rock toe #3 in the bottom band, at the lower end of rock toe #2, next to slope drain #", "rock toe #3 in the bottom band, at the lower end of rock toe #2."),
    ("toe drain #2 in the bottom band; blocked by silt", "toe drain #2 in the bottom band."),
    ("blocked", "blocked…"),
    ("", None),
    ("   ", None),
    (None, None),
    ("Is it blocked?", "Is it blocked?"),
])
def test_trim_unfinished(text, expected):
    assert trim_unfinished(text) == expected


def test_the_classifier_appends_the_verdict_to_a_backends_own_rationale():
    class Writer(CountingBackend):
        def rationales(self, ctx, findings):
            return ["Toe drain #1 in the bottom band" if f.detection.type == "toe_drain" else None for f in findings]

    findings = ConditionClassifier(Writer(), TAX).classify(IMAGE, DETS)
    toe = findings[1]
    assert toe.rationale.startswith("Toe drain #1 in the bottom band. Toe drain- Damaged at 50%, runner-up Toe drain- Blocked at 33%")
    assert not unfaithful_claims(toe.rationale, 1, DETS, FACTS, TAX, toe.probabilities)
    assert findings[0].rationale == template_rationale(findings[0].probabilities, 0, DETS, FACTS, 300)  # none written: template


NOW = {0: "rock_toe", 1: "toe_drain", 2: None, 3: "rock_toe"}  # #2 deleted, #3 retyped from a toe drain


@pytest.mark.parametrize("rationale, stale", [
    ("Toe drain #1 in the bottom band, next to rock toe #0.", []),
    ("Toe drain #1 in the bottom band, next to rock toe #2.", ["rock toe #2 was deleted"]),
    ("Toe drain #1, at the lower end of toe drain #3; above toe drain #3.", ["toe drain #3 is now a rock toe"]),
    ("Toe drain #1 next to Rock toe #2 and slope drain #7.", ["rock toe #2 was deleted", "slope drain #7 is not on this photo"]),
    ("Silt in the channel, see photo #2.", []),  # not an object type: no claim about #2
    ("", []),
    (None, []),
])
def test_stale_citations_table(rationale, stale):
    assert stale_citations(rationale, NOW, TAX) == stale
