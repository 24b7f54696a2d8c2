"""The per-photo feature cache under concurrent use, and the memo of the last photo."""

import threading
import time

import numpy as np
from PIL import Image

from core.stage2.features import FEATURE_DIM, FeatureStore
from core.types import Box


class SlowEncoder:
    """Counts calls and sleeps while "encoding", so two threads overlap if nothing stops them."""

    def __init__(self):
        self.calls = 0

    def embed(self, images):
        self.calls += 1
        time.sleep(0.05)
        return np.full((len(images), FEATURE_DIM), float(len(images)), np.float32)


def test_two_threads_on_one_photo_encode_it_once_and_leave_a_readable_cache(tmp_path):
    encoder = SlowEncoder()
    store = FeatureStore(encoder, root=tmp_path)
    image, boxes = Image.new("RGB", (200, 200)), [Box(10, 10, 60, 60), Box(80, 80, 150, 150)]
    errors = []

    def work():
        try:
            store.object_features(image, boxes, "photo-1")
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a thread raised
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and encoder.calls == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo-1.npz"]  # no temp file left behind
    fresh = FeatureStore(SlowEncoder(), root=tmp_path)
    crops, context = fresh.object_features(image, boxes, "photo-1")
    assert crops.shape == context.shape == (2, FEATURE_DIM) and fresh.encoder.calls == 0  # read from disk


def test_forget_drops_the_memo_but_not_the_disk_cache(tmp_path):
    encoder = SlowEncoder()
    memory_only = FeatureStore(encoder, root=tmp_path, persist=False)
    image, boxes = Image.new("RGB", (100, 100)), [Box(5, 5, 50, 50)]
    memory_only.object_features(image, boxes, "p")
    memory_only.object_features(image, boxes, "p")
    assert encoder.calls == 1  # scoring, then rationales, then evidence: one encoding
    memory_only.forget()
    memory_only.object_features(image, boxes, "p")
    assert encoder.calls == 2
