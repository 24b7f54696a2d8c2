import pytest
import yaml
from conftest import make_dataset

from core.data import load_dataset, parse_label_line
from core.errors import DatasetError, DatasetErrors
from core.taxonomy import load_taxonomy

TYPES = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("1 0.5 0.5 0.2 0.4", (1, (0.5, 0.5, 0.2, 0.4))),
        ("0 0.1 0.1 0.3 0.1 0.3 0.5", (0, (0.2, 0.3, 0.2, 0.4))),  # triangle -> its bounding box
        ("2 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6", (2, (0.2, 0.4, 0.2, 0.4))),
    ],
)
def test_parse_label_line_boxes_and_polygons(line, expected):
    cls_id, box = parse_label_line(line, 4)
    assert cls_id == expected[0]
    assert box == pytest.approx(expected[1])


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 0.5 0.5 0.2", "found 4 fields"),
        ("1 0.5 0.5 0.2 0.4 0.9", "found 6 fields"),
        ("x 0.5 0.5 0.2 0.4", "integer class"),
        ("7 0.5 0.5 0.2 0.4", "out of range"),
        ("1 0.5 0.5 2.2 0.4", "normalised"),
        ("1 0.5 0.5 -0.001 0.4", "non-negative"),
    ],
)
def test_parse_label_line_rejects_garbage(line, message):
    with pytest.raises(ValueError, match=message):
        parse_label_line(line, 4)


def test_reads_boxes_in_pixels(tmp_path):
    y = make_dataset(tmp_path, TYPES, {"a": ["0 0.5 0.5 0.2 0.4", "3 0.25 0.25 0.1 0.1"], "b": []}, size=(200, 100))
    ds = load_dataset(y)
    assert ds.label_space == "types"
    samples = ds.samples("train")
    assert [s.stem for s in samples] == ["a", "b"]
    a = samples[0]
    assert (a.width, a.height) == (200, 100)
    assert a.objects[0].type == "rock_toe" and a.objects[0].class_name is None
    assert a.objects[0].box.xyxy == pytest.approx((80, 30, 120, 70))
    assert samples[1].objects == ()


def test_condition_dataset_serves_as_type_dataset(tmp_path):
    tax = load_taxonomy()
    y = make_dataset(tmp_path / "src", tax.class_names, {"a": ["1 0.5 0.8 0.9 0.1", "8 0.5 0.5 0.2 0.2"]})
    ds = load_dataset(y, tax)
    assert ds.label_space == "classes"
    objs = ds.samples("train")[0].objects
    assert [(o.type, o.class_name) for o in objs] == [("toe_drain", "Toe drain- Blocked"), ("vegetation", "vegetation")]

    det_yaml = ds.write_detection_dataset(tmp_path / "det", splits=("train",))
    spec = yaml.safe_load(det_yaml.read_text())
    assert spec["names"] == dict(enumerate(tax.type_names))
    lines = (tmp_path / "det" / "train" / "labels" / "a.txt").read_text().split("\n")
    assert lines[0].startswith("2 ") and lines[1].startswith("3 ")
    # The rewritten set reads back as a type-labelled dataset with the same boxes.
    again = load_dataset(det_yaml, tax).samples("train")[0].objects
    assert [o.type for o in again] == ["toe_drain", "vegetation"]
    assert again[0].box.xyxy == pytest.approx(objs[0].box.xyxy, abs=0.01)


def test_all_errors_are_collected_with_file_and_line(tmp_path):
    y = make_dataset(tmp_path, TYPES, {"a": ["0 0.5 0.5 0.2 0.4", "9 0.5 0.5 0.2 0.2"], "b": ["0 0.5 oops 0.2 0.2"]})
    (tmp_path / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = load_dataset(y)
    with pytest.raises(DatasetErrors) as info:
        ds.samples("train")
    text = str(info.value)
    assert "3 problem(s)" in text
    assert "a.txt:2: class id 9 out of range" in text
    assert "b.txt:1: expected an integer class" in text
    assert "orphan.txt: label file has no image" in text
    assert {e.line for e in info.value.errors} == {2, 1, None}


def test_unreadable_image_is_a_located_error(tmp_path):
    y = make_dataset(tmp_path, TYPES, {"a": []})
    (tmp_path / "train" / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetErrors, match="broken.jpg: expected a readable image"):
        load_dataset(y).samples("train")


def test_missing_split_folder_and_bad_yaml(tmp_path):
    (tmp_path / "data.yaml").write_text("train: nowhere/images\nnames: [rock_toe]\n")
    with pytest.raises(DatasetError, match="expected an image folder"):
        load_dataset(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: t\n")
    with pytest.raises(DatasetError, match="'names'"):
        load_dataset(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: t\nnames: [cat]\n")
    with pytest.raises(DatasetError, match="neither"):
        load_dataset(tmp_path / "data.yaml")
    with pytest.raises(DatasetError, match="found nothing"):
        load_dataset(tmp_path / "missing.yaml")


def test_roboflow_parent_relative_split_paths(tmp_path):
    y = make_dataset(tmp_path, TYPES, {"a": ["0 0.5 0.5 0.2 0.4"]})
    y.write_text(y.read_text().replace("train: train/images", "train: ../train/images"))
    assert len(load_dataset(y).samples("train")) == 1


def test_real_datasets_read_cleanly(samples_yaml):
    from core.paths import datasets_dir

    for name in ("drainage-objects", "drainage-conditions"):
        path = datasets_dir() / name / "data.yaml"
        if not path.exists():
            pytest.skip(f"real dataset not present at {path}")
        ds = load_dataset(path)
        assert sum(len(s.objects) for s in ds.samples("valid")) == {"drainage-objects": 301, "drainage-conditions": 219}[name]
    shipped = load_dataset(samples_yaml).samples("valid")
    assert len(shipped) == 6 and all(s.objects for s in shipped)
