"""SIGKILL during a nightly run and during the pointer swap leaves a loadable current model."""

import multiprocessing as mp
import os
import signal
import time

from conftest import tiny_lm_factory
from test_nightly import TAX, lm_factory, world  # noqa: F401  (fixtures)

from core.model_registry import ModelRegistry

ctx = mp.get_context("fork")


def _flip_forever(root):
    reg = ModelRegistry(root)
    while True:
        reg.promote("v1")
        reg.promote("v2")


def test_kill_during_swap_leaves_a_valid_pointer(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for v in ("v1", "v2"):
        src = tmp_path / v
        src.mkdir()
        (src / "adapter.json").write_text("{}")
        reg.add(src, v)
    reg.promote("v1")
    for _ in range(5):
        proc = ctx.Process(target=_flip_forever, args=(reg.root,))
        proc.start()
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert reg.current() in ("v1", "v2")
        assert (reg.current_path() / "adapter.json").is_file()


def _run_nightly(cfg):
    from train.nightly import nightly

    nightly(cfg, tiny_lm_factory())


def test_kill_during_training_keeps_the_current_model(world, lm_factory):  # noqa: F811
    from core.paths import data_dir
    from core.stage2.backends.adapter import AdapterVLM
    from train.nightly import NightlyConfig

    reg, tmp = world
    cfg = NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=50)
    proc = ctx.Process(target=_run_nightly, args=(cfg,))
    proc.start()
    deadline = time.time() + 120
    # Wait until the candidate is being trained (its work folder exists), then kill -9.
    while time.time() < deadline and not list(data_dir().glob("nightly-*/snapshot.db")):
        time.sleep(0.2)
    time.sleep(2.0)
    assert proc.is_alive(), "the nightly run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert reg.current() == "v0"
    model = AdapterVLM.load(reg.current_path(), TAX, lm_and_tokenizer=lm_factory())
    assert model.version
    # The next run starts clean and completes.
    from train.nightly import nightly

    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1), lm_factory)
    assert result["decision"] in ("promoted", "refused")
    assert not list(data_dir().glob("nightly-*")), "the killed run's work folder should be cleaned up"
