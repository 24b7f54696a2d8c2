"""LoRA / QLoRA fine-tuning of the ``qwen2vl`` backend on labelled photos.

Each target object is one sequence: the photo prefix, the object's grounded question and the
true class name, with the loss on the answer tokens only, weighted for class balance. QLoRA
loads the base in 4-bit through bitsandbytes and needs CUDA; on a CPU it is refused with a
clear error instead of silently training in full precision.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from core.stage2.backends.qwen2vl import BackendUnavailable, Qwen2VLBackend, Qwen2VLConfig
from core.stage2.classifier import photo_context


@dataclass
class QwenTrainConfig:
    """Settings of a qwen2vl LoRA run.

    Attributes:
        out: folder for the LoRA adapter (safetensors).
        epochs: passes over the target objects.
        lr: learning rate of the LoRA weights.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: comma-separated module names that get LoRA (attention projections by default).
        qlora: load the base in 4-bit (bitsandbytes, CUDA only).
        class_weights: weight the loss by inverse class frequency.
        blocked_weight: extra weight for "blocked".
        seed: random seed.
    """

    out: Path
    epochs: int = 1
    lr: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    qlora: bool = False
    class_weights: bool = True
    blocked_weight: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.epochs < 1 or self.lora_r < 1:
            raise ValueError(f"epochs and lora_r: expected >= 1, found {self.epochs} and {self.lora_r}")


def prepare_model(model_cfg: Qwen2VLConfig, cfg: QwenTrainConfig, loaded=None):
    """``(peft_model, processor, device)``: a fresh base (4-bit under QLoRA) with exactly one
    trainable LoRA adapter: a new one per ``cfg``, or ``model_cfg.adapter`` resumed (with its own
    rank, alpha and targets).

    ``loaded`` is a fresh base from :func:`load_base`; LoRA is injected into it in place, so it is
    not usable as the base model afterwards, and a model that already carries LoRA is refused.
    """
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from core.stage2.backends.qwen2vl import attach_adapter, ensure_fresh, load_base

    if cfg.qlora:
        model_cfg = replace(model_cfg, precision="int4")  # raises BackendUnavailable without CUDA
    model, processor, device = loaded or load_base(model_cfg)
    ensure_fresh(model)
    if cfg.qlora:
        model = prepare_model_for_kbit_training(model)
    if model_cfg.adapter:
        return attach_adapter(model, model_cfg.adapter, trainable=True), processor, device
    # Only the language model's attention gets LoRA; the vision tower stays frozen.
    targets = rf"^(?!.*visual).*\.({'|'.join(cfg.lora_targets.split(','))})$"
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, bias="none")
    return get_peft_model(model, lora), processor, device


def train_qwen2vl(model_cfg: Qwen2VLConfig, cfg: QwenTrainConfig, photos, taxonomy, loaded=None, hints=None) -> dict:
    """Fine-tune and save the adapter into ``cfg.out``; returns ``{"steps", "loss"}``.

    ``loaded``: a fresh base from :func:`load_base` (LoRA is added here, see :func:`prepare_model`)
    or what :func:`prepare_model` returned (trained as it is).
    """
    import torch
    from peft import PeftModel, get_peft_model_state_dict, load_peft_weights

    from core.errors import WeightsError
    from core.stage2.backends.qwen2vl import single_adapter
    from train.adapter import AdapterTrainConfig, class_loss_weights

    if cfg.qlora and not torch.cuda.is_available():
        raise BackendUnavailable("QLoRA needs a CUDA GPU (4-bit bitsandbytes); this machine has none. Train without --qlora on CPU.")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if loaded is not None and isinstance(loaded[0], PeftModel):
        model, processor, device = loaded
        single_adapter(model)  # wrapping it again would nest a second PeftModel: its saved keys fit no model
    else:
        model, processor, device = prepare_model(model_cfg, cfg, loaded)
    backend = Qwen2VLBackend(model_cfg, taxonomy, hints, loaded=(model, processor, device))
    items = [(p, i) for p in photos for i, c in enumerate(p.classes) if c is not None and taxonomy.needs_condition(p.detections[i].type)]
    labels = [p.classes[i] for p, i in items]
    weights = class_loss_weights(labels, taxonomy, AdapterTrainConfig(data_yaml=Path("."), class_weights=cfg.class_weights,
                                                                       blocked_weight=cfg.blocked_weight))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    losses = []
    for _ in range(cfg.epochs):
        random.shuffle(items)
        for photo, i in items:
            ctx = photo_context(photo.image, list(photo.detections), photo.key)
            question = backend.prefix_text(ctx) + backend.object_text(ctx, i)
            inputs = processor(text=[question + photo.classes[i] + "<|im_end|>"], images=[photo.image], return_tensors="pt").to(device)
            n_answer = len(processor.tokenizer.encode(photo.classes[i], add_special_tokens=False)) + 1
            label_ids = inputs["input_ids"].clone()
            label_ids[:, : label_ids.shape[1] - n_answer] = -100  # loss on the answer only
            loss = model(**inputs, labels=label_ids).loss * weights[photo.classes[i]]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    cfg.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cfg.out, safe_serialization=True)
    saved, expected = set(load_peft_weights(str(cfg.out), device="cpu")), set(get_peft_model_state_dict(model))
    if saved != expected:
        raise WeightsError(f"saved adapter {cfg.out} does not match the trained model's LoRA: {sorted(saved ^ expected)[:2]}")
    return {"steps": len(losses), "loss": sum(losses) / max(len(losses), 1)}
