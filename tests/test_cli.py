"""The command line as a user runs it (in-process, through ``main``)."""

import json

import pytest

from app.cli import main
from core.paths import samples_dir


def test_analyze_cli(samples_yaml, tmp_path, capsys):
    assert main(["analyze", str(samples_yaml), "--out", str(tmp_path), "--samples", "4"]) == 0
    assert "valid: 6 images, 40 objects" in capsys.readouterr().out
    assert json.loads((tmp_path / "analysis.json").read_text())["label_space"] == "classes"


def test_bad_dataset_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "data.yaml").write_text("valid: valid/images\nnames: [rock_toe]\n")
    (tmp_path / "valid" / "images").mkdir(parents=True)
    (tmp_path / "valid" / "labels").mkdir(parents=True)
    (tmp_path / "valid" / "labels" / "x.txt").write_text("0 0.5 0.5 0.1\n")
    assert main(["analyze", str(tmp_path / "data.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "slopewatch: error:" in err and "x.txt: label file has no image" in err


def test_predict_cli_keeps_going_past_a_bad_file(tmp_path, capsys):
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    out = tmp_path / "pred.json"
    assert main(["predict", str(photo), str(bad), "--json", str(out), "--overlay", str(tmp_path / "ov"), "--device", "cpu",
                 "--backend", "probe"]) == 0
    data = json.loads(out.read_text())
    assert len(data["photos"]) == 1 and data["photos"][0]["objects"]
    assert data["failed"][0]["photo"] == str(bad) and "empty" in data["failed"][0]["error"]
    assert (tmp_path / "ov" / f"{photo.stem}.png").stat().st_size > 0


def test_bench_detector_cli(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "detector", "--repeats", "1", "--warmup", "1", "--device", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["timed_predictions"] == 6 and data["median_s"] > 0 and data["p95_s"] >= data["median_s"]


def test_config_validation_reaches_the_user(capsys):
    assert main(["bench", "detector", "--repeats", "0"]) == 2
    assert "repeats: expected >= 1, found 0" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("analyze", "train", "evaluate", "bench", "predict"):
        assert cmd in out
