"""The detector's label sheet (``evaluate detector --sheet``): which photos it draws and what it counts."""

from pathlib import Path

from PIL import Image

from core.data import Sample
from core.evaluation.label_sheet import label_sheet
from core.paths import samples_dir
from core.types import Box, Detection, LabeledObject

PHOTOS = sorted((samples_dir() / "valid" / "images").glob("*.jpg"))[:4]
VEG = Box(10, 10, 60, 60)


class Scripted:
    """A detector answering what each photo is scripted to get, in the order asked."""

    def __init__(self, answers: dict[Path, list[Detection]]):
        self.answers, self.asked = answers, []

    def predict_batch(self, images):
        self.asked.extend(images)
        return [self.answers.get(p, []) for p in images]


def sample(path: Path, *objects: LabeledObject) -> Sample:
    with Image.open(path) as im:
        return Sample(path, im.width, im.height, tuple(objects))


def test_the_sheet_draws_only_photos_with_the_type_and_counts_where_labels_and_detections_disagree(tmp_path):
    samples = [
        sample(PHOTOS[0], LabeledObject(VEG, "vegetation")),                       # labelled, found
        sample(PHOTOS[1]),                                                       # detected, not labelled
        sample(PHOTOS[2], LabeledObject(VEG, "vegetation"), LabeledObject(Box(100, 100, 150, 150), "vegetation")),  # one of two found
        sample(PHOTOS[3], LabeledObject(VEG, "rock_toe")),                         # another type only: not drawn
    ]
    detector = Scripted({
        PHOTOS[0]: [Detection(Box(12, 10, 60, 62), "vegetation", 0.8)],
        PHOTOS[1]: [Detection(VEG, "vegetation", 0.4), Detection(Box(70, 70, 90, 90), "vegetation", 0.3)],
        PHOTOS[2]: [Detection(VEG, "vegetation", 0.6), Detection(Box(100, 100, 150, 150), "rock_toe", 0.9)],
        PHOTOS[3]: [Detection(VEG, "rock_toe", 0.9)],
    })
    out = tmp_path / "sheet.png"
    summary = label_sheet(detector, samples, "vegetation", out, tile=100, columns=2, batch=3)
    assert detector.asked == PHOTOS  # every photo asked once, across batches
    assert (summary.photos, summary.labelled_photos, summary.unlabelled_detected_photos, summary.detections_on_unlabelled) == (3, 2, 1, 2)
    assert (summary.labels, summary.labels_found) == (3, 2)  # the rock toe box on the second label does not count
    with Image.open(out) as sheet:
        assert sheet.size == (2 * 104, 2 * 104)  # 3 tiles in 2 columns


def test_a_type_nobody_labelled_or_detected_is_said_in_the_counts(tmp_path):
    summary = label_sheet(Scripted({}), [sample(PHOTOS[0])], "vegetation", tmp_path / "s.png")
    assert (summary.photos, summary.labels, summary.path) == (0, 0, "") and not (tmp_path / "s.png").exists()
