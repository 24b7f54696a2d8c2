"""``slopewatch bench review``: a scripted reviewer works through photos in the Review workspace.

The photos are inspected by the served pipeline into a fresh SQLite file, then a reviewer who
knows the ground truth (a labelled dataset's split) reviews each photo in queue order through
the Review tab's own handlers (:class:`app.review_handlers.ReviewHandlers`): a detection matching a
true object of the same class is accepted, one of another class gets its class key, one that
overlaps its object badly is moved on the canvas, one matching nothing is deleted, a missed
object is drawn; then "Photo done" and "Next photo to review". Server time per action is the
handler's wall time (storage plus the refreshed view), without Gradio's transport.

Clicks and keys per action are counted for this workspace and for the form it replaced (one
object at a time, boxes typed as pixel coordinates), from the controls each needs:
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

# Inputs (clicks, key presses, drags, typed fields) per action. Workspace: ``a``; a number key
# then a click on the next object; a drag; a click on the box then Delete; a drag plus picking
# the class in the box's label list and OK; Shift+A; one click; one key.
WORKSPACE_INPUTS = {"accept": 1, "relabel": 2, "move": 1, "delete": 2, "add": 3, "accept_all": 1, "photo_done": 1, "next_photo": 1}
# The old form: ``a`` (accept and next); open the class dropdown, pick, "Change class", ``n``;
# four coordinate fields (click + type each) and "Move box", ``n``; ``d`` then ``n``; open the
# accordion, four fields, class dropdown (2), "Add box"; no bulk accept (one ``a`` per object);
# no photo state; typing the next object's id and "Load".
FORM_INPUTS = {"accept": 1, "relabel": 4, "move": 10, "delete": 2, "add": 12, "photo_done": 0, "next_photo": 2}


@dataclass(frozen=True)
class ReviewBenchConfig:
    """Settings of ``slopewatch bench review``.

    Attributes:
        data_yaml: labelled YOLO export whose photos are reviewed (condition classes); default: the shipped samples.
        split: split of data_yaml to review.
        photos: how many photos to review (first ones of the split, by name).
        backend: stage-2 backend that labels the photos before review.
        json: where to write the results JSON.
    """

    data_yaml: Path | None = None
    split: str = "valid"
    photos: int = 20
    backend: str = "probe"
    json: Path | None = None

    def __post_init__(self) -> None:
        from core.stage2 import registry

        registry.check(self.backend, live_only=True)
        if self.photos < 1:
            raise ValueError(f"photos: expected >= 1, found {self.photos}")


def _plan(findings, truth, taxonomy) -> list[tuple[str, object]]:
    """The reviewer's actions on one photo: ``(action, finding or true object)``."""
    live = [f for f in findings if f.state.status != "deleted"]
    used, actions = set(), []
    for f in live:
        best, best_iou = None, 0.0
        for k, t in enumerate(truth):
            iou = f.state.box.iou(t.box)
            if k not in used and t.type == f.state.object_type and iou > best_iou:
                best, best_iou = k, iou
        if best is None or best_iou < 0.3:
            actions.append(("delete", f))
            continue
        used.add(best)
        t = truth[best]
        if best_iou < 0.7:
            actions.append(("move", (f, t)))
        if t.class_name and t.class_name != f.state.class_name:
            actions.append(("relabel", (f, t)))
        else:  # a move decides only the box: the class is accepted too
            actions.append(("accept", f))
    # Sliver boxes (under 4 px a side) in the labels are not something a reviewer would draw.
    actions += [("add", t) for k, t in enumerate(truth) if k not in used and t.class_name and min(t.box.width, t.box.height) >= 4]
    return actions


def bench_review(cfg: ReviewBenchConfig) -> dict:
    from tqdm.auto import tqdm

    from app.handlers import Handlers
    from app.models import ModelHost
    from app.review_handlers import ReviewHandlers
    from app.usecases.canvas import canvas_scale
    from core.data import load_dataset
    from core.paths import samples_dir
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2 import registry
    from core.stage2.classifier import ConditionClassifier
    from db.store import Store

    ds = load_dataset(cfg.data_yaml or samples_dir() / "data.yaml")
    samples = ds.samples(cfg.split)[:cfg.photos]
    detector = Detector(DetectorConfig(device="cpu"))
    pipeline = Pipeline(detector, ConditionClassifier(registry.create(cfg.backend, registry.BackendOptions(detector.taxonomy)),
                                                      detector.taxonomy))
    work = Path(tempfile.mkdtemp(prefix="bench-review-"))
    store = Store(work / "review.db", ds.taxonomy)
    who = SimpleNamespace(username="bench-reviewer")
    inspect = Handlers(ModelHost.ready(pipeline), store)
    truth = {}
    for s in tqdm(samples, desc="inspect"):
        *_, photo_id = inspect.inspect([str(s.image_path)], who, SimpleNamespace(tqdm=lambda x, desc=None, total=None: x))
        truth[photo_id] = list(s.objects)
    r = ReviewHandlers(store)
    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}

    def timed(action, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        times.setdefault(action, []).append(time.perf_counter() - t0)
        counts[action] = counts.get(action, 0) + 1
        if isinstance(out[0], str) and out[0].startswith("⚠"):
            raise RuntimeError(f"bench review: {action} was refused: {out[0]}")
        return out

    view_keys = ReviewHandlers.VIEW + ReviewHandlers.PANEL
    bulk_accepted = 0  # objects the old form would have needed one "a" each for
    photo_id = next(iter(truth))
    view = dict(zip(view_keys, timed("next_photo", r.open_photo, photo_id)))
    for _ in tqdm(range(len(truth)), desc="review"):
        photo_id = view["photo"]
        plan = _plan(store.photo_findings(photo_id), truth[photo_id], store.taxonomy)
        for action, what in plan:
            if action == "accept":
                out = timed(action, r.accept, photo_id, what.finding_id, store.state(what.finding_id).revision, who)
            elif action == "relabel":
                f, t = what
                out = timed(action, r.set_class, photo_id, f.finding_id, store.state(f.finding_id).revision, t.class_name, who)
            elif action in ("move", "delete", "add"):
                boxes = [dict(b) for b in view["canvas"]["boxes"]]  # canvas pixels: photo pixels x scale
                photo = store.photo(photo_id)
                scale = canvas_scale(photo.width, photo.height)
                if action == "add":
                    b = what.box
                    boxes.append({"xmin": b.x1 * scale, "ymin": b.y1 * scale, "xmax": b.x2 * scale, "ymax": b.y2 * scale, "label": what.class_name})
                else:
                    f = what[0] if action == "move" else what
                    k = next(i for i, b in enumerate(boxes) if b["label"].startswith(f"#{f.index} "))
                    if action == "delete":
                        boxes.pop(k)
                    else:
                        b = what[1].box
                        boxes[k].update(xmin=b.x1 * scale, ymin=b.y1 * scale, xmax=b.x2 * scale, ymax=b.y2 * scale)
                out = timed(action, r.save_canvas, photo_id, {"boxes": boxes}, view["seen"], who)
            view = dict(zip(view_keys, out[1:]))
        left = sum(f.state.status == "pending" for f in store.photo_findings(photo_id))
        if left:
            bulk_accepted += left
            view = dict(zip(view_keys, timed("accept_all", r.accept_all, photo_id, view["seen"], who)[1:]))
        timed("photo_done", r.photo_done, photo_id, view["seen"], who)
        view = dict(zip(view_keys, timed("next_photo", r.next_in_queue, photo_id)))
    every = np.concatenate([np.asarray(v) for v in times.values()])
    n = len(truth)
    return {
        "bench": "review", "photos": n, "actions": counts, "db": str(store.path),
        "server_ms_per_action": {"median": float(np.median(every) * 1e3), "p95": float(np.percentile(every, 95) * 1e3),
                                 "max": float(every.max() * 1e3)},
        "server_ms_by_action": {a: {"median": float(np.median(v) * 1e3), "p95": float(np.percentile(v, 95) * 1e3)} for a, v in times.items()},
        "inputs_per_photo": {"workspace": sum(WORKSPACE_INPUTS[a] * c for a, c in counts.items()) / n,
                             "old_form": (sum(FORM_INPUTS[a] * c for a, c in counts.items() if a != "accept_all")
                                          + FORM_INPUTS["accept"] * bulk_accepted) / n},
        "photos_done": sum(store.photo_progress(p).done for p in truth),
    }
