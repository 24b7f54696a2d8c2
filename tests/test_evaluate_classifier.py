"""Stage-2 evaluation on the real sample photos with the shipped probe."""

import json

from app.cli import main


def test_evaluate_classifier_on_real_samples(samples_yaml, tmp_path, capsys):
    out = tmp_path / "cls.json"
    png = tmp_path / "cm.png"
    assert main(["evaluate", "classifier", str(samples_yaml), "--json", str(out), "--confusion-png", str(png), "--backend", "probe"]) == 0
    data = json.loads(out.read_text())
    c = data["classifier"]
    assert c["n"] == 40 and c["backend"] == "probe"
    assert sum(map(sum, c["confusion"])) == 40
    assert 0.0 <= c["balanced_accuracy"] <= 1.0 and 0.0 <= c["macro_f1"] <= 1.0
    assert c["per_type"]["vegetation"]["accuracy"] == 1.0  # passes through on its true type
    assert c["unfaithful_rationale_rate"] == 0.0
    assert set(c["per_condition"]["per_class"]) == {"normal", "blocked", "damaged", "none"}
    assert png.stat().st_size > 0
    assert "probe" in capsys.readouterr().out


def test_type_majority_needs_a_train_split(samples_yaml, capsys):
    assert main(["evaluate", "classifier", str(samples_yaml), "--backend", "type-majority"]) == 2
    assert "needs a train split" in capsys.readouterr().err
