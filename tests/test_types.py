from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.errors import TaxonomyError
from core.taxonomy import load_taxonomy
from core.types import Box, Detection, LabeledObject, detections_to_supervision


def test_box_geometry_and_roundtrip():
    b = Box.from_cxcywh_norm(0.5, 0.25, 0.2, 0.1, 200, 100)
    assert b.xyxy == pytest.approx((80.0, 20.0, 120.0, 30.0))
    assert b.to_cxcywh_norm(200, 100) == pytest.approx((0.5, 0.25, 0.2, 0.1))
    assert b.area == pytest.approx(400.0)
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert Box(0, 0, 1, 1).iou(Box(2, 2, 3, 3)) == 0.0


def test_box_clips_to_image():
    b = Box.from_cxcywh_norm(0.0, 0.0, 0.5, 0.5, 100, 100)
    assert b.xyxy == (0.0, 0.0, 25.0, 25.0)


@pytest.mark.parametrize("coords", [(5, 0, 1, 1), (0, 5, 1, 1), (float("nan"), 0, 1, 1)])
def test_box_rejects_bad_coordinates(coords):
    with pytest.raises(ValueError, match="Box"):
        Box(*coords)


def test_detection_validates_confidence():
    with pytest.raises(ValueError, match="confidence"):
        Detection(Box(0, 0, 1, 1), "rock_toe", 1.5)
    with pytest.raises(ValueError, match="type"):
        LabeledObject(Box(0, 0, 1, 1), "")


def _fake_result(names, xyxy, conf, cls):
    return SimpleNamespace(
        names=names,
        boxes=SimpleNamespace(xyxy=torch.tensor(xyxy), conf=torch.tensor(conf), cls=torch.tensor(cls)),
    )


def test_from_ultralytics_sorts_by_confidence_and_maps_names():
    tax = load_taxonomy()
    names = dict(enumerate(tax.type_names))
    result = _fake_result(names, [[0, 0, 10, 10], [5, 5, 20, 30]], [0.4, 0.9], [3.0, 2.0])
    dets = Detection.from_ultralytics(result, tax)
    assert [d.type for d in dets] == ["toe_drain", "vegetation"]
    assert dets[0].confidence == pytest.approx(0.9)
    assert dets[0].box.xyxy == (5, 5, 20, 30)
    sv_dets = detections_to_supervision(dets, tax)
    assert sv_dets.class_id.tolist() == [2, 3]
    assert np.allclose(sv_dets.confidence, [0.9, 0.4])


def test_from_ultralytics_refuses_foreign_classes():
    tax = load_taxonomy()
    result = _fake_result({0: "person", 1: "fall"}, [[0, 0, 1, 1]], [0.5], [0.0])
    with pytest.raises(TaxonomyError, match="do not match"):
        Detection.from_ultralytics(result, tax)


def test_from_ultralytics_empty():
    tax = load_taxonomy()
    result = SimpleNamespace(names=dict(enumerate(tax.type_names)), boxes=None)
    assert Detection.from_ultralytics(result, tax) == []
