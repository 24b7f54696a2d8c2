import json

import pytest

from core.evaluation.metrics import classification_metrics
from core.model_registry import ModelRegistry, RegistryError
from db.store import Store, snapshot
from train.gate import GateConfig, decide


def _model(tmp_path, name):
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "adapter.json").write_text(json.dumps({"name": name}))
    (folder / "weights.safetensors").write_bytes(name.encode())
    return folder


def test_promote_list_and_rollback(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.current() is None and reg.versions() == []
    reg.add(_model(tmp_path, "v1"), "v1", {"balanced_accuracy": 0.7})
    reg.promote("v1")
    reg.add(_model(tmp_path, "v2"), "v2")
    reg.promote("v2", "better")
    assert reg.current() == "v2"
    assert [(v["version"], v["current"]) for v in reg.versions()] == [("v1", False), ("v2", True)]
    assert reg.versions()[0]["metrics"] == {"balanced_accuracy": 0.7}
    assert reg.rollback() == "v1" and reg.current() == "v1"
    assert (reg.current_path() / "weights.safetensors").read_bytes() == b"v1"
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback()
    with pytest.raises(RegistryError, match="already exists"):
        reg.add(_model(tmp_path, "again"), "v1")


def test_interrupted_add_is_invisible(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    (reg.root / "versions" / ".v9.tmp").mkdir()  # what a kill during copy leaves behind
    assert reg.versions() == []
    with pytest.raises(RegistryError, match="found none"):
        reg.promote("v9")


def _metrics(true, pred):
    return classification_metrics(true, pred, ["a", "b", "c"])


@pytest.mark.parametrize(
    "cand_pred, promote, reason",
    [
        (["a", "a", "a", "b", "b", "b", "c", "c", "c"], True, "balanced accuracy"),  # perfect beats current
        (["a", "a", "b", "b", "b", "a", "c", "c", "a"], False, "not better"),  # same as current
        (["b", "b", "b", "b", "b", "b", "c", "c", "c"], False, "a recall"),  # better mean, but class a collapses
    ],
)
def test_gate(cand_pred, promote, reason):
    true = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    current = _metrics(true, ["a", "a", "b", "b", "b", "a", "c", "c", "a"])
    ok, reasons = decide(_metrics(true, cand_pred), current, GateConfig(max_recall_drop=0.1, min_support=3))
    assert ok is promote
    assert any(reason in r for r in reasons)


def test_gate_promotes_first_model():
    assert decide({"balanced_accuracy": 0.1, "accuracy": 0.1, "per_class": {}}, None)[0]


def test_snapshot_is_consistent_and_checked(tmp_path):
    store = Store(tmp_path / "live.db")
    store.ensure_user("ana")
    copy = snapshot(tmp_path / "live.db", tmp_path / "snap.db")
    assert Store(copy).query("SELECT name FROM users") == [{"name": "ana"}]
    assert not (tmp_path / "snap.db.tmp").exists()
