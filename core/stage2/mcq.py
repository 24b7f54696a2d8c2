"""Lettered multiple-choice questions about one object: the question text, the answer type,
and :func:`parse_letter`, the pure parser that reads a generated answer.

The options are the classes of the object's type in the taxonomy. Backends that generate text
(the VLMs) implement ``answer_mcq``; the others answer through :class:`ScoredChoice`.
Scoring a backend on a dataset is ``core.evaluation.mcq``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.stage2.classifier import PhotoContext
from core.stage2.prompts import object_prompt

LETTERS = string.ascii_uppercase


def option_texts(taxonomy, object_type: str) -> list[str]:
    """The options for one type, in the taxonomy's class order: conditions, or class names."""
    return [c.condition or c.name for c in taxonomy.classes_for_type(object_type)]


def question_text(ctx: PhotoContext, index: int, taxonomy, hints=None) -> str:
    """The object's spatial prompt, then the lettered options and the instruction."""
    opts = option_texts(taxonomy, ctx.detections[index].type)
    lettered = " ".join(f"{LETTERS[k]}) {o}" for k, o in enumerate(opts))
    return (f"{object_prompt(ctx, index, hints, domain=taxonomy.name)} Which is its condition? {lettered}. "
            f"Answer with one letter.")


def parse_letter(text: str | None, n_options: int, options: Sequence[str] = ()) -> str | None:
    """The option letter an answer names, or ``None`` when it names none or several.

    Pure and total: any string (or None) gives a letter among the first ``n_options`` or None.
    Accepted, in order: a bare letter (any case, optionally bracketed), ``Answer: (B)`` /
    ``the answer is b``, a leading ``B)`` / ``(B)`` / ``B.``, exactly one distinct capital
    letter standing alone, or exactly one option's text.
    """
    if not isinstance(text, str) or n_options < 1:
        return None
    valid = LETTERS[:min(n_options, len(LETTERS))]
    t = text.strip()

    def ok(letter: str) -> str | None:
        return letter.upper() if letter.upper() in valid else None

    m = re.fullmatch(r"[(\[]?([A-Za-z])[)\].:]?", t)
    if m:
        return ok(m.group(1))
    m = re.search(r"answer\s*(?:is\s*)?[:\-]?\s*[(\[]?([A-Za-z])(?![A-Za-z])", t, re.IGNORECASE)
    if m:
        return ok(m.group(1))
    m = re.match(r"[(\[]?([A-Z])[)\].:](?:\s|$)", t)
    if m:
        return ok(m.group(1))
    standalone = {c for c in re.findall(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])", t) if c in valid}
    if len(standalone) == 1:
        return standalone.pop()
    if standalone:
        return None
    named = [LETTERS[k] for k, o in enumerate(options[:len(valid)]) if re.search(rf"\b{re.escape(o.lower())}\b", t.lower())]
    return named[0] if len(named) == 1 else None


@dataclass(frozen=True)
class Answer:
    """One backend's answer to one question: its raw text and scores per option letter."""

    text: str
    scores: np.ndarray


class ScoredChoice:
    """Adapts a class-scoring backend: it answers the letter of its most probable class."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name

    def answer_mcq(self, ctx: PhotoContext, targets: Sequence[int], taxonomy) -> list[Answer]:
        probs = self.backend.score(ctx, targets)
        return [Answer(LETTERS[int(np.argmax(p))], np.asarray(p, float)) for p in probs]


def answerer(backend):
    """The backend itself when it generates answers (``answer_mcq``), else a :class:`ScoredChoice`."""
    return backend if hasattr(backend, "answer_mcq") else ScoredChoice(backend)
