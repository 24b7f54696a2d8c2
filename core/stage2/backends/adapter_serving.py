"""The ``adapter`` backend as it is served: the promoted adapter (else the shipped one) at the
precision the CPU runs best, with its LoRA merged into a bf16 LM that is written once to a cache
(so serving never holds the fp32 copy) and pruned as promotions add more. The model itself is
``core.stage2.backends.adapter``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from core.device import cpu_has_native_bf16
from core.model_registry import ModelRegistry
from core.paths import data_dir
from core.stage2.backends.adapter import AdapterVLM, default_adapter_dir
from core.stage2.calibration import calibrated
from core.stage2.lm import BASE_ID, load_tokenizer
from core.stage2.registry import BackendOptions
from core.taxonomy import Taxonomy

log = logging.getLogger("slopewatch.adapter")


KEEP_LOWERED = 3  # merged LMs kept besides any used in the last LOWERED_MIN_IDLE_S
LOWERED_MIN_IDLE_S = 7 * 86400  # a week: an LM another process may be reading is never removed


def lowered_cache_dir(folder: Path, precision: str, base_lm=None) -> Path:
    """Where the LM of the adapter in ``folder``, LoRA merged, is kept at ``precision``: keyed by
    everything the merged weights depend on (the adapter's weights and config, the base LM, the
    transformers release that lays the weights out), so a promotion gets its own."""
    import transformers

    folder = Path(folder)
    h = hashlib.sha256()
    for part in ((folder / "weights.safetensors").read_bytes(), (folder / "adapter.json").read_bytes(), BASE_ID.encode(),
                 transformers.__version__.encode(), (base_lm.config.to_json_string() if base_lm is not None else "").encode()):
        h.update(hashlib.sha256(part).digest())
    return data_dir() / "cache" / "adapter-lm" / f"{h.hexdigest()[:16]}-{precision}"


def load_lowered(folder: Path, taxonomy: Taxonomy, precision: str = "bf16", lm_and_tokenizer=None) -> AdapterVLM:
    """The adapter with its LoRA merged into a bf16 LM, for inference. The first load merges and
    lowers the fp32 model and writes the result to :func:`lowered_cache_dir`; later loads read
    the bf16 weights alone, so serving never holds the fp32 copy (peak memory -0.5 GB)."""
    import torch
    from transformers import AutoModelForCausalLM

    if precision != "bf16":
        raise ValueError(f"precision: expected bf16 (the one precision a plain checkpoint can hold), found {precision!r}")
    cache = lowered_cache_dir(folder, precision, lm_and_tokenizer[0] if lm_and_tokenizer else None)
    if not (cache / "config.json").is_file():
        _write_lowered(folder, taxonomy, precision, lm_and_tokenizer, cache)
        prune_lowered(cache.parent)
    os.utime(cache)  # marks it used: pruning keeps the most recently used
    # Read back even right after writing: every load then runs the very same model (a model
    # lowered in memory keeps its rotary buffers in bf16, one read from the file in fp32).
    lm = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.bfloat16).eval()
    tokenizer = lm_and_tokenizer[1] if lm_and_tokenizer else load_tokenizer()
    model = AdapterVLM.load(folder, taxonomy, lm_and_tokenizer=(lm, tokenizer), merged=True)
    model.version += f"+{precision}"
    return model


def prune_lowered(root: Path, keep: int = KEEP_LOWERED, min_idle_s: float = LOWERED_MIN_IDLE_S) -> list[Path]:
    """Remove merged LMs beyond the ``keep`` most recently used that nobody used for ``min_idle_s``:
    each promotion writes one (257 MB for SmolLM2), and a nightly promotes up to once a day.
    Serving an old version again rebuilds its LM (about 10 s). Returns what was removed."""
    used = {}
    for entry in Path(root).iterdir():
        try:
            if entry.is_dir() and not entry.name.startswith("."):  # "." entries: being written
                used[entry] = entry.stat().st_mtime
        except FileNotFoundError:  # another process pruned it meanwhile
            pass
    now, removed = time.time(), []
    for old in sorted(used, key=used.get, reverse=True)[keep:]:
        if now - used[old] <= min_idle_s:
            continue
        try:
            shutil.rmtree(old)
            removed.append(old)
        except FileNotFoundError:
            pass
        except OSError as exc:  # housekeeping: a cache that cannot be removed must not stop serving
            log.warning("could not remove the merged LM cache %s: %s", old, exc)
    return removed


def _write_lowered(folder: Path, taxonomy: Taxonomy, precision: str, lm_and_tokenizer, cache: Path) -> None:
    from safetensors.torch import save_model

    model = AdapterVLM.load(folder, taxonomy, lm_and_tokenizer=lm_and_tokenizer)
    model.quantize(precision)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lowered-", dir=cache.parent))
    try:
        # save_pretrained refuses a model first read from GGUF; its tensors are plain bf16 now, and
        # the config must drop the GGUF marker so the cache loads as the plain checkpoint it is.
        config = model.lm.config.to_dict()
        config.pop("quantization_config", None)
        save_model(model.lm, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tmp.rename(cache)
    except OSError:
        if not (cache / "config.json").is_file():  # not "another process wrote it first": a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def current_adapter_dir() -> Path:
    """The promoted adapter from the model registry, else the shipped one."""
    return ModelRegistry().current_path() or default_adapter_dir()


def from_options(options: BackendOptions):
    """The adapter, calibrated when its folder holds a ``calibration.json``."""
    folder = Path(options.adapter_dir or current_adapter_dir())
    precision = options.adapter_precision
    if precision == "auto":
        # bf16 scored valid exactly as fp32 does (0.776 / 0.768) at a third of the time.
        precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "bf16":
        model = load_lowered(folder, options.taxonomy, precision, options.base_lm)
    else:
        model = AdapterVLM.load(folder, options.taxonomy, lm_and_tokenizer=options.base_lm)
        if precision != "fp32":
            model.quantize(precision)
    if options.rationale_tokens is not None:
        model.config.rationale_tokens = options.rationale_tokens
    return calibrated(model, folder / "calibration.json")


def zeroshot_from_options(options: BackendOptions) -> AdapterVLM:
    """The adapter VLM before any training: base LM, fresh LoRA and an untrained projector,
    i.e. prompting alone."""
    model = AdapterVLM(options.taxonomy, lm_and_tokenizer=options.base_lm)
    model.name, model.version = "adapter-zeroshot", "base"
    return model
