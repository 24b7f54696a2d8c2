"""Stage-2 backends by name: the one place that maps a backend's name to its factory.

Every entry point asks this module: ``predict``/``serve``/``evaluate``/``bench``/``mcq`` list
:func:`names` in their ``--backend`` help and build with :func:`create`. A factory is named as
``"module:function"`` and imported on first use, so choosing the probe never imports the VLM
stack. Adding a backend is one module in ``core/stage2/backends/`` with a
``from_options(options) -> Backend`` function, plus one :class:`BackendSpec` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import SlopewatchError
from core.taxonomy import Taxonomy

# What the adapter's LM may run in: auto picks bf16 on a CPU with native bf16, else fp32.
ADAPTER_PRECISIONS = ("auto", "fp32", "bf16", "int8")


class UnknownBackend(SlopewatchError):
    """A backend name that is not registered (or not usable where it was asked for)."""


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend factory may read; each factory reads only its own fields.

    Attributes:
        taxonomy: the label space.
        probe_weights: probe ``.npz`` (default: the shipped one; under ``ensemble``, the probe the served
            adapter version carries when a nightly refitted one).
        adapter_dir: adapter VLM folder (default: the registry's current version, else the shipped one).
        qwen_model: Qwen2-VL hub id or local folder (qwen2vl).
        qwen_precision: qwen2vl precision: auto, fp32, fp16, bf16, int8 or int4.
        qwen_adapter: LoRA adapter folder applied on the Qwen2-VL model.
        clip_model: CLIP checkpoint folder (default: $SLOPEWATCH_CLIP_MODEL).
        device: auto, cpu or cuda[:N] (backends that use torch devices).
        dataset: a labelled dataset, for baselines that count its train split (type-majority).
        base_lm: an already loaded ``(model, tokenizer)`` for the adapter VLM (the nightly job and
            tests load the base LM once for the current model and its candidate).
        rationale_tokens: most tokens a VLM generates per rationale after its label (None: the
            model's own setting; 0: none, the rationale is the facts, the verdict and the evidence).
        adapter_precision: the adapter LM's precision: fp32 (trainable), bf16, int8, or auto (bf16
            on a CPU with native bf16, else fp32; only fp32 can be fine-tuned).
    """

    taxonomy: Taxonomy
    probe_weights: Path | None = None
    adapter_dir: Path | None = None
    qwen_model: str | None = None
    qwen_precision: str = "auto"
    qwen_adapter: Path | None = None
    clip_model: Path | None = None
    device: str = "auto"
    dataset: Any = None
    base_lm: Any = None
    rationale_tokens: int | None = None
    adapter_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.adapter_precision not in ADAPTER_PRECISIONS:
            raise ValueError(f"adapter_precision: expected one of {ADAPTER_PRECISIONS}, found {self.adapter_precision!r}")
        if self.rationale_tokens is not None and self.rationale_tokens < 0:
            raise ValueError(f"rationale_tokens: expected >= 0 (or None), found {self.rationale_tokens}")


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend.

    Attributes:
        name: what ``--backend`` takes.
        factory: ``"module:function"`` taking :class:`BackendOptions` and returning the backend.
        help: one line for ``--backend`` help.
        live: scores live photos; ``False`` means it needs a labelled dataset (evaluation only).
        prompted: a VLM prompted with spatial context (the context ablation and quantisation apply).
        follows: the model-registry stage whose promotions a running ``serve`` picks up for this
            backend (the nightly job trains it); None: the backend never swaps.
    """

    name: str
    factory: str
    help: str
    live: bool = True
    prompted: bool = False
    follows: str | None = None


SPECS = (
    BackendSpec("adapter", "core.stage2.backends.adapter_serving:from_options", "the offline VLM (SmolLM2 + image projector + LoRA)", prompted=True,
                follows="classifier"),
    BackendSpec("probe", "core.stage2.backends.probe:from_options", "logistic regression on frozen EfficientNet-Lite0 features"),
    BackendSpec("ensemble", "core.stage2.backends.ensemble:from_options",
                "the adapter and the probe blended as chosen by cross-validation (`train ensemble`)", prompted=True,
                follows="classifier"),  # its adapter is the classifier registry's current one
    BackendSpec("qwen2vl", "core.stage2.backends.qwen2vl:from_options", "Qwen2-VL / Qwen2.5-VL (production; needs --qwen-model)", prompted=True,
                follows="qwen2vl"),
    BackendSpec("clip", "core.stage2.backends.clip:from_options", "CLIP zero-shot (needs --clip-model)"),
    BackendSpec("adapter-zeroshot", "core.stage2.backends.adapter_serving:zeroshot_from_options",
                "the adapter VLM before any training (prompting alone)", prompted=True),
    BackendSpec("type-majority", "core.stage2.backends.type_majority:from_options",
                "baseline: the type's most frequent training class (needs a dataset)", live=False),
)
BACKENDS: dict[str, BackendSpec] = {s.name: s for s in SPECS}
DEFAULT = "ensemble"  # what serve, inspect, predict, bench and evaluate run unless told otherwise


def names(live_only: bool = False) -> list[str]:
    """Registered backend names (``live_only``: those that can label an uploaded photo)."""
    return [s.name for s in SPECS if s.live or not live_only]


def describe(live_only: bool = False) -> str:
    """``name (help); ...`` for ``--backend`` help texts."""
    return "; ".join(f"{s.name} ({s.help})" for s in SPECS if s.live or not live_only)


def check(name: str, field: str = "backend", live_only: bool = False) -> None:
    """Config validation: a ValueError naming the config ``field`` when ``name`` is not registered."""
    if name not in names(live_only):
        raise ValueError(f"{field}: expected one of {names(live_only)}, found {name!r}")


def spec(name: str, live_only: bool = False) -> BackendSpec:
    found = BACKENDS.get(name)
    if found is None or (live_only and not found.live):
        raise UnknownBackend(f"unknown stage-2 backend {name!r}; expected one of {names(live_only)}")
    return found


def create(name: str, options: BackendOptions):
    """Build the backend registered as ``name``."""
    module, func = spec(name).factory.split(":")
    return getattr(importlib.import_module(module), func)(options)
