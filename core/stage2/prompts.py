"""Spatial prompt text shared by the VLM backends (kept short: every token costs CPU time)."""

from __future__ import annotations

from core.stage2.classifier import PhotoContext
from core.stage2.rationale import describe, human
from core.stage2.spatial import band

# Hints are data-driven: share of each type's boxes per vertical band in the training labels.
Hints = dict[str, dict[str, float]]


def band_hints(rows: list[tuple[str, str]]) -> Hints:
    """``{type: {band: share}}`` from ``(type, band)`` pairs of labelled objects."""
    out: Hints = {}
    for t in sorted({t for t, _ in rows}):
        bands = [b for tt, b in rows if tt == t]
        out[t] = {b: bands.count(b) / len(bands) for b in ("top", "middle", "bottom")}
    return out


def object_prompt(ctx: PhotoContext, index: int, hints: Hints | None = None, with_context: bool = True,
                  domain: str = "drainage") -> str:
    """What the model reads about ``ctx.detections[index]``.

    With context: the object's band and salient relations, the other detections, and the
    data-driven band prior for its type. Without (the ablation): only its type and band.
    ``domain`` is the taxonomy's name; the shipped adapter was trained on "Drainage inspection."
    """
    title = f"{domain.capitalize()} inspection."
    d = ctx.detections[index]
    height = ctx.image.height
    if not with_context:
        return f"{title} Object: {human(d.type)} #{index} in the {band(d.box, height)} band."
    text = f"{title} Object: {describe(index, ctx.detections, ctx.facts, height)}."
    others = [f"{human(o.type)} #{k}" for k, o in enumerate(ctx.detections) if k != index][:6]
    if others:
        text += " Also seen: " + ", ".join(others) + "."
    share = (hints or {}).get(d.type, {}).get(band(d.box, height))
    if share is not None:
        text += f" {human(d.type).capitalize()}s lie in this band in {share:.0%} of labelled photos."
    return text
