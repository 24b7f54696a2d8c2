import pytest

from core.stage2.spatial import Fact, SpatialConfig, at_lower_end_of, band, direction, overlaps, spatial_facts
from core.types import Box

W = H = 300
SLOPE = Box(140, 20, 160, 220)  # tall, thin: a slope drain running down the face
TOE = Box(0, 215, 300, 245)  # wide strip at its foot
VEG = Box(165, 100, 200, 140)  # just right of the slope drain
FAR = Box(10, 10, 40, 40)  # top-left corner, far from everything


@pytest.mark.parametrize("box, expected", [(Box(0, 0, 10, 10), "top"), (Box(0, 140, 10, 160), "middle"), (TOE, "bottom"), (Box(0, 290, 10, 300), "bottom")])
def test_band(box, expected):
    assert band(box, H) == expected


def test_direction_uses_dominant_axis():
    assert direction(FAR, TOE) == "above"
    assert direction(TOE, FAR) == "below"
    assert direction(Box(0, 100, 10, 110), Box(200, 90, 210, 120)) == "left_of"
    assert direction(Box(200, 90, 210, 120), Box(0, 100, 10, 110)) == "right_of"


def test_overlap_and_lower_end():
    # Touching at the foot shares too little of the drain's area to count as overlapping.
    assert not overlaps(SLOPE, TOE)
    assert overlaps(SLOPE, Box(145, 100, 200, 140))
    assert not overlaps(FAR, TOE)
    assert at_lower_end_of(TOE, SLOPE, H)
    assert not at_lower_end_of(SLOPE, TOE, H)
    # A strip high above the slope drain's foot is not at its lower end.
    assert not at_lower_end_of(Box(0, 100, 300, 130), SLOPE, H)


def test_facts_for_a_hand_made_scene():
    facts = set(spatial_facts([SLOPE, TOE, VEG, FAR], W, H))
    assert Fact(1, "at_lower_end_of", 0) in facts  # toe drain at the foot of the slope drain
    assert Fact(1, "adjacent_to", 0) in facts and Fact(1, "below", 0) in facts
    assert Fact(2, "adjacent_to", 0) in facts  # vegetation beside the drain
    assert Fact(2, "right_of", 0) in facts
    assert Fact(3, "above", 1) in facts
    assert not any(f.subject == 3 and f.predicate == "adjacent_to" for f in facts)
    assert not any(f.predicate == "at_lower_end_of" and f.subject != 1 for f in facts)


def test_overlapping_boxes_get_no_direction():
    facts = spatial_facts([SLOPE, Box(145, 100, 200, 140)], W, H)
    assert {f.predicate for f in facts} == {"overlaps"}


def test_adjacency_threshold_is_configurable():
    tight = SpatialConfig(adjacent_gap=0.0)
    facts = spatial_facts([SLOPE, VEG], W, H, tight)
    assert not any(f.predicate == "adjacent_to" for f in facts)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="predicate"):
        Fact(0, "near", 1)
    with pytest.raises(ValueError, match="different"):
        Fact(1, "above", 1)
    with pytest.raises(ValueError, match="fraction"):
        SpatialConfig(overlap_min=2)
    with pytest.raises(ValueError, match="height"):
        band(FAR, 0)
    assert spatial_facts([], W, H) == []
