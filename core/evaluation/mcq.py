"""``slopewatch evaluate mcq``: each labelled object as a lettered multiple-choice question
(``core.stage2.mcq`` asks it).

The options are the classes of the object's type in the taxonomy (any taxonomy file). The VLM
backends answer by *generating* text, which ``parse_letter`` reads; answers it cannot read
are counted apart (and as wrong). Backends that only score classes (type-majority, probe, CLIP)
answer with the letter of their best class. Top-2 accuracy uses each backend's scores over the
letters (the VLMs' next-token logits of the letters at the answer position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.evaluation.metrics import classification_metrics
from core.stage2 import registry
from core.stage2.classifier import photo_context
from core.stage2.mcq import LETTERS, answerer, option_texts, parse_letter

UNPARSEABLE = "(unparseable)"


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
        for name in self.names:
            registry.check(name, "backends")

    @property
    def names(self) -> list[str]:
        names = [b.strip() for b in self.backends.split(",") if b.strip()]
        names += [extra for extra, on in (("qwen2vl", self.qwen_model), ("clip", self.clip_model)) if on and extra not in names]
        return names


def evaluate_mcq(cfg: McqEvalConfig, backends: dict | None = None) -> dict:
    """One comparison table over the configured backends (``backends`` injects ready ones)."""
    from core.data import load_dataset
    from core.stage2.labeled import labeled_photos
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    photos = labeled_photos(ds, cfg.split)
    options = registry.BackendOptions(taxonomy, probe_weights=cfg.probe_weights, adapter_dir=cfg.adapter_dir,
                                      qwen_model=cfg.qwen_model, clip_model=cfg.clip_model, dataset=ds)
    results = {}
    for name in cfg.names:
        backend = backends[name] if backends and name in backends else registry.create(name, options)
        results[name] = score_mcq(backend, photos, taxonomy)
    return {"split": cfg.split, "taxonomy": taxonomy.name, "mcq": results}

