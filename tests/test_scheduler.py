"""``serve --nightly-at``: when the job starts, that it runs the real CLI at low priority, and what the dashboard shows."""

import datetime as dt
import os
import sys

import pytest

from app.scheduler import NightlyScheduler, next_start, parse_hhmm


@pytest.mark.parametrize("text, expected", [("02:00", (2, 0)), ("2:05", (2, 5)), ("23:59", (23, 59)), (" 00:00 ", (0, 0))])
def test_parse_hhmm(text, expected):
    assert parse_hhmm(text) == expected


@pytest.mark.parametrize("text", ["24:00", "2", "02:60", "2am", "", "02:00:00"])
def test_parse_hhmm_refuses_what_is_not_a_time(text):
    with pytest.raises(ValueError, match="expected a local time HH:MM"):
        parse_hhmm(text)


@pytest.mark.parametrize("now, expected", [
    (dt.datetime(2026, 11, 27, 1, 59), dt.datetime(2026, 11, 27, 2, 0)),
    (dt.datetime(2026, 11, 27, 2, 0), dt.datetime(2026, 11, 28, 2, 0)),  # just ran: tomorrow
    (dt.datetime(2026, 11, 27, 14, 0), dt.datetime(2026, 11, 28, 2, 0)),
    (dt.datetime(2026, 12, 31, 3, 0), dt.datetime(2027, 1, 1, 2, 0)),
])
def test_next_start(now, expected):
    assert next_start((2, 0), now) == expected


def test_run_once_runs_the_nightly_cli_in_a_niced_child_and_logs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    scheduler = NightlyScheduler("02:00", tmp_path / "review.db", "--stages detector --holdout-percent 0")
    assert scheduler.command[:5] == [sys.executable, "-m", "app.cli", "train", "nightly"]
    # A stand-in child that reports its niceness and arguments: the real job would train for minutes.
    # (It waits a moment: the parent lowers its priority just after starting it.)
    probe = "import os, sys, time; time.sleep(0.5); print('nice', os.nice(0)); print('args', sys.argv[1:]); sys.exit(3)"
    scheduler.command = [sys.executable, "-c", probe, *scheduler.command[3:]]
    assert scheduler.run_once() == 3
    text = open(scheduler.state.last_log).read()
    assert f"nice {os.nice(0) + 10}" in text and "'--stages', 'detector'" in text
    assert scheduler.state.last_exit == 3 and scheduler.state.running_since is None and scheduler.state.runs == 1
    assert any("exited with code 3" in line for line in scheduler.state.lines())


def test_the_real_nightly_cli_runs_from_the_scheduler(tmp_path, monkeypatch):
    """No corrections in a fresh DB: the real command exits 0 and says there is nothing new."""
    from db.store import Store

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    Store(tmp_path / "review.db")
    scheduler = NightlyScheduler("02:00", tmp_path / "review.db", f"--registry {tmp_path / 'reg'} --detector-registry {tmp_path / 'det'}")
    assert scheduler.run_once() == 0, open(scheduler.state.last_log).read()
    assert "nothing-new" in open(scheduler.state.last_log).read()


def test_serve_config_checks_the_time():
    from app.web import ServeConfig

    with pytest.raises(ValueError, match="HH:MM"):
        ServeConfig(no_auth=True, nightly_at="25:00")
    assert ServeConfig(no_auth=True, nightly_at="02:00").nightly_at == "02:00"


def test_the_scheduled_nightly_trains_the_model_serve_runs():
    from app.web import ServeConfig

    qwen = ServeConfig(no_auth=True, backend="qwen2vl", qwen_model="/models/qwen 2b", nightly_at="02:00", nightly_args="--epochs 1")
    assert qwen.scheduled_nightly_args() == "--backend qwen2vl --qwen-model '/models/qwen 2b' --epochs 1"
    chosen = ServeConfig(no_auth=True, backend="qwen2vl", qwen_model="/m", nightly_at="02:00", nightly_args="--backend adapter")
    assert chosen.scheduled_nightly_args() == "--backend adapter"  # the operator's choice stands
    default = ServeConfig(no_auth=True, nightly_at="02:00", nightly_args="--epochs 1")
    assert default.scheduled_nightly_args() == "--epochs 1"  # the ensemble: the nightly's default gate
    alone = ServeConfig(no_auth=True, backend="adapter", nightly_at="02:00", nightly_args="--epochs 1")
    assert alone.scheduled_nightly_args() == "--gate-on adapter --epochs 1"  # judged as it is served
    assert ServeConfig(no_auth=True, backend="adapter", nightly_args="--gate-on ensemble").scheduled_nightly_args() == "--gate-on ensemble"
    with pytest.raises(ValueError, match="qwen_model"):
        ServeConfig(no_auth=True, backend="qwen2vl")
