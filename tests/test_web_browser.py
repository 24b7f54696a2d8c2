"""End to end in a real browser: log in, upload a real photo, see the boxes, correct one
object's class, find that correction in the SQLite file, and open an object from the map. Uses Debian's chromium; no
browser is ever downloaded."""

import shutil
import socket
import sqlite3

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from app.web import SHORTCUTS_JS, ServeConfig, build_app
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2 import registry
    from core.stage2.classifier import ConditionClassifier
    from db.store import Store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path_factory.mktemp("browser") / "review.db"
    detector = Detector(DetectorConfig(device="cpu"))
    pipeline = Pipeline(detector, ConditionClassifier(registry.create("probe", registry.BackendOptions(detector.taxonomy)), detector.taxonomy))
    cfg = ServeConfig(auth="ana:field-secret", port=port)
    demo = build_app(pipeline, Store(db), cfg)
    demo.launch(server_name="127.0.0.1", server_port=port, auth=cfg.users(), prevent_thread_lock=True, allowed_paths=[],
                head=SHORTCUTS_JS, quiet=True, show_error=True)
    yield f"http://127.0.0.1:{port}/", db
    demo.close()


@pytest.mark.skipif(not shutil.which("chromium") and not __import__("os").path.exists(CHROMIUM), reason="Debian chromium not installed")
def test_login_upload_correct_and_find_it_in_sqlite(app_url, samples_yaml, tmp_path):
    url, db = app_url
    photo = sorted((samples_yaml.parent / "valid" / "images").glob("*.jpg"))[0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        try:
            page.goto(url)
            page.get_by_label("username").fill("ana")
            page.get_by_label("password").fill("field-secret")
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("#sw-upload", timeout=30_000)

            page.locator("#sw-upload input[type=file]").set_input_files(str(photo))
            page.wait_for_timeout(500)
            page.locator("#sw-inspect").click()
            page.wait_for_selector("#sw-message :text('Inspected 1 photo')", timeout=120_000)
            page.wait_for_selector("#sw-gallery img", timeout=30_000)
            page.screenshot(path=str(tmp_path / "inspect.png"))

            con = sqlite3.connect(db)
            fid, cls, typ = con.execute(
                "SELECT finding_id, class_name, object_type FROM finding_state WHERE object_type != 'vegetation' ORDER BY finding_id LIMIT 1"
            ).fetchone()
            other = con.execute("SELECT max(finding_id) FROM finding_state").fetchone()[0]
            con.close()
            page.get_by_role("tab", name="Review").click()
            page.locator("#sw-finding input").fill(str(fid))
            page.locator("#sw-load").click()
            page.wait_for_timeout(1500)
            from core.taxonomy import load_taxonomy

            target = next(c.name for c in load_taxonomy().classes_for_type(typ) if c.name != cls)
            dropdown = page.locator("#sw-class input")
            dropdown.click()
            page.get_by_role("option", name=target, exact=True).click()
            page.locator("#sw-relabel").click()
            page.wait_for_selector("#sw-status :text('Saved')", timeout=30_000)
            page.screenshot(path=str(tmp_path / "review.png"))

            # Library: embed, draw the map, hover a point (thumbnail), click it (opens Review on it).
            page.get_by_role("tab", name="Library").click()
            page.locator("#sw-embed").click()
            page.wait_for_selector("#sw-embed-msg :text('Embedded 1 new photo')", timeout=120_000)
            page.locator("#sw-draw-map").click()
            point = page.locator(f"#sw-map circle[data-fid='{other}']")
            point.wait_for(timeout=60_000)
            point.hover()
            page.wait_for_selector("#sw-map .sw-tip img", state="visible", timeout=10_000)
            point.click()
            page.wait_for_function(f"document.querySelector('#sw-finding input').value == '{other}'", timeout=30_000)
            page.wait_for_selector("[role=tab][aria-selected=true]:has-text('Review')", timeout=30_000)
            page.wait_for_selector(f"text=#{other}", timeout=30_000)  # the Review summary shows the clicked object
            page.screenshot(path=str(tmp_path / "library.png"))
        finally:
            browser.close()

    con = sqlite3.connect(db)
    rows = con.execute("SELECT reviewer, action, after_json FROM corrections WHERE finding_id = ?", (fid,)).fetchall()
    state = con.execute("SELECT class_name, updated_by FROM finding_state WHERE finding_id = ?", (fid,)).fetchone()
    con.close()
    assert rows and rows[-1][0] == "ana" and rows[-1][1] == "relabel" and target in rows[-1][2]
    assert state == (target, "ana")
