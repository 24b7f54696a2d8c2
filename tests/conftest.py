"""Shared fixtures: an isolated data dir, and tiny synthetic YOLO datasets built on the fly."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from core.paths import assets_dir


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    os.environ["SLOPEWATCH_DATA_DIR"] = str(tmp_path_factory.mktemp("slopewatch-data"))
    yield


@pytest.fixture
def samples_yaml() -> Path:
    """The six real photos shipped in assets/ (a 9-class YOLO export with only a valid split)."""
    return assets_dir() / "samples" / "data.yaml"


def make_dataset(root: Path, names: list[str], images: dict[str, list[str]], split: str = "train", size=(100, 100)) -> Path:
    """Write a YOLO dataset: ``images`` maps an image stem to its raw label lines."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    for stem, lines in images.items():
        Image.new("RGB", size, (120, 110, 90)).save(root / split / "images" / f"{stem}.jpg")
        if lines is not None:
            (root / split / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    quoted = ", ".join(f'"{n}"' for n in names)
    yaml_path.write_text(f"{split}: {split}/images\nnc: {len(names)}\nnames: [{quoted}]\n")
    return yaml_path


def tiny_llama(tokenizer):
    """A 2-layer random Llama over SmolLM2's vocabulary: the adapter's LM, minus the cost."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tiny_lm_factory():
    """``() -> (tiny LM, SmolLM2 tokenizer)``, what ``nightly(..., lm_factory)`` expects."""
    from core.stage2.lm import load_tokenizer

    tokenizer = load_tokenizer()
    return lambda: (tiny_llama(tokenizer), tokenizer)


@pytest.fixture(scope="session")
def probe_pipeline():
    """Both stages with the shipped detector and the (fast) probe, rationales citing the shipped
    evidence index, as served: real models on real photos."""
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2 import registry
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.evidence import default_evidencer

    detector = Detector(DetectorConfig(device="cpu"))
    probe = registry.create("probe", registry.BackendOptions(detector.taxonomy))
    return Pipeline(detector, ConditionClassifier(probe, detector.taxonomy, default_evidencer(probe)))


@pytest.fixture
def app(probe_pipeline, tmp_path):
    """The web app's handlers over a fresh SQLite file, called by name (no server)."""
    from types import SimpleNamespace

    from app.handlers import Handlers
    from app.models import ModelHost
    from app.review_handlers import ReviewHandlers
    from db.store import Store

    store = Store(tmp_path / "review.db")
    return SimpleNamespace(h=Handlers(ModelHost.ready(probe_pipeline), store), r=ReviewHandlers(store), store=store,
                           db=str(tmp_path / "review.db"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()`` gives a loopback TCP port nobody listens on (for a test server)."""
    return _free_port


def db_rows(db, query: str, *args) -> list[tuple]:
    """Rows of a read on a review DB file, through a connection of its own (what the app wrote)."""
    con = sqlite3.connect(db)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()
