"""The ``adapter`` backend: an XVision-style VLM that runs offline on a CPU.

A frozen EfficientNet-Lite0 sees the object's crop and its context crop; a trained projector
turns each into one visual token; SmolLM2-135M-Instruct with LoRA reads the spatial prompt,
the visual tokens, and ``Condition:``. The label is chosen by scoring each candidate condition
word's log-likelihood at that position (one forward per object, no sampling). Rationales are
generated greedily after the label, bounded in length.

Only the projector and the LoRA weights are ours; they live in a small folder (``adapter.json``
+ safetensors) and are applied on top of the registry base weights. How it is served (which
version, which precision, the merged-LM cache) is ``core.stage2.backends.adapter_serving``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import WeightsError
from core.paths import assets_dir
from core.stage2.classifier import PhotoContext
from core.stage2.features import FEATURE_DIM, FeatureStore
from core.stage2.lm import BASE_ID, load_base_lm
from core.stage2.prompts import Hints, object_prompt
from core.stage2.rationale import trim_unfinished
from core.taxonomy import Taxonomy


@dataclass
class AdapterConfig:
    """Architecture of the adapter VLM.

    Attributes:
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA branch.
        lora_targets: comma-separated module names that get LoRA.
        rationale_tokens: most tokens generated for a rationale (0: template rationales). 0 by
            default: trained on template rationales, the LM only copies the spatial facts already
            in its prompt (checked on valid), and generating them cost 2.2 s of a 2.6 s photo.
        with_context: put other objects, spatial facts and hints in the prompt.
    """

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    rationale_tokens: int = 0
    with_context: bool = True

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r: expected >= 1, found {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout: expected [0, 1), found {self.lora_dropout}")
        if self.rationale_tokens < 0:
            raise ValueError(f"rationale_tokens: expected >= 0, found {self.rationale_tokens}")


def default_adapter_dir() -> Path:
    return assets_dir() / "models" / "adapter"


def candidate_word(taxonomy: Taxonomy, class_name: str) -> str:
    """The word scored for a class: its condition (its name when it has none)."""
    c = taxonomy.get_class(class_name)
    return " " + (c.condition or c.name)


class AdapterVLM:
    """Projector + LoRA'd SmolLM2 over cached frozen features."""

    name = "adapter"

    def __init__(self, taxonomy: Taxonomy, config: AdapterConfig | None = None, hints: Hints | None = None,
                 store: FeatureStore | None = None, lm_and_tokenizer=None, merged: bool = False):
        """``merged``: the LM given already has this adapter's LoRA merged in (inference only)."""
        import torch
        from peft import LoraConfig, get_peft_model

        self.taxonomy, self.config, self.hints = taxonomy, config or AdapterConfig(), hints or {}
        self.store = store or FeatureStore()
        base, self.tokenizer = lm_and_tokenizer or load_base_lm()
        for p in base.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
                          target_modules=self.config.lora_targets.split(","), bias="none", task_type="CAUSAL_LM")
        self.lm = base if merged else get_peft_model(base, lora)
        hidden = base.config.hidden_size
        torch.manual_seed(0)
        self.projector = torch.nn.Sequential(
            torch.nn.LayerNorm(FEATURE_DIM), torch.nn.Linear(FEATURE_DIM, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden)
        )
        self.roles = torch.nn.Parameter(torch.zeros(2, hidden))  # crop token, context token
        self.cand_ids = {}
        for c in taxonomy.class_names:
            ids = self.tokenizer.encode(candidate_word(taxonomy, c), add_special_tokens=False)
            if len(ids) != 1:
                raise WeightsError(f"candidate {candidate_word(taxonomy, c)!r} is {len(ids)} tokens; the scorer expects 1")
            self.cand_ids[c] = ids[0]
        self.version = "untrained"
        self.eval()

    # --- persistence -------------------------------------------------------------------------
    def trainable_state(self) -> dict:
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.lm).items()}
        state.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        state["roles"] = self.roles.data
        return state

    def save(self, folder: Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.trainable_state().items()}
        save_file(state, str(folder / "weights.safetensors"))
        meta = {"base": BASE_ID, "config": asdict(self.config), "hints": self.hints, "taxonomy": self.taxonomy.name, **(extra or {})}
        (folder / "adapter.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, taxonomy: Taxonomy, store: FeatureStore | None = None, lm_and_tokenizer=None,
             merged: bool = False) -> "AdapterVLM":
        """The adapter in ``folder`` on the base LM (or, ``merged``, on an LM that already holds its LoRA)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "adapter.json").is_file() or not (folder / "weights.safetensors").is_file():
            raise WeightsError(f"expected adapter.json and weights.safetensors in {folder}, found {sorted(p.name for p in folder.glob('*')) if folder.is_dir() else 'no folder'}")
        meta = json.loads((folder / "adapter.json").read_text())
        if meta.get("taxonomy") != taxonomy.name:
            raise WeightsError(f"{folder}: adapter was trained for taxonomy {meta.get('taxonomy')!r}, not {taxonomy.name!r}")
        model = cls(taxonomy, AdapterConfig(**meta["config"]), meta.get("hints"), store, lm_and_tokenizer, merged)
        state = load_file(str(folder / "weights.safetensors"))
        result = None if merged else set_peft_model_state_dict(model.lm, {k[5:]: v for k, v in state.items() if k.startswith("lora.")})
        # peft neither raises nor warns when saved LoRA keys match no module (e.g. after a
        # transformers release renames the layers): the LoRA would stay zero, i.e. the base LM.
        missing = [k for k in result.missing_keys if "lora_" in k] if result else []
        if result and (missing or result.unexpected_keys):
            raise WeightsError(f"{folder}: LoRA weights do not fit the base LM: {len(missing)} missing (e.g. {missing[:1]}), "
                               f"{len(result.unexpected_keys)} matching no module (e.g. {result.unexpected_keys[:1]})")
        model.projector.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        model.roles.data.copy_(state["roles"])
        model.version = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()[:12]
        return model.eval()

    def train(self, mode: bool = True) -> "AdapterVLM":
        self.lm.train(mode)
        self.projector.train(mode)
        return self

    def eval(self) -> "AdapterVLM":
        return self.train(False)

    def parameters(self):
        return [p for p in self.lm.parameters() if p.requires_grad] + list(self.projector.parameters()) + [self.roles]

    # --- quantisation --------------------------------------------------------------------
    def lm_size_bytes(self) -> int:
        """Serialized size of the language model's weights (what a quantised copy would store)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(self.lm.state_dict(), buf)
        return buf.tell()

    def quantize(self, mode: str) -> None:
        """Lower the LM's precision in place for inference (the model can no longer be trained):
        LoRA merged into the base, then ``bf16`` weights and activations, or dynamic ``int8`` of
        every linear layer. int4 has no CPU kernel here: that is a bitsandbytes/CUDA path."""
        import torch

        from core.stage2.backends.qwen2vl import BackendUnavailable

        if mode not in ("bf16", "int8"):
            raise BackendUnavailable(f"adapter precision on CPU: expected bf16 or int8; found {mode!r} "
                                     "(int4 needs bitsandbytes on CUDA)")
        merged = self.lm.merge_and_unload() if hasattr(self.lm, "merge_and_unload") else self.lm
        if mode == "bf16":
            self.lm = merged.to(torch.bfloat16)
            self.version += "+bf16"
            return
        from torch.ao.quantization import per_channel_dynamic_qconfig

        with torch.no_grad():
            # The decoder stack only: lm_head shares its weight with the embeddings, and
            # quantising it would store a second copy instead of saving space. Per-channel
            # scales: one per-tensor scale cost 0.05 accuracy on valid, per-channel 0.02.
            torch.ao.quantization.quantize_dynamic(merged.model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                                   dtype=torch.qint8, inplace=True)
        self.lm = merged
        self.version += "+int8"

    # --- model inputs ------------------------------------------------------------------------
    def embed(self, prompts: Sequence[str], crop_f: np.ndarray, ctx_f: np.ndarray, tails: Sequence[list[int]] | None = None,
              lead: str = " Condition:"):
        """Left-padded ``(inputs_embeds, attention_mask, position_ids)`` of
        ``prompt + " Look:" [crop][context] + lead + tail``."""
        import torch

        emb = self.lm.get_input_embeddings()
        vis = self.projector(torch.from_numpy(np.stack([crop_f, ctx_f], axis=1)).float()) + self.roles  # (n, 2, h)
        cond = self.tokenizer.encode(lead, add_special_tokens=False)
        seqs = []
        for k, prompt in enumerate(prompts):
            head = torch.tensor(self.tokenizer.encode(prompt + " Look:", add_special_tokens=False))
            tail = torch.tensor(cond + list(tails[k] if tails else []), dtype=torch.long)
            seqs.append(torch.cat([emb(head), vis[k], emb(tail)]))
        length = max(s.shape[0] for s in seqs)
        hidden = seqs[0].shape[1]
        x = torch.zeros(len(seqs), length, hidden)
        mask = torch.zeros(len(seqs), length, dtype=torch.long)
        for k, s in enumerate(seqs):
            x[k, length - s.shape[0]:] = s
            mask[k, length - s.shape[0]:] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return x.to(emb.weight.dtype), mask, positions  # bf16 when the LM was lowered to it

    def prompts(self, ctx: PhotoContext, targets: Sequence[int], with_context: bool | None = None) -> list[str]:
        wc = self.config.with_context if with_context is None else with_context
        return [object_prompt(ctx, i, self.hints, wc, domain=self.taxonomy.name) for i in targets]

    def candidate_logits(self, logits, types: Sequence[str]) -> list:
        """Logits of each row's candidate words, in the taxonomy's class order."""
        return [logits[k, [self.cand_ids[c.name] for c in self.taxonomy.classes_for_type(t)]] for k, t in enumerate(types)]

    # --- Backend protocol --------------------------------------------------------------------
    def score(self, ctx: PhotoContext, targets: Sequence[int], with_context: bool | None = None) -> list[np.ndarray]:
        import torch

        crop_f, ctx_f = self.store.object_features(ctx.image, [ctx.detections[i].box for i in targets], ctx.image_key)
        x, mask, pos = self.embed(self.prompts(ctx, targets, with_context), crop_f, ctx_f)
        with torch.inference_mode():
            # Logits at the last position only: the vocabulary projection over every prompt token was
            # a tenth of the forward.
            logits = self.lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        types = [ctx.detections[i].type for i in targets]
        return [torch.softmax(z.float(), -1).numpy() for z in self.candidate_logits(logits, types)]

    def rationales(self, ctx: PhotoContext, findings) -> list[str | None]:
        """Greedy, bounded rationales for the scored findings, batched across the photo's objects."""
        import torch

        targets = [i for i, f in enumerate(findings) if f.backend == self.name]
        if not targets or self.config.rationale_tokens == 0:
            return [None] * len(findings)
        crop_f, ctx_f = self.store.object_features(ctx.image, [ctx.detections[i].box for i in targets], ctx.image_key)
        reason = self.tokenizer.encode(" Reason:", add_special_tokens=False)
        tails = [[self.cand_ids[findings[i].class_name]] + reason for i in targets]
        x, mask, _ = self.embed(self.prompts(ctx, targets), crop_f, ctx_f, tails)
        with torch.inference_mode():
            out = self.lm.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=self.config.rationale_tokens,
                                   do_sample=False, pad_token_id=self.tokenizer.eos_token_id)
        texts: list[str | None] = [None] * len(findings)
        for k, i in enumerate(targets):
            texts[i] = trim_unfinished(self.tokenizer.decode(out[k], skip_special_tokens=True).strip().split("\n")[0])
        return texts

    def answer_mcq(self, ctx: PhotoContext, targets: Sequence[int], taxonomy: Taxonomy, max_tokens: int = 4) -> list:
        """Multiple-choice answers generated greedily after `` Answer:``, with the letters'
        next-token logits at the answer position as scores (see :mod:`core.stage2.mcq`)."""
        import torch

        from core.stage2.mcq import LETTERS, Answer, option_texts, question_text

        crop_f, ctx_f = self.store.object_features(ctx.image, [ctx.detections[i].box for i in targets], ctx.image_key)
        x, mask, _ = self.embed([question_text(ctx, i, taxonomy, self.hints) for i in targets], crop_f, ctx_f, lead=" Answer:")
        with torch.inference_mode():
            out = self.lm.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True, pad_token_id=self.tokenizer.eos_token_id)
        answers = []
        for k, i in enumerate(targets):
            n = len(option_texts(taxonomy, ctx.detections[i].type))
            letter_ids = [self.tokenizer.encode(" " + L, add_special_tokens=False)[0] for L in LETTERS[:n]]
            text = self.tokenizer.decode(out.sequences[k], skip_special_tokens=True).strip()
            answers.append(Answer(text, out.scores[0][k, letter_ids].float().numpy()))
        return answers
