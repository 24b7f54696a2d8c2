import json

import pytest
from conftest import make_dataset

from core.data import load_dataset
from core.evaluation.analysis import AnalyzeConfig, analyze, imbalance_ratio, inverse_frequency_weights
from core.taxonomy import load_taxonomy


def test_inverse_frequency_weights_and_imbalance():
    w = inverse_frequency_weights({"a": 30, "b": 10, "c": 0})
    assert w == {"a": pytest.approx(40 / 60), "b": pytest.approx(2.0), "c": 0.0}
    assert imbalance_ratio({"a": 30, "b": 10, "c": 0}) == 3.0
    assert imbalance_ratio({"a": 0}) is None


@pytest.fixture
def tiny(tmp_path):
    """Three images whose statistics are known by construction (names are the 9 classes)."""
    tax = load_taxonomy()
    cid = tax.class_id
    images = {
        # slope drain above a blocked toe drain at its foot; vegetation top-left
        "one": [f"{cid('slope drain')} 0.5 0.4 0.1 0.6", f"{cid('Toe drain- Blocked')} 0.5 0.85 0.9 0.1", f"{cid('vegetation')} 0.1 0.1 0.1 0.1"],
        # same toe drain twice (a duplicate) and a zero-area rock toe
        "two": [f"{cid('Toe drain')} 0.5 0.9 0.8 0.1", f"{cid('Toe drain')} 0.5 0.9 0.8 0.1", f"{cid('rock toe')} 0.5 0.5 0.0 0.2"],
        "three": [f"{cid('slope drain damaged')} 0.5 0.5 0.1 0.5"],
    }
    y = make_dataset(tmp_path / "ds", tax.class_names, images)
    return load_dataset(y, tax), tmp_path / "out"


def test_known_answers(tiny):
    ds, out = tiny
    result = analyze(ds, AnalyzeConfig(data_yaml=ds.yaml_path, out=out, samples=3), progress=False)
    d = result["splits"]["train"]
    assert d["images"] == 3 and d["objects"] == 7
    assert d["counts"]["class"]["Toe drain"] == 2 and d["counts"]["class"]["slope drain blocked"] == 0
    assert d["counts"]["type"] == {"rock_toe": 1, "slope_drain": 2, "toe_drain": 3, "vegetation": 1}
    assert d["counts"]["condition"] == {"normal": 4, "blocked": 1, "damaged": 1, "none": 1}
    assert d["imbalance_ratio"]["label"] == 2.0
    assert d["imbalance_ratio"]["type"] == 3.0
    assert d["class_weights"]["Toe drain"] == pytest.approx(7 / (6 * 2))
    assert d["objects_per_image"] == {"mean": pytest.approx(7 / 3), "std": pytest.approx(0.9428, abs=1e-3), "min": 1.0, "max": 3.0}
    assert d["box_stats"]["type:toe_drain"]["bands"] == {"top": 0.0, "middle": 0.0, "bottom": 1.0}
    assert d["box_stats"]["vegetation"]["bands"]["top"] == 1.0
    assert d["box_stats"]["slope drain"]["y_mean"] == pytest.approx(0.4)
    # In image "one" the slope drain is above the toe drain; in "two" the toe drains overlap each other.
    assert d["relations"]["slope_drain|toe_drain"]["above"]["count"] == 1
    assert d["relations"]["toe_drain|slope_drain"]["below"]["pct"] == 100.0
    assert d["relations"]["toe_drain|toe_drain"]["overlaps"]["count"] == 2
    cooc = d["cooccurrence"]["images_with_both"]
    types = d["cooccurrence"]["types"]
    assert cooc[types.index("toe_drain")][types.index("toe_drain")] == 2
    assert cooc[types.index("slope_drain")][types.index("toe_drain")] == 1
    issues = {(s["image"], s["issue"]) for s in d["suspicious"]}
    assert issues == {("two.jpg", "duplicate_box"), ("two.jpg", "zero_area_box")}

    for name in ("analysis.json", "report.md", "class_distribution.png", "y_position.png", "cooccurrence.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "analysis.json").read_text())["splits"]["train"]["objects"] == 7
    report = (out / "report.md").read_text()
    assert "| Toe drain | 2 |" in report and "duplicate_box" in report


def test_real_photos_analyse(samples_yaml, tmp_path):
    ds = load_dataset(samples_yaml)
    result = analyze(ds, AnalyzeConfig(data_yaml=samples_yaml, out=tmp_path), progress=False)
    d = result["splits"]["valid"]
    assert d["images"] == 6
    assert sum(d["counts"]["class"].values()) == d["objects"] == 40
    assert all(v > 0 for v in d["counts"]["class"].values())  # the samples cover all nine classes
    # Toe drains sit below slope drains in these photos, mostly in the bottom band.
    stats = d["box_stats"]
    assert stats["type:toe_drain"]["y_mean"] > stats["type:slope_drain"]["y_mean"]
    assert stats["type:toe_drain"]["bands"]["bottom"] > 0.5
    assert stats["type:slope_drain"]["bands"]["bottom"] == 0.0
