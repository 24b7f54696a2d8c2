"""``slopewatch train adapter``: fit the adapter VLM's projector and LoRA on labelled objects.

Class balance (each switchable): inverse-frequency class weights in the loss, oversampling of
rare classes, and extra weight for the "blocked" condition. The target is the condition word
plus a short rationale built from the object's true spatial facts, so generated rationales
learn to cite only what was found. Prompts drop their spatial context at random
(``context_dropout``), which lets the same model be evaluated with and without it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from core.data import load_dataset
from core.stage2.backends.adapter import AdapterConfig, AdapterVLM, default_adapter_dir
from core.stage2.classifier import PhotoContext, photo_context
from core.stage2.features import FeatureStore
from core.stage2.labeled import LabeledPhoto, labeled_photos
from core.stage2.prompts import band_hints
from core.stage2.rationale import describe
from core.stage2.spatial import band
from core.taxonomy import load_taxonomy


@dataclass
class AdapterTrainConfig:
    """Settings of ``slopewatch train adapter``.

    Attributes:
        data_yaml: YOLO ``data.yaml`` labelled with the taxonomy's condition classes.
        split: split to train on.
        val_split: split scored after each epoch for the log (never used to pick weights); "" for none.
        out: folder for adapter.json, weights.safetensors and train_log.json.
        epochs: passes over the training objects.
        batch: objects per optimiser step.
        lr: learning rate of the projector.
        lora_lr: learning rate of the LoRA weights.
        class_weights: weight the label loss by inverse class frequency.
        oversample: draw rare classes more often (inverse-frequency square-root sampling).
        blocked_weight: extra label-loss weight for the "blocked" condition.
        rationale_weight: weight of the rationale tokens' loss (0 trains labels only).
        context_dropout: chance of a training prompt without other objects, facts and hints.
        mcq_share: share of each batch also asked as a lettered question ("... A) normal B) damaged.
            Answer with one letter.") and trained to answer the right letter, then stop; 0 trains no MCQ.
        init: start from this adapter folder instead of a fresh projector and LoRA (a continued fine-tune).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: comma-separated module names that get LoRA.
        seed: random seed.
        taxonomy: taxonomy TOML (default: the shipped drainage taxonomy).
    """

    data_yaml: Path
    split: str = "train"
    val_split: str = "valid"
    out: Path = field(default_factory=default_adapter_dir)
    epochs: int = 6
    batch: int = 8
    lr: float = 1e-3
    lora_lr: float = 3e-4
    class_weights: bool = True
    oversample: bool = True
    blocked_weight: float = 1.5
    rationale_weight: float = 0.3
    context_dropout: float = 0.2
    mcq_share: float = 0.0
    init: Path | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    seed: int = 0
    taxonomy: Path | None = None

    def __post_init__(self) -> None:
        self.data_yaml, self.out = Path(self.data_yaml), Path(self.out)
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, found {getattr(self, name)}")
        for name in ("lr", "lora_lr", "blocked_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected > 0, found {getattr(self, name)}")
        for name in ("context_dropout", "mcq_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected [0, 1], found {getattr(self, name)}")
        if self.init is not None and not (Path(self.init) / "adapter.json").is_file():
            raise ValueError(f"init: expected an adapter folder (with adapter.json), found {self.init}")
        if self.rationale_weight < 0:
            raise ValueError(f"rationale_weight: expected >= 0, found {self.rationale_weight}")

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, lora_targets=self.lora_targets)


@dataclass
class Example:
    ctx: PhotoContext
    index: int
    class_name: str
    crop_f: np.ndarray
    ctx_f: np.ndarray


def build_examples(photos: Iterable[LabeledPhoto], taxonomy, store: FeatureStore) -> list[Example]:
    """One example per verified object that needs a condition (features from the cache)."""
    out = []
    for photo in photos:
        dets = list(photo.detections)
        ctx = photo_context(photo.image, dets, photo.key)
        targets = [i for i, d in enumerate(dets) if taxonomy.needs_condition(d.type) and photo.classes[i] is not None]
        if not targets:
            continue
        crop_f, ctx_f = store.object_features(photo.image, [dets[i].box for i in targets], photo.key)
        out += [Example(ctx, i, photo.classes[i], crop_f[k], ctx_f[k]) for k, i in enumerate(targets)]
    return out


def class_loss_weights(labels: list[str], taxonomy, cfg: AdapterTrainConfig) -> dict[str, float]:
    counts = {c: labels.count(c) for c in set(labels)}
    weights = {c: (len(labels) / (len(counts) * n) if cfg.class_weights else 1.0) for c, n in counts.items()}
    for c in weights:
        if taxonomy.get_class(c).condition == "blocked":
            weights[c] *= cfg.blocked_weight
    return weights


def mcq_loss(model: AdapterVLM, batch: list[Example], taxonomy, eos: int):
    """Next-token loss of the right letter, then end of text, after each object's lettered
    question and `` Answer:`` (what ``answer_mcq`` generates from)."""
    import torch

    from core.stage2.mcq import LETTERS, question_text

    prompts = [question_text(e.ctx, e.index, taxonomy, model.hints) for e in batch]
    tails = []
    for e in batch:
        names = [c.name for c in taxonomy.classes_for_type(e.ctx.detections[e.index].type)]
        tails.append([model.tokenizer.encode(" " + LETTERS[names.index(e.class_name)], add_special_tokens=False)[0], eos])
    x, mask, pos = model.embed(prompts, np.stack([e.crop_f for e in batch]), np.stack([e.ctx_f for e in batch]), tails, lead=" Answer:")
    logits = model.lm(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits
    length = logits.shape[1]
    return sum(torch.nn.functional.cross_entropy(logits[k, length - len(t) - 1 : length - 1], torch.tensor(t))
               for k, t in enumerate(tails)) / len(batch)


def recorded_recipe(adapter_dir: Path) -> list[dict]:
    """The training settings that made the adapter in ``adapter_dir``, oldest first.

    A continued fine-tune (``init``) records its start's training, so an adapter made in steps
    (the recipe, then lettered questions) gives one entry per step.
    """
    meta = json.loads((Path(adapter_dir) / "adapter.json").read_text())
    steps, training = [], meta.get("training")
    while training:
        steps.insert(0, training["train_config"])
        training = training.get("init_training")
    if not steps or steps[0].get("init"):
        raise ValueError(f"{adapter_dir}: expected a training record back to a fresh start in adapter.json, "
                         f"found {len(steps)} step(s){' starting from ' + steps[0]['init'] if steps else ''}")
    return steps


def train_adapter(cfg: AdapterTrainConfig, model: AdapterVLM | None = None, train_photos: list[LabeledPhoto] | None = None,
                  val_photos: list[LabeledPhoto] | None = None) -> dict:
    """Train, save into ``cfg.out`` and return a summary; the log holds loss/metrics per epoch.

    By default the photos come from ``cfg.data_yaml`` (``split`` / ``val_split``); the nightly
    job passes its own (dataset plus reviewed corrections) instead.
    """
    import torch
    from tqdm.auto import tqdm

    from core.evaluation.classifier import score_photos
    from core.stage2.classifier import ConditionClassifier

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    taxonomy = load_taxonomy(cfg.taxonomy)
    if train_photos is None:
        ds = load_dataset(cfg.data_yaml, taxonomy)
        train_photos = labeled_photos(ds, cfg.split)
        if val_photos is None and cfg.val_split and cfg.val_split in ds.splits:
            val_photos = labeled_photos(ds, cfg.val_split)
    store = model.store if model else FeatureStore()
    examples = build_examples(train_photos, taxonomy, store)
    if not examples:
        raise ValueError(f"no verified objects needing a condition among the {len(train_photos)} training photos")
    hints = band_hints([(e.ctx.detections[e.index].type, band(e.ctx.detections[e.index].box, e.ctx.image.height)) for e in examples])
    if model is None:
        model = AdapterVLM.load(cfg.init, taxonomy, store) if cfg.init else AdapterVLM(taxonomy, cfg.adapter_config(), hints, store)
    model.hints = hints
    labels = [e.class_name for e in examples]
    loss_w = class_loss_weights(labels, taxonomy, cfg)
    counts = {c: labels.count(c) for c in set(labels)}
    draw_w = np.array([1.0 / np.sqrt(counts[c]) if cfg.oversample else 1.0 for c in labels])
    opt = torch.optim.AdamW([
        {"params": list(model.projector.parameters()) + [model.roles], "lr": cfg.lr},
        {"params": [p for p in model.lm.parameters() if p.requires_grad], "lr": cfg.lora_lr},
    ], weight_decay=0.01)
    steps = cfg.epochs * -(-len(examples) // cfg.batch)
    # torch's OneCycleLR divides by zero when the warm-up is exactly one step (10 steps at 10%, e.g. 80 objects for 1 epoch)
    warm_up = 0.1 if 0.1 * steps != 1 else 0.15
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.lora_lr], total_steps=steps, pct_start=warm_up)
    reason = model.tokenizer.encode(" Reason:", add_special_tokens=False)
    eos = model.tokenizer.eos_token_id
    log, started = [], time.time()
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(total=steps, desc="train adapter")
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.choice(len(examples), size=len(examples), replace=cfg.oversample, p=draw_w / draw_w.sum())
        losses = []
        for start in range(0, len(order), cfg.batch):
            batch = [examples[k] for k in order[start : start + cfg.batch]]
            prompts = [model.prompts(e.ctx, [e.index], with_context=rng.random() >= cfg.context_dropout)[0] for e in batch]
            tails = []
            for e in batch:
                tail = [model.cand_ids[e.class_name]]
                if cfg.rationale_weight > 0:
                    text = " " + describe(e.index, e.ctx.detections, e.ctx.facts, e.ctx.image.height) + "."
                    tail += reason + model.tokenizer.encode(text, add_special_tokens=False) + [eos]
                tails.append(tail)
            x, mask, pos = model.embed(prompts, np.stack([e.crop_f for e in batch]), np.stack([e.ctx_f for e in batch]), tails)
            logits = model.lm(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits
            length = logits.shape[1]
            label_logits = torch.stack([logits[k, length - len(t) - 1] for k, t in enumerate(tails)])
            loss = 0.0
            for e, z in zip(batch, model.candidate_logits(label_logits, [e.ctx.detections[e.index].type for e in batch])):
                cands = [c.name for c in taxonomy.classes_for_type(e.ctx.detections[e.index].type)]
                target = torch.tensor(cands.index(e.class_name))
                loss = loss + loss_w[e.class_name] * torch.nn.functional.cross_entropy(z[None], target[None])
            loss = loss / len(batch)
            # (no draw at all when off: the shipped recipe's random stream stays as it was)
            asked = [e for e in batch if rng.random() < cfg.mcq_share] if cfg.mcq_share > 0 else []
            if asked:
                loss = loss + mcq_loss(model, asked, taxonomy, eos)
            if cfg.rationale_weight > 0:
                lm_loss = 0.0
                for k, t in enumerate(tails):
                    pred = logits[k, length - len(t) : length - 1]  # predicts t[1:]
                    lm_loss = lm_loss + torch.nn.functional.cross_entropy(pred, torch.tensor(t[1:]))
                loss = loss + cfg.rationale_weight * lm_loss / len(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}")
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - started, 1)}
        if val_photos:
            model.eval()
            rationale_tokens, model.config.rationale_tokens = model.config.rationale_tokens, 0  # labels only: fast
            m = score_photos(ConditionClassifier(model, taxonomy), val_photos)
            model.config.rationale_tokens = rationale_tokens
            entry.update({"val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"]})
        log.append(entry)
        bar.write(json.dumps(entry), file=sys.stderr)  # stdout carries the command's JSON result
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "train_log.json").write_text(json.dumps(log, indent=2))
    bar.close()
    model.eval()
    summary = {"objects": len(examples), "epochs": cfg.epochs, "seconds": round(time.time() - started, 1), "log": log,
               "train_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    if cfg.init:  # a continued fine-tune keeps the record of what it continued: the whole recipe stays replayable
        summary["init_training"] = json.loads((Path(cfg.init) / "adapter.json").read_text()).get("training")
    model.save(cfg.out, extra={"training": summary})
    return summary
