"""``slopewatch serve --nightly-at HH:MM``: the nightly job, once a day, beside the running app.

The job runs as a child process (``python -m app.cli train nightly ...``) at low CPU priority so
reviewers' requests keep the cores first; its output goes to a log file per run; one run at a
time (the next start is computed after the previous run ends, and the job's own lock refuses a
second one started by cron or by hand). What it did is on the dashboard: the runs it records in
``training_runs``, and this scheduler's state (next start, running since, last exit code and log).
A promotion reaches the app through the model registries (``app.models.ModelHost``), not a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import data_dir

log = logging.getLogger("slopewatch.scheduler")

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> tuple[int, int]:
    """``"02:00"`` → ``(2, 0)``; anything else is a ValueError saying what was expected."""
    m = _HHMM.match(text.strip())
    if not m:
        raise ValueError(f"nightly_at: expected a local time HH:MM (e.g. 02:00), found {text!r}")
    return int(m.group(1)), int(m.group(2))


def next_start(hhmm: tuple[int, int], now: dt.datetime) -> dt.datetime:
    """The first ``hhmm`` strictly after ``now`` (local, naive datetimes)."""
    at = now.replace(hour=hhmm[0], minute=hhmm[1], second=0, microsecond=0)
    return at if at > now else at + dt.timedelta(days=1)


@dataclass
class SchedulerState:
    """What the dashboard shows about the scheduled job."""

    at: str
    next_start: float | None = None
    running_since: float | None = None
    last_exit: int | None = None
    last_log: str | None = None
    runs: int = 0

    def lines(self) -> list[str]:
        fmt = "%Y-%m-%d %H:%M"
        out = [f"- scheduled daily at {self.at}; next start "
               + (time.strftime(fmt, time.localtime(self.next_start)) if self.next_start else "-")]
        if self.running_since:
            out.append(f"- running since {time.strftime(fmt, time.localtime(self.running_since))} (log `{self.last_log}`)")
        elif self.last_exit is not None:
            out.append(f"- last scheduled run exited with code {self.last_exit} (log `{self.last_log}`)")
        return out


@dataclass
class NightlyScheduler:
    """Runs ``slopewatch train nightly --db DB ARGS`` daily at ``at`` (local time) in a child process.

    Args:
        at: ``HH:MM`` local time.
        db: the review database the app serves.
        args: further ``train nightly`` arguments (e.g. ``--frozen-yaml``), split like a shell would.
        nice: niceness added to the child (0..19).
    """

    at: str
    db: Path
    args: str = ""
    nice: int = 10
    state: SchedulerState = field(init=False)

    def __post_init__(self) -> None:
        self.hhmm = parse_hhmm(self.at)
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice: expected 0..19, found {self.nice}")
        self.command = [sys.executable, "-m", "app.cli", "train", "nightly", "--db", str(self.db), *shlex.split(self.args)]
        self.state = SchedulerState(self.at)
        self._stop = threading.Event()

    def run_once(self) -> int:
        """Run the job now (blocking); returns its exit code. Output goes to a log file in the data dir."""
        logs = data_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"nightly-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.state.running_since, self.state.last_log = time.time(), str(path)
        log.info("nightly job starting: %s (log %s)", " ".join(self.command), path)
        try:
            with open(path, "w") as out:
                child = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
                # Lowered from here, not in a preexec_fn: those can deadlock a child of a threaded server.
                with contextlib.suppress(ProcessLookupError):  # a child that has already finished needs no lowering
                    os.setpriority(os.PRIO_PROCESS, child.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice))
                rc = child.wait()
        finally:
            self.state.running_since = None
        self.state.last_exit, self.state.runs = rc, self.state.runs + 1
        log.info("nightly job exited with code %s", rc)
        return rc

    def start(self) -> threading.Thread:
        """Start the daily loop in a daemon thread (it dies with the server)."""
        def loop():
            while not self._stop.is_set():
                start = next_start(self.hhmm, dt.datetime.now())
                self.state.next_start = start.timestamp()
                if self._stop.wait(max(0.0, start.timestamp() - time.time())):
                    return
                try:
                    self.run_once()
                except (OSError, subprocess.SubprocessError) as exc:  # could not start: logged and shown, tried again tomorrow
                    log.exception("nightly job failed to start")
                    self.state.last_exit, self.state.last_log = -1, f"failed to start: {exc}"

        thread = threading.Thread(target=loop, name="slopewatch-nightly", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
