"""The simulated box reviewer of ``train simulate-reviews --stage detector`` on real sample photos:
it must leave each photo done with exactly the true boxes, as the detector's training data assumes."""

from core.data import load_dataset
from core.paths import samples_dir
from core.pipeline import Pipeline
from core.stage1.detector import Detector, DetectorConfig
from core.stage2 import registry
from core.stage2.classifier import ConditionClassifier
from db.checks import storable
from db.store import Store
from train.simulate_detector import review_boxes


def test_simulated_box_review_leaves_each_photo_done_with_the_true_boxes(tmp_path):
    ds = load_dataset(samples_dir() / "data.yaml")
    samples = ds.samples("valid")[:3]
    tax = ds.taxonomy
    pipeline = Pipeline(Detector(DetectorConfig(device="cpu"), tax),
                        ConditionClassifier(registry.create("probe", registry.BackendOptions(tax)), tax))
    store = Store(tmp_path / "review.db", tax)
    store.ensure_user("sim")

    counts = review_boxes(store, pipeline, samples, "sim")

    assert counts["photos"] == 3 and counts["moved"] > 0  # the moves are the case a photo-done check refused
    kinds = store.correction_kinds()["total"]
    assert kinds.get("detector_miss", 0) == counts["drawn"] and kinds.get("detector_false_positive", 0) == counts["deleted"]
    for photo_id, s in zip(store.photo_ids(), samples):
        assert store.photo_progress(photo_id).done
        live = [f.state for f in store.photo_findings(photo_id) if f.state.status.value != "deleted"]
        assert all(f.status.value == "reviewed" for f in live)
        truth = sorted((o.type, tuple(round(v, 3) for v in o.box.xyxy)) for o in s.objects if storable(o.box))
        assert sorted((f.object_type, tuple(round(v, 3) for v in f.box.xyxy)) for f in live) == truth
