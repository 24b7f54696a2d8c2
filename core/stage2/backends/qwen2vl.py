"""The ``qwen2vl`` backend: production stage 2 on Qwen2-VL / Qwen2.5-VL (transformers).

Per photo, the image and the list of all detections are encoded once (one prefill, one KV
cache). Each object then branches from that cache: its question marks the object with
Qwen2-VL's grounding syntax (``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, 0-1000 scale) and
restates its spatial facts and the data-driven band prior. All (object, candidate class)
pairs are scored in one batched forward over the shared cache: the label's probability is the
softmax over candidates of the summed log-likelihood of ``<class name><|im_end|>``. Rationales
are generated greedily, batched across objects, from the same cache, capped in length.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import SlopewatchError, WeightsError
from core.stage2.calibration import calibrated
from core.stage2.classifier import PhotoContext
from core.stage2.prompts import Hints, object_prompt
from core.stage2.rationale import human, trim_unfinished
from core.stage2.registry import BackendOptions
from core.stage2.spatial import band
from core.taxonomy import Taxonomy

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
SYSTEM = "You inspect drainage on earth embankments and judge each object's condition."


def grounding(ctx: PhotoContext, index: int) -> str:
    """The object's box in Qwen2-VL's grounding syntax (0-1000 scale)."""
    box, w, h = ctx.detections[index].box, ctx.image.width, ctx.image.height
    return f"<|box_start|>({round(1000 * box.x1 / w)},{round(1000 * box.y1 / h)}),({round(1000 * box.x2 / w)},{round(1000 * box.y2 / h)})<|box_end|>"


class BackendUnavailable(SlopewatchError):
    """A stage-2 backend cannot run with the requested settings on this machine."""


@dataclass(frozen=True)
class Qwen2VLConfig:
    """Settings of the ``qwen2vl`` backend.

    Attributes:
        model: hub id (e.g. Qwen/Qwen2-VL-7B-Instruct, from the local HF cache when offline) or a local folder.
        adapter: optional LoRA adapter folder (peft) applied on top.
        precision: auto (bf16 on GPU, fp32 on CPU), fp32, fp16, bf16, int8 or int4 (bitsandbytes, CUDA only).
        device: auto, cpu or cuda[:N].
        max_pixels: image size cap; Qwen2-VL spends one visual token per 28x28 pixels.
        rationale_tokens: most tokens generated per rationale (0: template rationales).
    """

    model: str
    adapter: Path | None = None
    precision: str = "auto"
    device: str = "auto"
    max_pixels: int = 448 * 28 * 28
    rationale_tokens: int = 32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, found {self.precision!r}")
        if self.max_pixels < 28 * 28 * 4:
            raise ValueError(f"max_pixels: expected >= {28 * 28 * 4}, found {self.max_pixels}")
        if self.rationale_tokens < 0:
            raise ValueError(f"rationale_tokens: expected >= 0, found {self.rationale_tokens}")


def load_base(cfg: Qwen2VLConfig):
    """``(model, processor, device)``: a freshly loaded base model, never with an adapter (``cfg.adapter``
    is ignored); quantisation needs CUDA and bitsandbytes."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from core.device import resolve_device

    device = resolve_device(cfg.device)
    kwargs: dict = {}
    if cfg.precision in ("int8", "int4"):
        if not device.startswith("cuda"):
            raise BackendUnavailable(f"precision {cfg.precision} needs a CUDA GPU (bitsandbytes); found device {device}. Use fp32 on CPU.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise BackendUnavailable("precision int8/int4 needs bitsandbytes: pip install -e '.[gpu]'") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if cfg.precision == "int8"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
        )
        kwargs["device_map"] = {"": device}
    else:
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
        kwargs["dtype"] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    try:
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, **kwargs)
        processor = AutoProcessor.from_pretrained(cfg.model, max_pixels=cfg.max_pixels)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"expected a Qwen2-VL checkpoint at {cfg.model!r} (hub id in the local cache, or a folder): {exc}") from exc
    if "quantization_config" not in kwargs:
        model = model.to(device)
    return model, processor, device


def load_qwen2vl(cfg: Qwen2VLConfig):
    """``(model, processor, device)`` per the config: a fresh base, with ``cfg.adapter`` attached
    (see :func:`attach_adapter`) when one is set."""
    model, processor, device = load_base(cfg)
    if cfg.adapter:
        model = attach_adapter(model, cfg.adapter)
    return model.eval(), processor, device


def ensure_fresh(model) -> None:
    """Refuse a model that already carries LoRA: ``get_peft_model`` / ``PeftModel.from_pretrained``
    inject adapters into the base model in place and leave ``peft_config`` on it, so a second
    adapter on the same object nests or doubles up (its keys then match nothing on reload)."""
    if hasattr(model, "peft_config"):
        raise ValueError(f"expected a fresh base model, found one that already carries LoRA adapter(s) {sorted(model.peft_config)}: "
                         "load a new base (load_base) for each adapter")


def single_adapter(model) -> None:
    """Check that a peft model holds exactly one adapter, ``default``, on a base that is not itself a peft model."""
    from peft import PeftModel

    names = sorted(getattr(model, "peft_config", {}))
    if not isinstance(model, PeftModel) or names != ["default"] or isinstance(model.get_base_model(), PeftModel):
        raise ValueError(f"expected a peft model with exactly one adapter 'default', found {type(model).__name__} with {names}")


def legacy_key_mapping(model) -> dict[str, str] | None:
    """transformers' own renaming of older Qwen2-VL checkpoint keys (``model.layers...`` ->
    ``model.language_model.layers...``, ``visual...`` -> ``model.visual...``), applied to adapter keys.

    An adapter saved with transformers < 4.52 (most published Qwen2-VL LoRAs) uses the old names.
    peft 0.21 looks the conversion up by ``model_type`` ("qwen2_vl"), but transformers 5 registers
    it under the class name, so without this mapping such an adapter matches no module and loads
    as zeros with only a warning. Keys already in the new layout are left as they are.
    """
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers < 5: peft uses the model's _checkpoint_conversion_mapping itself
        return None
    mapping = {}
    for rule in get_checkpoint_conversion_mapping(type(model).__name__) or []:
        if type(rule) is WeightRenaming and len(rule.source_patterns) == len(rule.target_patterns) == 1:
            mapping[rule.source_patterns[0]] = rule.target_patterns[0]
    return mapping or None


def attach_adapter(model, adapter: Path | str, trainable: bool = False):
    """A fresh base with the peft LoRA adapter in ``adapter`` loaded as its one adapter, checked
    tensor by tensor against the file: a key that matches no module (peft only warns) raises
    :class:`WeightsError` instead of serving the base model under the adapter's name."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict, load_peft_weights

    ensure_fresh(model)
    key_mapping = legacy_key_mapping(model)
    try:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable, key_mapping=key_mapping)
        on_disk = load_peft_weights(str(adapter), device="cpu", key_mapping=key_mapping)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"expected a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) at {adapter}: {exc}") from exc
    single_adapter(model)
    in_model = get_peft_model_state_dict(model)
    missing, unexpected = sorted(set(in_model) - set(on_disk)), sorted(set(on_disk) - set(in_model))
    differ = [k for k in sorted(set(in_model) & set(on_disk))
              if not torch.equal(in_model[k].detach().to("cpu", on_disk[k].dtype), on_disk[k])]
    if missing or unexpected or differ or not on_disk:
        raise WeightsError(f"adapter {adapter} does not fit {type(model.get_base_model()).__name__}: {len(on_disk)} tensors in the file, "
                           f"{len(missing)} adapter tensors of the model not in it (e.g. {missing[:1]}), {len(unexpected)} file tensors "
                           f"matching no module (e.g. {unexpected[:1]}), {len(differ)} loaded with other values (e.g. {differ[:1]})")
    return model


class Qwen2VLBackend:
    """Label scoring and rationales with a Qwen2-VL model over a shared per-photo prefill."""

    name = "qwen2vl"

    def __init__(self, cfg: Qwen2VLConfig, taxonomy: Taxonomy, hints: Hints | None = None, loaded=None):
        self.cfg, self.taxonomy, self.hints = cfg, taxonomy, hints or {}
        self.model, self.processor, self.device = loaded or load_qwen2vl(cfg)
        self.tok = self.processor.tokenizer
        adapter = ""
        if cfg.adapter:
            weights = sorted(Path(cfg.adapter).glob("*.safetensors"))
            adapter = "+" + hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()[:12] if weights else "+adapter"
        self.version = f"{cfg.model}{adapter}"
        self.end_id = self.tok.convert_tokens_to_ids("<|im_end|>")

    # --- prompt pieces (pure text) -------------------------------------------------------
    def prefix_text(self, ctx: PhotoContext) -> str:
        items = [f"{human(d.type)} #{k} ({band(d.box, ctx.image.height)})" for k, d in enumerate(ctx.detections)]
        return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                f"Detected: {', '.join(items)}.")

    def object_text(self, ctx: PhotoContext, index: int, with_context: bool = True) -> str:
        ground = grounding(ctx, index)
        cands = ", ".join(c.name for c in self.taxonomy.classes_for_type(ctx.detections[index].type))
        return (f"\n{object_prompt(ctx, index, self.hints, with_context, domain=self.taxonomy.name)} It is at {ground}. "
                f"Which condition: {cands}?<|im_end|>\n<|im_start|>assistant\n")

    # --- model calls ---------------------------------------------------------------------
    def prefill(self, ctx: PhotoContext):
        """Encode the image and detections once; returns ``(cache, prefix_length, rope_delta)``."""
        import torch

        inputs = self.processor(text=[self.prefix_text(ctx)], images=[ctx.image], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=True)
        rope_delta = self._inner().rope_deltas
        return out.past_key_values, inputs["input_ids"].shape[1], rope_delta

    def _inner(self):
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.model

    def _branch(self, cache, prefix_len: int, rope_delta, rows: Sequence[list[int]], left_pad: bool):
        """Run token rows after a copy of the shared cache; returns ``(logits, cache, lengths)``."""
        import torch

        n, width = len(rows), max(len(r) for r in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.end_id
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros(n, prefix_len + width, dtype=torch.long)
        mask[:, :prefix_len] = 1
        pos = torch.zeros(n, width, dtype=torch.long)
        for k, r in enumerate(rows):
            start = width - len(r) if left_pad else 0
            ids[k, start : start + len(r)] = torch.tensor(r)
            mask[k, prefix_len + start : prefix_len + start + len(r)] = 1
            # Positions continue the prefix exactly, whatever the padding.
            pos[k, start : start + len(r)] = torch.arange(prefix_len, prefix_len + len(r))
        branch = copy.deepcopy(cache)
        branch.batch_repeat_interleave(n)
        position_ids = (pos + rope_delta.to(pos.device).reshape(-1, 1)[:1]).unsqueeze(0).expand(3, -1, -1)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), past_key_values=branch,
                             position_ids=position_ids.to(self.device), use_cache=True,
                             cache_position=torch.arange(prefix_len, prefix_len + width, device=self.device))
        return out.logits.float(), out.past_key_values, mask, [len(r) for r in rows]

    def score(self, ctx: PhotoContext, targets: Sequence[int], with_context: bool = True) -> list[np.ndarray]:
        import torch

        return [torch.softmax(torch.tensor(t, dtype=torch.float32), -1).numpy() for t in self.log_likelihoods(ctx, targets, with_context)]

    def log_likelihoods(self, ctx: PhotoContext, targets: Sequence[int], with_context: bool = True) -> list[np.ndarray]:
        """Per target, the summed log-likelihood of each candidate's ``<class name><|im_end|>``
        (taxonomy order); :meth:`score` is their softmax. Unlike the probabilities these do not
        saturate, so tests compare models on them."""
        import torch

        cache, plen, delta = self.prefill(ctx)
        rows, spans, owners = [], [], []
        for i in targets:
            question = self.tok.encode(self.object_text(ctx, i, with_context), add_special_tokens=False)
            for c in self.taxonomy.classes_for_type(ctx.detections[i].type):
                answer = self.tok.encode(c.name, add_special_tokens=False) + [self.end_id]
                rows.append(question + answer)
                spans.append((len(question), len(answer)))
                owners.append(i)
        logits, _, _, _ = self._branch(cache, plen, delta, rows, left_pad=False)
        logp = torch.log_softmax(logits, -1)
        totals = []
        for k, (q, a) in enumerate(spans):
            targets_ids = torch.tensor(rows[k][q : q + a], device=logp.device)
            # Row token t is predicted at position t-1; the first answer token by the question's last.
            totals.append(float(logp[k, q - 1 : q + a - 1].gather(-1, targets_ids[:, None]).sum()))
        out, cursor = [], 0
        for i in targets:
            m = len(self.taxonomy.classes_for_type(ctx.detections[i].type))
            out.append(np.array(totals[cursor : cursor + m], dtype=np.float64))
            cursor += m
        return out

    def _greedy(self, ctx: PhotoContext, rows: Sequence[list[int]], max_tokens: int):
        """Greedy continuations of token rows after the photo's shared prefill, batched;
        returns ``(generated ids per row, first-step logits)``."""
        import torch

        cache, plen, delta = self.prefill(ctx)
        logits, cache, mask, lengths = self._branch(cache, plen, delta, rows, left_pad=True)
        first = logits[:, -1].cpu()
        width = max(lengths)
        generated: list[list[int]] = [[] for _ in rows]
        done = torch.zeros(len(rows), dtype=torch.bool)
        for step in range(max_tokens):
            nxt = logits[:, -1].argmax(-1).cpu()
            for k in range(len(rows)):
                if not done[k]:
                    if int(nxt[k]) in (self.end_id, self.tok.eos_token_id):
                        done[k] = True
                    else:
                        generated[k].append(int(nxt[k]))
            if bool(done.all()) or step == max_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
            pos = torch.tensor([plen + n + step for n in lengths])[:, None]
            position_ids = (pos + delta.cpu().reshape(-1, 1)[:1]).unsqueeze(0).expand(3, -1, -1)
            with torch.inference_mode():
                out = self.model(input_ids=nxt[:, None].to(self.device), attention_mask=mask.to(self.device), past_key_values=cache,
                                 position_ids=position_ids.to(self.device), use_cache=True,
                                 cache_position=torch.tensor([plen + width + step], device=self.device))
            logits, cache = out.logits.float(), out.past_key_values
        return generated, first

    def rationales(self, ctx: PhotoContext, findings) -> list[str | None]:
        targets = [i for i, f in enumerate(findings) if f.backend == self.name]
        texts: list[str | None] = [None] * len(findings)
        if not targets or self.cfg.rationale_tokens == 0:
            return texts
        rows = [self.tok.encode(self.object_text(ctx, i) + findings[i].class_name + ". Reason:", add_special_tokens=False) for i in targets]
        generated, _ = self._greedy(ctx, rows, self.cfg.rationale_tokens)
        for k, i in enumerate(targets):
            texts[i] = trim_unfinished(self.tok.decode(generated[k], skip_special_tokens=True))
        return texts

    def answer_mcq(self, ctx: PhotoContext, targets: Sequence[int], taxonomy: Taxonomy, max_tokens: int = 4) -> list:
        """Multiple-choice answers (see :mod:`core.stage2.mcq`), generated greedily from the shared prefill."""
        from core.stage2.mcq import LETTERS, Answer, option_texts, question_text

        rows = []
        for i in targets:
            text = f"\nThe object at {grounding(ctx, i)}. {question_text(ctx, i, taxonomy, self.hints)}<|im_end|>\n<|im_start|>assistant\n"
            rows.append(self.tok.encode(text, add_special_tokens=False))
        generated, first = self._greedy(ctx, rows, max_tokens)
        answers = []
        for k, i in enumerate(targets):
            letter_ids = [self.tok.encode(L, add_special_tokens=False)[0] for L in LETTERS[:len(option_texts(taxonomy, ctx.detections[i].type))]]
            answers.append(Answer(self.tok.decode(generated[k], skip_special_tokens=True).strip(), first[k, letter_ids].numpy()))
        return answers


def from_options(options: BackendOptions):
    """The Qwen2-VL backend, calibrated when its LoRA adapter folder holds a ``calibration.json``."""
    if not options.qwen_model:
        raise SlopewatchError("backend qwen2vl needs a model: pass --qwen-model HUB_ID_OR_FOLDER")
    cfg = Qwen2VLConfig(model=options.qwen_model, adapter=options.qwen_adapter, precision=options.qwen_precision, device=options.device)
    if options.rationale_tokens is not None:
        cfg = replace(cfg, rationale_tokens=options.rationale_tokens)
    return calibrated(Qwen2VLBackend(cfg, options.taxonomy), Path(options.qwen_adapter) / "calibration.json" if options.qwen_adapter else None)
