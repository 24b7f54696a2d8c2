"""``slopewatch evaluate mcq``: each labelled object as a lettered multiple-choice question.

The options are the classes of the object's type in the taxonomy (any taxonomy file). The VLM
backends answer by *generating* text, which :func:`parse_letter` reads; answers it cannot read
are counted apart (and as wrong). Backends that only score classes (type-majority, probe, CLIP)
answer with the letter of their best class. Top-2 accuracy uses each backend's scores over the
letters (the VLMs' next-token logits of the letters at the answer position).
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.classifier import PhotoContext, photo_context
from core.metrics import classification_metrics
from core.prompts import object_prompt

LETTERS = string.ascii_uppercase
UNPARSEABLE = "(unparseable)"


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


def score_mcq(backend, photos, taxonomy) -> dict:
    """Accuracy, balanced accuracy, macro-F1, top-2 accuracy, unparseable rate, seconds/photo."""
    ask = answerer(backend)
    y_true, y_pred, top2, unparseable, seconds, n_photos, examples = [], [], 0, 0, 0.0, 0, []
    for photo in photos:
        ctx = photo_context(photo.image, list(photo.detections), photo.key)
        targets = [i for i, c in enumerate(photo.classes) if c is not None and len(taxonomy.classes_for_type(ctx.detections[i].type)) > 1]
        if not targets:
            continue
        t0 = time.perf_counter()
        answers = ask.answer_mcq(ctx, targets, taxonomy)
        seconds += time.perf_counter() - t0
        n_photos += 1
        for i, a in zip(targets, answers):
            classes = [c.name for c in taxonomy.classes_for_type(ctx.detections[i].type)]
            truth = photo.classes[i]
            letter = parse_letter(a.text, len(classes), option_texts(taxonomy, ctx.detections[i].type))
            y_true.append(truth)
            y_pred.append(classes[LETTERS.index(letter)] if letter else UNPARSEABLE)
            unparseable += letter is None
            top2 += classes.index(truth) in np.argsort(-np.asarray(a.scores, float), kind="stable")[:2]
            if len(examples) < 5:
                examples.append({"truth": truth, "answer": a.text})
    labels = [*taxonomy.class_names, UNPARSEABLE]
    m = classification_metrics(y_true, y_pred, labels)
    n = len(y_true)
    return {
        "backend": getattr(backend, "name", type(backend).__name__),
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
        "top2_accuracy": top2 / n if n else 0.0, "unparseable_rate": unparseable / n if n else 0.0,
        "seconds_per_photo": seconds / n_photos if n_photos else 0.0, "n": n, "per_class": m["per_class"],
        "examples": examples,
    }


@dataclass(frozen=True)
class McqEvalConfig:
    """Settings of ``slopewatch evaluate mcq``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's classes.
        split: split to ask about (report figures on ``valid``).
        backends: comma-separated backends for the comparison table (qwen2vl needs --qwen-model, clip --clip-model).
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
        adapter_dir: adapter VLM folder; default is the current one.
        probe_weights: probe ``.npz``; default is the shipped one.
        qwen_model: Qwen2-VL hub id or folder, adds qwen2vl to the table.
        clip_model: CLIP checkpoint folder, adds clip to the table.
        json: where to write the results.
    """

    data_yaml: Path
    split: str = "valid"
    backends: str = "type-majority,probe,adapter"
    taxonomy: Path | None = None
    adapter_dir: Path | None = None
    probe_weights: Path | None = None
    qwen_model: str | None = None
    clip_model: Path | None = None
    json: Path | None = None

    def __post_init__(self) -> None:
        from core.evaluate_classifier import BACKENDS

        for name in self.names:
            if name not in BACKENDS:
                raise ValueError(f"backends: expected names among {BACKENDS}, found {name!r}")

    @property
    def names(self) -> list[str]:
        names = [b.strip() for b in self.backends.split(",") if b.strip()]
        names += [extra for extra, on in (("qwen2vl", self.qwen_model), ("clip", self.clip_model)) if on and extra not in names]
        return names


def evaluate_mcq(cfg: McqEvalConfig, backends: dict | None = None) -> dict:
    """One comparison table over the configured backends (``backends`` injects ready ones)."""
    from core.data import load_dataset
    from core.evaluate_classifier import labeled_photos, make_backend
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    photos = labeled_photos(ds, cfg.split)
    results = {}
    for name in cfg.names:
        if backends and name in backends:
            backend = backends[name]
        else:
            qwen = None
            if name == "qwen2vl":
                from core.qwen2vl import Qwen2VLConfig

                qwen = Qwen2VLConfig(model=cfg.qwen_model)
            backend = make_backend(name, taxonomy, ds, cfg.probe_weights, cfg.adapter_dir, qwen, cfg.clip_model)
        results[name] = score_mcq(backend, photos, taxonomy)
    return {"split": cfg.split, "taxonomy": taxonomy.name, "mcq": results}

