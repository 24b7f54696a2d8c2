"""Multiple-choice evaluation: the letter parser (table-driven), and the whole evaluation on a
second, non-drainage taxonomy to prove nothing in it is drainage-specific."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_dataset

from core.evaluation.mcq import McqEvalConfig, evaluate_mcq
from core.stage2.backends.type_majority import TypeMajority
from core.stage2.classifier import photo_context
from core.stage2.mcq import LETTERS, Answer, parse_letter, question_text
from core.taxonomy import load_taxonomy
from core.types import Box, Detection

OPTIONS = ["normal", "blocked", "damaged"]


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("b", "B"),
    ("(c)", "C"),
    ("[A]", "A"),
    ("B.", "B"),
    ("Answer: (B)", "B"),
    ("answer: c", "C"),
    ("The answer is A.", "A"),
    ("Answer - b) blocked", "B"),
    ("C) damaged", "C"),
    ("(A) normal, clearly", "A"),
    ("I pick B because the channel is full", "B"),
    ("A or B", None),                # several letters: ambiguous, not a guess
    ("B, C", None),
    ("D", None),                     # not an option here
    ("Answer: E", None),
    ("", None),
    ("   ", None),
    ("%%%###", None),
    ("no idea", None),
    (None, None),
    ("blocked", "B"),                # the option's own text
    ("it looks damaged to me", "C"),
    ("normal or blocked", None),     # two option texts
    ("the drain's fine", None),
])
def test_parse_letter(text, expected):
    assert parse_letter(text, 3, OPTIONS) == expected


def test_parse_letter_never_raises_on_garbage():
    rng = np.random.default_rng(0)
    for _ in range(300):
        junk = "".join(chr(int(c)) for c in rng.integers(0, 0x2FF, int(rng.integers(0, 30))))
        assert parse_letter(junk, int(rng.integers(0, 5)), OPTIONS) in (None, *LETTERS[:5])
    assert parse_letter("A", 0) is None


MICROSCOPY = """
name = "microscopy"
conditions = ["brightfield", "fluorescence", "confocal"]

[[types]]
name = "cell"

[[types]]
name = "scale_bar"

[[classes]]
name = "cell-bf"
type = "cell"
condition = "brightfield"

[[classes]]
name = "cell-fl"
type = "cell"
condition = "fluorescence"

[[classes]]
name = "cell-cf"
type = "cell"
condition = "confocal"

[[classes]]
name = "scale bar"
type = "scale_bar"
"""


class PositionReader:
    """A fake generative VLM: it answers by the box's horizontal third, in assorted formats,
    and babbles for the right third (an unparseable answer)."""

    name = "adapter"
    version = "fake"

    def answer_mcq(self, ctx, targets, taxonomy):
        replies = ["Answer: (A)", "b) fluorescence", "hmm, hard to tell"]
        out = []
        for i in targets:
            third = min(int(ctx.detections[i].box.cx / ctx.image.width * 3), 2)
            scores = np.zeros(3)
            scores[third] = 1.0
            out.append(Answer(replies[third], scores))
        return out


def _microscopy_dataset(tmp_path):
    tax_file = tmp_path / "microscopy.toml"
    tax_file.write_text(MICROSCOPY)
    # class id by horizontal third: 0 (bf) left, 1 (fl) middle, 2 (cf) right; one scale bar each.
    rows = {
        "a": ["0 0.15 0.5 0.1 0.1", "1 0.5 0.5 0.1 0.1", "3 0.9 0.9 0.1 0.05"],
        "b": ["0 0.2 0.3 0.1 0.1", "2 0.85 0.5 0.1 0.1"],
        "c": ["1 0.5 0.2 0.1 0.1", "1 0.45 0.7 0.1 0.1", "2 0.8 0.8 0.1 0.1"],
    }
    names = ["cell-bf", "cell-fl", "cell-cf", "scale bar"]
    make_dataset(tmp_path, names, {"t1": ["1 0.5 0.5 0.1 0.1", "1 0.4 0.4 0.1 0.1", "0 0.2 0.2 0.1 0.1"]}, split="train")
    yaml_path = make_dataset(tmp_path, names, rows, split="valid")
    yaml_path.write_text(yaml_path.read_text() + "train: train/images\n")
    return yaml_path, tax_file


def test_mcq_on_a_second_taxonomy(tmp_path):
    yaml_path, tax_file = _microscopy_dataset(tmp_path)
    cfg = McqEvalConfig(data_yaml=yaml_path, taxonomy=tax_file, backends="type-majority,adapter")
    result = evaluate_mcq(cfg, backends={"adapter": PositionReader()})
    assert result["taxonomy"] == "microscopy"
    fake, majority = result["mcq"]["adapter"], result["mcq"]["type-majority"]
    # 7 cells are asked about (scale bars have one class: no question): 2 left, 3 middle, 2 right.
    assert fake["n"] == majority["n"] == 7
    assert fake["accuracy"] == pytest.approx(5 / 7) and fake["unparseable_rate"] == pytest.approx(2 / 7)
    assert fake["top2_accuracy"] == 1.0  # babbled text, but its scores rank the right letter first
    assert fake["balanced_accuracy"] == pytest.approx(2 / 3)  # recall 1, 1, 0 over the three classes
    # type-majority always answers "fluorescence" (2 of 3 training cells): 3 of 7 right, never unparseable.
    assert majority["accuracy"] == pytest.approx(3 / 7) and majority["unparseable_rate"] == 0.0
    assert majority["seconds_per_photo"] >= 0.0 and set(fake) >= {"macro_f1", "per_class", "examples"}


def test_question_lists_the_taxonomy_options_with_letters(tmp_path):
    tax_file = tmp_path / "microscopy.toml"
    tax_file.write_text(MICROSCOPY)
    tax = load_taxonomy(tax_file)
    from PIL import Image

    ctx = photo_context(Image.new("RGB", (100, 100)), [Detection(Box(10, 10, 30, 30), "cell", 0.9)])
    text = question_text(ctx, 0, tax)
    assert text.startswith("Microscopy inspection.") and "A) brightfield B) fluorescence C) confocal" in text
    assert "drain" not in text.lower()


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="backends"):
        McqEvalConfig(data_yaml=tmp_path / "d.yaml", backends="probe,oracle")


def test_scoring_backends_answer_with_their_best_letter():
    from PIL import Image

    from core.stage2.mcq import ScoredChoice

    tax = load_taxonomy()
    majority = TypeMajority(tax, {"slope drain blocked": 5, "slope drain": 1})
    ctx = photo_context(Image.new("RGB", (50, 50)), [Detection(Box(1, 1, 20, 40), "slope_drain", 0.9)])
    (answer,) = ScoredChoice(majority).answer_mcq(ctx, [0], tax)
    assert answer.text == "B" and int(np.argmax(answer.scores)) == 1
