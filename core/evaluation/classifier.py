"""``slopewatch evaluate classifier``: stage 2 judged alone, on ground-truth boxes."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from core.data import YoloDataset, file_sha256, load_dataset
from core.errors import SlopewatchError
from core.evaluation.metrics import classification_metrics
from core.stage2 import registry
from core.stage2.calibration import Calibration, Scored, brier, confidences, ece, reliability, risk_coverage, temper
from core.stage2.classifier import ConditionClassifier, photo_context
from core.stage2.evidence import EvidenceIndex, default_evidencer, load_default_index
from core.stage2.labeled import LabeledPhoto, ground_truth
from core.stage2.rationale import unfaithful_claims
from core.taxonomy import Taxonomy, load_taxonomy


@dataclass(frozen=True)
class ClassifierEvalConfig:
    """Settings of ``slopewatch evaluate classifier``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split to score (report figures on ``valid``).
        backend: stage-2 backend whose metrics go under "classifier" (names: ``core.stage2.registry``).
        compare: comma-separated further backends for the comparison table.
        probe_weights: probe ``.npz``; default is the shipped one.
        adapter_dir: adapter VLM folder; default is the shipped one.
        qwen_model: Qwen2-VL hub id or folder, for the qwen2vl backend.
        qwen_precision: qwen2vl precision: auto, fp32, fp16, bf16, int8 or int4.
        clip_model: CLIP checkpoint folder, for the clip backend (default: $SLOPEWATCH_CLIP_MODEL).
        ablate_context: also score VLM backends with the spatial context removed from the prompt.
        precision: the adapter LM's precision in the main run: auto (bf16 on a CPU with native bf16,
            else fp32, as served), fp32, bf16 or int8.
        quant: also score the main backend at full precision and at this one (bf16, int8 or int4)
            and report the retention.
        json: where to write the metrics JSON.
        confusion_png: where to draw the main backend's confusion matrix.
        reliability_png: where to draw the main backend's reliability diagram (raw and calibrated).
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
        evidence_index: neighbour index the rationales cite (default: the shipped one, train split
            only); refused when it holds a photo of the scored split.
        examples: how many rationales (the first of the split) to list in the results.
    """

    data_yaml: Path
    split: str = "valid"
    backend: str = registry.DEFAULT
    compare: str = ""
    probe_weights: Path | None = None
    adapter_dir: Path | None = None
    qwen_model: str | None = None
    qwen_precision: str = "auto"
    clip_model: Path | None = None
    ablate_context: bool = False
    precision: str = "auto"
    quant: str = ""
    json: Path | None = None
    confusion_png: Path | None = None
    reliability_png: Path | None = None
    taxonomy: Path | None = None
    evidence_index: Path | None = None
    examples: int = 10

    def __post_init__(self) -> None:
        if self.quant not in ("", "bf16", "int8", "int4"):
            raise ValueError(f"quant: expected bf16, int8 or int4, found {self.quant!r}")
        for name in self.backend_names:
            registry.check(name, "backend" if name == self.backend else "compare")

    def backend_options(self, taxonomy: Taxonomy, ds: YoloDataset) -> registry.BackendOptions:
        return registry.BackendOptions(taxonomy, probe_weights=self.probe_weights, adapter_dir=self.adapter_dir,
                                       qwen_model=self.qwen_model, qwen_precision=self.qwen_precision,
                                       clip_model=self.clip_model, dataset=ds, adapter_precision=self.precision)

    @property
    def backend_names(self) -> list[str]:
        extra = [b.strip() for b in self.compare.split(",") if b.strip()]
        return [self.backend] + [b for b in extra if b != self.backend]


class WithoutContext:
    """Ablation wrapper: the same VLM, prompted without other objects, facts or hints."""

    def __init__(self, backend):
        self.inner = backend
        self.name, self.version = f"{backend.name} (no context)", backend.version

    def score(self, ctx, targets):
        return self.inner.score(ctx, targets, with_context=False)


def score_backend(classifier: ConditionClassifier, ds: YoloDataset, split: str, examples: int = 0) -> dict:
    return score_photos(classifier, (LabeledPhoto(image, tuple(d), tuple(c), key) for _, image, d, c, key in ground_truth(ds, split)),
                        examples)


def split_evidence(cfg: "ClassifierEvalConfig", ds: YoloDataset) -> EvidenceIndex:
    """The index rationales cite while scoring ``cfg.split``; one that holds any photo of that split
    is refused (an object could cite itself, and the figures would flatter the model)."""
    index = EvidenceIndex.load(cfg.evidence_index) if cfg.evidence_index else load_default_index()
    leaked = {file_sha256(s.image_path) for s in ds.samples(cfg.split)} & set(index.photos)
    if leaked:
        raise SlopewatchError(f"evidence index: expected no photo of the {cfg.split!r} split, found {len(leaked)}; "
                              "build it from the training split (`slopewatch train evidence DATA_YAML`)")
    return index


def as_scored(finding, truth: str | None, key: str) -> Scored | None:
    """A labelled finding with a choice of classes as calibration sees it; None for the others."""
    names = list(finding.probabilities)
    if truth is None or len(names) < 2 or truth not in names:
        return None
    return Scored(finding.detection.type, np.array([finding.probabilities[n] for n in names]), names.index(truth), key)


def scored_objects(classifier: ConditionClassifier, photos: Iterable[LabeledPhoto]) -> list[Scored]:
    """Each labelled object with a choice of classes, as the classifier scores it (for calibration)."""
    out = []
    for photo in photos:
        for f, truth in zip(classifier.classify(photo.image, list(photo.detections), photo.key), photo.classes):
            if (s := as_scored(f, truth, photo.key)) is not None:
                out.append(s)
    return out


def score_photos(classifier: ConditionClassifier, photos: Iterable[LabeledPhoto], examples: int = 0) -> dict:
    """Metrics of a classifier over labelled photos (objects whose class is None are skipped);
    every rationale is checked against the facts, the probabilities and the neighbours it could
    cite, and the first ``examples`` rationales are listed."""
    tax = classifier.taxonomy
    y_true, y_pred, unfaithful, rationales, seconds, n_photos = [], [], 0, 0, 0.0, 0
    scored = []  # objects with a real choice between classes: what calibration is judged on
    listed = []
    for photo in photos:
        image, dets, key = photo.image, list(photo.detections), photo.key
        t0 = time.perf_counter()
        ctx = photo_context(image, dets, key)  # built once: the classifier and the checker read the same facts
        findings, evidence = classifier.classify_with_evidence(ctx)  # the checker reads the evidence the rationale was given
        seconds += time.perf_counter() - t0
        n_photos += 1
        facts = ctx.facts
        for i, (f, truth) in enumerate(zip(findings, photo.classes)):
            if truth is None:
                continue
            y_true.append(truth)
            y_pred.append(f.class_name)
            if (s := as_scored(f, truth, key)) is not None:
                scored.append(s)
            if f.backend != "passthrough":
                rationales += 1
                unfaithful += bool(unfaithful_claims(f.rationale, i, dets, facts, tax, f.probabilities, evidence.get(i)))
                if len(listed) < examples:
                    listed.append({"photo": key[:12], "object": i, "truth": truth, "predicted": f.class_name, "rationale": f.rationale})
    result = classification_metrics(y_true, y_pred, tax.class_names)

    def grouped(key) -> dict:
        labels = sorted({key(tax.get_class(c)) for c in tax.class_names})
        m = classification_metrics([key(tax.get_class(c)) for c in y_true], [key(tax.get_class(c)) for c in y_pred], labels)
        return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "per_class")}

    result["per_condition"] = grouped(lambda c: c.condition_key)
    per_type = {}
    for t in tax.type_names:
        idx = [k for k, c in enumerate(y_true) if tax.get_class(c).type == t]
        if idx:
            m = classification_metrics([y_true[k] for k in idx], [y_pred[k] for k in idx], [c.name for c in tax.classes_for_type(t)])
            per_type[t] = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")}
    result["per_type"] = per_type
    result["calibration"] = calibration_report(scored, getattr(classifier.backend, "calibration", None))
    result["unfaithful_rationale_rate"] = unfaithful / rationales if rationales else 0.0
    result["examples"] = listed
    result["seconds_per_photo"] = seconds / n_photos if n_photos else 0.0
    result["backend"] = classifier.backend.name
    result["version"] = classifier.backend.version
    return result


def calibration_report(scored: list[Scored], cal: Calibration | None) -> dict:
    """ECE, Brier, reliability bins and risk–coverage of the scores as served; with a calibrated
    backend also of its raw scores (recovered exactly: ``raw ∝ calibrated ** T``) and the
    likely-right band at the shipped threshold."""
    conf, correct = confidences(scored)
    out = {"n": len(scored), "ece": ece(conf, correct), "brier": brier([s.probs for s in scored], [s.truth for s in scored]),
           "reliability": reliability(conf, correct), "risk_coverage": risk_coverage(conf, correct)}
    if cal is not None:
        raw = [Scored(s.object_type, temper(s.probs, 1 / cal.temperatures.get(s.object_type, 1.0)), s.truth, s.photo) for s in scored]
        out.update(ece_raw=ece(*confidences(raw)), brier_raw=brier([r.probs for r in raw], [r.truth for r in raw]),
                   reliability_raw=reliability(*confidences(raw)), temperatures=cal.temperatures, fitted_on=cal.fitted_on)
        band = conf >= cal.likely_right if cal.likely_right is not None else np.zeros(len(conf), bool)
        out["likely_right"] = {"threshold": cal.likely_right, "target": cal.target, "coverage": float(band.mean()) if len(band) else 0.0,
                               "accuracy": float(correct[band].mean()) if band.any() else None}
    return out


def plot_reliability(report: dict, path: Path, title: str) -> None:
    """The reliability diagram: accuracy against confidence per bin, raw and calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, label="perfect")
    for key, label in (("reliability_raw", f"raw (ECE {report.get('ece_raw', 0):.3f})"), ("reliability", f"served (ECE {report['ece']:.3f})")):
        bins = [b for b in report.get(key, []) if b["n"]]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_classifier(cfg: ClassifierEvalConfig) -> dict:
    """Metrics of the main backend, plus a comparison row per backend in ``compare``."""
    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    results = {}
    options = cfg.backend_options(taxonomy, ds)
    index = split_evidence(cfg, ds)
    for name in cfg.backend_names:
        backend = registry.create(name, options)
        evidencer = default_evidencer(backend, index)
        results[name] = score_backend(ConditionClassifier(backend, taxonomy, evidencer), ds, cfg.split, cfg.examples)
        if cfg.ablate_context and registry.spec(name).prompted:
            ablated = WithoutContext(backend)
            results[ablated.name] = score_backend(ConditionClassifier(ablated, taxonomy, evidencer), ds, cfg.split)
    main = results[cfg.backend]
    if cfg.quant:
        main["quantization"] = quantized_retention(cfg, taxonomy, ds, main)
    if cfg.confusion_png:
        plot_confusion(main, cfg.confusion_png)
    if cfg.reliability_png:
        plot_reliability(main["calibration"], cfg.reliability_png, f"{cfg.backend} on {cfg.split}")
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "unfaithful_rationale_rate", "seconds_per_photo")
    for r in results.values():  # ECE in the comparison table: raw (before calibration) and as served
        r["ece"], r["ece_raw"] = r["calibration"]["ece"], r["calibration"].get("ece_raw", r["calibration"]["ece"])
    keys += ("ece_raw", "ece")
    return {
        "classifier": main,
        "comparison": {name: {k: r[k] for k in keys} for name, r in results.items()},
        "split": cfg.split,
    }


def quantized_retention(cfg: ClassifierEvalConfig, taxonomy: Taxonomy, ds: YoloDataset, full: dict) -> dict:
    """Accuracy retention (quantised / fp32) and weight size of the main backend quantised; for the
    adapter, the fp32 reference is scored here whatever precision the main run used."""
    options = cfg.backend_options(taxonomy, ds)
    if cfg.backend == "qwen2vl":
        quant = registry.create("qwen2vl", replace(options, qwen_precision=cfg.quant))
        size_full = size_quant = None
        if hasattr(quant.model, "get_memory_footprint"):
            size_quant = quant.model.get_memory_footprint()
    elif cfg.backend == "adapter":
        reference = registry.create(cfg.backend, replace(options, adapter_precision="fp32"))
        full = score_backend(ConditionClassifier(reference, taxonomy), ds, cfg.split)
        size_full = reference.lm_size_bytes()
        # Loaded as serving loads it (bf16: the merged LM from its cache).
        quant = registry.create(cfg.backend, replace(options, adapter_precision=cfg.quant))
        size_quant = quant.lm_size_bytes()
    elif cfg.backend == "adapter-zeroshot":
        quant = registry.create(cfg.backend, options)
        size_full = quant.lm_size_bytes()
        quant.quantize(cfg.quant)
        size_quant = quant.lm_size_bytes()
    else:
        raise SlopewatchError(f"quantisation applies to the VLM backends, not {cfg.backend!r}")
    q = score_backend(ConditionClassifier(quant, taxonomy), ds, cfg.split)
    return {
        "mode": cfg.quant,
        "accuracy": q["accuracy"], "balanced_accuracy": q["balanced_accuracy"],
        "accuracy_retention": q["accuracy"] / full["accuracy"] if full["accuracy"] else None,
        "balanced_accuracy_retention": q["balanced_accuracy"] / full["balanced_accuracy"] if full["balanced_accuracy"] else None,
        "weights_mb_full": size_full / 2**20 if size_full else None,
        "weights_mb_quantized": size_quant / 2**20 if size_quant else None,
        "seconds_per_photo": q["seconds_per_photo"],
    }


def plot_confusion(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.array(result["confusion"])
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['backend']}: accuracy {result['accuracy']:.3f}, balanced {result['balanced_accuracy']:.3f}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
