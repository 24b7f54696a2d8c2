"""``slopewatch serve`` as a user starts it: it prints its URL at once, the page answers while the
models are still loading, and a ready line follows. It runs as in production: logins from an
auth file with a scrypt hash, and the data dir outside both the working directory and the temp
dir (Gradio copies returned files only from those and ``allowed_paths``)."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from app.auth import write_user  # noqa: E402
from core.paths import samples_dir  # noqa: E402

PASSWORD = "reviewer-password"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(free_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    for folder in ("data", "tmp", "cwd"):
        (root / folder).mkdir()
    write_user(root / "reviewers.txt", "ana", PASSWORD)
    port = free_port()
    env = {**os.environ, "SLOPEWATCH_DATA_DIR": str(root / "data"), "TMPDIR": str(root / "tmp"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--auth-file", str(root / "reviewers.txt"), "--port", str(port),
                             "--backend", "probe", "--db", str(root / "review.db")],
                            cwd=root / "cwd", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, answered = [], []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("ready" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if f"serving http://127.0.0.1:{port}/" in line:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
                    answered.append(page.status)
        yield f"http://127.0.0.1:{port}/", lines, answered
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_prints_its_url_answers_and_says_ready(served):
    _, lines, answered = served
    serving = [k for k, line in enumerate(lines) if line.startswith("slopewatch: serving")]
    ready = [k for k, line in enumerate(lines) if line.startswith("slopewatch: ready")]
    assert serving and ready and serving[0] < ready[0], lines
    assert answered == [200] and "probe" in lines[ready[0]]
    assert not any("--auth puts passwords" in line for line in lines)  # an auth file was used, not --auth


def test_a_reviewer_logs_in_inspects_and_opens_the_photo_in_review(served):
    """With the data dir outside the working and temp dirs (as ~/.local/share is), the Review
    canvas must still get its photo: before ``allowed_paths`` named the photo folders, opening
    any photo failed with Gradio's InvalidPathError."""
    from gradio_client import Client, handle_file

    url, _, _ = served
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "config", timeout=30)
    assert refused.value.code == 401
    client = Client(url, auth=("ana", PASSWORD), verbose=False)
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[0]
    gallery, _, message, photo_id = client.predict([handle_file(str(photo))], api_name="/inspect")
    assert message.startswith("Inspected 1 photo(s) at ") and len(gallery) == 1
    view = client.predict(photo_id, api_name="/open_photo")
    assert view[0]["image"] and view[0]["boxes"] and f"**Photo {photo_id}**" in view[1]
