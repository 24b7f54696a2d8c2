"""``slopewatch serve`` as a user starts it: it prints its URL at once, the page answers while the
models are still loading, and a ready line follows."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("gradio")


def test_serve_prints_its_url_answers_and_says_ready(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLOPEWATCH_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-auth", "--port", str(port), "--backend", "probe",
                             "--db", str(tmp_path / "review.db")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("ready" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if f"serving http://127.0.0.1:{port}/" in line:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
                    assert page.status == 200
        serving = [k for k, line in enumerate(lines) if line.startswith("slopewatch: serving")]
        ready = [k for k, line in enumerate(lines) if line.startswith("slopewatch: ready")]
        assert serving and ready and serving[0] < ready[0], lines
        assert "probe" in lines[ready[0]]
    finally:
        proc.terminate()
        proc.wait(30)
