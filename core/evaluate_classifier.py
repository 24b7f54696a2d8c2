"""``slopewatch evaluate classifier``: stage 2 judged alone, on ground-truth boxes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from core.classifier import ConditionClassifier, TypeMajority, photo_context
from core.data import Sample, YoloDataset, file_sha256, load_dataset
from core.errors import DatasetError, SlopewatchError
from core.images import load_image
from core.metrics import classification_metrics
from core.paths import assets_dir
from core.rationale import unfaithful_claims
from core.taxonomy import Taxonomy, load_taxonomy
from core.types import Detection

BACKENDS = ("type-majority", "probe", "adapter", "adapter-zeroshot", "qwen2vl", "clip")


@dataclass(frozen=True)
class ClassifierEvalConfig:
    """Settings of ``slopewatch evaluate classifier``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split to score (report figures on ``valid``).
        backend: stage-2 backend whose metrics go under "classifier".
        compare: comma-separated further backends for the comparison table.
        probe_weights: probe ``.npz``; default is the shipped one.
        adapter_dir: adapter VLM folder; default is the shipped one.
        qwen_model: Qwen2-VL hub id or folder, for the qwen2vl backend.
        qwen_precision: qwen2vl precision: auto, fp32, fp16, bf16, int8 or int4.
        clip_model: CLIP checkpoint folder, for the clip backend (default: $SLOPEWATCH_CLIP_MODEL).
        ablate_context: also score VLM backends with the spatial context removed from the prompt.
        quant: also score a quantised copy of the main backend (int8 or int4) and report retention.
        json: where to write the metrics JSON.
        confusion_png: where to draw the main backend's confusion matrix.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    split: str = "valid"
    backend: str = "adapter"
    compare: str = ""
    probe_weights: Path | None = None
    adapter_dir: Path | None = None
    qwen_model: str | None = None
    qwen_precision: str = "auto"
    clip_model: Path | None = None
    ablate_context: bool = False
    quant: str = ""
    json: Path | None = None
    confusion_png: Path | None = None
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        if self.quant not in ("", "int8", "int4"):
            raise ValueError(f"quant: expected int8 or int4, found {self.quant!r}")
        for name in self.backend_names:
            if name not in BACKENDS:
                raise ValueError(f"backend: expected one of {BACKENDS}, found {name!r}")

    def qwen_config(self, precision: str | None = None):
        if not self.qwen_model:
            return None
        from core.qwen2vl import Qwen2VLConfig

        return Qwen2VLConfig(model=self.qwen_model, precision=precision or self.qwen_precision)

    @property
    def backend_names(self) -> list[str]:
        extra = [b.strip() for b in self.compare.split(",") if b.strip()]
        return [self.backend] + [b for b in extra if b != self.backend]


@dataclass(frozen=True)
class LabeledPhoto:
    """A photo with its objects and their true classes (``None``: not verified, skipped in
    training and scoring), keyed by content hash. Datasets and reviewed DB photos both give these."""

    image: object
    detections: tuple[Detection, ...]
    classes: tuple[str | None, ...]
    key: str


def ground_truth(ds: YoloDataset, split: str) -> Iterator[tuple[Sample, object, list[Detection], list[str], str]]:
    """Per photo: the sample, the upright image, GT boxes as detections, GT classes, content hash."""
    if ds.label_space != "classes":
        raise DatasetError(f"expected condition classes {ds.taxonomy.class_names}, found types {ds.names}", str(ds.yaml_path))
    for s in ds.samples(split):
        dets = [Detection(o.box, o.type, 1.0) for o in s.objects]
        yield s, load_image(s.image_path), dets, [o.class_name for o in s.objects], file_sha256(s.image_path)


def labeled_photos(ds: YoloDataset, split: str) -> list[LabeledPhoto]:
    return [LabeledPhoto(image, tuple(dets), tuple(classes), key) for _, image, dets, classes, key in ground_truth(ds, split)]


def default_probe_path() -> Path:
    return assets_dir() / "models" / "probe" / "drainage-probe.npz"


def current_adapter_dir() -> Path:
    """The promoted adapter from the model registry, else the shipped one."""
    from core.adapter import default_adapter_dir
    from train.registry import ModelRegistry

    return ModelRegistry().current_path() or default_adapter_dir()


def make_stage2_backend(name: str, taxonomy: Taxonomy, probe_weights: Path | None = None, adapter_dir: Path | None = None,
                        qwen=None, clip_model: Path | None = None):
    """A stage-2 backend for live photos (baselines that need a dataset are not offered).

    ``adapter-zeroshot`` is the adapter VLM before any training: base LM, fresh LoRA and an
    untrained projector, i.e. prompting alone.
    """
    if name == "probe":
        from core.probe import Probe

        return Probe.load(probe_weights or default_probe_path(), taxonomy)
    if name == "adapter":
        from core.adapter import AdapterVLM

        return AdapterVLM.load(adapter_dir or current_adapter_dir(), taxonomy)
    if name == "adapter-zeroshot":
        from core.adapter import AdapterVLM

        model = AdapterVLM(taxonomy)
        model.name, model.version = "adapter-zeroshot", "base"
        return model
    if name == "qwen2vl":
        from core.qwen2vl import Qwen2VLBackend

        if qwen is None:
            raise SlopewatchError("backend qwen2vl needs a model: pass --qwen-model HUB_ID_OR_FOLDER")
        return Qwen2VLBackend(qwen, taxonomy)
    if name == "clip":
        from core.clip import ClipModel, ClipZeroShot
        from core.paths import clip_model_dir

        folder = clip_model or clip_model_dir()
        if folder is None:
            raise SlopewatchError("backend clip needs a checkpoint: pass --clip-model FOLDER or set SLOPEWATCH_CLIP_MODEL")
        return ClipZeroShot(ClipModel(folder), taxonomy)
    raise SlopewatchError(f"unknown stage-2 backend {name!r}; expected one of {[b for b in BACKENDS if b != 'type-majority']}")


def make_backend(name: str, taxonomy: Taxonomy, ds: YoloDataset, probe_weights: Path | None = None, adapter_dir: Path | None = None,
                 qwen=None, clip_model: Path | None = None):
    """A backend for evaluation; ``type-majority`` counts the dataset's train split."""
    if name == "type-majority":
        if "train" not in ds.splits:
            raise DatasetError("type-majority needs a train split to count classes", str(ds.yaml_path))
        counts: dict[str, int] = {}
        for s in ds.samples("train"):
            for o in s.objects:
                counts[o.class_name] = counts.get(o.class_name, 0) + 1
        return TypeMajority(taxonomy, counts)
    return make_stage2_backend(name, taxonomy, probe_weights, adapter_dir, qwen, clip_model)


class WithoutContext:
    """Ablation wrapper: the same VLM, prompted without other objects, facts or hints."""

    def __init__(self, backend):
        self.inner = backend
        self.name, self.version = f"{backend.name} (no context)", backend.version

    def score(self, ctx, targets):
        return self.inner.score(ctx, targets, with_context=False)


def score_backend(classifier: ConditionClassifier, ds: YoloDataset, split: str) -> dict:
    return score_photos(classifier, (LabeledPhoto(image, tuple(d), tuple(c), key) for _, image, d, c, key in ground_truth(ds, split)))


def score_photos(classifier: ConditionClassifier, photos: Iterable[LabeledPhoto]) -> dict:
    """Metrics of a classifier over labelled photos (objects whose class is None are skipped)."""
    tax = classifier.taxonomy
    y_true, y_pred, unfaithful, rationales, seconds, n_photos = [], [], 0, 0, 0.0, 0
    for photo in photos:
        image, dets, key = photo.image, list(photo.detections), photo.key
        t0 = time.perf_counter()
        findings = classifier.classify(image, dets, key)
        seconds += time.perf_counter() - t0
        n_photos += 1
        facts = photo_context(image, dets, key).facts
        for i, (f, truth) in enumerate(zip(findings, photo.classes)):
            if truth is None:
                continue
            y_true.append(truth)
            y_pred.append(f.class_name)
            if f.backend != "passthrough":
                rationales += 1
                unfaithful += bool(unfaithful_claims(f.rationale, i, dets, facts, tax))
    result = classification_metrics(y_true, y_pred, tax.class_names)

    def grouped(key) -> dict:
        labels = sorted({key(tax.get_class(c)) for c in tax.class_names})
        m = classification_metrics([key(tax.get_class(c)) for c in y_true], [key(tax.get_class(c)) for c in y_pred], labels)
        return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "per_class")}

    result["per_condition"] = grouped(lambda c: c.condition or "none")
    per_type = {}
    for t in tax.type_names:
        idx = [k for k, c in enumerate(y_true) if tax.get_class(c).type == t]
        if idx:
            m = classification_metrics([y_true[k] for k in idx], [y_pred[k] for k in idx], [c.name for c in tax.classes_for_type(t)])
            per_type[t] = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")}
    result["per_type"] = per_type
    result["unfaithful_rationale_rate"] = unfaithful / rationales if rationales else 0.0
    result["seconds_per_photo"] = seconds / n_photos if n_photos else 0.0
    result["backend"] = classifier.backend.name
    result["version"] = classifier.backend.version
    return result


def evaluate_classifier(cfg: ClassifierEvalConfig) -> dict:
    """Metrics of the main backend, plus a comparison row per backend in ``compare``."""
    taxonomy = load_taxonomy(cfg.taxonomy)
    ds = load_dataset(cfg.data_yaml, taxonomy)
    results = {}
    for name in cfg.backend_names:
        backend = make_backend(name, taxonomy, ds, cfg.probe_weights, cfg.adapter_dir, cfg.qwen_config(), cfg.clip_model)
        results[name] = score_backend(ConditionClassifier(backend, taxonomy), ds, cfg.split)
        if cfg.ablate_context and name in ("adapter", "adapter-zeroshot", "qwen2vl"):
            ablated = WithoutContext(backend)
            results[ablated.name] = score_backend(ConditionClassifier(ablated, taxonomy), ds, cfg.split)
    main = results[cfg.backend]
    if cfg.quant:
        main["quantization"] = quantized_retention(cfg, taxonomy, ds, main)
    if cfg.confusion_png:
        plot_confusion(main, cfg.confusion_png)
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "unfaithful_rationale_rate", "seconds_per_photo")
    return {
        "classifier": main,
        "comparison": {name: {k: r[k] for k in keys} for name, r in results.items()},
        "split": cfg.split,
    }


def quantized_retention(cfg: ClassifierEvalConfig, taxonomy: Taxonomy, ds: YoloDataset, full: dict) -> dict:
    """Accuracy retention (quantised / full) and weight size of the main backend quantised."""
    if cfg.backend == "qwen2vl":
        from core.qwen2vl import Qwen2VLBackend

        quant = Qwen2VLBackend(cfg.qwen_config(cfg.quant), taxonomy)
        size_full = size_quant = None
        if hasattr(quant.model, "get_memory_footprint"):
            size_quant = quant.model.get_memory_footprint()
    elif cfg.backend in ("adapter", "adapter-zeroshot"):
        quant = make_backend(cfg.backend, taxonomy, ds, cfg.probe_weights, cfg.adapter_dir)
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
