"""The web app's handlers called by name, without a server: inspect a real photo, load and
correct an object, and the Queue tab's table (which crashed with KeyError 'index' before)."""

from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")

from app.handlers import QUEUE_HEADERS, TABLE_HEADERS, Handlers  # noqa: E402
from core.paths import samples_dir  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.stage1.detector import Detector, DetectorConfig  # noqa: E402
from core.stage2 import registry  # noqa: E402
from core.stage2.classifier import ConditionClassifier  # noqa: E402
from db.store import Store  # noqa: E402

ANA = SimpleNamespace(username="ana")


class NoProgress:
    def tqdm(self, items, desc=None):
        return items


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    detector = Detector(DetectorConfig(device="cpu"))
    pipeline = Pipeline(detector, ConditionClassifier(registry.create("probe", registry.BackendOptions(detector.taxonomy)), detector.taxonomy))
    return Handlers(pipeline, Store(tmp_path_factory.mktemp("handlers") / "review.db"))


def test_inspect_load_relabel_and_queue(handlers):
    photo = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[0]
    gallery, rows, message = handlers.inspect([str(photo)], ANA, NoProgress())
    assert message == "Inspected 1 photo(s)." and len(gallery) == 1 and rows
    assert all(len(r) == len(TABLE_HEADERS) for r in rows) and [r[2] for r in rows] == list(range(len(rows)))
    fid, _, _, object_type, class_name = next(r for r in rows if r[3] != "vegetation")[:5]

    image, summary, _, _, revision, history, *box = handlers.load_finding(fid)
    assert image is not None and f"#{fid}" in summary and revision == 0 and history == []
    assert box == [round(v, 1) for v in handlers.store.state(fid).box.xyxy]

    other = next(c.name for c in handlers.store.taxonomy.classes_for_type(object_type) if c.name != class_name)
    assert handlers.relabel(fid, revision, other, ANA) == f"Saved: relabel on #{fid}."
    assert "changed" in handlers.relabel(fid, revision, class_name, ANA)  # stale revision refused
    state = handlers.store.state(fid)
    assert (state.class_name, state.revision, state.updated_by) == (other, 1, "ana")
    assert [(h.reviewer, h.action, h.before["class_name"], h.after["class_name"]) for h in handlers.store.history(fid)] == [
        ("ana", "relabel", class_name, other)]

    queue = handlers.queue_rows("", "", "", "", "")
    assert queue and all(len(r) == len(QUEUE_HEADERS) for r in queue)
    assert queue[-1][0] == fid and queue[-1][7] == "reviewed"  # the reviewed object goes last
    by_id = {r[0]: r for r in rows}
    assert all(q[2] == by_id[q[0]][2] for q in queue)  # the queue's "#" is the photo's own numbering
