"""``slopewatch train simulate-reviews --stage detector``: reviewers fix the detector's boxes, the
nightly job fine-tunes the detector on them, and both detectors are scored on photos it never saw.

Valid photos are halved by content hash (``train.holdout.half``). On one half (``review_half``,
A by default) the current detector runs as in the app (both stages, stored in a real review DB);
a simulated reviewer then does what a careful one would on the canvas (``review_boxes``): a
detected box that matches a true object of its type (IoU ≥ 0.5, best match first) is moved onto
it (``edit_box``: a localisation correction when the move is large; a move decides only the box,
so it is then accepted) or accepted, every other detected box is deleted (false positive), every
true object left unmatched is drawn (missed), and the photo is marked done. The nightly job's
detector stage (``train.nightly_detector``) then trains on those photos plus the train split as
replay and is judged, with the gate, on the other half.
"""

from __future__ import annotations

import time

from core.stage1.calibration import match_boxes


def simulate_box_reviews(cfg) -> dict:
    """Run the simulation described above; returns the nightly detector record plus what the
    simulated reviewers did (``cfg``: ``train.simulate.SimulateConfig``)."""
    from core.data import file_sha256, load_dataset
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig, shipped_detector_path
    from core.stage2 import registry as backends
    from core.stage2.classifier import ConditionClassifier
    from db.store import Store
    from train.holdout import half, write_judge_set
    from train.nightly import NightlyConfig, nightly

    ds = load_dataset(cfg.data_yaml)
    tax = ds.taxonomy
    store = Store(cfg.work / "review.db", tax)
    user = "simulated-reviewer"
    store.ensure_user(user)
    # The shipped detector, not a promoted one: the nightly below compares against the shipped one too.
    detector = Detector(DetectorConfig(weights=shipped_detector_path()), tax)
    # Stage 2 only has to give every box a label here; the probe is the fastest backend.
    pipeline = Pipeline(detector, ConditionClassifier(backends.create("probe", backends.BackendOptions(tax)), tax))
    reviewed, judged = [], []
    for s in ds.samples("valid"):
        (reviewed if half(file_sha256(s.image_path)) == cfg.review_half else judged).append(s)
    counts = review_boxes(store, pipeline, reviewed, user)
    frozen = write_judge_set(judged, cfg.work / "judge", ds.names)
    started = time.time()
    result = nightly(NightlyConfig(db=cfg.work / "review.db", stages="detector", holdout_percent=0,
                                   train_yaml=str(cfg.data_yaml) if cfg.replay else "",
                                   detector_frozen_yaml=str(frozen), detector_registry=cfg.work / "registry-detector",
                                   detector_epochs=cfg.epochs))["detector"]
    result["simulation"] = {**counts, "review_half": cfg.review_half, "judge_photos": len(judged),
                            "correction_kinds": store.correction_kinds()["total"],
                            "nightly_wall_s": round(time.time() - started, 1)}
    return result


def review_boxes(store, pipeline, samples, user: str) -> dict:
    """Inspect each sample photo into ``store`` with ``pipeline`` (a ``core.pipeline.Pipeline``)
    and fix its boxes as the careful reviewer above would, then mark it done; what was done, counted."""
    from core.data import file_sha256
    from db.checks import storable

    tax = store.taxonomy
    counts = {"photos": 0, "accepted": 0, "moved": 0, "deleted": 0, "drawn": 0, "degenerate_labels": 0}
    for s in samples:
        photo, _ = store.add_photo(file_sha256(s.image_path), str(s.image_path), s.width, s.height, s.image_path.name, user)
        t0 = time.perf_counter()
        image, result = pipeline.run(s.image_path, s.image_path.name)
        store.add_run(photo.id, list(result.findings), f"detector:{pipeline.detector.version}",
                      f"{pipeline.classifier.backend.name}:{pipeline.classifier.backend.version}", time.perf_counter() - t0)
        findings = [f.state for f in store.photo_findings(photo.id)]
        # A label under the store's minimum box (the dataset has a sub-pixel one) is one no reviewer
        # could draw: it is left out, and counted.
        objects = [o for o in s.objects if storable(o.box)]
        counts["degenerate_labels"] += len(s.objects) - len(objects)
        truth = [(o.type, o.box) for o in objects]
        matched, false_pos, missed = match_boxes([(f.object_type, f.box) for f in findings], truth)
        for i, f in enumerate(findings):
            if i in false_pos:
                store.correct(f.finding_id, f.revision, user, "delete")
                counts["deleted"] += 1
            elif truth[matched[i]][1].xyxy != f.box.xyxy:
                moved = store.correct(f.finding_id, f.revision, user, "edit_box", box=truth[matched[i]][1])
                store.correct(f.finding_id, moved.revision, user, "accept")  # a move decides only the box
                counts["moved"] += 1
            else:
                store.correct(f.finding_id, f.revision, user, "accept")
                counts["accepted"] += 1
        for j in missed:
            t, box = truth[j]
            true_class = objects[j].class_name or tax.classes_for_type(t)[0].name  # a types-only dataset names no condition
            store.add_missed(photo.id, user, box, true_class)
            counts["drawn"] += 1
        store.confirm_photo(photo.id, user)
        counts["photos"] += 1
    return counts
