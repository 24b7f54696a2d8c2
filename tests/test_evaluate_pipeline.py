import json

from app.cli import main
from core.evaluation.pipeline import match, relation_scores
from core.stage2.spatial import spatial_facts
from core.types import Box, Detection, LabeledObject

GT = [LabeledObject(Box(0, 0, 10, 10), "rock_toe"), LabeledObject(Box(20, 0, 30, 10), "rock_toe"), LabeledObject(Box(0, 50, 100, 60), "toe_drain")]


def test_match_is_greedy_by_confidence_same_type_and_one_to_one():
    dets = [
        Detection(Box(1, 0, 11, 10), "rock_toe", 0.5),  # overlaps GT 0 well
        Detection(Box(0, 0, 10, 10), "rock_toe", 0.9),  # exact GT 0, more confident: wins it
        Detection(Box(20, 0, 30, 10), "vegetation", 0.8),  # right place, wrong type
        Detection(Box(0, 52, 100, 62), "toe_drain", 0.7),
    ]
    assert match(dets, GT, 0.5) == {1: 0, 3: 2}


def test_relation_scores_use_matched_identities():
    dets = [Detection(g.box, g.type, 0.9) for g in GT]
    facts = spatial_facts([d.box for d in dets], 100, 100)
    pairs = {0: 0, 1: 1, 2: 2}
    correct, predicted, truth = relation_scores(facts, facts, pairs)
    assert correct == predicted == truth == len(facts)
    # Swapping the identities of the two rock toes breaks their left/right relations.
    correct, _, _ = relation_scores(facts, facts, {0: 1, 1: 0, 2: 2})
    assert correct < len(facts)


def test_evaluate_pipeline_cli_on_real_samples(samples_yaml, tmp_path):
    out = tmp_path / "p.json"
    assert main(["evaluate", "pipeline", str(samples_yaml), "--json", str(out), "--device", "cpu", "--backend", "probe"]) == 0
    p = json.loads(out.read_text())["pipeline"]
    assert p["detection"]["ground_truth"] == 40
    assert 0 <= p["detection"]["matched"] <= min(p["detection"]["detections"], 40)
    assert p["condition_on_matched"]["n"] == p["detection"]["matched"]
    assert 0.0 <= p["relations"]["f1"] <= 1.0
    joint = p["box_and_class"]  # one entry per detection; "right" means matched and correctly labelled
    assert joint["n"] == p["detection"]["detections"]
    right = round(joint["share_right"] * joint["n"])
    assert right == round(p["condition_on_matched"]["accuracy"] * p["detection"]["matched"])  # the same objects, counted two ways
    assert 0.0 <= joint["ece"] <= 1.0 and len(joint["risk_coverage"]) == 7


def test_bench_pipeline_reports_both_paths(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "pipeline", "--backend", "probe", "--device", "cpu", "--json", str(out)]) == 0
    b = json.loads(out.read_text())
    assert b["shared"]["objects"] == b["naive"]["objects"] > 0
    assert b["naive_over_shared"] > 0 and b["peak_rss_mb"] > 0
