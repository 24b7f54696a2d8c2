"""The one overlay renderer: boxes coloured by condition, labelled ``#k class``, drawn with supervision.

``predict --overlay``, the Inspect tab and the Review tab all call :func:`render_overlay`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import supervision as sv
from PIL import Image

from core.types import Box

# Colour per colour key; keys are condition names, "vegetation"/"none", or type names.
DEFAULT_COLORS = {
    "normal": "#2ca02c",
    "blocked": "#ff7f0e",
    "damaged": "#d62728",
    "none": "#17becf",
}
_FALLBACK = ["#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#2ca02c"]


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Box],
    labels: Sequence[str],
    color_keys: Sequence[str],
    colors: dict[str, str] | None = None,
    wrap: int = 0,
) -> Image.Image:
    """Draw boxes and labels on a copy of ``image``.

    Args:
        image: upright RGB image.
        boxes: pixel boxes.
        labels: text per box; with ``wrap`` > 0 it is wrapped to that many characters per line.
        color_keys: the key choosing each box's colour (e.g. its condition).
        colors: key -> hex colour; unknown keys get stable fallback colours.
        wrap: characters per line for long labels (rationales); 0 keeps one line.
    """
    if not (len(boxes) == len(labels) == len(color_keys)):
        raise ValueError(f"draw_boxes: expected equal lengths, found {len(boxes)} boxes, {len(labels)} labels, {len(color_keys)} keys")
    # supervision reads numpy arrays as OpenCV BGR; a PIL image keeps colours as given.
    canvas = image.convert("RGB").copy()
    if not boxes:
        return canvas
    colors = {**DEFAULT_COLORS, **(colors or {})}
    keys = sorted(set(color_keys))
    palette_hex = [colors.get(k, _FALLBACK[i % len(_FALLBACK)]) for i, k in enumerate(keys)]
    palette = sv.ColorPalette([sv.Color.from_hex(h) for h in palette_hex])
    dets = sv.Detections(
        xyxy=np.array([b.xyxy for b in boxes], dtype=float),
        class_id=np.array([keys.index(k) for k in color_keys], dtype=int),
    )
    scale = max(canvas.size) / 640
    thickness = max(1, round(2 * scale))
    canvas = sv.BoxAnnotator(color=palette, thickness=thickness).annotate(canvas, dets)
    text = ["\n".join(line for part in t.split("\n") for line in textwrap.wrap(part, wrap)) if wrap else t for t in labels]
    canvas = sv.LabelAnnotator(
        color=palette, text_scale=max(0.3, 0.4 * scale), text_thickness=1, text_padding=2,
        text_position=sv.Position.TOP_LEFT, smart_position=True,
    ).annotate(canvas, dets, labels=text)
    return canvas


@dataclass(frozen=True)
class OverlayItem:
    """One object on an overlay.

    Attributes:
        index: the object's ``#k`` on its photo (the number rationales and tables use).
        box: pixel box in the photo's coordinates.
        label: class name (or type name before stage 2).
        color_key: condition key (or type name) choosing the colour.
        confidence: shown as a percentage when given.
        of_box: the percentage is the detector's box score, not a class probability (a type with
            one class, such as vegetation, has no class to doubt: its stage-2 "100%" said nothing).
        reviewed: a reviewer decided this object (drawn with a check mark).
        rationale: wrapped under the label when not empty.
    """

    index: int
    box: Box
    label: str
    color_key: str
    confidence: float | None = None
    reviewed: bool = False
    rationale: str = ""
    of_box: bool = False

    @classmethod
    def from_scores(cls, index: int, box: Box, label: str, color_key: str, probabilities: Mapping[str, float] | None,
                    confidence: float | None, box_confidence: float | None, **rest) -> OverlayItem:
        """An object shown with the score that says something: its class probability, or the
        detector's box score where its type has one class (vegetation's "100%" said nothing)."""
        one_class = len(probabilities or {}) == 1
        return cls(index, box, label, color_key, box_confidence if one_class else confidence, of_box=one_class, **rest)

    def text(self) -> str:
        score = f" {'box ' if self.of_box else ''}{self.confidence:.0%}" if self.confidence is not None else ""
        head = f"#{self.index} {self.label}{score}"
        return head + (" ✓" if self.reviewed else "") + (f"\n{self.rationale}" if self.rationale else "")


def render_overlay(image: Image.Image, items: Sequence[OverlayItem]) -> Image.Image:
    """The photo with its objects drawn. Small drone photos leave no room for text, so photos
    under 800 px are drawn at 2x to keep labels legible."""
    scale = 2 if max(image.size) < 800 else 1
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.BICUBIC)
    boxes = [Box(it.box.x1 * scale, it.box.y1 * scale, it.box.x2 * scale, it.box.y2 * scale) for it in items]
    return draw_boxes(big, boxes, [it.text() for it in items], [it.color_key for it in items], wrap=48)


def type_colors(type_names: Sequence[str]) -> dict[str, str]:
    """A stable colour per object type, so one type looks the same in every image."""
    return {t: _FALLBACK[i % len(_FALLBACK)] for i, t in enumerate(type_names)}


def tile(images: Sequence[Image.Image], columns: int = 4, cell: int = 320) -> Image.Image:
    """Arrange images in a grid of ``cell``-sized squares (aspect kept, letterboxed)."""
    if not images:
        raise ValueError("tile: expected at least one image, found none")
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell, rows * cell), (32, 32, 32))
    for k, im in enumerate(images):
        thumb = im.copy()
        thumb.thumbnail((cell, cell))
        x, y = (k % columns) * cell, (k // columns) * cell
        grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return grid
